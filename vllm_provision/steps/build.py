"""build: compile vLLM's CUDA extensions (concurrently, compiler-cached) and install it editable.

Preflight first (seconds; refuses a mismatched nvcc/torch, a too-new gcc, unsupported archs, too
little disk/RAM). Then each of setup.py's extensions is built in place in its own build-temp dir,
several at once (bounded by MAX_JOBS), and `pip install --no-build-isolation --no-deps -e src` makes
the real editable install; with ccache its own compile of the same sources is all cache hits.
Afterwards torch must be unchanged.

With caches configured (`artifacts.caches`) the step first looks up the build's key (artifacts/): a hit
installs that wheel, verified, and compiles nothing; a miss compiles as above and, with `artifacts.push`,
makes the wheel and publishes it; `artifacts.require_cache` refuses to compile on a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import sysconfig
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from packaging.version import InvalidVersion, Version

from vllm_provision.artifacts import cache as artifact_cache
from vllm_provision.artifacts import install as artifact_install
from vllm_provision.artifacts import manifest as artifact_manifest
from vllm_provision.artifacts.sass import planned_archs
from vllm_provision.artifacts.wheel import Wheel, make_wheel
from vllm_provision.build import (
    DRIVER,
    BuildEnv,
    align_header_mtimes,
    cache_summary,
    diagnose,
    env_header_dirs,
    make_build_env,
    ninja_unit_times,
    parse_ccache_stats,
    relevant_tail,
)
from vllm_provision.build import cmake as cmake_driver
from vllm_provision.build.placement import host_placement
from vllm_provision.checks import CheckStatus
from vllm_provision.core import envinfo, runner, timings
from vllm_provision.core.archs import base_archs
from vllm_provision.core.errors import StepFailed
from vllm_provision.core.progress import progress
from vllm_provision.core.settings import Artifacts as ArtifactSettings
from vllm_provision.core.ui import duration
from vllm_provision.core.workspace import Workspace
from vllm_provision.diagnostics import preflight
from vllm_provision.envs.common import choose_installer
from vllm_provision.pipeline import StepContext, StepOutcome, upstream_facts
from vllm_provision.plan import BuildPlan
from vllm_provision.probes import answer, host, program
from vllm_provision.probes.envprobe import site_state
from vllm_provision.steps.facts import BuildFacts, FactsUnreadable, PatchFacts, StepStatus, facts_dict

EXT_TIMEOUT = 3 * 3600
PIP_TIMEOUT = 3 * 3600
MARKER = ".vllmp-build.json"
# direct_url.json (PEP 610) says whether and from where a distribution is installed editable.
def stamp_inputs(ctx: StepContext) -> dict:
    info = envinfo.load(ctx.workspace)
    build = ctx.plan.to_dict()["build"]
    # Only what changes the output: MAX_JOBS and its reason (free RAM right now) do not, and a
    # stamp that held them rebuilt whenever free memory moved.
    return {"build": {k: build[k] for k in ("arch_list", "torch_cuda_arch_list")}, "release": ctx.plan.release.version,
            "env": {"python": info.python, "torch": info.torch, "torch_cuda": info.torch_cuda,
                    "cuda_home": info.cuda_home, "nvcc_version": info.nvcc_version, "lock": info.lock},
            # what the env sees from outside its prefix (the host's torch under the existing backend),
            # as it is now: the libraries are built against it
            "outside_env": site_state(info.python, outside=info.prefix),
            # the artifact this step stands for: a new key reruns it; whether a miss may compile
            # (--require-cache) does not, so a later `./inv verify` without that flag is not refused
            "artifact_key": stamped_key(ctx, info)}


def built_digest(ws: Workspace) -> str | None:
    """The last build's output, by its marker (libraries, timings: new with every build). Steps that
    test the compiled libraries (verify, smoke) carry it in their stamps, so they rerun after every
    rebuild, forced ones included; a forced rerun of an idempotent step (patch) changes nothing."""
    try:
        return hashlib.sha256((ws.src / MARKER).read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def intact(ctx: StepContext) -> bool:
    try:
        data = json.loads((ctx.workspace.src / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return all((ctx.workspace.src / so).is_file() for so in data.get("libraries", []))


def run(ctx: StepContext) -> StepOutcome:
    """A cached build when a cache holds the key; else preflight, compile and (with `artifacts.push`) publish."""
    ws = ctx.workspace
    info = envinfo.load(ws)
    if not (ws.src / "setup.py").is_file():
        raise StepFailed(f"no setup.py in {ws.src}", hint="run `./inv fetch` first")
    if artifact_mode(ctx.plan.settings.artifacts) != "build":
        hit = install_from_cache(ctx, info)
        if hit:
            return hit
    _preflight(ctx, info)       # seconds, before any compile
    if ctx.plan.release.build_system == "cmake":
        return run_cmake(ctx, info)
    built = compile_setuptools(ctx, info)
    return publish(ctx, info, built) if ctx.plan.settings.artifacts.push else built


def same_headers(info: envinfo.EnvInfo, say: Callable[[str], None]) -> None:
    """One mtime for the env's headers (align_header_mtimes): every install of the lock preprocesses alike,
    so a compiler cache filled on one host serves another."""
    changed = align_header_mtimes(env_header_dirs(info))
    if changed:
        say(f"{changed} header files of the env given one mtime (a compiler cache shared between hosts hits)")


def compile_setuptools(ctx: StepContext, info: envinfo.EnvInfo) -> StepOutcome:
    """A setup.py-era release: every extension compiled (several at once, compiler-cached) and vLLM installed
    editable from src; torch must be unchanged. The facts also go to src/MARKER (intact(), built_digest())."""
    plan, ws = ctx.plan, ctx.workspace
    src = ws.src
    # 1. the compile environment: wrappers that cache every compile and give the slowest units
    # (named in the release data, else the largest CUDA sources setup.py names) up to four cores each,
    # nvcc splitting its device optimisation over them
    jobs = max(1, plan.build.max_jobs)
    setup_text = (src / "setup.py").read_text(errors="replace")
    placement = None
    if plan.build.cpu_placement == "auto" and plan.build.parallel_extensions:
        placement = host_placement(cuda_sources_named(setup_text, src), plan.release.slowest_units,
                                   plan.build.cpu_pool, plan.build.critical_unit_cores)
    same_headers(info, ctx.say)
    benv = make_build_env(base=os.environ, python=info.python, cuda_home=info.cuda_home,
                          include_dirs=info.include_dirs, arch_list=plan.build.torch_cuda_arch_list,
                          jobs_per_ext=jobs, tools_dir=src / "build" / "vllmp-tools", src=src,
                          ccache_dir=Path(os.environ.get("CCACHE_DIR") or ws.cache / "ccache"),
                          use_ccache=plan.build.ccache, placement=placement)
    for note in benv.notes:
        ctx.say(note)
    before = _ccache_stats(benv)
    started = time.monotonic()

    # 2. With the prebuilt patch applied, pip's editable pass packages the pre-built libraries (and
    # compiles nothing, so it runs alongside the compile); without it pip compiles everything again,
    # which only a compiler cache makes cheap.
    reuses_prebuilt = PREBUILT_FLAG in setup_text
    parallel = plan.build.parallel_extensions and (reuses_prebuilt or benv.ccache is not None)
    if plan.build.parallel_extensions and not parallel:
        ctx.say("no compiler cache and no prebuilt patch: pip's own editable build would compile everything "
                "again, so the extensions are compiled once, serially, by pip")
    # --no-deps: pip installs nothing but vLLM, so the env stays exactly the lock. (The lock is not passed
    # as constraints: its hashes would put pip in hash-checking mode, which refuses any editable install.)
    argv = [info.python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", str(src)]
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
    done = _compile_and_install(ctx, info, benv, jobs, argv, env, parallel, parallel and reuses_prebuilt, started)
    listing, built, compile_s, pip_s = done.listing, done.per_extension, done.compile_seconds, done.pip_seconds
    exts, torch_before = listing["extensions"], tuple(listing["torch"] or ("?", None))
    if info.torch and torch_before[0] != info.torch:
        raise StepFailed(f"the env's torch is {torch_before[0]}, env.json recorded {info.torch}",
                         hint="rerun `./inv env --force` so env.json describes the env")

    # 3. what came out: editable install, every extension library, torch unchanged
    libraries = sorted(str(p.relative_to(src)) for p in (src / "vllm").glob("*.so"))
    missing = [e["name"] for e in exts if not any(Path(l).name.startswith(e["name"].split(".")[-1] + ".")
                                                  for l in libraries)]
    if missing:
        raise StepFailed(f"build finished but {', '.join(missing)} has no library in {src / 'vllm'}",
                         hint=f"read {ctx.log}")
    editable, torch_after = done.installed
    if torch_after != torch_before:
        raise StepFailed(f"the build changed torch: before {torch_before[0]} (CUDA {torch_before[1]}), "
                         f"after {torch_after[0]} (CUDA {torch_after[1]})",
                         hint="something installed torch during the build: use --no-build-isolation --no-deps "
                              "(the toolkit does) and rerun `./inv env --force`")
    after = _ccache_stats(benv)
    cache = None
    if before is not None and after is not None:
        cache = cache_summary({k: after.get(k, 0) - before.get(k, 0) for k in after})
    total = time.monotonic() - started
    facts = {"version": editable, "libraries": libraries, "extensions": [e["name"] for e in exts],
             "parallel": parallel, "max_jobs": jobs, "arch_list": plan.build.torch_cuda_arch_list,
             "compile_seconds": round(compile_s, 1), "pip_seconds": round(pip_s, 1), "seconds": round(total, 1),
             "startup_seconds": round(done.startup_seconds, 1),
             "per_extension": built,
             "units": _unit_times(src, exts, time.time() - (time.monotonic() - started)) if parallel else [],
             "cpu_placement": dict(benv.placement.reserved, others=benv.placement.pool) if benv.placement else None,
             "ccache": cache, "cuda_home": info.cuda_home,
             "torch": torch_after[0], "log": str(ctx.log), "source": "compiled"}
    # the largest single process this run has waited for (Linux: RUSAGE_CHILDREN's ru_maxrss, KiB): a compile job
    facts["peak_process_rss_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if facts["units"]:
        units, _ = timings.units_from_facts(facts["units"])
        facts["timings"] = timings.write_page(ws.root / timings.PAGE, units, jobs=jobs,
                                              title=f"vLLM {plan.release.version} for {plan.build.torch_cuda_arch_list}",
                                              estimate_s=plan.build.expected_seconds,
                                              peak_memory_bytes=facts["peak_process_rss_bytes"])
    (src / MARKER).write_text(json.dumps(facts, indent=2))
    cache_note = f", ccache {cache['hits']} hits / {cache['misses']} misses" if cache else ", no compiler cache"
    detail = (f"vllm {editable} (editable) for {plan.build.torch_cuda_arch_list}: {len(libraries)} libraries in "
              f"{total:.0f} s{' (' + str(len(exts)) + ' extensions in parallel)' if parallel else ''}{cache_note}")
    return StepOutcome(detail=detail, facts=BuildFacts.from_dict(facts))


@dataclass(frozen=True)
class _Compiled:
    listing: dict                   # the driver's: setup.py's extensions and the torch it imported
    per_extension: list[dict]       # each extension's compile time, slowest first
    installed: tuple[str, tuple]    # vllm's version (editable from src) and torch's, after pip's pass
    compile_seconds: float
    pip_seconds: float
    startup_seconds: float          # until the driver had listed the extensions


def _compile_and_install(ctx: StepContext, info: envinfo.EnvInfo, benv: BuildEnv, jobs: int, argv: list[str],
                         env: dict, parallel: bool, alongside: bool, started: float) -> _Compiled:
    """The extensions compiled (unless `parallel` is off: then pip compiles them) and pip's editable pass:
    `alongside` the compile when pip packages the pre-built libraries (env sets PREBUILT_FLAG), else after it."""
    src = ctx.workspace.src
    pip_log = ctx.workspace.logs / "build-pip.log"
    pip_log.write_text("")
    pip_timing: dict = {}
    installed: dict = {}
    listing_units: dict = {}        # how many units pip compiles when it compiles them all

    def pip_install() -> None:
        ctx.say("pip install --no-build-isolation --no-deps -e src"
                + (" (packaging the pre-built extensions, alongside the compile)" if env.get(PREBUILT_FLAG) else ""))
        t0 = time.monotonic()
        try:
            # without the pre-built extensions pip compiles them all (alongside the compile this is quiet)
            with progress("pip install -e", unit="units", step=ctx.name,
                          watch=lambda: (units_done(tmp_root(src)), listing_units.get("total"))):
                runner.run(argv, log=pip_log, cwd=src, env=env, timeout=PIP_TIMEOUT,
                           what="pip install -e (vLLM build)",
                           diagnose=lambda out, rc: diagnose(out, rc, max_jobs=jobs, cuda=info.torch_cuda),
                           tail_lines=60)
        finally:
            pip_timing["seconds"] = time.monotonic() - t0
            with open(ctx.log, "a", encoding="utf-8") as fh:
                fh.write(pip_log.read_text(errors="replace"))
        # what pip installed (editable from src, torch unchanged): needs no compiled library, so
        # with the pre-built extensions it too runs alongside the compile
        installed["version"], installed["torch"] = _installed(info.python, src, benv, ctx.log)

    # the extensions (each in its own build-temp dir, several at once), and the editable install
    forking = threading.Event()     # the driver has loaded setup.py and is starting the compiles
    compile_failed = threading.Event()
    startup: dict = {}

    def driver_listed() -> None:
        startup["seconds"] = time.monotonic() - started
        forking.set()

    def pip_alongside() -> None:
        # pip (and the setup.py + torch it loads) starts once the driver has: the compiles start
        # sooner, and pip still ends long before the slowest unit
        forking.wait()
        if not compile_failed.is_set():
            pip_install()

    if alongside:
        with ThreadPoolExecutor(max_workers=1) as side:
            pip_done = side.submit(pip_alongside)
            try:
                listing, built = _compile(ctx, benv, jobs, info, on_listing=driver_listed)
            except BaseException:
                compile_failed.set()
                raise
            finally:
                forking.set()
                pip_error = pip_done.exception()
        if pip_error:
            raise pip_error
        compile_s = time.monotonic() - started
    else:
        listing, built = _compile(ctx, benv, jobs, info, list_only=not parallel, on_listing=driver_listed)
        compile_s = time.monotonic() - started
        listing_units["total"] = sum(len(e["sources"]) for e in listing["extensions"])
        pip_install()
    return _Compiled(listing, built, (installed["version"], installed["torch"]), compile_s, pip_timing.get("seconds", 0.0),
                     startup.get("seconds", 0.0))


def publish(ctx: StepContext, info: envinfo.EnvInfo, built: StepOutcome) -> StepOutcome:
    """The compiled tree made a wheel and published to every writable cache: `built` with the artifact's facts.
    (src/MARKER keeps the build's facts without them: the wheel is not part of the tree.)"""
    wheel, published = wheel_and_publish(ctx, info, ctx.workspace.root / "wheels")
    facts = facts_dict(built.facts) | {"artifact": wheel.summary() | {"published": published}}
    return replace(built, facts=BuildFacts.from_dict(facts),
                   detail=f"{built.detail}; wheel {wheel.path.name} ({'; '.join(published) or 'no writable cache'})")


def _preflight(ctx: StepContext, info: envinfo.EnvInfo) -> None:
    """Preflight's named checks, in seconds, before any compile: StepFailed naming every failed one."""
    checks = preflight.run(ctx.plan, ctx.facts, info)
    preflight.write_report(ctx.workspace, checks)
    failed = [c for c in checks if c.status == CheckStatus.FAIL]
    for c in checks:
        if c.status in (CheckStatus.WARN, CheckStatus.FAIL):
            ctx.say(f"preflight {c.name}: {c.status}: {c.detail}")
    if failed:
        first = failed[0]
        raise StepFailed(f"preflight refused the build: {'; '.join(f'{c.name}: {c.detail}' for c in failed)}",
                         hint=" | ".join(c.hint for c in failed if c.hint) or first.hint)


# ------------------------------------------------------------------------------------------------ CMake era
def run_cmake(ctx: StepContext, info: envinfo.EnvInfo) -> StepOutcome:
    """A CMake-era release (0.4.0 onwards): the driver configures and compiles in src/build/cmake with every
    external from its prepared directory, then pip's editable pass reuses that tree. A time limit or a subset
    of targets measures and builds part of it: reported, not recorded as a finished build."""
    from vllm_provision.sources.externals import (
        prepared_externals,  # External.override -> verified directory in the workspace
    )

    plan, src = ctx.plan, ctx.workspace.src
    externals = prepared_externals(plan)
    ctx.say(f"{plan.build.max_jobs} jobs x {plan.build.nvcc_threads} nvcc thread(s): {plan.build.max_jobs_reason}")
    same_headers(info, ctx.say)
    kw = dict(cuda_home=info.cuda_home, include_dirs=info.include_dirs,
              ccache_dir=Path(os.environ.get("CCACHE_DIR") or ctx.workspace.cache / "ccache"))
    built = cmake_driver.drive(plan, src, info.python, externals, plan.build.targets or None, plan.build.time_limit,
                               build_dir=src / "build" / "cmake", log=ctx.log, step=ctx.name, **kw)
    facts = built.to_dict() | {"source": "compiled", "arch_list": plan.build.torch_cuda_arch_list,
                               "torch": info.torch, "log": str(ctx.log)}
    ninja_log = src / "build" / "cmake" / ".ninja_log"
    if ninja_log.is_file():     # the compile on a timeline, as for the setuptools-era build (a time-boxed one too)
        facts["timings"] = timings.write_page(ctx.workspace.root / timings.PAGE,
                                              timings.read_ninja_log(ninja_log.read_text(errors="replace")),
                                              jobs=plan.build.max_jobs, estimate_s=plan.build.expected_seconds,
                                              title=f"vLLM {plan.release.version} for {plan.build.torch_cuda_arch_list}",
                                              peak_memory_bytes=built.job_peak_memory_bytes or None)
    rate = (f"{built.units_done}/{built.edges_total} units in {built.seconds:.0f} s "
            f"({built.units_per_minute:.1f}/min; configure {built.configure_seconds:.0f} s)")
    peak = f", a job peaked at {built.job_peak_memory_bytes / 2**30:.1f} GiB" if built.job_peak_memory_bytes else ""
    if built.stopped_at_limit:
        projected = f"{built.projected_seconds / 60:.0f} min" if built.projected_seconds else "unknown"
        return StepOutcome(detail=f"stopped at the {plan.build.time_limit:.0f} s limit: {rate}{peak}; "
                                  f"the whole compile projected at {projected}", facts=BuildFacts.from_dict(facts),
                           status=StepStatus.SKIPPED)
    if plan.build.targets:
        return StepOutcome(detail=f"built {', '.join(built.targets)} only: {rate}{peak}", facts=BuildFacts.from_dict(facts),
                           status=StepStatus.SKIPPED)
    started = time.monotonic()
    facts["install_compiled_units"] = cmake_driver.editable_install(plan, src, info.python, externals, built,
                                                                    ctx.log, **kw)
    facts["pip_seconds"] = round(time.monotonic() - started, 1)
    editable, torch_after = _installed(info.python, src, BuildEnv(env=dict(os.environ), ccache=None), ctx.log)
    if info.torch and torch_after[0] != info.torch:
        raise StepFailed(f"the build changed torch: before {info.torch}, after {torch_after[0]}",
                         hint="something installed torch during the build: rerun `./inv env --force`")
    facts["libraries"] = sorted(str(p.relative_to(src)) for p in (src / "vllm").rglob("*.so"))
    facts["version"] = editable
    (src / MARKER).write_text(json.dumps(facts, indent=2))
    cache = built.ccache
    cache_note = f", ccache {cache['hits']} hits / {cache['misses']} misses" if cache else ", no compiler cache"
    return StepOutcome(detail=f"vllm {editable} (editable) for {plan.build.torch_cuda_arch_list}: {rate}{peak}"
                              f"{cache_note}; pip's pass compiled {facts['install_compiled_units']} units",
                       facts=BuildFacts.from_dict(facts))


# ------------------------------------------------------------------------------------------------ artifacts
def artifact_mode(artifacts: ArtifactSettings) -> str:
    """build: no cache configured | cache-or-build: a miss compiles | cache-only: a miss fails."""
    if artifacts.require_cache:
        return "cache-only"
    return "cache-or-build" if artifacts.caches else "build"


def planned_key(ctx: StepContext, info: envinfo.EnvInfo) -> str:
    """The pinned key (--artifact-key), else the one the plan and this host give; StepFailed when a field of
    it is unknown here."""
    return ctx.plan.settings.artifacts.key or artifact_manifest.compute_key(key_fields(ctx, info))


def stamped_key(ctx: StepContext, info: envinfo.EnvInfo) -> str | None:
    """The key the build stands for when caches are consulted or a key is pinned; None: compiled, no cache."""
    if artifact_mode(ctx.plan.settings.artifacts) == "build" and not ctx.plan.settings.artifacts.key:
        return None
    try:
        return planned_key(ctx, info)
    except StepFailed:
        return "not computable here"


def cache_entries(artifacts: ArtifactSettings) -> list[artifact_cache.Entry]:
    return [artifact_cache.Entry.parse(e) for e in artifacts.caches]


def key_fields(ctx: StepContext, info: envinfo.EnvInfo) -> dict:
    """Every input that shapes the binary (artifacts/manifest.py KEY_FIELDS), from the plan, the patch
    step's facts, env.json and the host compiler: the key follows from the plan, before any compile."""
    # the patch step never ran: the tree holds no patch (an unreadable record stops here, see PatchFacts)
    patched = upstream_facts(ctx.workspace, PatchFacts) or PatchFacts()
    compiler, compiler_version = host.probe_gcc()
    return {"format": artifact_manifest.FORMAT, "release": ctx.plan.release.version,
            "sdist_sha256": ctx.plan.release.sdist.sha256,
            "patches": patched.key_patches(),
            "torch": info.torch, "torch_cuda": info.torch_cuda, "cxx11_abi": info.cxx11_abi,
            "nvcc": info.nvcc_version,
            "host_compiler": {"name": Path(compiler).name, "version": compiler_version}
            if compiler and compiler_version else None,
            "archs": list(planned_archs(ctx.plan.build.arch_list)),
            "python_tag": artifact_manifest.python_tag(info.python_version),
            "platform_tag": sysconfig.get_platform().replace("-", "_").replace(".", "_"),
            "externals": {e.name: e.tree_sha256 for e in ctx.plan.release.externals}}


def target_of(build: BuildPlan, gpus: tuple[str, ...], info: envinfo.EnvInfo) -> artifact_manifest.Target:
    """What the artifact must fit; on a GPU-less host (an image build) the archs must cover the plan's."""
    planned = base_archs(build.arch_list)
    return artifact_manifest.Target(torch=info.torch, torch_cuda=info.torch_cuda, cxx11_abi=info.cxx11_abi,
                                    python_tag=artifact_manifest.python_tag(info.python_version),
                                    compute_caps=gpus or planned, glibc=artifact_manifest.host_glibc(),
                                    caps_of="GPU compute capability" if gpus else "planned arch (no GPU here)")


def install_from_cache(ctx: StepContext, info: envinfo.EnvInfo) -> StepOutcome | None:
    """The build from the first cache that holds its key, installed verified; None on a miss that may compile."""
    mode, entries = artifact_mode(ctx.plan.settings.artifacts), cache_entries(ctx.plan.settings.artifacts)
    try:
        key = planned_key(ctx, info)
    except FactsUnreadable:     # a stale patch record: its key could name another build
        raise
    except StepFailed as exc:
        if mode == "cache-only":
            raise
        ctx.say(f"caches not consulted: {exc.message}")
        return None
    started = time.monotonic()
    found = artifact_install.look_up(entries, key)
    if not found:
        if mode == "cache-only":
            raise artifact_install.missing_error(key, entries)
        ctx.say(f"no cached build for key {key} in {', '.join(e.shown for e in entries)}: compiling")
        return None
    ctx.say(f"cache hit: {found.shown} (key {key})")
    done = artifact_install.install_found(found, key, target_of(ctx.plan.build, ctx.facts.compute_caps, info), python=info.python,
                                          work_dir=ctx.workspace.root / "artifacts", installer=choose_installer(ctx.plan),
                                          log=ctx.log)
    seconds = time.monotonic() - started
    dirs = (answer(runner.run([info.python, program("torch_info")], log=ctx.log, timeout=120, cwd=ctx.workspace.root,
                              what="where vllm is installed").output) or {}).get("vllm_dirs")
    if not dirs:
        raise StepFailed("the installed vllm package is not found by the env's python", hint=f"read {ctx.log}")
    vllm_dir = Path(dirs[0])
    libraries = sorted(str(p) for p in vllm_dir.glob("*.so"))
    facts = done.facts() | {"libraries": libraries, "seconds": round(seconds, 1), "torch": info.torch,
                            "arch_list": ctx.plan.build.torch_cuda_arch_list, "log": str(ctx.log)}
    (ctx.workspace.src / MARKER).write_text(json.dumps(facts, indent=2))
    return StepOutcome(detail=f"vllm {facts['version']} installed from cache {facts['cache']}, key {key}, in "
                              f"{seconds:.1f} s ({done.fit})", facts=BuildFacts.from_dict(facts))


def wheel_and_publish(ctx: StepContext, info: envinfo.EnvInfo, out_dir: Path, push: bool = True) -> tuple[Wheel, list[str]]:
    """The wheel of this workspace's compiled tree (seconds: nothing is compiled), published to every
    writable cache when `push`."""
    # setup.py checks TORCH_CUDA_ARCH_LIST when it is loaded: the plan's list, not whatever the host exports
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=ctx.plan.build.torch_cuda_arch_list,
               **({"CUDA_HOME": info.cuda_home} if info.cuda_home else {}))
    log = ctx.workspace.log("wheel")
    wheel = make_wheel(python=info.python, src=ctx.workspace.src, out_dir=out_dir, fields=key_fields(ctx, info),
                       env=env, info=info, log=log)
    ctx.say(f"wheel {wheel.path} (key {wheel.manifest['key']})")
    published = []
    for entry in cache_entries(ctx.plan.settings.artifacts) if push else ():
        if entry.writable:
            published.append(artifact_cache.publish(entry, wheel.path, log))
            ctx.say(published[-1])
    return wheel, published


# ------------------------------------------------------------------------------------------------ parts
# Set for pip's editable pass once every extension is pre-built (patches/<release>/*reuse-prebuilt*).
PREBUILT_FLAG = "VLLM_PROVISION_PREBUILT"


def tmp_root(src: Path) -> Path:
    """Parent of every build-temp dir (ours: temp-<ext>; pip's: tmpXXXX.build-temp), all at one depth."""
    return src / "build" / "tmp"


def cuda_sources_named(setup_text: str, src: Path) -> dict[str, int]:
    """The CUDA sources setup.py names as string literals, with their sizes: what the CPU placement
    weighs before setup.py has run (it runs once, in the driver, to save its seconds of start-up)."""
    named = dict.fromkeys(re.findall(r"""["']([^"'\s]+\.cu)["']""", setup_text))
    return {s: (src / s).stat().st_size for s in named if (src / s).is_file()}


def _compile(ctx: StepContext, benv: BuildEnv, jobs: int, info, list_only: bool = False,
             on_listing=lambda: None) -> tuple[dict, list[dict]]:
    """driver.py: setup.py's extensions (and the torch it imported) and, unless list_only, each one
    built in its own build-temp dir, several at once, at most `jobs` compile processes in all.
    `on_listing` is called when the driver has listed them (and starts compiling)."""
    src, logs = ctx.workspace.src, ctx.workspace.logs
    spec = logs / "build-driver.json"
    spec.write_text(json.dumps({"temp_root": str(tmp_root(src)), "logs_dir": str(logs), "jobs": jobs,
                                "list_only": list_only}))
    listing: dict = {}
    results: list[dict] = []

    def read(line: str) -> None:
        if line.startswith("DRIVER-JSON "):
            listing.update(json.loads(line[len("DRIVER-JSON "):]))
            on_listing()
            if not list_only:
                exts = listing["extensions"]
                bar.update(total=sum(len(e["sources"]) for e in exts))
                # the driver decides each extension's jobs (driver.jobs_for); this only reports it
                all_at_once = all(e["jobs"] == len(e["sources"]) for e in exts)
                ctx.say(f"compiling {len(exts)} extensions ({sum(len(e['sources']) for e in exts)} units), "
                        f"{listing['workers']} at once, "
                        f"{'every unit at once' if all_at_once else str(exts[0]['jobs']) + ' job(s) each'}, "
                        f"arch {ctx.plan.build.torch_cuda_arch_list}")
        elif line.startswith("DRIVER-DONE "):
            done = json.loads(line[len("DRIVER-DONE "):])
            results.append(done)
            ctx.say(f"{done['name']}: {'built' if done['rc'] == 0 else 'failed'} in {done['seconds']:.0f} s")
            with open(ctx.log, "a", encoding="utf-8") as fh:
                fh.write(f"==== {done['name']} ({done['seconds']} s, exit {done['rc']}) ====\n")
                fh.write(Path(done["log"]).read_text(errors="replace") if Path(done["log"]).is_file() else "")

    what = "setup.py (reading the extension list)" if list_only else "compiling the extensions"
    estimate = ctx.plan.build.expected_seconds
    with progress("compiling" if not list_only else "reading setup.py", unit="units" if not list_only else "",
                  estimate_s=estimate if not list_only else None, step=ctx.name,
                  watch=None if list_only else lambda: (units_done(tmp_root(src)), None)) as bar:
        done = runner.run([info.python, str(DRIVER), "build", str(spec)], log=ctx.log, cwd=src, env=benv.env,
                          timeout=EXT_TIMEOUT, what=what, echo=read, check=False)
        if not list_only:
            bar.update(done=units_done(tmp_root(src)))
            bar.finish(f"compiled {bar.counts()} in {duration(bar.elapsed)}"
                       + (f"; the plan estimated {duration(estimate)} ({_versus(bar.elapsed, estimate)})"
                          if estimate else ""))
    failures = [r for r in results if r["rc"] != 0]
    if failures:
        first = failures[0]
        output = Path(first["log"]).read_text(errors="replace") if Path(first["log"]).is_file() else ""
        raise StepFailed(f"compiling {first['name']} failed ({len(failures)} of {len(listing['extensions'])} "
                         f"extensions failed); full log: {ctx.log}",
                         hint=diagnose(output, first["rc"], max_jobs=jobs, cuda=info.torch_cuda) or f"read {first['log']}",
                         log_tail=relevant_tail(output))
    if done.returncode != 0 or not listing:
        raise StepFailed(f"{what} failed with exit code {done.returncode}; full log: {ctx.log}",
                         hint=diagnose(done.output, done.returncode, max_jobs=jobs, cuda=info.torch_cuda)
                         or f"read {ctx.log}", log_tail=relevant_tail(done.output))
    return listing, sorted(({"name": r["name"], "seconds": r["seconds"]} for r in results), key=lambda r: -r["seconds"])


def _versus(took: float, planned: float) -> str:
    """How the time taken compares with the plan's: "12 % faster", "30 % slower"."""
    off = round((took - planned) * 100 / planned)
    return "as planned" if off == 0 else f"{abs(off)} % {'slower' if off > 0 else 'faster'}"


def units_done(temp_root: Path) -> int:
    """Compile units finished so far under temp_root: one .ninja_log line each (every build dir starts empty)."""
    count = 0
    for log in temp_root.glob("*/.ninja_log"):
        try:
            count += sum(1 for line in log.read_text(errors="replace").splitlines() if line and line[0] != "#")
        except OSError:
            pass
    return count


def _unit_times(src: Path, exts: list[dict], started_at: float) -> list[dict]:
    """Every compiled source's wall time in this build, slowest first (from ninja's logs), with its start
    and end in seconds since the compile started (`started_at`, epoch seconds): each ninja counts from its
    own start, and its .ninja_log was last written when its last unit ended."""
    units = []
    for e in exts:
        temp = tmp_root(src) / f"temp-{e['name']}"
        found = ninja_unit_times(temp, src)
        try:
            shift = (temp / ".ninja_log").stat().st_mtime - max(u["end"] for u in found) - started_at
        except (OSError, ValueError):
            shift = 0.0
        units += [dict(u, extension=e["name"], start=round(u["start"] + shift, 2), end=round(u["end"] + shift, 2))
                  for u in found]
    return sorted(units, key=lambda u: -u["seconds"])


def _ccache_stats(benv: BuildEnv) -> dict | None:
    if not benv.ccache:
        return None
    done = runner.capture([benv.ccache, "--print-stats"], env=benv.env)
    return parse_ccache_stats(done.output) if done and done.returncode == 0 else None


def _installed(python: str, src: Path, benv: BuildEnv, log: Path) -> tuple[str, tuple]:
    """After the install, in one interpreter: vllm's version (editable from `src`) and torch's."""
    done = runner.run([python, program("vllm_installed")], env=benv.env, log=log, timeout=300, check=False,
                      what="install probe")
    data = answer(done.output)
    if not data or not data.get("vllm"):
        raise StepFailed("pip does not list vllm as installed after the build", hint=f"read {log}")
    where = data.get("editable_dir")
    if not where:
        raise StepFailed("vllm is installed, but not editable", hint="pip uninstall vllm, then rerun `./inv build --force`")
    if Path(where).resolve() != src.resolve():
        raise StepFailed(f"vllm is installed editable from {where}, not {src}",
                         hint="uninstall the other checkout (pip uninstall vllm) and rerun")
    return data["vllm"], tuple(data["torch"])


def release_matches(version: str, release: str) -> bool:
    try:
        return Version(version).base_version == Version(release).base_version
    except InvalidVersion:
        return False
