"""The CMake-era build driver: configure and compile vLLM (0.4.0 onwards) the way its setup.py would, with
the toolkit owning -j, the targets, progress, a time limit and the diagnosis.

setup.py's `cmake_build_ext` runs `cmake <src> -G Ninja <args>` then `cmake --build . -j=N --target=...`
in its build-temp dir. The driver runs exactly those two commands itself (`configure_argv`, `build_argv`), in
a build dir that pip's editable install then reuses (`editable_env`: setuptools' build_temp points there), so
pip's own pass configures again and compiles nothing. Around them:
- no build isolation: the env's torch must be the release's (`check_torch`), refused before configure;
- jobs x nvcc threads from the plan (plan.choose_parallelism); setup.py divides MAX_JOBS by NVCC_THREADS
  (vllm#20079), so pip's pass gets MAX_JOBS = jobs x threads (`setup_py_env`) and ends at the plan's jobs;
- every external from its override variable, FetchContent fully disconnected, its base dir inside the build
  dir; with --offline, configure and build also run in a network namespace without a route (`unshare -n`);
- ccache as the C/C++/CUDA launcher, with the 0.2.2 build's settings (base dir, locale, compiler check);
- progress from ninja's `[N/M]` lines through progress.py's display (a live line, else a heartbeat), with
  the rate (`progress_at`) in it and in the facts;
- a time limit that stops the whole process group and projects the total; peak memory from /proc;
- a compiler killed out of memory is one error with the job count to use.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from vllm_provision import GIB
from vllm_provision.build import (
    BUILD_LOCALE,
    LOCALE_VARS,
    cache_summary,
    diagnose,
    find_ccache,
    ninja_unit_times,
    parse_ccache_stats,
    relevant_tail,
)
from vllm_provision.core import procs, runner, ui
from vllm_provision.core.errors import ConfigError, StepFailed
from vllm_provision.core.progress import ninja_status, progress
from vllm_provision.probes import envprobe

CONFIGURE_TIMEOUT = 1800
BUILD_TIMEOUT = 6 * 3600
# ninja's status prefix: done/total edges (the driver sets it; a user's NINJA_STATUS would break the parse)
NINJA_STATUS = "[%f/%t] "
RSS_POLL_S = 0.5
# `CMakeExtension` names setup.py builds for CUDA (0.26.0, nvcc >= 12.9; spinloop and fs_io_C from Python
# 3.11): the CMake target is the name without `vllm.` / `vllm_flash_attn.`
SETUP_PY_CUDA_TARGETS = ("cumem_allocator", "triton_kernels", "spinloop", "fs_io_C", "_vllm_fa2_C", "_vllm_fa3_C",
                         "_vllm_fa4_cutedsl_C", "_flashmla_C", "_flashmla_extension_C", "_deep_gemm_C",
                         "_qutlass_C", "fmha_sm100", "tml_fa4", "_C_stable_libtorch", "_moe_C_stable_libtorch")
PY311_ONLY_TARGETS = ("spinloop", "fs_io_C")
SOURCE_SUFFIXES = (".cu", ".cpp", ".cc", ".cxx", ".c")     # compile units in .ninja_log (links name an object)


# ------------------------------------------------------------------------------------------- pure parts
def setup_py_num_jobs(max_jobs: int | None, nvcc_threads: int | None, cpus: int) -> int:
    """vLLM's setup.py `compute_num_jobs` (0.26.0, a CUDA >= 11.2 build): MAX_JOBS (else the CPUs) divided
    by NVCC_THREADS (else 1). What pip's pass runs with."""
    jobs = max_jobs if max_jobs is not None else cpus
    return max(1, jobs // (nvcc_threads or 1))


def setup_py_env(jobs: int, nvcc_threads: int) -> dict[str, str]:
    """MAX_JOBS / NVCC_THREADS such that setup.py ends at `jobs` jobs of `nvcc_threads` threads."""
    return {"MAX_JOBS": str(jobs * nvcc_threads), "NVCC_THREADS": str(nvcc_threads)}


def default_targets(python_version: str) -> tuple[str, ...]:
    """The CMake targets setup.py builds for CUDA with this Python ("3.11.9")."""
    try:
        py311 = Version(python_version) >= Version("3.11")
    except InvalidVersion:
        py311 = True
    return tuple(t for t in SETUP_PY_CUDA_TARGETS if py311 or t not in PY311_ONLY_TARGETS)


@dataclass(frozen=True)
class Rate:
    """The compile's pace, for the facts and the closing line (the live display is progress.py's)."""
    done: int
    total: int
    elapsed: float
    per_minute: float           # units a minute since the first unit of this run (0.0: not measurable yet)
    eta_seconds: float | None   # at that rate; None until a unit has finished

    @property
    def projected_seconds(self) -> float | None:
        return None if self.eta_seconds is None else self.elapsed + self.eta_seconds


def progress_at(done: int, total: int, elapsed: float, first_done: int = 0) -> Rate:
    """Rate and ETA from units done since the run started (`first_done`: units up to date when it started,
    which cost nothing and say nothing about the rate; ninja's [N/M] counts only the edges it runs)."""
    fresh = done - first_done
    rate = fresh / elapsed * 60 if fresh > 0 and elapsed > 0 else 0.0
    eta = (total - done) / rate * 60 if rate > 0 else None
    return Rate(done, total, elapsed, rate, eta)


def duration(seconds: float | None) -> str:
    return "?" if seconds is None else ui.duration(seconds)


def format_final(p: Rate, expected_seconds: int, stopped: bool) -> str:
    """The last line: what was done against what the plan expected (0: no estimate, e.g. a subset)."""
    if stopped:
        expected = f", the plan expected {duration(expected_seconds)}" if expected_seconds else ""
        return (f"stopped at the time limit: {p.done}/{p.total} units in {duration(p.elapsed)} "
                f"({p.per_minute:.1f} units/min); projected total {duration(p.projected_seconds)}{expected}")
    if not expected_seconds:
        return f"compiled {p.done}/{p.total} units in {duration(p.elapsed)} ({p.per_minute:.1f} units/min)"
    return (f"compiled {p.done}/{p.total} units in {duration(p.elapsed)}; the plan expected "
            f"{duration(expected_seconds)} ({p.elapsed / expected_seconds:.0%} of it)")


# Out of memory, as the compilers and the kernel say it: gcc's driver for a killed cc1plus, nvcc for a killed
# cicc/ptxas, a shell's "Killed", ninja's exit of a command killed by signal 9.
_KILLED = re.compile(r"Killed signal terminated program|died due to signal 9|\(Kill signal\)|"
                     r"(^|\s)Killed(\s|$)|signal 9\b|exit status 137\b", re.M)


def killed_out_of_memory(output: str, returncode: int) -> bool:
    return returncode in (137, -9) or bool(_KILLED.search(output))


def safe_jobs(jobs: int, nvcc_threads: int, memory_budget_bytes: int, job_peak_bytes: int | None) -> int:
    """The next lower job count that fits: by the measured per-job peak when there is one, else a quarter less."""
    if job_peak_bytes and memory_budget_bytes:
        fits = memory_budget_bytes // (job_peak_bytes * max(1, nvcc_threads))
        return max(1, min(jobs - 1, int(fits)))
    return max(1, jobs - max(1, jobs // 4))


# ------------------------------------------------------------------------------------------- the env's torch
def env_torch(python: str) -> str | None:
    """The env's torch version, from its metadata (no import: a second, not ten)."""
    return (envprobe.python_info(python) or {}).get("torch_dist")


def check_torch(release, python: str) -> str:
    """The env's torch, refused (ConfigError) unless it is the one the release builds against: vLLM builds
    without isolation, so another torch gives `undefined symbol` at import (vllm#5889)."""
    have = env_torch(python)
    want = release.torch
    if have is None:
        raise ConfigError(f"the env ({python}) has no torch; vLLM {release.version} builds against torch {want}",
                          hint="rerun `./inv env --force`, which installs the release's locked torch")
    if str(want) and not want.contains(have, prereleases=True):
        raise ConfigError(f"the env's torch is {have}; vLLM {release.version} builds against torch {want} "
                          f"(no build isolation: the libraries would not load with another torch)",
                          hint=f"rerun `./inv env --force` for the release's lock (torch {want}), or for "
                               f"--profile host-torch use a host whose torch is {want}")
    return have


# ------------------------------------------------------------------------------------------- the commands
def python_path(python: str, src: Path) -> str:
    """sys.path as setup.py sees it in `src` (its first entry is the script's directory)."""
    sys_path = (envprobe.python_info(python) or {}).get("sys_path", [])
    return ":".join(p for p in [str(src), *sys_path] if p)


def configure_argv(*, cmake: str, src: Path, python: str, python_path: str, fetch_base: Path, jobs: int,
                   nvcc_threads: int, cuda_home: str | None, ccache: bool, cmake_args: Sequence[str] = (),
                   build_type: str = "RelWithDebInfo") -> list[str]:
    """`cmake <src> -G Ninja ...` with exactly the arguments setup.py's cmake_build_ext.configure passes
    (0.26.0, CUDA, ninja and ccache on PATH), CMAKE_ARGS last. The launcher is the bare name, as setup.py
    writes it: pip's pass then configures the same cache and ninja sees the same compile lines."""
    argv = [cmake, str(src), "-G", "Ninja", f"-DCMAKE_BUILD_TYPE={build_type}", "-DVLLM_TARGET_DEVICE=cuda"]
    if ccache:
        argv += [f"-DCMAKE_{lang}_COMPILER_LAUNCHER=ccache" for lang in ("C", "CXX", "CUDA", "HIP")]
    argv += [f"-DVLLM_PYTHON_EXECUTABLE={python}", f"-DVLLM_PYTHON_PATH={python_path}",
             f"-DFETCHCONTENT_BASE_DIR={fetch_base}", f"-DNVCC_THREADS={nvcc_threads}",
             "-DCMAKE_JOB_POOL_COMPILE:STRING=compile", f"-DCMAKE_JOB_POOLS:STRING=compile={jobs}"]
    if cuda_home:
        argv.append(f"-DCMAKE_CUDA_COMPILER={cuda_home}/bin/nvcc")
    return argv + list(cmake_args)


def offline_cmake_args() -> list[str]:
    """What makes configure unable to fetch: FetchContent never downloads, and a dependency it would have
    downloaded stops configure with its name (CMP0170, CMake >= 3.30; older CMake fails later, at the
    missing sources) instead of a warning and a build without it."""
    return ["-DFETCHCONTENT_FULLY_DISCONNECTED=ON", "-DCMAKE_POLICY_DEFAULT_CMP0170=NEW"]


def build_argv(cmake: str, build_dir: Path, jobs: int, targets: Sequence[str]) -> list[str]:
    """setup.py's `cmake --build . -j=N --target=...` (run in the build dir)."""
    return [cmake, "--build", str(build_dir), f"-j={jobs}", *[f"--target={t}" for t in targets]]


def editable_env(build_dir: Path, config_file: Path) -> dict[str, str]:
    """pip's editable pass (setuptools) builds in `build_dir`: a distutils config file names it as build_ext's
    build_temp. setuptools' editable_wheel re-initialises build_ext and then looks its options up by the
    class's name, vLLM's `cmake_build_ext`: both sections name the dir."""
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text("".join(f"[{section}]\nbuild_temp = {build_dir}\n\n"
                                   for section in ("build_ext", "cmake_build_ext")))
    return {"DIST_EXTRA_CONFIG": str(config_file)}


def network_isolation(offline: bool) -> tuple[list[str], str]:
    """(argv prefix, note): with --offline, a network namespace with no route out (root: `unshare -n`,
    else a user namespace `unshare -rn`), tried once; without one, FetchContent's disconnection stands alone."""
    if not offline:
        return [], ""
    unshare = shutil.which("unshare")
    if not unshare:
        return [], "unshare (util-linux) not found: configure and build run in the host's network namespace"
    for prefix in ([unshare, "-n"], [unshare, "-rn"]) if os.geteuid() == 0 else ([unshare, "-rn"],):
        done = runner.capture([*prefix, "true"], timeout=10)
        if done and done.returncode == 0:
            return prefix, f"--offline: configure and build run without a network ({' '.join(prefix[1:])})"
    return [], ("no network namespace could be made (unshare -n / -rn refused): configure and build rely on "
                "FETCHCONTENT_FULLY_DISCONNECTED alone")


def planned_edges(ninja: str, build_dir: Path, targets: Sequence[str], env: Mapping[str, str]) -> int:
    """How many edges the build of `targets` will run (ninja's dry run: a second): the total before the first
    unit finishes."""
    done = runner.capture([ninja, "-C", str(build_dir), "-n", *targets], env=env, timeout=120)
    totals = [ninja_status(line) for line in (done.output if done and done.returncode == 0 else "").splitlines()]
    return max((t[1] for t in totals if t), default=0)


def find_tool(name: str, python: str, path: str) -> str | None:
    """cmake / ninja beside the env's python (the lock's wheels) first, else on PATH."""
    return shutil.which(name, path=os.pathsep.join([str(Path(python).parent), path]))


# ------------------------------------------------------------------------------------------- memory
def job_memory(table: Mapping[int, procs.Proc], root: int) -> tuple[int, dict[int, int]]:
    """(the resident memory of `root` and everything under it, {job pid: its process tree's}) where a job is
    a child of ninja. Ninja starts every job in a process group of its own: the tree is followed by parent."""
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.ppid, []).append(pid)

    def tree(pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(children.get(p, ()))
        return out

    members = tree(root) if root in table else []
    ninjas = [pid for pid in members if table[pid].comm == "ninja"]
    jobs = {c: sum(table[p].rss_bytes for p in tree(c)) for n in ninjas for c in children.get(n, ())
            if table[c].comm != "ninja"}
    return sum(table[p].rss_bytes for p in members), jobs


class MemoryWatch(threading.Thread):
    """Polls /proc for the build (the child of this process whose argv has `marker`, and all under it): peak
    memory in all and per job, and the jobs' process groups (ninja gives each its own), so that a stop can
    make sure none is left."""

    def __init__(self, marker: str, interval: float = RSS_POLL_S):
        super().__init__(daemon=True)
        self.marker, self.interval = marker, interval
        self.peak_total = 0
        self.peak_job = 0
        self.job_groups: dict[int, str] = {}     # a job's process group (its leader's pid) -> the leader's start
        self._stop_event = threading.Event()

    def _root(self, table) -> int | None:
        me = os.getpid()
        for pid, proc in table.items():
            if proc.ppid == me:
                try:
                    if self.marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                        return pid
                except OSError:
                    continue
        return None

    def run(self) -> None:
        root = None
        while not self._stop_event.wait(self.interval):
            table = procs.table()
            root = root if root in table else self._root(table)
            if root:
                total, jobs = job_memory(table, root)
                self.peak_total = max(self.peak_total, total)
                self.peak_job = max([self.peak_job, *jobs.values()])
                for j in jobs:
                    if table[j].pgrp == j and j not in self.job_groups:
                        self.job_groups[j] = table[j].start

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def end_leftovers(self) -> list[int]:
        """SIGKILL for any job process group still running (ninja signals its jobs as it stops; one that
        ignored it must not outlive the build). Returns the groups it had to kill."""
        killed = []
        for pgid, started in sorted(self.job_groups.items()):
            leader = procs.read(pgid)
            if not started or leader is None or leader.start != started:    # gone, or the pid is another's now
                continue
            try:
                os.killpg(pgid, signal.SIGKILL)
                killed.append(pgid)
            except (ProcessLookupError, PermissionError):
                continue
        return killed


def oom_kills() -> int | None:
    """The cgroup's count of processes the kernel killed out of memory (cgroup v2), None when unreadable."""
    try:
        text = Path("/sys/fs/cgroup/memory.events").read_text()
    except OSError:
        return None
    m = re.search(r"^oom_kill (\d+)", text, re.M)
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------------------------------- the driver
@dataclass(frozen=True)
class CMakeBuildFacts:
    build_dir: Path
    log: Path
    jobs: int
    nvcc_threads: int
    targets: tuple[str, ...]
    configure_seconds: float
    edges_total: int                 # ninja's edges for the targets (compile units, links, copies)
    units_done: int
    seconds: float                   # the compile's wall time
    units_per_minute: float
    projected_seconds: float | None  # the whole compile at this rate
    expected_seconds: int            # the plan's estimate
    stopped_at_limit: bool
    peak_memory_bytes: int | None    # the build's process group, resident, at its highest
    job_peak_memory_bytes: int | None   # one compile job's process tree at its highest
    ccache: Mapping[str, int] | None    # this run's hits / misses / uncacheable
    network_isolated: bool
    notes: tuple[str, ...] = ()
    unit_times: tuple = field(default=(), repr=False)   # [{"unit", "seconds"}], slowest first

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else
                    dict(v) if isinstance(v, Mapping) else v) for k, v in self.__dict__.items()}


# An external whose override is FetchContent's own source-dir cache variable (FETCHCONTENT_SOURCE_DIR_<NAME>) is
# a -D argument, every other override an environment variable. flash-attention goes that way even when named
# by its environment variable: with VLLM_FLASH_ATTN_SRC_DIR set, 0.26.0's vllm_flash_attn.cmake takes a "local
# development" branch that installs FA4's flash_attn/cute as a symlink into that directory (a wheel would carry
# a link into the build host) and skips its import rewrite; the cache variable gives the same sources with the
# release's own install (the same 417-edge graph, measured on this kind of host).
FETCHCONTENT_SOURCE = "FETCHCONTENT_SOURCE_DIR_"
AS_FETCHCONTENT_SOURCE = {"VLLM_FLASH_ATTN_SRC_DIR": "FETCHCONTENT_SOURCE_DIR_VLLM-FLASH-ATTN"}


def external_settings(externals: Mapping[str, Path]) -> tuple[dict[str, str], list[str]]:
    """(environment variables, cmake -D arguments) that hand every external to configure."""
    env, args = {}, []
    for name, directory in sorted(externals.items()):
        path = str(Path(directory).resolve())
        variable = AS_FETCHCONTENT_SOURCE.get(name, name)
        if variable.startswith(FETCHCONTENT_SOURCE):
            args.append(f"-D{variable}={path}")
        else:
            env[name] = path
    return env, args


def build_env(*, base: Mapping[str, str], python: str, cuda_home: str | None, arch_list: str, jobs: int,
              nvcc_threads: int, externals: Mapping[str, Path], ccache: str | None, ccache_dir: Path,
              ccache_base: Path, include_dirs: Sequence[str] = ()) -> dict[str, str]:
    """The environment of configure, build and pip's pass: the env's tools first, the externals' override
    variables, the arch list, setup.py's job variables, ccache's settings (those of the 0.2.2 build)."""
    env = {k: v for k, v in base.items() if k not in ("CUDACXX", "NINJA_STATUS")}
    path = [str(Path(python).parent)] + ([f"{cuda_home}/bin"] if cuda_home else [])
    if ccache:
        path.append(str(Path(ccache).parent))      # setup.py and the launcher find it by name
    env["PATH"] = os.pathsep.join(dict.fromkeys(path + env.get("PATH", "/usr/bin:/bin").split(os.pathsep)))
    if cuda_home:
        env["CUDA_HOME"] = cuda_home
    # the CUDA library headers pip wheels ship (cublas_v2.h, cusparse.h, ...), as for the setuptools-era build
    includes = [d for d in include_dirs if d and Path(d).is_dir()]
    if includes:
        env["CPATH"] = os.pathsep.join(dict.fromkeys(includes + [p for p in env.get("CPATH", "").split(os.pathsep) if p]))
    env = {k: v for k, v in env.items() if k not in AS_FETCHCONTENT_SOURCE}
    env.update(external_settings(externals)[0])
    env.update(setup_py_env(jobs, nvcc_threads))
    env.update(TORCH_CUDA_ARCH_LIST=arch_list, NINJA_STATUS=NINJA_STATUS, VLLM_DISABLE_SCCACHE="1")
    if ccache:
        ccache_dir.mkdir(parents=True, exist_ok=True)
        env.update({"CCACHE_DIR": str(ccache_dir), "CCACHE_BASEDIR": str(ccache_base), "CCACHE_NOHASHDIR": "1",
                    "CCACHE_COMPILERCHECK": "content"})
        env.update(dict.fromkeys(LOCALE_VARS, BUILD_LOCALE))
    return env


# ------------------------------------------------------------------------------------------- CUDA link names
# CMake's FindCUDAToolkit (and torch's Caffe2 config through it) looks for the unversioned names: libcudart.so,
# libnvrtc.so, libcuda.so. The PyPI CUDA wheels ship only libX.so.<major>, and only a GPU host has the driver's
# libcuda. The driver therefore gives configure, the compile and pip's pass one directory of link names
# (CMAKE_LIBRARY_PATH for CMake, LIBRARY_PATH for a bare `g++ -lnvrtc` such as DeepGEMM's): the toolkit's own
# libraries under their unversioned names, and libcuda.so from the host's driver, else the toolkit's stub, else
# a stub made here. All of it is link-time only: at run time the loader asks for libcuda.so.1, the driver's.
LINK_DIR = "vllmp-cuda-link"
STUB_SONAME = "libcuda.so.1"
SYSTEM_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                   "/usr/local/nvidia/lib64", "/usr/local/nvidia/lib")
_DRIVER_CALL = re.compile(r"\b(cu[A-Z][A-Za-z0-9_]*)\s*\(")
_DRIVER_ALIAS = re.compile(r"^\s*#\s*define\s+(cu[A-Z]\w*)\s+(cu[A-Z]\w*)\s*$", re.M)
_VERSIONED = re.compile(r"^(lib[\w+-]+?)\.so\.(\d+)$")


def toolkit_lib_dirs(cuda_home: str) -> list[Path]:
    home = Path(cuda_home)
    return [d for d in (home / "lib64", home / "lib", *sorted(home.glob("targets/*/lib"))) if d.is_dir()]


def unversioned_links(lib_dirs: Sequence[Path]) -> dict[str, Path]:
    """libX.so -> libX.so.<major> for every library of `lib_dirs` that lacks its unversioned name."""
    out: dict[str, Path] = {}
    for d in lib_dirs:
        for f in sorted(d.iterdir()):
            m = _VERSIONED.match(f.name)
            if m and not (d / f"{m.group(1)}.so").exists() and f.is_file():
                out.setdefault(f"{m.group(1)}.so", f.resolve())
    return out


def ldconfig_dirs() -> list[str]:
    """The directories the dynamic linker's cache names a libcuda in (a GPU container's driver mount)."""
    ldconfig = shutil.which("ldconfig") or shutil.which("ldconfig", path="/sbin:/usr/sbin")
    done = runner.capture([ldconfig, "-p"], timeout=30) if ldconfig else None
    lines = (done.output if done and done.returncode == 0 else "").splitlines()
    return list(dict.fromkeys(str(Path(l.split("=>", 1)[1].strip()).parent) for l in lines
                              if "=>" in l and l.strip().startswith("libcuda.so")))


def driver_library(cuda_home: str | None, system_dirs: Sequence[str]) -> Path | None:
    """The host's CUDA driver library to link against (libcuda.so, else libcuda.so.1), else the toolkit's
    stub; None on a host with neither (no GPU driver, a toolkit from PyPI wheels)."""
    for d in system_dirs:
        for name in ("libcuda.so", STUB_SONAME):
            if (Path(d) / name).is_file():
                return Path(d) / name
    for lib_dir in toolkit_lib_dirs(cuda_home) if cuda_home else []:
        for candidate in (lib_dir / "libcuda.so", lib_dir / "stubs" / "libcuda.so"):
            if candidate.is_file():
                return candidate
    return None


def driver_api_names(headers: Sequence[Path]) -> list[str]:
    """The driver API's function names `cuda.h` declares, both the names code calls and the versioned
    ones (cuMemAlloc and cuMemAlloc_v2): what the toolkit's own libcuda stub exports."""
    names: set[str] = set()
    for h in headers:
        try:
            text = h.read_text(errors="replace")
        except OSError:
            continue
        names.update(_DRIVER_CALL.findall(text))
        for alias, target in _DRIVER_ALIAS.findall(text):
            names.update((alias, target))
    return sorted(names)


def make_driver_stub(dest: Path, names: Sequence[str], cc: str) -> Path:
    """A link stub for the CUDA driver (soname libcuda.so.1) exporting `names`, built with the host's C
    compiler; StepFailed when it cannot be built."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = dest.with_name("libcuda-stub.c")
    source.write_text("/* link-time stand-in for the CUDA driver (made by vllm-provision); the driver's\n"
                      "   libcuda.so.1 is loaded at run time */\n" + "".join(f"void {n}(void) {{}}\n" for n in names))
    runner.run([cc, "-shared", "-fPIC", "-O0", f"-Wl,-soname,{STUB_SONAME}", "-o", str(dest), str(source)],
               log=dest.with_name("libcuda-stub.log"), timeout=120, what="the CUDA driver link stub")
    return dest


def cuda_link_dir(cuda_home: str | None, link_dir: Path, *, system_dirs: Sequence[str] | None = None,
                  cc: str | None = None) -> tuple[Path | None, str]:
    """(the directory of link names, a note) for this toolkit on this host (see above); (None, "") without
    a toolkit. The note says where libcuda comes from when it is not the host's driver."""
    if not cuda_home:
        return None, ""
    dirs = list(dict.fromkeys([*ldconfig_dirs(), *SYSTEM_LIB_DIRS])) if system_dirs is None else list(system_dirs)
    links = unversioned_links(toolkit_lib_dirs(cuda_home))
    driver = driver_library(cuda_home, dirs)
    note = ""
    shutil.rmtree(link_dir, ignore_errors=True)
    link_dir.mkdir(parents=True, exist_ok=True)
    if driver is None:
        headers = [h for d in ("include", "targets/x86_64-linux/include", "targets/sbsa-linux/include")
                   for h in (Path(cuda_home) / d / "cuda.h",) if h.is_file()]
        compiler = cc or shutil.which("cc") or shutil.which("gcc") or "cc"
        stub = make_driver_stub(link_dir / "stub" / "libcuda.so", driver_api_names(headers[:1]), compiler)
        links["libcuda.so"] = stub
        note = (f"no CUDA driver library on this host: linking against a stub ({stub}); the driver's "
                f"{STUB_SONAME} is loaded at run time")
    elif "stubs" in driver.parts:
        links["libcuda.so"] = driver
        note = f"no CUDA driver library on this host: linking against the toolkit's stub {driver}"
    else:
        links["libcuda.so"] = driver
    for name, target in links.items():
        (link_dir / name).symlink_to(target)
    return link_dir, note


def cmake_args(externals: Mapping[str, Path], extra: Sequence[str] = ()) -> list[str]:
    """CMAKE_ARGS for every configure, the driver's and setup.py's: the disconnection, the externals given as
    cache variables, then the caller's (e.g. a driver stub's path on a host without a GPU)."""
    return offline_cmake_args() + external_settings(externals)[1] + list(extra)


def driver_env(plan, src: Path, python: str, externals: Mapping[str, Path], build_dir: Path, *,
               cuda_home: str | None = None, ccache_dir: Path | None = None, base: Mapping[str, str] | None = None,
               extra_cmake_args: Sequence[str] = (), include_dirs: Sequence[str] = (),
               link_dir: Path | None = None) -> tuple[dict[str, str], str | None]:
    """(environment, ccache path) for configure, build and pip's pass alike; CMAKE_ARGS carries the
    disconnection and FETCHCONTENT_BASE_DIR the base, so setup.py's own configure is the driver's. `link_dir`
    (`cuda_link_dir`) comes first in CMake's and the linker's library search."""
    base = dict(os.environ if base is None else base)
    search = os.pathsep.join([str(Path(python).parent), base.get("PATH", "")])
    ccache = find_ccache(search) if plan.build.ccache else None
    env = build_env(base=base, python=python, cuda_home=cuda_home, arch_list=plan.build.torch_cuda_arch_list,
                    jobs=max(1, plan.build.max_jobs), nvcc_threads=max(1, plan.build.nvcc_threads),
                    externals=externals, ccache=ccache,
                    ccache_dir=Path(ccache_dir or base.get("CCACHE_DIR") or plan.workspace.cache / "ccache"),
                    ccache_base=src.resolve().parent, include_dirs=include_dirs)
    env["CMAKE_ARGS"] = " ".join(cmake_args(externals, extra_cmake_args))
    env["FETCHCONTENT_BASE_DIR"] = str(fetchcontent_base(build_dir))
    if link_dir:
        for var in ("CMAKE_LIBRARY_PATH", "LIBRARY_PATH"):
            env[var] = os.pathsep.join(dict.fromkeys([str(link_dir), *[p for p in env.get(var, "").split(os.pathsep) if p]]))
    return env, ccache


def fetchcontent_base(build_dir: Path) -> Path:
    """FetchContent's base inside the build dir (setup.py's default, <src>/.deps, is outside any cleanup)."""
    return build_dir / "_deps"


def _ccache_stats(ccache: str | None, env: Mapping[str, str]) -> dict | None:
    if not ccache:
        return None
    done = runner.capture([ccache, "--print-stats"], env=env)
    return parse_ccache_stats(done.output) if done and done.returncode == 0 else None


def drive(plan, src: Path, python: str, externals: Mapping[str, Path], targets: Sequence[str] | None = None,
          time_limit: float | None = None, *, build_dir: Path | None = None, log: Path | None = None,
          cuda_home: str | None = None, ccache_dir: Path | None = None, base_env: Mapping[str, str] | None = None,
          say: Callable[[str], None] | None = None, heartbeat_s: float | None = None,
          live: bool | None = None, step: str | None = None, extra_cmake_args: Sequence[str] = (),
          include_dirs: Sequence[str] = ()) -> CMakeBuildFacts:
    """Configure `src` and compile `targets` (default: setup.py's) with the plan's jobs x threads, ccache and
    the externals' override directories; stop cleanly at `time_limit` seconds. Refuses the wrong torch before
    configure (ConfigError); a failed compile is StepFailed, out of memory with the job count to use.
    The compile's progress is progress.py's (`say`, `heartbeat_s`, `live`, `step`: as there)."""
    base = dict(os.environ if base_env is None else base_env)
    build_dir = Path(build_dir or src / "build" / "cmake").resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    log = log or build_dir / "vllmp-build.log"
    jobs, threads = max(1, plan.build.max_jobs), max(1, plan.build.nvcc_threads)
    notes: list[str] = []

    check_torch(plan.release, python)      # before anything is configured: seconds
    missing = {name: str(d) for name, d in externals.items() if not Path(d).is_dir()}
    if missing:
        raise ConfigError(f"external source directories missing: {', '.join(f'{k}={v}' for k, v in missing.items())}",
                          hint="run `./inv fetch` (online) or unpack the source bundle, then rerun")
    cmake = find_tool("cmake", python, base.get("PATH", ""))
    ninja = find_tool("ninja", python, base.get("PATH", ""))
    if not cmake or not ninja:
        raise ConfigError("cmake and ninja are needed to build a CMake-era release and one is missing "
                          f"(looked beside {python} and on PATH)",
                          hint="rerun `./inv env --force`: the release's lock installs the cmake and ninja wheels")
    link_dir, link_note = cuda_link_dir(cuda_home, build_dir / LINK_DIR)
    env, ccache = driver_env(plan, src, python, externals, build_dir, cuda_home=cuda_home, ccache_dir=ccache_dir,
                             base=base, extra_cmake_args=extra_cmake_args, include_dirs=include_dirs, link_dir=link_dir)
    if link_note:
        notes.append(link_note)
    if plan.build.ccache and not ccache:
        notes.append("ccache not found: building without a compiler cache")
    isolation, note = network_isolation(plan.offline)
    if note:
        notes.append(note)
    for n in notes:
        ui.info(n)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("".join(f"# {n}\n" for n in notes))
        fh.write("# overrides: " + " ".join(f"{k}={v}" for k, v in sorted(externals.items())) + "\n")
    explicit_targets = tuple(targets or ())
    targets = tuple(targets or plan.build.targets or default_targets(_python_version(python)))

    started = time.monotonic()
    runner.run([*isolation, *configure_argv(
        cmake=cmake, src=src.resolve(), python=python, python_path=python_path(python, src.resolve()),
        fetch_base=fetchcontent_base(build_dir), jobs=jobs, nvcc_threads=threads, cuda_home=cuda_home,
        ccache=bool(ccache), cmake_args=env["CMAKE_ARGS"].split())], log=log, cwd=build_dir, env=env,
        timeout=CONFIGURE_TIMEOUT, what="cmake configure", diagnose=_configure_hint, tail_lines=40)
    configure_s = time.monotonic() - started

    before = _ccache_stats(ccache, env)
    oom_before = oom_kills()
    memory = MemoryWatch(marker=f"--build\0{build_dir}\0")
    lines: list[str] = []
    argv = [*isolation, *build_argv(cmake, build_dir, jobs, targets)]
    stopped, returncode = False, 0
    limit = time_limit or plan.build.time_limit
    subset = bool(explicit_targets or plan.build.targets)      # the plan's estimate is for the whole compile
    with progress("compiling", planned_edges(ninja, build_dir, targets, env), unit="units", step=step,
                  estimate_s=None if subset else plan.build.expected_seconds or None, heartbeat_s=heartbeat_s,
                  live=live, say=say) as bar:
        def echo(line: str) -> None:
            lines.append(line)
            status = ninja_status(line)
            if status:
                bar.update(*status)
                bar.note(f"{progress_at(bar.done, bar.total or 0, bar.elapsed).per_minute:.1f} units/min")

        memory.start()
        try:
            done = runner.run(argv, log=log, cwd=build_dir, env=env, timeout=limit or BUILD_TIMEOUT,
                              what="cmake --build", echo=echo, check=False)
            returncode = done.returncode
        except StepFailed:
            if not limit or bar.elapsed < limit:
                raise
            stopped = True          # runner stopped the whole group at the limit and waited for it to end
        finally:
            memory.stop()
            leftovers = memory.end_leftovers()
        rate = progress_at(bar.done, bar.total or bar.done, bar.elapsed)
        bar.finish(format_final(rate, 0 if subset else plan.build.expected_seconds, stopped) if returncode == 0 or stopped else
                   f"the compile failed at {rate.done}/{rate.total} units after {duration(rate.elapsed)}")
    if leftovers:
        notes.append(f"killed {len(leftovers)} compile job(s) left running after the build stopped")
    after = _ccache_stats(ccache, env)
    cache = cache_summary({k: after.get(k, 0) - before.get(k, 0) for k in after}) if before and after else None
    facts = CMakeBuildFacts(
        build_dir=build_dir, log=log, jobs=jobs, nvcc_threads=threads, targets=targets,
        configure_seconds=round(configure_s, 1), edges_total=rate.total, units_done=rate.done,
        seconds=round(rate.elapsed, 1), units_per_minute=round(rate.per_minute, 2),
        projected_seconds=round(rate.projected_seconds, 0) if rate.projected_seconds is not None else None,
        expected_seconds=plan.build.expected_seconds, stopped_at_limit=stopped,
        peak_memory_bytes=memory.peak_total or None, job_peak_memory_bytes=memory.peak_job or None, ccache=cache,
        network_isolated=bool(isolation), notes=tuple(notes),
        unit_times=tuple(u for u in ninja_unit_times(build_dir, src.resolve())
                         if u["unit"].endswith(SOURCE_SUFFIXES)))
    if returncode != 0 and not stopped:
        output = "\n".join(lines)
        oom_after = oom_kills()
        if killed_out_of_memory(output, returncode) or (oom_before is not None and (oom_after or 0) > oom_before):
            lower = safe_jobs(jobs, threads, plan.build.memory_budget_bytes, facts.job_peak_memory_bytes)
            peak = (f"; a job peaked at {facts.job_peak_memory_bytes / GIB:.1f} GiB"
                    if facts.job_peak_memory_bytes else "")
            raise StepFailed(f"a compiler was killed, out of memory, at {jobs} jobs x {threads} nvcc thread(s) "
                             f"({rate.done}/{rate.total} units done{peak}); full log: {log}",
                             hint=f"rerun with --max-jobs {lower} (the compiler cache keeps the finished units)",
                             log_tail=relevant_tail(output), facts=facts.to_dict())
        raise StepFailed(f"cmake --build failed with exit code {returncode} ({rate.done}/{rate.total} "
                         f"units); full log: {log}",
                         hint=diagnose(output, returncode, max_jobs=jobs, cuda=plan.release.main_cuda) or f"read {log}",
                         log_tail=relevant_tail(output), facts=facts.to_dict())
    return facts


def _configure_hint(output: str, returncode: int) -> str | None:
    if re.search(r"FETCHCONTENT_FULLY_DISCONNECTED|Could not resolve host|git clone|"
                 r"does not contain a CMakeLists\.txt|-src.*does not exist", output):
        return ("configure wanted a source it would download: every external must come from its override "
                "directory (`./inv fetch` brings them into the cache)")
    m = re.search(r"GCC >= ([\d.]+) is required|requires GCC ([\d.]+)", output)
    if m:
        return f"install gcc {m.group(1) or m.group(2)} or newer and set CC/CXX"
    return None


def _python_version(python: str) -> str:
    return (envprobe.python_info(python) or {}).get("python_version", "3.11")


def editable_install(plan, src: Path, python: str, externals: Mapping[str, Path], facts: CMakeBuildFacts,
                     log: Path, *, cuda_home: str | None = None, ccache_dir: Path | None = None,
                     base_env: Mapping[str, str] | None = None, extra_cmake_args: Sequence[str] = (),
                     include_dirs: Sequence[str] = ()) -> int:
    """`pip install --no-build-isolation --no-deps -e src` through setup.py, in the driver's build dir:
    setup.py configures again and `cmake --build` finds every object up to date. Returns the compile edges
    pip's pass ran (0 when the build tree was reused)."""
    ninja_log = facts.build_dir / ".ninja_log"
    before = _ninja_log_entries(ninja_log)
    link_dir, _note = cuda_link_dir(cuda_home, facts.build_dir / LINK_DIR)
    env, _ = driver_env(plan, src, python, externals, facts.build_dir, cuda_home=cuda_home, ccache_dir=ccache_dir,
                        base=base_env, extra_cmake_args=extra_cmake_args, include_dirs=include_dirs, link_dir=link_dir)
    pip_env = dict(env, **editable_env(facts.build_dir, facts.build_dir / "vllmp-setup.cfg"),
                   **setup_py_env(facts.jobs, facts.nvcc_threads))
    isolation, _note = network_isolation(plan.offline)       # --offline: setup.py's configure has no route either
    runner.run([*isolation, python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", str(src)],
               log=log, cwd=src, env=pip_env, timeout=BUILD_TIMEOUT, what="pip install -e (vLLM)", tail_lines=60)
    return max(0, _ninja_log_entries(ninja_log) - before)     # ninja may compact its log: never below 0


def _ninja_log_entries(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text(errors="replace").splitlines() if line and not line.startswith("#"))
    except OSError:
        return 0

