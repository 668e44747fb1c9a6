"""The CMake-era build driver (vllm_provision/build/cmake.py) on real CMake projects: real cmake and ninja
(the test extra's wheels), real g++, real nvcc for one CUDA unit, real ccache, a real FetchContent.

The parallelism rule, setup.py's MAX_JOBS / NVCC_THREADS division and ninja's progress lines are pure; the
rest runs the driver: progress while it runs and a warm rebuild from ccache, a time limit that leaves no
process behind, a compiler killed by SIGKILL reported as out of memory, the torch refusal before configure,
and a FetchContent that cannot reach the network when its override is missing.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from processes import children_of

from vllm_provision import GIB, catalog
from vllm_provision.build import cmake as driver
from vllm_provision.core import config
from vllm_provision.core.errors import ConfigError, StepFailed
from vllm_provision.core.settings import Settings
from vllm_provision.core.workspace import Workspace
from vllm_provision.plan import Plan, choose_parallelism, plan_build
from vllm_provision.probes import host

PYTHON = sys.executable
VENV_BIN = Path(PYTHON).parent
NVCC = next((p for p in (Path("/usr/local/cuda/bin/nvcc"), Path(shutil.which("nvcc") or "/nonexistent"))
             if p.is_file()), None)
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BUILD = {"arch_list": ["9.0"]}      # over vllm-provision.yaml's defaults


def build_settings(**build) -> Settings:
    return config.resolve({"build": BUILD | build}, environ={})


def release_for_env(torch: str | None = None):
    """0.26.0's recipe; `torch` replaces its pin (the small projects build against the test venv's torch)."""
    release = catalog.get_release("0.26.0")
    return dataclasses.replace(release, torch=SpecifierSet(f"=={torch}")) if torch else release


def make_plan(tmp_path: Path, *, release=None, offline=False, cpus=2, free_gib=12.0, **build) -> Plan:
    release = release or release_for_env(importlib.metadata.version("torch"))
    facts = host.HostFacts(cpu_count=cpus, mem_available_bytes=int(free_gib * GIB))
    settings = build_settings(**build)
    bp = plan_build(release, settings.build, facts, "13.0")
    return Plan(release=release, profile="pypi-cu13", offline=offline,
                workspace=Workspace(root=tmp_path / "ws", cache=tmp_path / "cache"), sources=(), env=None,
                patches=(), build=bp, smoke=settings.smoke, settings=settings)


# ------------------------------------------------------------------------------------------- pure
@pytest.mark.parametrize("cpus, free_gib, archs, want_jobs, want_threads, bound", [
    (16, 125.0, 1, 16, 1, "cores"),       # the H200 host: 112 GiB budget / 4.4 GiB = 25 > 16 cores
    (2, 22.0, 1, 2, 1, "cores"),          # this CI host
    (64, 64.0, 1, 13, 1, "memory"),       # vllm#14452's kind of host: cores to spare, memory is the limit
    (128, 1000.0, 2, 64, 2, "cores"),     # many slots and two archs: 2 nvcc threads a job, jobs x threads = cores
    (8, 3.0, 1, 1, 1, "memory"),          # less than a job's peak free: still one job
])
def test_jobs_and_threads_come_from_free_ram_and_cores(cpus, free_gib, archs, want_jobs, want_threads, bound):
    par = choose_parallelism(cpus=cpus, mem_available_bytes=int(free_gib * GIB), job_peak_bytes=int(4.4 * GIB),
                             archs=archs)
    assert (par.jobs, par.nvcc_threads) == (want_jobs, want_threads)
    assert f"bound by {bound}" in par.why and f"{cpus} cores" in par.why and "4.4 GiB a job" in par.why
    assert par.jobs * par.nvcc_threads * 4.4 * GIB <= max(par.memory_budget_bytes, 4.4 * GIB)
    assert par.memory_budget_bytes == int(free_gib * GIB * 0.9)


def test_the_plan_explains_the_cmake_build_and_the_archs_this_compiler_builds(tmp_path):
    release = catalog.get_release("0.26.0")
    facts = host.HostFacts(cpu_count=16, mem_available_bytes=125 * GIB)
    bp = plan_build(release, build_settings().build, facts, "13.0")
    assert (bp.max_jobs, bp.nvcc_threads) == (16, 1)
    assert bp.job_peak_bytes == int(4.4 * GIB) and bp.memory_budget_bytes == int(125 * GIB * 0.9)
    assert "16 cores" in bp.max_jobs_reason and bp.expected_seconds > 0 and "16 jobs" in bp.expected_reason
    assert {"10.0", "12.0", "11.0"} <= set(bp.compiler_archs)
    # a CUDA 12.4 compiler cannot build Blackwell: the plan says so instead of a failing compile
    older = plan_build(release, build_settings().build, facts, "12.4")
    assert not {"10.0", "12.0", "11.0"} & set(older.compiler_archs) and "9.0" in older.compiler_archs
    data = dataclasses.asdict(bp)       # the plan's build section, as `./inv plan` (text and --json) prints it
    assert {"max_jobs", "nvcc_threads", "max_jobs_reason", "memory_budget_bytes", "expected_seconds",
            "expected_reason", "compiler_archs"} <= set(data)


@pytest.mark.parametrize("cpus, free_gib, archs", [(16, 125.0, 1), (128, 1000.0, 2), (128, 2000.0, 4), (3, 5.0, 1)])
def test_setup_py_runs_the_planned_jobs_although_it_divides_max_jobs_by_nvcc_threads(cpus, free_gib, archs):
    """vllm#20079: setup.py runs MAX_JOBS // NVCC_THREADS jobs. Whatever the plan chose, pip's pass must end there."""
    par = choose_parallelism(cpus=cpus, mem_available_bytes=int(free_gib * GIB), job_peak_bytes=int(4.4 * GIB),
                             archs=archs)
    env = driver.setup_py_env(par.jobs, par.nvcc_threads)
    assert driver.setup_py_num_jobs(int(env["MAX_JOBS"]), int(env["NVCC_THREADS"]), cpus) == par.jobs
    # and the plain way (MAX_JOBS = the jobs wanted) would have run fewer whenever threads > 1
    if par.nvcc_threads > 1:
        assert driver.setup_py_num_jobs(par.jobs, par.nvcc_threads, cpus) < par.jobs


def test_ninja_progress_lines_give_rate_eta_and_the_closing_line():
    from vllm_provision.core.progress import ninja_status
    assert ninja_status("[12/417] Building CUDA object CMakeFiles/_C.dir/csrc/x.cu.o") == (12, 417)
    assert ninja_status("FAILED: CMakeFiles/_C.dir/a.cpp.o") is None
    p = driver.progress_at(done=30, total=120, elapsed=600, first_done=10)   # 20 units in 10 min
    assert p.per_minute == pytest.approx(2.0) and p.eta_seconds == pytest.approx(45 * 60)
    assert p.projected_seconds == pytest.approx(55 * 60)
    assert driver.format_final(p, 3600, stopped=True) == ("stopped at the time limit: 30/120 units in 10 min 00 s "
                                                          "(2.0 units/min); projected total 55 min 00 s, "
                                                          "the plan expected 1 h 00 min")
    assert driver.format_final(p, 1200, stopped=False) == ("compiled 30/120 units in 10 min 00 s; the plan expected "
                                                           "20 min 00 s (50% of it)")
    # a subset of the targets: the plan's estimate (the whole compile) is not the measure
    assert driver.format_final(p, 0, stopped=False) == "compiled 30/120 units in 10 min 00 s (2.0 units/min)"


def test_a_killed_compiler_is_recognised_and_the_job_count_goes_down():
    assert driver.killed_out_of_memory("c++: fatal error: Killed signal terminated program cc1plus", 1)
    assert driver.killed_out_of_memory("nvcc error   : 'cicc' died due to signal 9 (Kill signal)", 1)
    assert not driver.killed_out_of_memory("error: expected ';' before '}' token", 1)
    assert driver.safe_jobs(16, 1, int(60 * GIB), int(4.4 * GIB)) == 13       # 60 / 4.4 by the measured peak
    assert driver.safe_jobs(16, 1, int(200 * GIB), int(4.4 * GIB)) == 15      # never the same count again
    assert driver.safe_jobs(16, 1, 0, None) == 12 and driver.safe_jobs(1, 1, 0, None) == 1


# ------------------------------------------------------------------------------------------- real builds
CMAKELISTS = """cmake_minimum_required(VERSION 3.26)
project(tiny LANGUAGES CXX)
set(units a.cpp b.cpp c.cpp d.cpp)
if(DEFINED CMAKE_CUDA_COMPILER)
  enable_language(CUDA)
  set(CMAKE_CUDA_ARCHITECTURES 90)
  list(APPEND units k.cu)
endif()
add_library(_C SHARED ${units})
add_library(_moe_C SHARED e.cpp)
"""
UNIT = ("#include <map>\n#include <string>\n#include <vector>\n"
        "int f_{n}(int x) {{ std::map<std::string, std::vector<int>> m; m[\"a\"].push_back(x); return (int)m.size() + x; }}\n")


def tiny_project(root: Path, cuda: bool) -> Path:
    src = root / "src"
    src.mkdir(parents=True)
    (src / "CMakeLists.txt").write_text(CMAKELISTS)
    for n in "abcde":
        (src / f"{n}.cpp").write_text(UNIT.format(n=n))
    (src / "k.cu").write_text("__global__ void k(float* x) { x[threadIdx.x] *= 2.f; }\n"
                              "void launch(float* x) { k<<<1, 32>>>(x); }\n")
    return src


def cuda_home() -> str | None:
    if NVCC is None:
        assert not CI, "CI must have nvcc for the CUDA unit (/usr/local/cuda/bin/nvcc)"
        return None
    return str(NVCC.parent.parent)


def test_a_real_build_shows_progress_while_it_runs_and_a_warm_rebuild_hits_ccache(tmp_path):
    src = tiny_project(tmp_path, cuda=True)
    plan = make_plan(tmp_path)       # 2 cores, 12 GiB: 2 jobs
    seen: list[tuple[str, bool]] = []
    me = os.getpid()

    def say(text: str) -> None:     # what the user sees (progress.py's plain form), and whether the build ran then
        seen.append((text, bool(children_of(me))))

    kw = dict(cuda_home=cuda_home(), ccache_dir=tmp_path / "ccache", say=say, heartbeat_s=0.2, live=False)
    cold = driver.drive(plan, src, PYTHON, {}, ["_C", "_moe_C"], build_dir=tmp_path / "b1", **kw)
    units = 5 + (NVCC is not None)
    assert cold.edges_total == units + 2 and cold.units_done == cold.edges_total     # + two links
    assert cold.ccache["misses"] >= units and cold.ccache["hits"] == 0
    live = [t for t, running in seen[:-1] if running]
    assert len(live) >= 3 and all(t.startswith("compiling: ") and f"/{cold.edges_total} units" in t for t in live), seen
    assert any(re.search(r"\d+/\d+ units, .* elapsed, about .* left \(\d+\.\d units/min\)", t) for t in live), seen
    assert seen[0][0] == f"compiling: 0/{cold.edges_total} units, 0 s elapsed"
    # the targets named are a subset of a release's build: the plan's estimate for the whole is not the measure
    assert re.fullmatch(rf"compiled {cold.edges_total}/{cold.edges_total} units in \d+ s \(\d+\.\d units/min\)",
                        seen[-1][0]), seen[-1]
    # the planned jobs reach ninja's compile pool (setup.py's CMAKE_JOB_POOLS) and the -j
    rules = (tmp_path / "b1" / "CMakeFiles" / "rules.ninja").read_text() + (tmp_path / "b1" / "build.ninja").read_text()
    assert f"pool compile\n  depth = {plan.build.max_jobs}" in rules
    cache = (tmp_path / "b1" / "CMakeCache.txt").read_text()
    for setting in ("CMAKE_CXX_COMPILER_LAUNCHER:\\w+=ccache$", "CMAKE_CUDA_COMPILER_LAUNCHER:\\w+=ccache$",
                    "FETCHCONTENT_FULLY_DISCONNECTED:\\w+=ON$", f"NVCC_THREADS:\\w+={plan.build.nvcc_threads}$",
                    f"FETCHCONTENT_BASE_DIR:\\w+={tmp_path / 'b1' / '_deps'}$"):
        assert re.search(setting, cache, re.M), setting
    assert {u["unit"] for u in cold.unit_times} >= {"a.cpp", "b.cpp", "e.cpp"}
    assert cold.job_peak_memory_bytes and cold.peak_memory_bytes >= cold.job_peak_memory_bytes

    # another build dir, the same sources and cache: every unit from the cache
    warm = driver.drive(plan, src, PYTHON, {}, ["_C", "_moe_C"], build_dir=tmp_path / "b2", **kw)
    assert warm.ccache["hits"] >= units and warm.ccache["misses"] == 0, warm.ccache


SLOW_CMAKELISTS = CMAKELISTS + """
add_custom_command(OUTPUT slow.stamp COMMAND sleep 97.25 COMMAND ${CMAKE_COMMAND} -E touch slow.stamp)
add_custom_target(slow DEPENDS slow.stamp)
"""


def sleepers() -> list[int]:
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"97.25" in cmdline.read_bytes():
                out.append(int(cmdline.parent.name))
        except OSError:
            pass
    return out


def test_a_time_limit_stops_the_build_with_nothing_left_and_projects_the_total(tmp_path):
    src = tiny_project(tmp_path, cuda=False)
    (src / "CMakeLists.txt").write_text(SLOW_CMAKELISTS)
    for n in "abcd":        # units of milliseconds: some finish before the limit even on a busy host
        (src / f"{n}.cpp").write_text(f"int f_{n}() {{ return 1; }}\n")
    plan = make_plan(tmp_path)
    shown: list[str] = []
    started = time.monotonic()
    facts = driver.drive(plan, src, PYTHON, {}, ["slow", "_C"], time_limit=8, ccache_dir=tmp_path / "ccache",
                         say=shown.append, heartbeat_s=1, live=False)
    assert time.monotonic() - started < 60
    assert facts.stopped_at_limit and 0 < facts.units_done < facts.edges_total == 6     # 4 units, a link, the sleep
    # a heartbeat while no unit finishes (the sleep): lines keep coming, the total known from the start
    beats = [t for t in shown[:-1] if t.startswith(f"compiling: {facts.units_done}/6 units")]
    assert len(beats) >= 2, shown
    assert facts.units_per_minute > 0 and facts.projected_seconds > facts.seconds
    assert shown[-1].startswith(f"stopped at the time limit: {facts.units_done}/{facts.edges_total} units")
    assert facts.job_peak_memory_bytes and facts.job_peak_memory_bytes < 2 * GIB
    assert not sleepers() and not children_of(os.getpid())       # no compiler, no sleep, no ninja left


KILLER = """#!/bin/sh
# gcc -wrapper: becomes the compiler proper, which is then killed by SIGKILL, as the kernel's OOM killer does
( while [ "$(cat /proc/$$/comm 2>/dev/null)" != "$(basename "$1")" ]; do :; done; kill -9 $$ ) &
exec "$@"
"""


def test_a_compiler_killed_by_sigkill_is_reported_as_out_of_memory_with_a_job_count(tmp_path):
    src = tiny_project(tmp_path, cuda=False)
    wrapper = tmp_path / "oom" / "cc1plus"
    wrapper.parent.mkdir()
    wrapper.write_text(KILLER)
    wrapper.chmod(0o755)
    (src / "oom.cpp").write_text("#include <regex>\n#include <iostream>\nint g() { std::regex r(\"a+\"); "
                                 "return std::regex_match(\"aa\", r); }\n")
    (src / "CMakeLists.txt").write_text(CMAKELISTS.replace("a.cpp b.cpp", "oom.cpp a.cpp b.cpp") +
                                        f'set_source_files_properties(oom.cpp PROPERTIES COMPILE_OPTIONS "-wrapper;{wrapper}")\n')
    plan = make_plan(tmp_path)
    assert plan.build.max_jobs == 2
    with pytest.raises(StepFailed) as err:
        driver.drive(plan, src, PYTHON, {}, ["_C"], ccache_dir=tmp_path / "ccache", live=False,
                     say=lambda t: None)
    assert "out of memory, at 2 jobs x 1 nvcc thread(s)" in err.value.message
    assert err.value.hint.startswith("rerun with --max-jobs 1 ")
    assert "Killed signal terminated program" in err.value.log_tail


def test_another_torch_in_the_env_is_refused_before_configure(tmp_path):
    src = tiny_project(tmp_path, cuda=False)
    plan = make_plan(tmp_path, release=release_for_env("2.11.0"))
    have = importlib.metadata.version("torch")
    with pytest.raises(ConfigError) as err:
        driver.drive(plan, src, PYTHON, {}, ["_C"], build_dir=tmp_path / "b", live=False, say=lambda t: None)
    assert f"the env's torch is {have}" in err.value.message and "torch ==2.11.0" in err.value.message
    assert "./inv env --force" in err.value.hint and err.value.exit_code == 2
    assert not (tmp_path / "b" / "CMakeCache.txt").exists()


# ------------------------------------------------------------------------------------------- offline configure
FETCH_CMAKELISTS = """cmake_minimum_required(VERSION 3.26)
project(fetching LANGUAGES CXX)
include(FetchContent)
# the pattern of vLLM's cmake/external_projects: a local copy through an environment variable, else git
if(DEFINED ENV{TINYDEP_SRC_DIR})
  FetchContent_Declare(tinydep SOURCE_DIR $ENV{TINYDEP_SRC_DIR})
else()
  FetchContent_Declare(tinydep GIT_REPOSITORY https://github.com/example-org/tinydep.git
                       GIT_TAG 0123456789abcdef0123456789abcdef01234567)
endif()
FetchContent_MakeAvailable(tinydep)
add_library(_C SHARED main.cpp)
target_link_libraries(_C PRIVATE tinydep)
"""


class ConnectionRecorder:
    """A proxy on 127.0.0.1 that records every connection made to it and answers none."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.connections: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                self.connections.append(conn.recv(4096))
            except OSError:
                self.connections.append(b"")
            conn.close()

    def env(self) -> dict[str, str]:
        proxies = {k: self.url for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                                         "all_proxy")}
        return dict({k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}, **proxies)


def fetching_project(root: Path) -> tuple[Path, Path]:
    src = root / "src"
    src.mkdir(parents=True)
    (src / "CMakeLists.txt").write_text(FETCH_CMAKELISTS)
    (src / "main.cpp").write_text("int tinydep();\nint api() { return tinydep(); }\n")
    dep = root / "externals" / "tinydep"
    dep.mkdir(parents=True)
    (dep / "CMakeLists.txt").write_text("add_library(tinydep STATIC tinydep.cpp)\n"
                                        "set_target_properties(tinydep PROPERTIES POSITION_INDEPENDENT_CODE ON)\n")
    (dep / "tinydep.cpp").write_text("int tinydep() { return 7; }\n")
    return src, dep


def test_configure_uses_the_override_and_without_it_fails_with_no_network_attempt(tmp_path):
    src, dep = fetching_project(tmp_path)
    recorder = ConnectionRecorder()
    quiet = dict(live=False, say=lambda t: None, ccache_dir=tmp_path / "ccache", base_env=recorder.env())
    plan = make_plan(tmp_path)
    built = driver.drive(plan, src, PYTHON, {"TINYDEP_SRC_DIR": dep}, ["_C"], build_dir=tmp_path / "b1", **quiet)
    assert built.units_done == built.edges_total >= 3

    # or through FetchContent's own variable, over the repository the project declares
    by_cmake = driver.drive(plan, src, PYTHON, {"FETCHCONTENT_SOURCE_DIR_TINYDEP": dep}, ["_C"],
                            build_dir=tmp_path / "b4", **quiet)
    assert by_cmake.units_done == by_cmake.edges_total >= 3

    with pytest.raises(StepFailed) as err:
        driver.drive(plan, src, PYTHON, {}, ["_C"], build_dir=tmp_path / "b2", **quiet)
    assert err.value.message.startswith("cmake configure failed")
    assert "override directory" in err.value.hint
    assert recorder.connections == []

    # the proof has teeth: the same configure without the disconnection tries the network through the proxy
    cmake = shutil.which("cmake", path=str(VENV_BIN)) or "cmake"
    (tmp_path / "b3").mkdir()
    done = subprocess.run([cmake, str(src), "-G", "Ninja", f"-DFETCHCONTENT_BASE_DIR={tmp_path / 'b3' / '_deps'}"],
                          cwd=tmp_path / "b3", env=dict(recorder.env(), GIT_TERMINAL_PROMPT="0"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert any(b"github.com" in c for c in recorder.connections), (recorder.connections, done.stdout[-2000:])


def test_offline_runs_configure_and_build_without_a_network(tmp_path):
    src, dep = fetching_project(tmp_path)
    plan = make_plan(tmp_path, offline=True)
    prefix, note = driver.network_isolation(True)
    if not prefix:
        assert not CI, f"CI runs as root and can make a network namespace: {note}"
        pytest.skip(note)
    built = driver.drive(plan, src, PYTHON, {"TINYDEP_SRC_DIR": dep}, ["_C"], build_dir=tmp_path / "b",
                         live=False, say=lambda t: None, ccache_dir=tmp_path / "ccache")
    assert built.network_isolated and built.units_done == built.edges_total
    assert any("without a network" in n for n in built.notes)


# ------------------------------------------------------------------------------------------- pip's pass
# vLLM 0.26.0's cmake_build_ext, cut to what decides the configure and the compile (setup.py lines 197-354):
# MAX_JOBS // NVCC_THREADS, the launcher found by name, sys.executable and sys.path, FETCHCONTENT_BASE_DIR,
# the job pool, CMAKE_CUDA_COMPILER, CMAKE_ARGS appended; then `cmake --build . -j=N --target=...` in
# build_temp. It records the jobs it ran with.
VLLM_LIKE_SETUP = '''
import os, shutil, subprocess, sys
from shutil import which
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT_DIR = os.path.dirname(os.path.abspath(__file__))

class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[], py_limited_api=True)

class cmake_build_ext(build_ext):
    def compute_num_jobs(self):
        num_jobs = int(os.environ["MAX_JOBS"]) if os.environ.get("MAX_JOBS") else len(os.sched_getaffinity(0))
        nvcc_threads = int(os.environ["NVCC_THREADS"]) if os.environ.get("NVCC_THREADS") else 1
        return max(1, num_jobs // nvcc_threads), nvcc_threads

    def build_extensions(self):
        os.makedirs(self.build_temp, exist_ok=True)
        num_jobs, nvcc_threads = self.compute_num_jobs()
        args = ["-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DVLLM_TARGET_DEVICE=cuda"]
        if which("ccache"):
            args += [f"-DCMAKE_{l}_COMPILER_LAUNCHER=ccache" for l in ("C", "CXX", "CUDA", "HIP")]
        args += [f"-DVLLM_PYTHON_EXECUTABLE={sys.executable}", "-DVLLM_PYTHON_PATH=" + ":".join(sys.path)]
        args += ["-DFETCHCONTENT_BASE_DIR=" + os.environ.get("FETCHCONTENT_BASE_DIR", os.path.join(ROOT_DIR, ".deps"))]
        args += [f"-DNVCC_THREADS={nvcc_threads}", "-DCMAKE_JOB_POOL_COMPILE:STRING=compile",
                 f"-DCMAKE_JOB_POOLS:STRING=compile={num_jobs}"]
        if os.environ.get("CUDA_HOME"):
            args += [f"-DCMAKE_CUDA_COMPILER={os.environ['CUDA_HOME']}/bin/nvcc"]
        args += os.environ.get("CMAKE_ARGS", "").split()
        subprocess.check_call(["cmake", ROOT_DIR, "-G", "Ninja", *args], cwd=self.build_temp)
        with open(os.path.join(ROOT_DIR, "setup-py-jobs.txt"), "w") as fh:
            fh.write(f"{num_jobs} {self.build_temp}")
        targets = [e.name.removeprefix("tinyvllm.") for e in self.extensions]
        subprocess.check_call(["cmake", "--build", ".", f"-j={num_jobs}", *[f"--target={t}" for t in targets]],
                              cwd=self.build_temp)
        for ext, target in zip(self.extensions, targets):     # vLLM: cmake --install --component <target>
            os.makedirs(os.path.dirname(self.get_ext_fullpath(ext.name)), exist_ok=True)
            shutil.copy(os.path.join(self.build_temp, f"lib{target}.so"), self.get_ext_fullpath(ext.name))

setup(name="tinyvllm", version="0.0.1", packages=["tinyvllm"],
      ext_modules=[CMakeExtension("tinyvllm._C"), CMakeExtension("tinyvllm._moe_C")],
      cmdclass={"build_ext": cmake_build_ext})
'''


def test_pips_editable_pass_reuses_the_build_tree_and_runs_the_planned_jobs(tmp_path):
    src = tiny_project(tmp_path, cuda=False)
    (src / "setup.py").write_text(VLLM_LIKE_SETUP)
    (src / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n')
    (src / "tinyvllm").mkdir()
    (src / "tinyvllm" / "__init__.py").write_text("")
    venv = tmp_path / "env"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # the toolkit venv's packages (torch, setuptools, pip) seen from an env of its own, which pip installs into
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "toolkit.pth").write_text(subprocess.run(
        [PYTHON, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True,
        check=True).stdout)
    # three nvcc threads a job, as on a large multi-arch host: setup.py would run MAX_JOBS // 3
    plan = make_plan(tmp_path)
    plan = dataclasses.replace(plan, build=dataclasses.replace(plan.build, max_jobs=2, nvcc_threads=3))
    kw = dict(ccache_dir=tmp_path / "ccache", base_env=dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}"))
    facts = driver.drive(plan, src, python, {}, ["_C", "_moe_C"], live=False, say=lambda t: None, **kw)
    assert facts.units_done == facts.edges_total == 7

    compiled = driver.editable_install(plan, src, python, {}, facts, tmp_path / "pip.log", **kw)
    jobs, build_temp = (src / "setup-py-jobs.txt").read_text().split(" ", 1)
    assert Path(build_temp).resolve() == facts.build_dir          # setuptools built in the driver's tree ...
    assert compiled == 0, (tmp_path / "pip.log").read_text()[-3000:]   # ... and compiled nothing there
    assert int(jobs) == plan.build.max_jobs == 2                  # MAX_JOBS // NVCC_THREADS = the plan's jobs
    assert list((src / "tinyvllm").glob("_C.*.so")) and list((src / "tinyvllm").glob("_moe_C.*.so"))


# ------------------------------------------------------------------------------------------- the compiler floor
def test_the_release_compiler_floor_is_checked_for_doctor_and_preflight():
    from vllm_provision.checks.toolchain import check_release_floor
    release = catalog.get_release("0.26.0")
    old = check_release_floor(release, "10.2.1", "3.25.1", "13.0", "/usr/bin/cmake")
    assert old.status == "fail" and "gcc 10.2.1 < 11.3" in old.detail and "cmake 3.25.1 < 3.26.1" in old.detail
    assert "g++" in old.hint and "cmake>=3.26.1" in old.hint and "/usr/bin/cmake" in old.hint
    assert check_release_floor(release, "12.2.0", "3.26.4", "11.8").status == "fail"
    ok = check_release_floor(release, "12.2.0", None, "13.0")      # no env yet: its lock brings cmake
    assert ok.status == "pass" and "gcc 12.2.0 >= 11.3" in ok.detail and "cmake ?" in ok.detail
    assert check_release_floor(catalog.get_release("0.2.2"), "12.2.0", None, "13.0").status == "skip"


def test_targets_and_a_time_limit_are_refused_for_a_setuptools_release():
    facts = host.HostFacts(cpu_count=2, mem_available_bytes=8 * GIB)
    with pytest.raises(ConfigError) as err:
        plan_build(catalog.get_release("0.2.2"), build_settings(time_limit=600).build, facts, "13.0")
    assert "CMake-era" in err.value.message and err.value.exit_code == 2
    bp = plan_build(release_for_env(), build_settings(time_limit=600, targets=["_C"]).build, facts, "13.0")
    assert bp.time_limit == 600.0 and bp.targets == ("_C",)
    # the task's flags reach the plan through the settings (./inv build --time-limit 600 --targets _C,_moe_C)
    from vllm_provision import cli
    with pytest.raises(ConfigError):
        cli.make_plan(release="0.2.2", time_limit=600, targets=["_C"])


def test_flash_attention_is_handed_over_as_fetchcontents_source_so_the_release_installs_it_as_files(tmp_path):
    """0.26.0 installs FA4's cute package as a symlink into VLLM_FLASH_ATTN_SRC_DIR when that is set: the catalog
    names CMake's FETCHCONTENT_SOURCE_DIR_VLLM-FLASH-ATTN instead, which travels as a -D definition."""
    fa, cutlass = tmp_path / "fa", tmp_path / "cutlass"
    from vllm_provision.catalog import get_release
    assert "FETCHCONTENT_SOURCE_DIR_VLLM-FLASH-ATTN" in {e.override for e in get_release("0.26.0").externals}
    env, args = driver.external_settings({"FETCHCONTENT_SOURCE_DIR_VLLM-FLASH-ATTN": fa, "VLLM_CUTLASS_SRC_DIR": cutlass})
    assert env == {"VLLM_CUTLASS_SRC_DIR": str(cutlass)}
    assert args == [f"-DFETCHCONTENT_SOURCE_DIR_VLLM-FLASH-ATTN={fa}"]
    # the catalog may name FetchContent's variable itself: the same argument
    assert driver.external_settings({"FETCHCONTENT_SOURCE_DIR_VLLM-FLASH-ATTN": fa}) == ({}, args)
    base = {"PATH": "/usr/bin", "VLLM_FLASH_ATTN_SRC_DIR": "/elsewhere"}      # one the user exported is not used
    env, _ = driver.driver_env(make_plan(tmp_path), tmp_path / "src", PYTHON, {"FETCHCONTENT_SOURCE_DIR_VLLM-FLASH-ATTN": fa},
                               tmp_path / "b", base=base)
    assert "VLLM_FLASH_ATTN_SRC_DIR" not in env
    assert env["CMAKE_ARGS"].split() == ["-DFETCHCONTENT_FULLY_DISCONNECTED=ON", "-DCMAKE_POLICY_DEFAULT_CMP0170=NEW",
                                         f"-DFETCHCONTENT_SOURCE_DIR_VLLM-FLASH-ATTN={fa}"]
    assert env["FETCHCONTENT_BASE_DIR"] == str(tmp_path / "b" / "_deps")
    assert env["MAX_JOBS"] == str(make_plan(tmp_path).build.max_jobs)


def test_doctor_says_which_of_the_release_archs_this_nvcc_builds():
    from vllm_provision.checks.toolchain import check_archs
    release = catalog.get_release("0.26.0")
    cuda13 = host.NvccInfo("/x/nvcc", "", "13.0", archs=("7.5", "8.0", "8.6", "8.7", "8.9", "9.0", "10.0", "11.0", "12.0"))
    ok = check_archs(("9.0",), "config", release, cuda13)
    assert ok.status == "pass" and "this nvcc builds 7.5, 8.0, 8.6, 8.7, 8.9, 9.0, 10.0, 11.0, 12.0" in ok.detail
    cuda126 = host.NvccInfo("/x/nvcc", "", "12.6", archs=("7.5", "8.0", "8.6", "8.7", "8.9", "9.0"))
    old = check_archs(("12.0",), "config", release, cuda126)
    assert old.status == "fail" and "of vLLM 0.26.0's: 7.5, 8.0, 8.6, 8.7, 8.9, 9.0" in old.detail


def test_the_plans_estimate_is_the_releases_measured_work():
    """0.26.0's compile work for one arch is catalog data (measured on an H200: 16 jobs, projected 33-35 min)."""
    from vllm_provision.catalog import get_release
    from vllm_provision.plan import expected_cmake_seconds
    release = get_release("0.26.0")
    assert release.compile_cpu_seconds_per_arch == 33000
    assert 33 * 60 <= expected_cmake_seconds(release, 1, 16, 1) <= 35 * 60


def _shared_lib(path: Path, soname: str) -> Path:
    """A real (empty) shared library under `path`, as the CUDA wheels and a driver install lay them out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    src = path.with_suffix(".c")
    src.write_text("int vllmp_marker(void) { return 1; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(path), str(src)], check=True)
    return path


def test_a_wheel_toolkit_gets_link_names_and_a_driver_stub_only_where_the_host_has_no_driver(tmp_path):
    """The PyPI CUDA wheels ship libX.so.<major> only and a GPU-less host has no libcuda: CMake's FindCUDAToolkit
    would leave CUDA_nvrtc_LIBRARY / CUDA_cuda_driver_LIBRARY NOTFOUND. The driver's link directory gives the
    unversioned names, and libcuda from the host's driver when there is one, else a stub exporting cuda.h's API."""
    home = tmp_path / "nvidia" / "cu13"
    _shared_lib(home / "lib" / "libnvrtc.so.13", "libnvrtc.so.13")
    _shared_lib(home / "lib" / "libcudart.so.13", "libcudart.so.13")
    (home / "lib" / "libcudart.so").symlink_to("libcudart.so.13")         # present already: left alone
    (home / "lib64").symlink_to("lib")
    (home / "include").mkdir()
    (home / "include" / "cuda.h").write_text("CUresult CUDAAPI cuInit(unsigned int Flags);\n"
                                             "#define cuMemAlloc cuMemAlloc_v2\n"
                                             "CUresult CUDAAPI cuMemAlloc(CUdeviceptr *dptr, size_t bytesize);\n")
    # no driver anywhere: a stub, soname libcuda.so.1, with the API's names (both spellings)
    link, note = driver.cuda_link_dir(str(home), tmp_path / "link", system_dirs=[str(tmp_path / "none")])
    assert sorted(p.name for p in link.iterdir() if p.is_symlink()) == ["libcuda.so", "libnvrtc.so"]
    assert (link / "libnvrtc.so").resolve() == (home / "lib" / "libnvrtc.so.13").resolve()
    assert "no CUDA driver library on this host: linking against a stub" in note
    stub = (link / "libcuda.so").resolve()
    dynamic = subprocess.run(["readelf", "-d", "--dyn-syms", "-W", str(stub)], capture_output=True, text=True,
                             check=True).stdout
    assert "Library soname: [libcuda.so.1]" in dynamic
    assert {"cuInit", "cuMemAlloc", "cuMemAlloc_v2"} <= set(re.findall(r"\b(cu[A-Z]\w*)$", dynamic, re.M))
    # a host with the driver (a GPU container mounts libcuda.so.1 only): linked against it, no note
    system = tmp_path / "usr" / "lib"
    real = _shared_lib(system / "libcuda.so.1", "libcuda.so.1")
    link, note = driver.cuda_link_dir(str(home), tmp_path / "link", system_dirs=[str(system)])
    assert (link / "libcuda.so").resolve() == real.resolve() and note == "" and not (link / "stub").exists()
    # a toolkit that carries NVIDIA's stub and no driver: that stub
    toolkit_stub = _shared_lib(home / "lib" / "stubs" / "libcuda.so", "libcuda.so.1")
    link, note = driver.cuda_link_dir(str(home), tmp_path / "link", system_dirs=[])
    assert (link / "libcuda.so").resolve() == toolkit_stub.resolve() and "the toolkit's stub" in note
    # configure, the compile and pip's pass search it first: CMake (CMAKE_LIBRARY_PATH) and a bare `g++ -lnvrtc`
    env, _ = driver.driver_env(make_plan(tmp_path), tmp_path / "src", PYTHON, {}, tmp_path / "b",
                               base={"PATH": "/usr/bin", "LIBRARY_PATH": "/opt/x"}, link_dir=link)
    assert env["CMAKE_LIBRARY_PATH"] == str(link) and env["LIBRARY_PATH"] == f"{link}:/opt/x"
    assert driver.cuda_link_dir(None, tmp_path / "none") == (None, "")


def test_a_cmake_builds_timings_page_comes_from_its_ninja_log(tmp_path):
    """steps/build.py's run_cmake on a real (small) CMake project: the compile's .ninja_log becomes the
    workspace's timings page, linked from the build's facts; a --targets subset is reported as skipped."""
    from vllm_provision.core import timings
    from vllm_provision.core.envinfo import EnvInfo
    from vllm_provision.pipeline import StepContext
    from vllm_provision.steps.build import run_cmake
    release = dataclasses.replace(release_for_env(importlib.metadata.version("torch")), externals=())
    plan = make_plan(tmp_path, release=release, targets=["_C"])
    tiny_project(plan.workspace.root, cuda=False)
    plan.workspace.ensure()
    plan.workspace.logs.mkdir(parents=True, exist_ok=True)
    info = EnvInfo(backend="venv", prefix=str(VENV_BIN.parent), python=PYTHON, python_version="3.11")
    out = run_cmake(StepContext(plan, host.HostFacts(), "build"), info)
    assert out.status == "skipped" and out.detail.startswith("built _C only: 5/5 units")
    page = plan.workspace.root / timings.PAGE
    assert out.facts.timings == timings.PAGE and page.is_file()
    html = page.read_text()
    assert all(f"{n}.cpp.o" in html for n in "abcd") and f"vLLM {release.version} for 9.0" in html
