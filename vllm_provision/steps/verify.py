"""verify: prove the install in the target env is right (after build).

Checks, each pass/warn/fail/skip with one line of detail and a fix:
  vllm-version   `pip inspect`: vllm at the release's version
  vllm-editable  installed editable (direct_url.json dir_info.editable) from the workspace's src/
  pip-check      `pip check` clean apart from the complaints verify.allowed_pip_check accepts (with reasons)
  locked         torch, its CUDA and every other locked package exactly the lock's (and unchanged since env)
  import <ext>   each compiled extension module (plan.release.extensions) imports
  sass <ext>     `cuobjdump --list-elf` of each .so covers every GPU's compute capability (else the plan's archs)
  import-vllm    `from vllm import LLM, SamplingParams` (GPU hosts only)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import unquote, urlsplit

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .. import PROJECT_ROOT, envinfo, report, runner
from ..checks import Check, summarize, to_json
from ..envs.common import site_state
from ..errors import NotBuiltYet, ProvisionError, StepFailed
from ..pipeline import StepContext, StepOutcome, read_stamp
from .build import built_digest

PROBE_TIMEOUT = 120
IMPORT_TIMEOUT = 600


# ------------------------------------------------------------------------------------------ env facts
def pip_inspect(python: str, log: Path | None = None) -> dict[str, dict]:
    """canonical name -> pip inspect entry ({metadata:{name,version}, direct_url, ...}) of the env."""
    # not logged: its JSON (every package's metadata) is megabytes; the argv and exit code are what matter
    done = runner.run([python, "-m", "pip", "inspect"], timeout=PROBE_TIMEOUT, check=False,
                      what="pip inspect", extra_env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    text = done.output
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        raise StepFailed("pip inspect printed no JSON (pip older than 22.2?)",
                         hint=f"upgrade pip in the env: {python} -m pip install -U pip") from None
    out: dict[str, dict] = {}
    for entry in data.get("installed", []):
        name = canonicalize_name(entry.get("metadata", {}).get("name", ""))
        out.setdefault(name, entry)   # first on sys.path wins, as for imports
    return out


def installed_versions(inspected: Mapping[str, dict]) -> dict[str, str]:
    return {n: e.get("metadata", {}).get("version", "") for n, e in inspected.items()}


_ENV_PROBE = r"""
import importlib.util, json, re, sys, os
out = {"python": sys.version.split()[0], "dirs": {}, "torch_cuda": None, "torch_version": None}
for name in ("vllm",):
    spec = importlib.util.find_spec(name)
    out["dirs"][name] = list(spec.submodule_search_locations or []) if spec else []
spec = importlib.util.find_spec("torch")
if spec and spec.origin:
    try:
        text = open(os.path.join(os.path.dirname(spec.origin), "version.py")).read()
        m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]?([0-9.]+|None)", text, re.M)
        v = re.search(r"^__version__\s*(?::[^=]*)?=\s*['\"]([^'\"]+)", text, re.M)
        out["torch_cuda"] = None if not m or m.group(1) == "None" else m.group(1)
        out["torch_version"] = v.group(1) if v else None
    except OSError:
        pass
print(json.dumps(out))
"""


def env_probe(python: str, log: Path | None = None) -> dict:
    """Where vllm lives and torch's version/CUDA, read without importing either."""
    done = runner.run([python, "-c", _ENV_PROBE], log=log, timeout=PROBE_TIMEOUT, check=False, what="env probe")
    try:
        return json.loads(done.output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise StepFailed(f"could not probe the env's python {python}: {(done.output.strip() or 'no output')[-200:]}",
                         hint="rebuild the env with `inv env --force`") from None


# ------------------------------------------------------------------------------------------ checks
def _path_of(url: str) -> Path | None:
    parts = urlsplit(url)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


def check_vllm_install(inspected: Mapping[str, dict], release: str, src: Path, dist: str = "vllm") -> list[Check]:
    entry = inspected.get(canonicalize_name(dist))
    if entry is None:
        hint = "run `inv build` (pip install -e src/ into the env)"
        return [Check(f"{dist}-version", "fail", f"{dist} is not installed in the env", hint),
                Check(f"{dist}-editable", "fail", f"{dist} is not installed in the env", hint)]
    version = entry.get("metadata", {}).get("version", "")
    try:
        ok = Version(version).public == Version(release).public
    except InvalidVersion:
        ok = False
    checks = [Check(f"{dist}-version", "pass", f"{dist} {version} installed (release {release})") if ok else
              Check(f"{dist}-version", "fail", f"{dist} {version} installed, release is {release}",
                    f"rebuild: `inv build --force` installs {dist} {release} from {src}")]
    direct = entry.get("direct_url") or {}
    editable = bool((direct.get("dir_info") or {}).get("editable"))
    where = _path_of(direct.get("url", "")) if direct else None
    if not where and entry.get("editable_project_location"):     # legacy `setup.py develop` (egg-link)
        where, editable = Path(entry["editable_project_location"]), True
    if not editable:
        how = f"from {direct.get('url')}" if direct.get("url") else "from a wheel/index"
        checks.append(Check(f"{dist}-editable", "fail", f"{dist} is installed non-editable ({how})",
                            f"reinstall editable from the workspace: `inv build --force` (pip install -e {src})"))
    elif where is None or where.resolve() != src.resolve():
        checks.append(Check(f"{dist}-editable", "fail", f"{dist} is editable from {where}, not from {src}",
                            "reinstall from the workspace: `inv build --force`"))
    else:
        checks.append(Check(f"{dist}-editable", "pass", f"editable from {src}"))
    return checks


_NOT_INSTALLED = re.compile(r"^(\S+) \S+ requires (\S+?), which is not installed")
_WRONG = re.compile(r"^(\S+) \S+ has requirement (\S+?)(?:[<>=!~;\[ ].*)?, but you have (\S+) (\S+)")


def parse_pip_check(output: str) -> list[tuple[str, str, str]]:
    """(package, requirement name, line) for each complaint of `pip check`."""
    out = []
    for line in output.splitlines():
        line = line.strip()
        m = _NOT_INSTALLED.match(line) or _WRONG.match(line)
        if m:
            out.append((canonicalize_name(m.group(1)), canonicalize_name(m.group(2).split("[")[0]), line))
        elif line and not line.startswith("No broken requirements"):
            out.append(("", "", line))
    return out


def check_pip(python: str, allowed: Iterable[Mapping[str, str]], log: Path | None = None,
              ours: Iterable[str] | None = None) -> Check:
    """`pip check`, minus the complaints the profile accepts. With `ours` (the existing-env backend: the
    host's packages are not ours to change), complaints about other packages are only a warning."""
    done = runner.run([python, "-m", "pip", "check"], log=log, timeout=PROBE_TIMEOUT, check=False, what="pip check",
                      extra_env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    rules = [(canonicalize_name(a.get("package", "")), canonicalize_name(a.get("requires", "")), a.get("reason", ""))
             for a in allowed or ()]
    mine = {canonicalize_name(n) for n in ours} if ours is not None else None
    bad, accepted, foreign = [], [], []
    for pkg, req, line in parse_pip_check(done.output):
        rule = next((r for r in rules if r[0] == pkg and r[1] == req), None)
        if rule:
            accepted.append(f"{pkg} → {req} ({rule[2]})")
        elif mine is not None and pkg and pkg not in mine:
            foreign.append(line)
        else:
            bad.append(line)
    if bad:
        return Check("pip-check", "fail", "; ".join(bad),
                     "restore the locked versions (`inv env --force`), or, when the profile drops it on "
                     "purpose, add it to verify.allowed_pip_check with the reason")
    if done.returncode != 0 and not (accepted or foreign):
        return Check("pip-check", "fail", f"pip check exit {done.returncode}: {done.output.strip()[-200:]}",
                     f"run `{python} -m pip check`")
    if foreign:
        return Check("pip-check", "warn", f"{len(foreign)} complaint(s) about the host's own packages, not changed "
                     f"by vllm-provision: " + "; ".join(foreign[:3]) + ("" if not accepted else
                     "; accepted: " + "; ".join(accepted)), "fix them in the host's environment if they matter")
    if accepted:
        return Check("pip-check", "pass", "clean apart from what the profile drops: " + "; ".join(accepted))
    return Check("pip-check", "pass", "no broken requirements")


def _matches(wanted: str, have: str) -> bool:
    try:
        return SpecifierSet(f"=={wanted}").contains(have, prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return wanted == have


def check_locked(installed: Mapping[str, str], lock: Mapping[str, str] | None, before: Mapping[str, str],
                 torch_cuda: str | None, before_cuda: str | None, skip: Iterable[str] = ("vllm",),
                 lock_name: str = "lock") -> Check:
    """Installed packages exactly the lock's; torch and its CUDA unchanged since the env step (before)."""
    skip = {canonicalize_name(s) for s in skip}
    problems = []
    for name, want in sorted((lock or {}).items()):
        if name in skip:
            continue
        have = installed.get(name)
        if have is None or not _matches(want, have):
            was = before.get(name)
            problems.append(f"{name}: lock {want}, installed {have or 'nothing'}"
                            + (f" (env step had {was})" if was and was != have else ""))
    if not lock:
        for name in ("torch",):
            was, have = before.get(name), installed.get(name)
            if was and have != was:
                problems.append(f"{name}: before {was}, after {have or 'nothing'}")
    if before_cuda and torch_cuda != before_cuda:
        problems.append(f"torch CUDA: before {before_cuda}, after {torch_cuda}")
    torch_now = f"torch {installed.get('torch', 'absent')} (CUDA {torch_cuda or 'none'})"
    if problems:
        return Check("locked", "fail", "changed after the build: " + "; ".join(problems),
                     "something replaced locked packages (a pip install without constraints?): "
                     "`inv env --force` restores the lock, then `inv build --force`")
    if lock:
        return Check("locked", "pass", f"{len([n for n in lock if n not in skip])} packages exactly as in {lock_name}; {torch_now}")
    return Check("locked", "pass", f"no lock for this profile; {torch_now} unchanged since the env step")


def find_cuobjdump(info: envinfo.EnvInfo | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """cuobjdump next to the env's nvcc, in the env's/toolkit's nvidia wheels, /usr/local/cuda/bin, PATH."""
    environ = os.environ if environ is None else environ
    dirs: list[Path] = []
    if info and info.nvcc:
        dirs.append(Path(info.nvcc).parent)
    if info and info.cuda_home:
        dirs.append(Path(info.cuda_home) / "bin")
    prefixes = [Path(info.prefix)] if info and info.prefix else []
    prefixes.append(Path(sys.prefix))
    for prefix in prefixes:
        dirs += sorted(prefix.glob("lib/python3*/site-packages/nvidia/cu*/bin"), reverse=True)
        dirs += sorted(prefix.glob("lib/python3*/site-packages/nvidia/cuda_cuobjdump/bin"))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(var):
            dirs.append(Path(environ[var]) / "bin")
    dirs.append(Path("/usr/local/cuda/bin"))
    for d in dirs:
        exe = d / "cuobjdump"
        if exe.is_file() and os.access(exe, os.X_OK):
            return str(exe)
    return shutil.which("cuobjdump", path=environ.get("PATH"))


def parse_list_elf(text: str) -> tuple[str, ...]:
    """`ELF file 1: x.1.sm_90.cubin` lines -> ("sm_90", ...)."""
    return tuple(dict.fromkeys(re.findall(r"\.(sm_\d+[a-z]?)\.cubin", text)))


def _cc(arch: str) -> tuple[int, int]:
    major, minor = arch.removesuffix("+PTX").split(".")
    return int(major), int(minor)


def covers(sass: str, cc: str) -> bool:
    """SASS for sm_XY runs on compute capability X.Z with Z >= Y; sm_XYa only on exactly X.Y."""
    m = re.fullmatch(r"sm_(\d+)(\d)([a-z]?)", sass)
    if not m:
        return False
    major, minor = _cc(cc)
    s_major, s_minor, suffix = int(m.group(1)), int(m.group(2)), m.group(3)
    if suffix:
        return (s_major, s_minor) == (major, minor)
    return s_major == major and s_minor <= minor


def check_sass(so_files: Mapping[str, Path], required: Iterable[str], cuobjdump: str | None,
               why: str = "the GPUs") -> list[Check]:
    required = list(dict.fromkeys(a.removesuffix("+PTX") for a in required))
    if not cuobjdump:
        return [Check("sass", "skip", "cuobjdump not found (next to nvcc, /usr/local/cuda/bin, PATH)",
                      "install the CUDA toolkit's cuobjdump, e.g. `pip install nvidia-cuda-cuobjdump`")]
    out = []
    for name, so in so_files.items():
        done = runner.capture([cuobjdump, "--list-elf", str(so)], timeout=PROBE_TIMEOUT)
        sass = parse_list_elf(done.output) if done else ()
        missing = [cc for cc in required if not any(covers(s, cc) for s in sass)]
        if missing:
            want = ", ".join("sm_" + cc.replace(".", "") for cc in missing)
            out.append(Check(f"sass {name}", "fail",
                             f"{so.name} has SASS {', '.join(sass) or 'none'}; missing {want} for {why} "
                             "(`no kernel image is available for execution on the device`)",
                             f"rebuild for these archs: `inv build --force --arch '{';'.join(required)}'`"))
        else:
            out.append(Check(f"sass {name}", "pass", f"{', '.join(sass)} covers {', '.join(required)} ({why})"))
    return out


_IMPORT_PROBE = r"""
import importlib.util, json, sys
res = {}
try:
    import torch  # the extensions link against libtorch/libc10
except Exception as exc:
    res["__torch__"] = "%s: %s" % (type(exc).__name__, exc)
for name, path in json.loads(sys.argv[1]).items():
    try:
        spec = importlib.util.spec_from_file_location("vllm." + name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        res[name] = None
    except BaseException as exc:
        res[name] = ("%s: %s" % (type(exc).__name__, exc)).splitlines()[0][:300]
print(json.dumps(res))
"""

_NEEDS_DRIVER = re.compile(r"libcuda\.so|libnvidia-ml|CUDA driver|no CUDA-capable device|NVIDIA driver", re.I)


def check_extension_imports(python: str, so_files: Mapping[str, Path], has_gpu: bool,
                            log: Path | None = None) -> list[Check]:
    """Load each extension .so in the env's python (after torch), without running vllm/__init__.py."""
    if not so_files:
        return []
    done = runner.run([python, "-c", _IMPORT_PROBE, json.dumps({k: str(v) for k, v in so_files.items()})],
                      log=log, timeout=PROBE_TIMEOUT, check=False, what="extension import probe")
    try:
        res = json.loads(done.output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = done.output.strip().splitlines()[-1:] or ["no output"]
        return [Check(f"import {n}", "fail", f"import probe crashed (exit {done.returncode}): {tail[0][:200]}",
                      f"run `{python} -c 'import torch'` to see why") for n in so_files]
    torch_err = res.pop("__torch__", None)
    out = []
    for name in so_files:
        err = res.get(name)
        if err is None:
            out.append(Check(f"import {name}", "pass", f"{so_files[name].name} imports"))
        elif not has_gpu and _NEEDS_DRIVER.search(err):
            out.append(Check(f"import {name}", "skip", f"needs the GPU driver, absent here: {err}",
                             "verify on a GPU host"))
        else:
            why = f"; torch itself failed: {torch_err}" if torch_err else ""
            out.append(Check(f"import {name}", "fail", f"{err}{why}",
                             "an undefined symbol means it was built against another torch: "
                             "`inv build --force`"))
    return out


def check_import_vllm(python: str, has_gpu: bool, log: Path | None = None, timeout: float = IMPORT_TIMEOUT) -> Check:
    if not has_gpu:
        return Check("import-vllm", "skip", "no GPU on this host: `from vllm import LLM, SamplingParams` "
                     "is checked on GPU hosts only", "run `inv verify` on the GPU host")
    try:
        done = runner.run([python, "-c", "from vllm import LLM, SamplingParams"], log=log, timeout=timeout,
                          check=False, what="import vllm")
    except ProvisionError as exc:
        return Check("import-vllm", "fail", exc.message, exc.hint)
    if done.returncode != 0:
        last = (done.output.strip().splitlines() or ["no output"])[-1]
        return Check("import-vllm", "fail", f"from vllm import LLM, SamplingParams: {last[:300]}",
                     f"full traceback in {log}" if log else "run it in the env to see the traceback")
    return Check("import-vllm", "pass", f"from vllm import LLM, SamplingParams works ({done.seconds:.1f} s)")


def extension_files(dirs: Iterable[str | Path], extensions: Iterable[str]) -> tuple[dict[str, Path], list[str]]:
    """extension name -> its .so in the vllm package dir(s); plus the names not found."""
    found: dict[str, Path] = {}
    for name in extensions:
        for d in dirs:
            hits = sorted(Path(d).glob(f"{name}.*.so")) + sorted(Path(d).glob(f"{name}.so"))
            if hits:
                found[name] = hits[0]
                break
    return found, [n for n in extensions if n not in found]


# ------------------------------------------------------------------------------------------ step
def _lock_file(ctx: StepContext, info: envinfo.EnvInfo) -> Path | None:
    raw = info.lock or ctx.plan.env.lock
    if not raw:
        return None
    path = Path(raw)
    return path if path.is_absolute() else PROJECT_ROOT / path


def allowed_pip_check(settings: Mapping, profile: str) -> list[dict]:
    """verify.allowed_pip_check entries for this profile (an entry with `profiles:` applies only to those)."""
    rules = (settings.get("verify") or {}).get("allowed_pip_check") or ()
    return [dict(r) for r in rules if not r.get("profiles") or profile in r["profiles"]]


def _settings(ctx: StepContext) -> dict:
    return dict(ctx.plan.settings.get("verify") or {})


def required_archs(ctx: StepContext) -> tuple[tuple[str, ...], str]:
    """Every GPU's compute capability; without GPUs the archs given for this run (--arch/config), else
    the arch list the build recorded in its stamp, else the plan's default."""
    if ctx.facts.compute_caps:
        return ctx.facts.compute_caps, "this host's GPUs"
    if ctx.plan.build.arch_source != "config":
        built = ((read_stamp(ctx.workspace, "build") or {}).get("facts") or {}).get("arch_list")
        if built:
            archs = [a for a in re.split(r"[;,\s]+", str(built)) if a]
            return tuple(a.removesuffix("+PTX") for a in archs), "the arch list the build used (no GPU here)"
    return tuple(a.removesuffix("+PTX") for a in ctx.plan.build.arch_list), f"the plan's archs ({ctx.plan.build.arch_source})"


def ensure_built(ctx: StepContext) -> envinfo.EnvInfo:
    where = f"{ctx.plan.release.version}/{ctx.plan.profile}"
    try:
        info = envinfo.load(ctx.workspace)
    except NotBuiltYet:
        info = None
    if info is None or read_stamp(ctx.workspace, "build") is None:
        raise NotBuiltYet(f"nothing built for {where} yet; run `inv build`",
                          hint="run `inv build` (or `inv provision`) first, then `inv verify`")
    return info


def collect(ctx: StepContext, info: envinfo.EnvInfo) -> list[Check]:
    from ..lock import pinned
    python, log = info.python, ctx.log
    inspected = pip_inspect(python, log)
    installed = installed_versions(inspected)
    probe = env_probe(python, log)
    checks = check_vllm_install(inspected, ctx.plan.release.version, ctx.workspace.src)
    lock_file = _lock_file(ctx, info)
    lock = pinned(lock_file) if lock_file and lock_file.is_file() else None
    ours = ["vllm", *(lock or {})] if info.backend == "existing" else None
    checks.append(check_pip(python, allowed_pip_check(ctx.plan.settings, ctx.plan.profile), log, ours))
    if lock_file and lock is None:
        checks.append(Check("locked", "fail", f"lock {lock_file} is missing", "restore it from git or `inv lock`"))
    else:
        before = {canonicalize_name(k): v for k, v in (info.packages or {}).items()}
        if info.torch and "torch" not in before:
            before["torch"] = info.torch
        checks.append(check_locked(installed, lock, before, probe.get("torch_cuda"), info.torch_cuda,
                                   lock_name=lock_file.name if lock_file else "lock"))
    dirs = list(dict.fromkeys([*probe.get("dirs", {}).get("vllm", []), str(ctx.workspace.src / "vllm")]))
    so_files, missing = extension_files(dirs, ctx.plan.release.extensions)
    for name in missing:
        checks.append(Check(f"import {name}", "fail", f"{name}*.so not found in {', '.join(dirs)}",
                            "the build did not produce it: `inv build --force`"))
    has_gpu = bool(ctx.facts.gpus)
    checks += check_extension_imports(python, so_files, has_gpu, log)
    archs, why = required_archs(ctx)
    checks += check_sass(so_files, archs, find_cuobjdump(info), why)
    checks.append(check_import_vllm(python, has_gpu, log, float(_settings(ctx).get("import_timeout") or IMPORT_TIMEOUT)))
    return checks


def _dists_digest(info: envinfo.EnvInfo | None) -> dict | None:
    """The dist-infos of every site-packages dir the env sees (the host's too, under the existing
    backend) and its torch: a changed package re-triggers verify."""
    return site_state(info.python) if info else None


def stamp_inputs(ctx: StepContext) -> dict:
    try:
        info = envinfo.load(ctx.workspace)
    except ProvisionError:
        info = None
    return {"release": ctx.plan.release.version, "archs": required_archs(ctx), "settings": _settings(ctx),
            "lock": ctx.plan.env.lock, "dists": _dists_digest(info), "built": built_digest(ctx)}


def run(ctx: StepContext) -> StepOutcome:
    info = ensure_built(ctx)
    started = time.monotonic()
    checks = collect(ctx, info)
    ok, _ = summarize(checks)
    section = to_json(checks) | {"when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                 "seconds": round(time.monotonic() - started, 2)}
    rep = ctx.workspace.report
    report.merge_section(rep, "host", report.host_section(ctx.facts))
    report.merge_section(rep, "verify", section, release=ctx.plan.release.version, profile=ctx.plan.profile)
    found = {"ok": ok, "checks": [c.to_dict() for c in checks]}
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        raise StepFailed(f"verify: {len(failed)} check(s) failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed[:3]),
                         hint=failed[0].hint, facts=found)
    n = {s: sum(c.status == s for c in checks) for s in ("pass", "warn", "skip")}
    return StepOutcome(detail=f"{n['pass']} checks passed, {n['warn']} warned, {n['skip']} skipped", facts=found)
