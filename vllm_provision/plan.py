"""The Plan: everything a run will do, fully resolved and immutable, before anything is done."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from vllm_provision import GIB, PROJECT_ROOT, catalog, minor_version
from vllm_provision.catalog import Release, lock_path, patches
from vllm_provision.checks import CheckStatus, check_driver
from vllm_provision.checks.toolchain import check_torch_pin
from vllm_provision.core import config
from vllm_provision.core.archs import base_arch
from vllm_provision.core.errors import ConfigError
from vllm_provision.core.redact import redact_text
from vllm_provision.core.settings import Build as BuildSettings
from vllm_provision.core.settings import Settings, Smoke
from vllm_provision.core.workspace import Workspace
from vllm_provision.probes import envprobe, host
from vllm_provision.sources.externals import ExternalPlan, plan_externals

# Peak RSS of one nvcc job on vLLM 0.2.2's largest unit (attention_kernels.cu), with headroom.
# Measured (`/usr/bin/time -v`, max RSS of the biggest child, cicc): 3,166,936 kB = 3.02 GiB for
# the attention_ops extension alone, arch 9.0, nvcc 13.0 from pip wheels, torch 2.14.1, 2 cores.
# More archs in one job raise it (nvcc --threads runs one cicc per arch), hence the headroom.
BUILD_JOB_PEAK_BYTES = int(3.5 * GIB)


@dataclass(frozen=True)
class SourcePlan:
    kind: str            # mirror | pypi-sdist | github-archive
    url: str             # for pypi-sdist: the index project page; the file link is read from it
    file: str
    sha256: str = ""
    tree_sha256: str = ""


@dataclass(frozen=True)
class EnvPlan:
    backend: str                   # effective: conda | venv | existing
    requested_backend: str
    note: str                      # why the effective backend/python differ from the request, if they do
    python: str                    # requested version ("3.10.12") or "host"
    python_path: str | None        # interpreter to build the env from (venv/existing)
    installer: str
    cuda: str | None
    lock: str | None               # path of the lock file, relative to the project root
    index_url: str
    extra_index_urls: tuple[str, ...]
    trusted_hosts: tuple[str, ...]
    timeout: int
    retries: int
    cert: str | None
    channels: tuple[str, ...]
    override_channels: bool


@dataclass(frozen=True)
class BuildPlan:
    arch_list: tuple[str, ...]
    arch_source: str               # config | gpus | release default
    torch_cuda_arch_list: str      # rendered in the form the release parses
    max_jobs: int
    max_jobs_reason: str
    parallel_extensions: bool
    ccache: bool
    cpu_placement: str = "auto"     # auto: the slowest units get up to four cores each | off
    cpu_pool: int | None = None     # CPUs the other compiles share (default: all the rest)
    critical_unit_cores: int | None = None   # cores for each critical unit (nvcc splits over them); None: auto
    expected_seconds: int = 0       # rough build time from the host's cores and the arch count
    expected_reason: str = ""
    # CMake-era releases: compile jobs x nvcc threads each, within the memory budget (choose_parallelism)
    nvcc_threads: int = 1
    memory_budget_bytes: int = 0    # the RAM the compile may use: free memory less headroom
    job_peak_bytes: int = 0         # one compile job's peak at one nvcc thread (the release's measured figure)
    compiler_archs: tuple[str, ...] = ()     # the release's archs this compiler can build (plan and doctor show it)
    targets: tuple[str, ...] = ()   # CMake targets to build (empty: every extension setup.py builds)
    time_limit: float | None = None   # stop the compile cleanly after this many seconds and project the total


@dataclass(frozen=True)
class PatchPlan:
    file: str
    why: str
    when: Mapping[str, str]
    sha256: str


@dataclass(frozen=True)
class Plan:
    release: Release
    profile: str
    offline: bool
    workspace: Workspace
    sources: tuple[SourcePlan, ...]
    env: EnvPlan
    patches: tuple[PatchPlan, ...]
    build: BuildPlan
    smoke: Smoke
    settings: Settings = field(repr=False)   # the validated settings, as config.resolve made them
    externals: tuple[ExternalPlan, ...] = ()   # CMake-era releases: the sources their configure would download

    def to_dict(self) -> dict:
        data = {
            "release": {"version": self.release.version, "released": str(self.release.released),
                        "build_system": self.release.build_system, "cuda_archs": list(self.release.cuda_archs),
                        "main_cuda": self.release.main_cuda},
            "profile": self.profile,
            "offline": self.offline,
            "workspace": {"root": str(self.workspace.root), "cache": str(self.workspace.cache)},
            "sources": [asdict(s) for s in self.sources],
            "externals": [asdict(e) for e in self.externals],
            "env": asdict(self.env),
            "patches": [asdict(p) | {"when": dict(p.when)} for p in self.patches],
            "build": asdict(self.build),
            "smoke": self.smoke.model_dump(),
        }
        return json.loads(redact_text(json.dumps(data)))



def unsupported_archs(release: Release, archs) -> list[str]:
    return [a for a in archs if base_arch(a) not in release.cuda_archs]


def arch_refusal(release: Release, bad, source: str) -> ConfigError:
    """The same refusal for archs the release cannot build, whether configured or this host's GPUs."""
    hint = ("use a vLLM release that supports this GPU (--release), or run on a supported GPU"
            if source == "gpus" else
            "set build.arch_list / --arch to supported compute capabilities, e.g. --arch 9.0")
    what = "GPU compute capability" if source == "gpus" else "arch"
    return ConfigError(f"{what} {', '.join(bad)} is not supported by vLLM {release.version} "
                       f"(it builds for {', '.join(release.cuda_archs)})", hint=hint)


# The oldest arch each CUDA major's nvcc still compiles for (CUDA 13 dropped sm_50-sm_72, CUDA 12 sm_35/sm_37).
NVCC_MIN_ARCH = {11: "3.5", 12: "5.0", 13: "7.5"}
# The first nvcc that compiles for a newer arch (Blackwell: 12.8; CUDA 13 renamed sm_101 to sm_110).
NVCC_ARCH_SINCE = {"8.9": "11.8", "9.0": "11.8", "10.0": "12.8", "10.1": "12.8", "12.0": "12.8", "10.3": "12.9",
                   "12.1": "12.9", "11.0": "13.0"}
# Build-time estimate for the plan, from measured builds of the release's extensions for one arch:
# all compile units one after another take about this many CPU-seconds (2-core host, arch 9.0: 354-560 s wall).
COMPILE_CPU_SECONDS_PER_ARCH = 1000


def _arch_key(arch: str) -> tuple[int, ...]:
    return tuple(int(x) for x in base_arch(arch).split("."))


def compilable_archs(archs: tuple[str, ...], cuda: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kept, left out): the archs an nvcc of CUDA `cuda` can compile (all of them when `cuda` is unknown)."""
    try:
        floor = NVCC_MIN_ARCH.get(Version(cuda).major) if cuda else None
    except InvalidVersion:
        floor = None
    if not floor:
        return archs, ()
    kept = tuple(a for a in archs if _arch_key(a) >= _arch_key(floor)
                 and Version(cuda) >= Version(NVCC_ARCH_SINCE.get(base_arch(a), "0")))
    return kept, tuple(a for a in archs if a not in kept)


# ------------------------------------------------------------------------------------ CMake-era parallelism
# Keep this share of free memory out of the compile's budget (page cache, the linker, ninja, the session).
MEMORY_HEADROOM = 0.10
# nvcc --threads compiles a unit's archs side by side (one cicc + ptxas per arch, each near a job's peak):
# worth it only where the host has more slots than a build keeps busy to its end, where the slowest units
# (one arch after another in one job) set the build's length. Below this many slots, one thread a job.
SLOTS_PER_NVCC_THREAD = 32
# CMake-era compile work for one arch where the release's recipe names none (compile_cpu_seconds_per_arch).
CMAKE_COMPILE_CPU_SECONDS_PER_ARCH = 33_000


@dataclass(frozen=True)
class Parallelism:
    jobs: int                  # compile processes at once (ninja -j, CMake's compile pool)
    nvcc_threads: int          # nvcc --threads in each job (NVCC_THREADS)
    why: str
    memory_budget_bytes: int
    job_peak_bytes: int


def choose_parallelism(*, cpus: int, mem_available_bytes: int, job_peak_bytes: int, archs: int = 1,
                       max_jobs: int | None = None) -> Parallelism:
    """Jobs x nvcc threads for a CMake-era build. Every nvcc thread is a compiler process near the job's peak,
    so jobs x threads stays within the cores and within the memory budget / the per-job peak; threads above one
    only with several archs and many slots. A configured `max_jobs` is taken as is, one thread a job."""
    budget = int(mem_available_bytes * (1 - MEMORY_HEADROOM))
    peak = max(1, job_peak_bytes)
    gib = f"{budget / GIB:.1f} GiB budget ({mem_available_bytes / GIB:.1f} GiB free less {MEMORY_HEADROOM:.0%})"
    if max_jobs:
        return Parallelism(max_jobs, 1, f"config: {max_jobs} jobs x 1 nvcc thread", budget, job_peak_bytes)
    by_ram = max(1, budget // peak)
    slots = max(1, min(cpus, by_ram))
    threads = max(1, min(archs, slots // SLOTS_PER_NVCC_THREAD))
    jobs = max(1, slots // threads)
    limit = "cores" if cpus <= by_ram else "memory"
    why = (f"{slots} compiler processes = min({cpus} cores, {gib} / {peak / GIB:.1f} GiB a job = {by_ram}), "
           f"bound by {limit}; ")
    why += (f"{threads} nvcc threads over {archs} archs (>= {SLOTS_PER_NVCC_THREAD} slots each), {jobs} jobs"
            if threads > 1 else
            f"1 nvcc thread a job ({'one arch' if archs == 1 else f'fewer than {SLOTS_PER_NVCC_THREAD * 2} slots'})")
    return Parallelism(jobs, threads, why, budget, job_peak_bytes)


def compile_work_per_arch(release: Release) -> int:
    return int(release.compile_cpu_seconds_per_arch or CMAKE_COMPILE_CPU_SECONDS_PER_ARCH)


def expected_cmake_seconds(release: Release, archs: int, jobs: int, threads: int) -> int:
    """About how long a CMake-era compile takes: its work over jobs x threads, never below the slowest unit."""
    slowest = max(release.slowest_units.values(), default=0.0)
    work = compile_work_per_arch(release) * archs
    return int(max(work / max(1, jobs * min(threads, archs)), slowest * archs / max(1, threads)))


def expected_build_seconds(release: Release, archs: int, cores: int) -> int:
    """About how long the build takes: the compile work spread over the cores, never below the slowest unit."""
    slowest = max(release.slowest_units.values(), default=0.0)
    return int(max(COMPILE_CPU_SECONDS_PER_ARCH * archs / max(1, cores), slowest * archs))


def plan_build(release: Release, build: BuildSettings, facts: host.HostFacts, cuda: str | None = None) -> BuildPlan:
    """Archs the release cannot build are refused here when configured; when they are this host's GPUs
    the plan keeps them, so that doctor can report them and the build refuses (`gpu_refusal`)."""
    requested = tuple(dict.fromkeys(build.arch_list or ()))   # the schema split and checked them
    if requested:
        archs, source = requested, "config"
    elif facts.compute_caps:
        archs, source = facts.compute_caps, "gpus"
    else:
        archs, left_out = compilable_archs(release.cuda_archs, cuda)
        source = "release default (no GPU visible)"
        if left_out:
            source += f"; {', '.join(left_out)} left out: nvcc {cuda} cannot compile for it"
    bad = unsupported_archs(release, archs)
    if bad and source != "gpus":
        raise arch_refusal(release, bad, source)
    compiler_archs = compilable_archs(release.cuda_archs, cuda)[0]
    if release.build_system != "cmake" and (build.targets or build.time_limit):
        raise ConfigError(f"--targets and --time-limit drive CMake-era builds; vLLM {release.version} builds with "
                          f"{release.build_system}", hint="drop them, or pick a release built with CMake (0.4.0 on)")
    if release.build_system == "cmake":
        return _plan_cmake_build(release, build, facts, archs, source, compiler_archs)
    if build.max_jobs:
        max_jobs, reason = build.max_jobs, "config"
    else:
        by_ram = max(1, facts.mem_available_bytes // BUILD_JOB_PEAK_BYTES) if facts.mem_available_bytes else 1
        max_jobs = max(1, min(facts.cpu_count, by_ram))
        reason = (f"min({facts.cpu_count} cores, {facts.mem_available_bytes / GIB:.1f} GiB free / "
                  f"{BUILD_JOB_PEAK_BYTES / GIB:.1f} GiB a job)")
    expected = expected_build_seconds(release, len(archs), facts.cpu_count)
    return BuildPlan(arch_list=tuple(archs), arch_source=source,
                     expected_seconds=expected,
                     expected_reason=f"about {expected // 60} min {expected % 60:02d} s on {facts.cpu_count} cores "
                                     f"for {len(archs)} arch(s)",
                     torch_cuda_arch_list=release.arch_list_separator.join(archs),
                     max_jobs=max_jobs, max_jobs_reason=reason,
                     parallel_extensions=build.parallel_extensions, ccache=build.ccache,
                     cpu_placement=build.cpu_placement, cpu_pool=build.cpu_pool,
                     critical_unit_cores=build.critical_unit_cores, compiler_archs=compiler_archs)


def _minutes(seconds: int) -> str:
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min" if seconds >= 3600 else \
        f"{seconds // 60} min {seconds % 60:02d} s"


def _plan_cmake_build(release: Release, build: BuildSettings, facts: host.HostFacts, archs: tuple[str, ...],
                      source: str, compiler_archs: tuple[str, ...]) -> BuildPlan:
    """The CMake-era build: jobs x nvcc threads from free RAM and cores with the release's per-job peak."""
    peak = int((release.job_peak_gib or BUILD_JOB_PEAK_BYTES / GIB) * GIB)
    n_archs = len({base_arch(a) for a in archs}) or 1
    par = choose_parallelism(cpus=facts.cpu_count, mem_available_bytes=facts.mem_available_bytes,
                             job_peak_bytes=peak, archs=n_archs, max_jobs=build.max_jobs)
    expected = expected_cmake_seconds(release, n_archs, par.jobs, par.nvcc_threads)
    return BuildPlan(arch_list=tuple(archs), arch_source=source,
                     torch_cuda_arch_list=release.arch_list_separator.join(archs),
                     max_jobs=par.jobs, max_jobs_reason=par.why, nvcc_threads=par.nvcc_threads,
                     memory_budget_bytes=par.memory_budget_bytes, job_peak_bytes=par.job_peak_bytes,
                     expected_seconds=expected,
                     expected_reason=(f"about {_minutes(expected)}: {compile_work_per_arch(release)} CPU-s of "
                                      f"compile per arch x {n_archs} over {par.jobs} jobs x {par.nvcc_threads} "
                                      f"nvcc thread(s); the progress line refines it"),
                     parallel_extensions=False, ccache=build.ccache, cpu_placement="off",
                     compiler_archs=compiler_archs, targets=tuple(build.targets), time_limit=build.time_limit)


def gpu_refusal(plan: Plan) -> ConfigError | None:
    """The refusal for building on GPUs the release does not support (None when it can build for them)."""
    bad = unsupported_archs(plan.release, plan.build.arch_list) if plan.build.arch_source == "gpus" else []
    return arch_refusal(plan.release, bad, "gpus") if bad else None


def host_torch_refusal(plan: Plan) -> ConfigError | None:
    """The existing backend builds against the host's torch: one the release does not pin is refused before
    any download (None: it matches, the release pins none, or the interpreter cannot be asked; the env
    step names a missing interpreter). Read from torch/version.py, not imported: well under a second."""
    if plan.env.backend != "existing" or not plan.release.torch:
        return None
    python = plan.env.python_path or "python3"
    found = envprobe.torch_of(python, timeout=60)
    if found.error:
        return None
    check = check_torch_pin(plan.release, found.version, f"the host's Python ({python})")
    return ConfigError(check.detail, hint=check.hint) if check.status == CheckStatus.FAIL else None


def plan_env(release: Release, profile: str, settings: Settings, root: Path = PROJECT_ROOT,
             interpreters: Mapping[str, str] | None = None) -> EnvPlan:
    """`interpreters` (minor -> path) replaces interpreter discovery, for tests (and the fleet: a host's)."""
    env, pypi, conda = settings.env, settings.pypi, settings.conda
    requested = env.backend
    backend, note = requested, ""
    python = env.python
    python_path = env.python_path
    find = (lambda m: interpreters.get(m)) if interpreters is not None else host.find_interpreter
    if requested == "conda" and not conda.channels:
        backend = "venv"
        note = "no conda channel configured (conda.channels): using a venv from the PyPI index instead"
    if backend == "venv" and not python_path:
        wanted = minor_version(python)
        # the release's published Pythons, and any the profile has a committed lock for (tested with it)
        supported = [f"3.{n}" for n in range(8, 16) if release.python_tested.contains(f"3.{n}.0")
                     or (env.lock and lock_path(release.version, profile, f"3.{n}", root).is_file())]

        # nearest supported minor first, and among equals one that has a committed lock
        def preference(m: str) -> tuple:
            return (abs(int(m.split(".")[1]) - int(wanted.split(".")[1])),
                    not lock_path(release.version, profile, m, root).is_file())
        for minor in sorted(supported, key=preference):
            python_path = find(minor)
            if python_path:
                if minor != wanted:
                    note = (note + "; " if note else "") + f"Python {wanted} not found, using the nearest supported {minor}"
                    python = minor
                break
        else:
            note = (note + "; " if note else "") + f"no Python {' / '.join(supported)} interpreter found"
    if backend == "existing":
        python = "host"
    lock = None
    if env.lock and backend != "existing":
        lock = str(lock_path(release.version, profile, minor_version(python), root).relative_to(root))
    return EnvPlan(
        backend=backend, requested_backend=requested, note=note, python=python,
        python_path=str(python_path) if python_path else None, installer=env.installer,
        cuda=env.cuda or None, lock=lock, index_url=pypi.index_url, extra_index_urls=tuple(pypi.extra_index_urls),
        trusted_hosts=tuple(pypi.trusted_hosts), timeout=int(pypi.timeout), retries=pypi.retries, cert=pypi.cert,
        channels=tuple(conda.channels), override_channels=conda.override_channels,
    )


def plan_sources(release: Release, settings: Settings) -> tuple[SourcePlan, ...]:
    fetch = settings.fetch
    sdist = release.sdist
    out = []
    for template in fetch.mirrors:   # checked by the settings schema: {file} and {version} only
        out.append(SourcePlan("mirror", template.format(file=sdist.file, version=release.version), sdist.file,
                              sdist.sha256))
    if fetch.pypi_sdist:
        out.append(SourcePlan("pypi-sdist", settings.pypi.index_url.rstrip("/") + "/vllm/", sdist.file, sdist.sha256))
    if fetch.github:
        for s in release.sources:
            if s.kind == "github-archive":
                out.append(SourcePlan("github-archive", s.url, s.file, s.sha256, s.tree_sha256))
    if not out:
        raise ConfigError("no source enabled for the release download",
                          hint="enable fetch.pypi_sdist, fetch.github or add fetch.mirrors")
    return tuple(out)


def driver_note(cuda: str | None, facts: host.HostFacts) -> str:
    """What the plan says when this host's driver is too old for the env's CUDA (doctor fails it too)."""
    if not cuda or not facts.gpus:
        return ""
    check = check_driver(facts, cuda)
    return f"{check.detail}; fix: {check.hint}" if check.status == CheckStatus.FAIL else ""


def build_plan(cli: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
               root: Path = PROJECT_ROOT, facts: host.HostFacts | None = None, need_lock: bool = True) -> Plan:
    """`need_lock=False` for `./inv lock`, which writes the lock a complete recipe needs."""
    settings = config.resolve(cli, environ, root)
    release = catalog.get_release(settings.release)
    profile = settings.profile
    cache = Path(os.path.expanduser(settings.cache_dir))
    ws_root = Path(os.path.expanduser(settings.workspace_root))
    if not ws_root.is_absolute():
        ws_root = root / ws_root
    workspace = Workspace(root=ws_root / f"{release.version}-{profile}", cache=cache)
    facts = facts if facts is not None else host.probe(str(ws_root))
    env = plan_env(release, profile, settings, root)
    env = replace(env, note="; ".join(n for n in (env.note, driver_note(env.cuda, facts)) if n))
    catalog.require_recipe(release, profile, needs_lock=need_lock and env.lock is not None, root=root)
    series = patches.load_series(release.version, root)
    # the compiler's CUDA: the env's (its torch decides), else the newest nvcc on the host
    host_cudas = sorted((n.version for n in facts.nvcc if n.version), key=Version)
    compiler_cuda = env.cuda or (host_cudas[-1] if host_cudas else None)
    return Plan(
        release=release, profile=profile, offline=settings.offline, workspace=workspace,
        sources=plan_sources(release, settings), env=env,
        patches=tuple(PatchPlan(p.file, p.why, dict(p.when), p.sha256) for p in series),
        build=plan_build(release, settings.build, facts, compiler_cuda), smoke=settings.smoke, settings=settings,
        externals=plan_externals(release, settings.fetch, cache),
    )
