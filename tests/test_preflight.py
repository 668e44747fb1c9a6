"""Preflight messages, and the seed lock's torch 2.1.0 (CUDA 12.1) refused against nvcc 13.0 in seconds."""

from __future__ import annotations

from types import SimpleNamespace

from vllm_provision import GIB, checks
from vllm_provision.checks import resources, toolchain
from vllm_provision.core import envinfo
from vllm_provision.core.envinfo import EnvInfo
from vllm_provision.pipeline import run_steps
from vllm_provision.plan import BUILD_JOB_PEAK_BYTES, build_plan
from vllm_provision.probes import host
from vllm_provision.probes.host import HostFacts, NvccInfo


def test_nvcc_torch_rule():
    assert toolchain.check_nvcc_torch("12.1", "13.0", "/x/nvcc").status == "fail"
    c = toolchain.check_nvcc_torch("12.1", "13.0", "/x/nvcc")
    assert "no PyPI wheel carries nvcc for CUDA 12.1" in c.hint and "cuda-nvcc=12.1" in c.hint and "CUDA_HOME" in c.hint
    assert toolchain.check_nvcc_torch("12.1", "12.4", "/x/nvcc").status == "warn"
    assert toolchain.check_nvcc_torch("13.0", "13.0", "/x/nvcc").status == "pass"
    assert toolchain.check_nvcc_torch(None, "13.0", "/x/nvcc").status == "fail"
    assert "nvidia-cuda-nvcc/nvvm/crt==13.0.*" in toolchain.check_nvcc_torch("13.0", None, None).hint
    assert "--profile pypi-cu13" in c.hint          # the PyPI-only way out for a CUDA 12 torch


def fake_nvcc(home, version: str):
    nvcc = home / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {version}, V{version}.1'\n")
    nvcc.chmod(0o755)
    return nvcc


def test_compiler_for_a_planned_torch_passes_when_any_host_toolkit_fits(tmp_path):
    fake_nvcc(tmp_path / "cuda-12.4", "12.4")
    fake_nvcc(tmp_path / "cuda-11.8", "11.8")
    # the first one found does not fit, a later one does: the env step may go on
    environ = {"CUDA_HOME": str(tmp_path / "cuda-11.8"), "CUDA_PATH": str(tmp_path / "cuda-12.4"), "PATH": ""}
    fits = toolchain.check_compiler_for("12.1", host.nvcc_candidates(environ))
    assert fits.status == "warn" and "nvcc 12.4" in fits.detail
    none_fit = toolchain.check_compiler_for("10.2", host.nvcc_candidates({"CUDA_HOME": str(tmp_path / "cuda-11.8"),
                                                                          "PATH": ""}))
    assert none_fit.status == "fail" and "nvcc 11.8" in none_fit.detail and "cuda-nvcc=10.2" in none_fit.hint


def test_gcc_limit():
    c = toolchain.check_gcc("14.2.0", "/usr/bin/gcc", NvccInfo("/x/nvcc", "", "12.4", gcc_max=13))
    assert c.status == "fail" and "CC=gcc-13" in c.hint and "CUDAHOSTCXX=g++-13" in c.hint
    nvcc13 = NvccInfo("/x/nvcc", "", "13.0", gcc_max=15)
    assert toolchain.check_gcc("12.2.0", "/usr/bin/gcc", nvcc13).status == "pass"
    assert toolchain.check_gcc(None, None, nvcc13).status == "fail"
    assert toolchain.check_gcc("12.2.0", "/usr/bin/gcc", None).status == "skip"


def test_archs_release_and_nvcc():
    rel = ("7.0", "7.5", "8.0", "8.6", "8.9", "9.0")
    release = SimpleNamespace(version="0.2.2", cuda_archs=rel)
    nvcc13 = NvccInfo("/x/nvcc", "", "13.0", archs=("7.5", "8.0", "8.6", "8.7", "8.9", "9.0", "10.0", "12.0"))
    c = toolchain.check_archs(rel, "config", release, nvcc13)
    assert c.status == "fail" and "7.0" in c.detail and "--arch '7.5;8.0;8.6;8.9;9.0'" in c.hint
    assert "(archs from config)" in c.detail
    assert toolchain.check_archs(("9.0",), "config", release, nvcc13).status == "pass"
    assert toolchain.check_archs(("10.0",), "config", release, nvcc13).status == "fail"
    assert toolchain.check_archs(("9.0",), "config", release, None).status == "warn"


def test_driver_disk_ram():
    assert checks.check_driver(HostFacts(), "13.0").status == "skip"
    from vllm_provision.probes.host import Gpu
    old = HostFacts(gpus=(Gpu(0, "H100", 81559, 0, "9.0", "535.1"),), driver_cuda="12.2", driver_version="535.1")
    c = checks.check_driver(old, "13.0")
    assert c.status == "fail" and "driver" in c.hint
    assert checks.check_driver(old, "12.4").status == "warn"
    need = resources.disk_needed("venv", env_ready=True)
    assert resources.check_disk(1 * GIB, need).status == "fail"
    assert resources.check_disk(need + GIB, need).status == "warn"          # little headroom
    assert resources.check_disk(100 * GIB, need).status == "pass"
    assert resources.disk_needed("venv", env_ready=False) > need == resources.disk_needed("existing", False)
    assert resources.check_ram(2 * GIB, 1, BUILD_JOB_PEAK_BYTES).status == "fail"
    r = resources.check_ram(8 * GIB, 4, BUILD_JOB_PEAK_BYTES)
    assert r.status == "warn" and r.hint == "--max-jobs 2"


def test_seed_torch_refused_before_any_compile(tmp_path, monkeypatch):
    """torch 2.1.0+cu121 (the seed lock) with only nvcc 13.0 available: refused in seconds, with the fix."""
    plan = build_plan({"workspace_root": str(tmp_path / "ws"), "build": {"arch_list": "9.0", "max_jobs": 1}},
                      facts=HostFacts(cpu_count=2, mem_available_bytes=20 * GIB, disk_free_bytes=100 * GIB))
    plan.workspace.ensure()
    plan.workspace.src.mkdir(parents=True)
    (plan.workspace.src / "setup.py").write_text("raise SystemExit('must not run')\n")
    nvcc = tmp_path / "cuda-13.0" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("CUDA_HOME", str(nvcc.parent.parent))
    envinfo.save(plan.workspace, EnvInfo(backend="venv", prefix=str(tmp_path), python="/nonexistent/python",
                                         python_version="3.10.12", torch="2.1.0+cu121", torch_cuda="12.1",
                                         cuda_home=None, nvcc=None, nvcc_version=None))
    facts = HostFacts(cpu_count=2, mem_available_bytes=20 * GIB, disk_free_bytes=100 * GIB)
    [result] = run_steps(plan, facts, ["build"])
    assert result.status == "failed"
    assert "nvcc-vs-torch" in result.detail and "13.0" in result.detail and "12.1" in result.detail
    assert "cuda-nvcc=12.1" in result.hint and "conda.channels" in result.hint
    assert not (plan.workspace.src / "build").exists()      # nothing compiled
