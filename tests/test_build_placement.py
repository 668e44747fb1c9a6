"""CPU placement of the compiles: which units get a core of their own, and the wrappers applying it
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
    p = plan_placement(critical_units(SOURCES_022), cores)
    assert p.reserved == {"csrc/attention/attention_kernels.cu": "7,15",
                          "csrc/quantization/awq/gemm_kernels.cu": "6,14"}
    pool = {int(c) for c in p.pool.split(",")}
    assert pool == set(range(16)) - {6, 7, 14, 15}      # real siblings known: nothing else kept idle
    assert p.threads_per_core == 2


def test_placement_only_where_cores_can_be_spared(tmp_path):
    trees: dict[int, Path] = {}
    one_thread = lambda n: trees.get(n) or trees.setdefault(n, _sysfs(tmp_path / str(n), {c: str(c) for c in range(n)}))  # noqa: E731
    units = critical_units(SOURCES_022, get_release("0.2.2").slowest_units)
    # the H100 VM: 16 vCPUs shown as one thread per core; the unit's likely hidden siblings stay idle
    p16 = plan_placement(units, physical_cores(range(16), one_thread(16)))
    assert p16.reserved == {"csrc/attention/attention_kernels.cu": "15"}
    assert p16.pool == ",".join(str(c) for c in range(15) if c not in (14, 7))
    p16b = plan_placement(critical_units(SOURCES_022), physical_cores(range(16), one_thread(16)))
    assert list(p16b.reserved.values()) == ["15", "14"]
    assert {int(c) for c in p16b.pool.split(",")} == set(range(14)) - {6, 7}
    p4 = plan_placement(units, physical_cores(range(4), one_thread(4)))
    assert p4.reserved == {"csrc/attention/attention_kernels.cu": "3"} and p4.pool == "0,1,2"
    assert plan_placement(units, physical_cores(range(2), one_thread(2))) is None   # this CI host
    assert plan_placement(units, physical_cores(range(16), one_thread(16)), pool_cpus=4).pool == "0,1,2,3"
    # a cpuset of CPUs 4-19: the guesses follow positions, not CPU numbers
    p_set = plan_placement(units, [(c,) for c in range(4, 20)])
    assert p_set.reserved == {"csrc/attention/attention_kernels.cu": "19"}
    assert set(range(4, 19)) - {int(c) for c in p_set.pool.split(",")} == {18, 11}


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
