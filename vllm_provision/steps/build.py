"""build: compile vLLM's CUDA extensions (concurrently, compiler-cached) and install it editable.

Preflight first (seconds; refuses a mismatched nvcc/torch, a too-new gcc, unsupported archs, too
little disk/RAM). Then each of setup.py's extensions is built in place in its own build-temp dir,
several at once (bounded by MAX_JOBS), and `pip install --no-build-isolation --no-deps -e src` makes
the real editable install; with ccache its own compile of the same sources is all cache hits.
Afterwards torch must be unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.version import InvalidVersion, Version

from .. import PROJECT_ROOT, envinfo, preflight, runner
from ..build import (DRIVER, BuildEnv, cache_summary, diagnose, make_build_env, ninja_unit_times,
                     parse_ccache_stats, relevant_tail)
from ..build.placement import host_placement
from ..errors import StepFailed
from ..pipeline import StepContext, StepOutcome

EXT_TIMEOUT = 3 * 3600
PIP_TIMEOUT = 3 * 3600
MARKER = ".vllmp-build.json"
# direct_url.json (PEP 610) says whether and from where a distribution is installed editable.
_INSTALLED_PROBE = (
    "import json, importlib.metadata as md, torch\n"
    "from urllib.parse import urlparse, unquote\n"
    "out = {'torch': [torch.__version__, torch.version.cuda], 'vllm': None, 'editable_dir': None}\n"
    "try:\n"
    "    d = md.distribution('vllm'); out['vllm'] = d.version\n"
    "    url = json.loads(d.read_text('direct_url.json') or '{}')\n"
    "    if url.get('dir_info', {}).get('editable'): out['editable_dir'] = unquote(urlparse(url['url']).path)\n"
    "except md.PackageNotFoundError:\n"
    "    pass\n"
    "print('INSTALLED-JSON ' + json.dumps(out))\n"
)


def stamp_inputs(ctx: StepContext) -> dict:
    info = envinfo.load(ctx.workspace)
    build = ctx.plan.to_dict()["build"]
    # Only what changes the output: MAX_JOBS and its reason (free RAM right now) do not, and a
    # stamp that held them rebuilt whenever free memory moved.
    return {"build": {k: build[k] for k in ("arch_list", "torch_cuda_arch_list")}, "release": ctx.plan.release.version,
            "env": {"python": info.python, "torch": info.torch, "torch_cuda": info.torch_cuda,
                    "cuda_home": info.cuda_home, "nvcc_version": info.nvcc_version, "lock": info.lock}}


def intact(ctx: StepContext) -> bool:
    try:
        data = json.loads((ctx.workspace.src / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return all((ctx.workspace.src / so).is_file() for so in data.get("libraries", []))


def _say_lines(ctx: StepContext, lines) -> None:
    for line in lines:
        ctx.say(line)


def run(ctx: StepContext) -> StepOutcome:
    plan, ws = ctx.plan, ctx.workspace
    info = envinfo.load(ws)
    src = ws.src
    if not (src / "setup.py").is_file():
        raise StepFailed(f"no setup.py in {src}", hint="run `inv fetch` first")
    ws.logs.mkdir(parents=True, exist_ok=True)
    ctx.log.write_text("")  # the build log of this run only

    # 1. preflight: seconds, before any compile
    checks = preflight.run(plan, ctx.facts, info)
    preflight.write_report(ws, checks)
    failed = [c for c in checks if c.status == "fail"]
    for c in checks:
        if c.status in ("warn", "fail"):
            ctx.say(f"preflight {c.name}: {c.status}: {c.detail}")
    if failed:
        first = failed[0]
        raise StepFailed(f"preflight refused the build: {'; '.join(f'{c.name}: {c.detail}' for c in failed)}",
                         hint=" | ".join(c.hint for c in failed if c.hint) or first.hint)

    # 2. the compile environment: setup.py's extensions first (read without compiler wrappers), then
    # the wrappers that cache every compile and give the slowest units a core of their own
    jobs = max(1, plan.build.max_jobs)
    tools = src / "build" / "vllmp-tools"
    ccache_dir = Path(os.environ.get("CCACHE_DIR") or ws.cache / "ccache")

    def build_env(*, wrapped: bool, placement=None) -> BuildEnv:
        return make_build_env(base=os.environ, python=info.python, cuda_home=info.cuda_home,
                              include_dirs=info.include_dirs, arch_list=plan.build.torch_cuda_arch_list,
                              jobs_per_ext=jobs, tools_dir=tools, src=src, ccache_dir=ccache_dir,
                              use_ccache=wrapped and plan.build.ccache, placement=placement)

    exts, torch_before = _list_extensions(info.python, src, build_env(wrapped=False), ctx.log)
    if info.torch and torch_before[0] != info.torch:
        raise StepFailed(f"the env's torch is {torch_before[0]}, env.json recorded {info.torch}",
                         hint="rerun `inv env --force` so env.json describes the env")
    placement = None
    if plan.build.cpu_placement == "auto" and plan.build.parallel_extensions:
        placement = host_placement({s: _size(src / s) for e in exts for s in e["sources"]})
    benv = build_env(wrapped=True, placement=placement)
    _say_lines(ctx, benv.notes)
    before = _ccache_stats(benv)
    started = time.monotonic()

    # 3. the extensions, each in its own build-temp dir, several at once
    # With the prebuilt patch applied, pip's editable pass packages the pre-built libraries;
    # without it pip compiles everything again, which only a compiler cache makes cheap.
    reuses_prebuilt = PREBUILT_FLAG in (src / "setup.py").read_text(errors="replace")
    parallel = plan.build.parallel_extensions and len(exts) > 1 and (reuses_prebuilt or benv.ccache is not None)
    if plan.build.parallel_extensions and not parallel and len(exts) > 1:
        ctx.say("no compiler cache and no prebuilt patch: pip's own editable build would compile everything "
                "again, so the extensions are compiled once, serially, by pip")
    # 4. the real editable install. With the pre-built extensions it compiles nothing, so it runs
    # alongside the compile; otherwise it is the compile (ccache hits after a parallel pre-build).
    argv = [info.python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", str(src)]
    if info.lock:
        lock = Path(info.lock)
        lock = lock if lock.is_absolute() else PROJECT_ROOT / lock
        if lock.is_file():
            argv += ["-c", str(lock)]
    # pip's editable build compiles in $TMPDIR/tmpXXXX.build-temp; a sibling of the pre-build's
    # temp dirs, so ccache (which relativizes paths to the ninja cwd under CCACHE_BASEDIR) sees the same
    # command lines and serves every object from the cache.
    # Every build starts from empty build dirs (stale objects cannot leak in); ccache serves what is
    # unchanged. The libraries of the last good build stay in place until the new ones are linked.
    shutil.rmtree(tmp_root(src), ignore_errors=True)
    tmp_root(src).mkdir(parents=True, exist_ok=True)
    env = dict(benv.env, MAX_JOBS=str(jobs), TMPDIR=str(tmp_root(src)))
    if parallel and reuses_prebuilt:
        env[PREBUILT_FLAG] = "1"
    pip_log = ctx.workspace.logs / "build-pip.log"
    pip_log.write_text("")
    pip_timing: dict = {}
    installed: dict = {}

    def pip_install() -> None:
        ctx.say("pip install --no-build-isolation --no-deps -e src"
                + (" (packaging the pre-built extensions, alongside the compile)" if env.get(PREBUILT_FLAG) else ""))
        t0 = time.monotonic()
        try:
            runner.run(argv, log=pip_log, cwd=src, env=env, timeout=PIP_TIMEOUT, what="pip install -e (vLLM build)",
                       diagnose=lambda out, rc: diagnose(out, rc, max_jobs=jobs, cuda=info.torch_cuda),
                       tail_lines=60)
        finally:
            pip_timing["seconds"] = time.monotonic() - t0
            with open(ctx.log, "a", encoding="utf-8") as fh:
                fh.write(pip_log.read_text(errors="replace"))
        # what pip installed (editable from src, torch unchanged): needs no compiled library, so
        # with the pre-built extensions it too runs alongside the compile
        installed["version"], installed["torch"] = _installed(info.python, src, benv, ctx.log)

    built: list[dict] = []
    if parallel and reuses_prebuilt:
        with ThreadPoolExecutor(max_workers=1) as side:
            pip_done = side.submit(pip_install)
            try:
                built = _build_parallel(ctx, exts, benv, jobs, info)
            finally:
                pip_error = pip_done.exception()
        if pip_error:
            raise pip_error
        compile_s = time.monotonic() - started
    else:
        if parallel:
            built = _build_parallel(ctx, exts, benv, jobs, info)
        compile_s = time.monotonic() - started
        pip_install()
    pip_s = pip_timing.get("seconds", 0.0)

    # 5. what came out: editable install, every extension library, torch unchanged
    libraries = sorted(str(p.relative_to(src)) for p in (src / "vllm").glob("*.so"))
    missing = [e["name"] for e in exts if not any(Path(l).name.startswith(e["name"].split(".")[-1] + ".")
                                                  for l in libraries)]
    if missing:
        raise StepFailed(f"build finished but {', '.join(missing)} has no library in {src / 'vllm'}",
                         hint=f"read {ctx.log}")
    editable, torch_after = installed["version"], installed["torch"]
    if torch_after != torch_before:
        raise StepFailed(f"the build changed torch: before {torch_before[0]} (CUDA {torch_before[1]}), "
                         f"after {torch_after[0]} (CUDA {torch_after[1]})",
                         hint="something installed torch during the build: use --no-build-isolation --no-deps "
                              "(the toolkit does) and rerun `inv env --force`")
    after = _ccache_stats(benv)
    cache = None
    if before is not None and after is not None:
        cache = cache_summary({k: after.get(k, 0) - before.get(k, 0) for k in after})
    total = time.monotonic() - started
    facts = {"version": editable, "libraries": libraries, "extensions": [e["name"] for e in exts],
             "parallel": parallel, "max_jobs": jobs, "arch_list": plan.build.torch_cuda_arch_list,
             "compile_seconds": round(compile_s, 1), "pip_seconds": round(pip_s, 1), "seconds": round(total, 1),
             "per_extension": built, "units": _unit_times(src, exts) if parallel else [],
             "cpu_placement": dict(placement.reserved, others=placement.pool) if benv.placement else None,
             "ccache": cache, "cuda_home": info.cuda_home,
             "torch": torch_after[0], "log": str(ctx.log)}
    (src / MARKER).write_text(json.dumps(facts, indent=2))
    cache_note = f", ccache {cache['hits']} hits / {cache['misses']} misses" if cache else ", no compiler cache"
    detail = (f"vllm {editable} (editable) for {plan.build.torch_cuda_arch_list}: {len(libraries)} libraries in "
              f"{total:.0f} s{' (' + str(len(exts)) + ' extensions in parallel)' if parallel else ''}{cache_note}")
    return StepOutcome(detail=detail, facts=facts)


# ------------------------------------------------------------------------------------------------ parts
# Set for pip's editable pass once every extension is pre-built (patches/<release>/*reuse-prebuilt*).
PREBUILT_FLAG = "VLLM_PROVISION_PREBUILT"


def tmp_root(src: Path) -> Path:
    """Parent of every build-temp dir (ours: temp-<ext>; pip's: tmpXXXX.build-temp), all at one depth."""
    return src / "build" / "tmp"


def _json_line(output: str, tag: str):
    for line in reversed(output.splitlines()):
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    return None


def _list_extensions(python: str, src: Path, benv: BuildEnv, log: Path) -> tuple[list[dict], tuple]:
    """setup.py's extensions, largest first, and the (version, CUDA) of the torch it imported."""
    done = runner.run([python, str(DRIVER), "list"], log=log, cwd=src, env=benv.env, timeout=600,
                      what="setup.py (reading the extension list)",
                      diagnose=lambda out, rc: diagnose(out, rc))
    data = _json_line(done.output, "DRIVER-JSON")
    if data is None:
        raise StepFailed("could not read the extension list from setup.py", hint=f"read {log}")
    # the largest sources first: the longest job starts first (the build ends with the slowest unit)
    return sorted(data["extensions"], key=lambda e: -e["bytes"]), tuple(data["torch"])


def _build_parallel(ctx: StepContext, exts: list[dict], benv: BuildEnv, jobs: int, info) -> list[dict]:
    """Each extension in its own build-temp dir; at most `jobs` compile processes in all."""
    src = ctx.workspace.src
    workers = max(1, min(jobs, len(exts)))
    units = sum(len(e["sources"]) for e in exts)
    # every unit at once when MAX_JOBS allows it (a unit waiting behind its extension's other
    # sources would lengthen the build); else an even share of MAX_JOBS
    per_ext_jobs = (lambda e: len(e["sources"])) if units <= jobs else (lambda e: max(1, jobs // workers))
    ctx.say(f"compiling {len(exts)} extensions ({units} units), {workers} at once, "
            f"{'every unit at once' if units <= jobs else f'{max(1, jobs // workers)} job(s) each'}, "
            f"arch {ctx.plan.build.torch_cuda_arch_list}")
    lock = threading.Lock()
    results: list[dict] = []
    failures: list[tuple[str, StepFailed, Path]] = []

    def one(ext: dict) -> None:
        name = ext["name"]
        ext_log = ctx.workspace.logs / f"build-{name}.log"
        ext_log.write_text("")
        t0 = time.monotonic()
        try:
            runner.run([info.python, str(DRIVER), "one", name, str(tmp_root(src) / f"temp-{name}")], log=ext_log, cwd=src,
                       env=dict(benv.env, MAX_JOBS=str(per_ext_jobs(ext))), timeout=EXT_TIMEOUT, what=f"compile {name}",
                       diagnose=lambda out, rc: diagnose(out, rc, max_jobs=jobs, cuda=info.torch_cuda))
        except StepFailed as exc:
            with lock:
                failures.append((name, exc, ext_log))
        finally:
            with lock:
                with open(ctx.log, "a", encoding="utf-8") as fh:
                    fh.write(f"==== {name} ({time.monotonic() - t0:.1f} s) ====\n")
                    fh.write(ext_log.read_text(errors="replace"))
                results.append({"name": name, "seconds": round(time.monotonic() - t0, 1)})
        ctx.say(f"{name}: {'failed' if any(f[0] == name for f in failures) else 'built'} "
                f"in {time.monotonic() - t0:.0f} s")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, exts))
    if failures:
        name, exc, ext_log = failures[0]
        output = ext_log.read_text(errors="replace")
        raise StepFailed(f"compiling {name} failed ({len(failures)} of {len(exts)} extensions failed); "
                         f"full log: {ctx.log}", hint=exc.hint, log_tail=relevant_tail(output))
    return sorted(results, key=lambda r: -r["seconds"])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _unit_times(src: Path, exts: list[dict]) -> list[dict]:
    """Every compiled source's wall time in this build, slowest first (from ninja's logs)."""
    units = [dict(u, extension=e["name"]) for e in exts
             for u in ninja_unit_times(tmp_root(src) / f"temp-{e['name']}", src)]
    return sorted(units, key=lambda u: -u["seconds"])


def _ccache_stats(benv: BuildEnv) -> dict | None:
    if not benv.ccache:
        return None
    done = runner.capture([benv.ccache, "--print-stats"], env=benv.env)
    return parse_ccache_stats(done.output) if done and done.returncode == 0 else None


def _installed(python: str, src: Path, benv: BuildEnv, log: Path) -> tuple[str, tuple]:
    """After the install, in one interpreter: vllm's version (editable from `src`) and torch's."""
    done = runner.run([python, "-c", _INSTALLED_PROBE], env=benv.env, log=log, timeout=300, check=False,
                      what="install probe")
    data = _json_line(done.output, "INSTALLED-JSON")
    if not data or not data.get("vllm"):
        raise StepFailed("pip does not list vllm as installed after the build", hint=f"read {log}")
    where = data.get("editable_dir")
    if not where:
        raise StepFailed("vllm is installed, but not editable", hint="pip uninstall vllm, then rerun `inv build --force`")
    if Path(where).resolve() != src.resolve():
        raise StepFailed(f"vllm is installed editable from {where}, not {src}",
                         hint="uninstall the other checkout (pip uninstall vllm) and rerun")
    return data["vllm"], tuple(data["torch"])


def release_matches(version: str, release: str) -> bool:
    try:
        return Version(version).base_version == Version(release).base_version
    except InvalidVersion:
        return False
