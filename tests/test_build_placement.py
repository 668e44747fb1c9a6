"""CPU placement of the compiles: which units get cores of their own, and the wrappers applying it
(real sysfs-shaped trees, real /bin/sh wrappers, real taskset and g++)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vllm_provision.build import compiler_wrapper, make_build_env, ninja_unit_times
from vllm_provision.build.placement import Placement, critical_units, physical_cores, plan_placement
from vllm_provision.catalog import get_release

# vLLM 0.2.2's extension sources and their sizes in bytes (sdist sha256 d047bec3…)
SOURCES_022 = {
    "csrc/cache.cpp": 1151, "csrc/cache_kernels.cu": 14771, "csrc/attention.cpp": 1101,
    "csrc/attention/attention_kernels.cu": 39347, "csrc/pos_encoding.cpp": 367, "csrc/pos_encoding_kernels.cu": 4516,
    "csrc/layernorm.cpp": 521, "csrc/layernorm_kernels.cu": 3713, "csrc/activation.cpp": 527,
    "csrc/activation_kernels.cu": 4020, "csrc/quantization.cpp": 486, "csrc/quantization/awq/gemm_kernels.cu": 30828,
    "csrc/quantization/squeezellm/quant_cuda_kernel.cu": 3464, "csrc/cuda_utils.cpp": 251,
    "csrc/cuda_utils_kernels.cu": 301,
}


def _sysfs(root: Path, siblings: dict[int, str]) -> Path:
    for cpu, text in siblings.items():
        d = root / f"cpu{cpu}" / "topology"
        d.mkdir(parents=True)
        (d / "thread_siblings_list").write_text(text + "\n")
    return root


def test_critical_units_from_release_data_else_the_largest_kernels():
    # without measurements: the CUDA sources at least half the largest one
    assert critical_units(SOURCES_022) == ["csrc/attention/attention_kernels.cu",
                                           "csrc/quantization/awq/gemm_kernels.cu"]
    assert critical_units({"a.cpp": 10}) == []
    # the catalog's measurement wins: gemm_kernels.cu compiles no slower than the other kernels
    known = get_release("0.2.2").slowest_units
    assert critical_units(SOURCES_022, known) == ["csrc/attention/attention_kernels.cu"]
    assert critical_units({"other.cu": 5}, known) == []


def test_smt_host_reserves_whole_cores(tmp_path):
    # 16 CPUs, 8 cores with two threads each (siblings i and i+8), as lscpu shows on many cloud hosts
    sysfs = _sysfs(tmp_path, {c: f"{c % 8},{c % 8 + 8}" for c in range(16)})
    cores = physical_cores(range(16), sysfs)
    assert cores[0] == (0, 8) and len(cores) == 8
    # two critical units (the size fallback) on 8 cores: one core (two CPUs) each
    p = plan_placement(critical_units(SOURCES_022), cores)
    assert p.reserved == {"csrc/attention/attention_kernels.cu": "7,15",
                          "csrc/quantization/awq/gemm_kernels.cu": "6,14"}
    pool = {int(c) for c in p.pool.split(",")}
    assert pool == set(range(16)) - {6, 7, 14, 15}
    assert p.threads_per_core == 2
    # one critical unit (release data): two cores, four CPUs
    one = plan_placement(critical_units(SOURCES_022, get_release("0.2.2").slowest_units), cores)
    assert one.reserved == {"csrc/attention/attention_kernels.cu": "6,7,14,15"}


def test_placement_only_where_cores_can_be_spared():
    one_thread = lambda n: [(c,) for c in range(n)]  # noqa: E731
    units = critical_units(SOURCES_022, get_release("0.2.2").slowest_units)
    # the H100 VM (16 vCPUs, one thread per core): four for the slowest unit, at most MAX_UNIT_CORES
    p16 = plan_placement(units, one_thread(16))
    assert p16.reserved == {"csrc/attention/attention_kernels.cu": "12,13,14,15"}
    assert p16.pool == ",".join(str(c) for c in range(12))
    assert plan_placement(units, one_thread(64)).reserved == {"csrc/attention/attention_kernels.cu": "60,61,62,63"}
    p16b = plan_placement(critical_units(SOURCES_022), one_thread(16))   # two units: two cores each
    assert list(p16b.reserved.values()) == ["14,15", "12,13"] and p16b.pool == ",".join(str(c) for c in range(12))
    p8 = plan_placement(units, one_thread(8))
    assert p8.reserved == {"csrc/attention/attention_kernels.cu": "6,7"}
    p4 = plan_placement(units, one_thread(4))
    assert p4.reserved == {"csrc/attention/attention_kernels.cu": "3"} and p4.pool == "0,1,2"
    assert plan_placement(units, one_thread(2)) is None   # this CI host
    assert plan_placement(units, one_thread(16), pool_cpus=4).pool == "0,1,2,3"
    assert plan_placement(units, one_thread(16), unit_cores=1).reserved == {"csrc/attention/attention_kernels.cu": "15"}
    # a cpuset of CPUs 4-19: the last ones of the set
    p_set = plan_placement(units, [(c,) for c in range(4, 20)])
    assert p_set.reserved == {"csrc/attention/attention_kernels.cu": "16,17,18,19"}
    assert p_set.pool == ",".join(str(c) for c in range(4, 16))


def test_cpus_outside_the_affinity_mask_are_ignored(tmp_path):
    sysfs = _sysfs(tmp_path, {c: f"{c % 4},{c % 4 + 4}" for c in range(8)})
    assert physical_cores([0, 1, 2, 4, 5], sysfs) == [(0, 4), (1, 5), (2,)]
    assert physical_cores([3], tmp_path / "missing") == [(3,)]      # no topology: one CPU, one core


needs_two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not shutil.which("taskset"),
                                    reason="needs two CPUs and taskset")


@needs_two_cpus
def test_wrapper_runs_a_critical_unit_on_its_own_cpu(tmp_path):
    # the "compiler" reports the CPUs it may run on: what the placement must change
    probe = tmp_path / "compiler"
    probe.write_text("#!/bin/sh\ngrep Cpus_allowed_list /proc/self/status | cut -f2\n")
    probe.chmod(0o755)
    first, second = sorted(os.sched_getaffinity(0))[:2]
    placement = Placement(reserved={"csrc/attention/attention_kernels.cu": str(second)}, pool=str(first),
                          threads_per_core=1)
    wrapper = tmp_path / "nvcc"
    wrapper.write_text(compiler_wrapper(str(probe), ccache=None, placement=placement,
                                        taskset=shutil.which("taskset"), nvcc=True))
    wrapper.chmod(0o755)
    run = lambda *a: subprocess.run([str(wrapper), *a], capture_output=True, text=True, check=True).stdout.strip()  # noqa: E731
    assert run("-c", "/w/src/csrc/attention/attention_kernels.cu", "-o", "a.o") == str(second)
    assert run("-c", "/w/src/csrc/cache_kernels.cu", "-o", "c.o") == str(first)
    assert run("--version") == str(first)


@needs_two_cpus
def test_build_env_wrappers_compile_for_real_with_placement(tmp_path):
    cxx = shutil.which("g++")
    if not cxx:
        pytest.skip("no g++")
    first, second = sorted(os.sched_getaffinity(0))[:2]
    placement = Placement(reserved={"csrc/slow.cu": str(second)}, pool=str(first), threads_per_core=1)
    b = make_build_env(base={"PATH": os.environ["PATH"], "CXX": cxx}, python=str(tmp_path / "bin" / "python"),
                       cuda_home=None, arch_list="9.0", jobs_per_ext=1, tools_dir=tmp_path / "tools",
                       src=tmp_path, ccache_dir=tmp_path / "cc", use_ccache=False, placement=placement)
    assert b.placement == placement and any("CPU placement" in n for n in b.notes)
    (tmp_path / "hello.cpp").write_text("int main() { return 7; }\n")
    subprocess.run([b.env["CXX"], "-o", str(tmp_path / "hello"), str(tmp_path / "hello.cpp")], check=True)
    assert subprocess.run([str(tmp_path / "hello")]).returncode == 7
    assert f"cpus={first}" in Path(b.env["CXX"]).read_text()


def test_no_wrappers_without_cache_or_placement(tmp_path):
    b = make_build_env(base={"PATH": os.environ["PATH"]}, python=str(tmp_path / "python"), cuda_home=None,
                       arch_list="9.0", jobs_per_ext=1, tools_dir=tmp_path / "tools", src=tmp_path,
                       ccache_dir=tmp_path / "cc", use_ccache=False)
    assert "PYTORCH_NVCC" not in b.env and not (tmp_path / "tools").exists()


@pytest.mark.skipif(not shutil.which("ninja"), reason="needs ninja")
def test_unit_times_come_from_a_real_ninja_run(tmp_path):
    src = tmp_path / "src"
    (src / "csrc").mkdir(parents=True)
    for name in ("slow.cu", "fast.cpp"):
        (src / "csrc" / name).write_text("x\n")
    temp = tmp_path / "build" / "temp-ext"
    temp.mkdir(parents=True)
    # the shape torch's cpp_extension writes: absolute outputs and inputs
    (temp / "build.ninja").write_text(
        "ninja_required_version = 1.3\n"
        "rule slow_compile\n  command = sleep 0.6 && cp $in $out\n"
        "rule fast_compile\n  command = cp $in $out\n"
        f"build {temp}/csrc/slow.o: slow_compile {src}/csrc/slow.cu\n"
        f"build {temp}/csrc/fast.o: fast_compile {src}/csrc/fast.cpp\n")
    (temp / "csrc").mkdir()
    subprocess.run(["ninja", "-j", "2"], cwd=temp, check=True, capture_output=True)
    units = ninja_unit_times(temp, src)
    assert [u["unit"] for u in units] == ["csrc/slow.cu", "csrc/fast.cpp"]
    assert units[0]["seconds"] >= 0.5 and units[1]["seconds"] < 0.5
    assert ninja_unit_times(tmp_path / "nowhere", src) == []


def test_several_cores_for_the_slowest_unit(tmp_path):
    units = critical_units(SOURCES_022, get_release("0.2.2").slowest_units)
    one_thread = [(c,) for c in range(16)]
    p = plan_placement(units, one_thread, unit_cores=4)
    assert p.reserved == {"csrc/attention/attention_kernels.cu": "12,13,14,15"}
    assert p.split_threads("csrc/attention/attention_kernels.cu") == 1      # until nvcc is known to split
    from dataclasses import replace
    assert replace(p, split_compile=True).split_threads("csrc/attention/attention_kernels.cu") == 4
    assert plan_placement(units, one_thread, unit_cores=5) is None         # the others would keep < 3 per reserved
    # SMT: two cores are four CPUs
    smt = physical_cores(range(16), _sysfs(tmp_path, {c: f"{c % 8},{c % 8 + 8}" for c in range(16)}))
    assert plan_placement(units, smt, unit_cores=2).reserved == {"csrc/attention/attention_kernels.cu": "6,7,14,15"}


from cuda import NVCC as HOST_NVCC  # noqa: E402 - the CUDA 13.0 compiler wheels
from cuda import needs_nvcc  # noqa: E402


@needs_two_cpus
@needs_nvcc
def test_real_nvcc_splits_the_critical_unit_over_its_cpus(tmp_path):
    first, second = sorted(os.sched_getaffinity(0))[:2]
    src = tmp_path / "src"
    (src / "csrc").mkdir(parents=True)
    for name in ("slow.cu", "fast.cu"):
        (src / "csrc" / name).write_text("__global__ void k() {}\n")
    placement = Placement(reserved={"csrc/slow.cu": f"{first},{second}"}, pool=str(first), threads_per_core=1)
    b = make_build_env(base={"PATH": os.environ["PATH"]}, python=str(tmp_path / "bin" / "python"),
                       cuda_home=str(HOST_NVCC.parent.parent), arch_list="9.0", jobs_per_ext=1,
                       tools_dir=tmp_path / "tools", src=src, ccache_dir=tmp_path / "cc", use_ccache=False,
                       placement=placement)
    assert b.placement.split_compile and "nvcc -split-compile 2" in b.placement.describe()

    def ptxas_line(name: str) -> str:
        done = subprocess.run([b.env["PYTORCH_NVCC"], "--dryrun", "-c", str(src / "csrc" / name), "-o", "x.o",
                               "-gencode", "arch=compute_90,code=sm_90"], capture_output=True, text=True, env=b.env,
                              check=True)
        return next(line for line in done.stderr.splitlines() if "ptxas" in line and "-arch=sm_90" in line)

    assert "-split-compile=2" in ptxas_line("slow.cu")
    assert "split-compile" not in ptxas_line("fast.cu")
    # a real compile through the wrapper still produces the object
    subprocess.run([b.env["PYTORCH_NVCC"], "-c", str(src / "csrc" / "slow.cu"), "-o", str(tmp_path / "slow.o"),
                    "-gencode", "arch=compute_90,code=sm_90"], env=b.env, check=True, capture_output=True)
    assert (tmp_path / "slow.o").stat().st_size > 0


@needs_two_cpus
def test_nvcc_without_split_compile_keeps_one_thread(tmp_path):
    # an nvcc from before CUDA 11.8: its --help knows no -split-compile
    cuda = tmp_path / "cuda"
    (cuda / "bin").mkdir(parents=True)
    old = cuda / "bin" / "nvcc"
    old.write_text("#!/bin/sh\necho 'Usage  : nvcc [options] <inputfile>'\n")
    old.chmod(0o755)
    first, second = sorted(os.sched_getaffinity(0))[:2]
    placement = Placement(reserved={"csrc/slow.cu": f"{first},{second}"}, pool=str(first), threads_per_core=1)
    b = make_build_env(base={"PATH": os.environ["PATH"]}, python=str(tmp_path / "bin" / "python"),
                       cuda_home=str(cuda), arch_list="9.0", jobs_per_ext=1, tools_dir=tmp_path / "tools",
                       src=tmp_path, ccache_dir=tmp_path / "cc", use_ccache=False, placement=placement)
    assert not b.placement.split_compile
    assert any("no -split-compile" in n for n in b.notes)
    assert "split-compile" not in Path(b.env["PYTORCH_NVCC"]).read_text()
