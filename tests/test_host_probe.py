"""Host-probe parsers on recorded outputs (recorded on an H100 host; mixed and no-GPU hosts)."""

from __future__ import annotations

import json
from pathlib import Path

from cuda import needs_nvcc, use_wheel_toolkit

from vllm_provision.catalog import get_release
from vllm_provision.core import config
from vllm_provision.plan import BUILD_JOB_PEAK_BYTES, GIB, plan_build
from vllm_provision.probes import host

FIX = Path(__file__).parent / "fixtures"
H100 = FIX / "gpu" / "h100"


def read(d: Path, name: str) -> str:
    p = d / name
    return p.read_text() if p.is_file() else ""


def facts_of(d: Path, disk=100 * GIB) -> host.HostFacts:
    return host.facts_from(gpu_csv=read(d, "query-gpu.csv"), smi_text=read(d, "nvidia-smi.txt"),
                           apps_csv=read(d, "compute-apps.csv"), meminfo=read(d, "meminfo"),
                           cpu_count=int(read(d, "cpu_count") or 1), disk_free_bytes=disk)


BUILD = config.resolve({}, environ={}).build       # vllm-provision.yaml's: no arch list, jobs from the host


def test_mixed_gpu_host():
    f = facts_of(FIX / "hosts" / "mixed")
    assert [g.name for g in f.gpus][:2] == ["NVIDIA A100-SXM4-80GB"] * 2
    assert f.compute_caps == ("7.0", "8.0", "8.9")          # deduplicated, numeric order
    assert f.driver_cuda == "12.4" and f.driver_version == "550.54.15"
    assert [(p.pid, p.used_mib) for p in f.gpu_processes] == [(4242, 1010), (977, 498)]
    assert f.mem_available_bytes == 40 * GIB and f.cpu_count == 64
    b = plan_build(get_release("0.2.2"), BUILD, f)
    assert b.arch_list == ("7.0", "8.0", "8.9") and b.arch_source == "gpus"
    assert b.torch_cuda_arch_list == "7.0;8.0;8.9"
    assert b.max_jobs == min(64, (40 * GIB) // BUILD_JOB_PEAK_BYTES) == 11


def test_no_gpu_host_uses_release_archs_and_ram_bounds_jobs():
    f = facts_of(FIX / "hosts" / "nogpu")
    assert f.gpus == () and f.gpu_error and f.driver_cuda is None and f.gpu_processes == ()
    b = plan_build(get_release("0.2.2"), BUILD, f)
    assert b.arch_list == ("7.0", "7.5", "8.0", "8.6", "8.9", "9.0")
    assert b.max_jobs == 2                         # 2 cores (20 GiB would allow 5)
    small = host.facts_from(meminfo="MemAvailable: 4194304 kB\n", cpu_count=16)
    assert plan_build(get_release("0.2.2"), BUILD, small).max_jobs == 1


def test_recorded_h100():
    """The real H100's nvidia-smi outputs (tests/fixtures/gpu/h100/probes.json: raw nvidia-smi/torch outputs
    recorded on an H100 host), parsed by column name."""
    probes = json.loads((H100 / "probes.json").read_text())
    command = next(c for c in probes if "--query-gpu=" in c and "nounits" in c)
    fields = command.split("--query-gpu=")[1].split()[0]
    gpus = host.parse_gpu_csv(probes[command]["stdout"], fields)
    assert [(g.name, g.compute_cap, g.memory_total_mib, g.driver_version) for g in gpus] == [
        ("NVIDIA H100 80GB HBM3", "9.0", 81559, "580.159.04")]
    smi = next(p["stdout"] for c, p in probes.items() if c.strip() == "nvidia-smi")
    assert host.parse_driver_cuda(smi) == "13.0"


def test_arch_list_rendering_per_release():
    f = host.HostFacts()
    for given in ("8.0,9.0", "8.0;9.0", "8.0 9.0", ["8.0", "9.0"]):
        b = plan_build(get_release("0.2.2"), config.resolve({"build": {"arch_list": given}}, environ={}).build, f)
        assert b.torch_cuda_arch_list == "8.0;9.0"      # 0.2.2 splits on ';'/space only: no commas


def test_nvcc_and_compiler_parsers():
    assert host.parse_nvcc_version("Cuda compilation tools, release 13.0, V13.0.88\n") == "13.0"
    assert host.parse_gcc_limit("#if __GNUC__ > 15\n#error -- unsupported GNU version!") == 15
    assert host.parse_gpu_archs("compute_75\ncompute_80\ncompute_90\ncompute_100\ncompute_120\n") == \
        ("7.5", "8.0", "9.0", "10.0", "12.0")
    assert host.parse_gcc_version("12.2.0\n") == "12.2.0"
    assert host.parse_gcc_version("13\n") == "13"
    assert host.parse_driver_version("| NVIDIA-SMI 580.95.05   Driver Version: 580.95.05   CUDA Version: 13.0 |") == "580.95.05"


@needs_nvcc
def test_real_nvcc_candidates_carry_version_and_gcc_limit(monkeypatch):
    use_wheel_toolkit(monkeypatch)         # the host's toolkit: the test extra's CUDA 13.0 wheels
    found = host.nvcc_candidates()
    real = [c for c in found if c.gcc_max is not None]
    assert real and real[0].version and real[0].gcc_max >= 12
