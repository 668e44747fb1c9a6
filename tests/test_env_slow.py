"""Slow tiers: the real committed 0.2.2 seed lock from PyPI; the CUDA 13 compiler assembled from the pypi-cu13 lock's
nvidia-* wheels, downloaded here and served by a real pypiserver on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mirrors import Pypiserver
from packaging.utils import canonicalize_name

from vllm_provision import PROJECT_ROOT
from vllm_provision.core import envinfo
from vllm_provision.envs import common
from vllm_provision.envs import lock as locks
from vllm_provision.pipeline import StepContext, run_steps
from vllm_provision.plan import build_plan
from vllm_provision.probes import envprobe, host
from vllm_provision.probes.host import HostFacts

CACHE = Path(os.path.expanduser("~/.cache/vllm-provision"))


@pytest.mark.slow
@pytest.mark.network
def test_committed_seed_lock_installs_from_pypi(tmp_path, monkeypatch):
    """torch 2.1.0 + xformers 0.0.22.post7 + transformers 4.35.2 import in a fresh env (no GPU needed).
    uv (not pip: /etc/xdg/pip/pip.conf may carry constraints); downloads cached under ~/.cache/vllm-provision/uv.
    The env step refuses a CUDA 12.1 torch where no CUDA 12 compiler is found: a toolkit that reports 12.1 stands
    in for one (this test installs, it does not compile)."""
    from test_preflight import fake_nvcc
    monkeypatch.setenv("CUDA_HOME", str(fake_nvcc(tmp_path / "cuda-12.1", "12.1").parent.parent))
    cli = {"profile": "seed", "workspace_root": str(tmp_path / "ws"), "cache_dir": str(CACHE),
           "env": {"backend": "venv", "python": "3.11", "installer": "uv"}}
    plan = build_plan(cli, environ={}, facts=HostFacts())
    assert plan.env.lock == "envs/locks/0.2.2/seed-py3.11.txt"
    [result] = [r for r in run_steps(plan, HostFacts(), ["env"]) if r.step == "env"]
    assert result.status == "ok", (result.detail, result.facts.get("log_tail"))
    info = envinfo.load(plan.workspace)
    assert info.torch == "2.1.0+cu121" and info.torch_cuda == "12.1" and info.cxx11_abi is False
    assert info.packages["xformers"] == "0.0.22.post7" and info.packages["transformers"] == "4.35.2"
    assert info.packages["pydantic"] == "1.10.13"
    code = "import torch, xformers, transformers; print(torch.__version__, xformers.__version__, transformers.__version__)"
    out = subprocess.run([info.python, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["2.1.0+cu121", "0.0.22.post7", "4.35.2"]
    assert any(d.endswith("nvidia/cuda_runtime/include") for d in info.include_dirs)


# The compiler wheels' pins and hashes come from the project's own lock: the wheelhouse is built from them.
COMPILER_LOCK = PROJECT_ROOT / "envs" / "locks" / "0.2.2" / "pypi-cu13-py3.11.txt"


def locked_requirements(lock: Path, names) -> dict[str, str]:
    """name -> its requirement block of a hashed lock (`name==version \\` and its `--hash=sha256:` lines)."""
    blocks, current = {}, None
    for line in lock.read_text().splitlines():
        if line and not line[0].isspace() and "==" in line:
            current = canonicalize_name(line.split("==")[0])
            blocks[current] = [line]
        elif current and line.strip().startswith("--hash="):
            blocks[current].append(line)
        else:
            current = None
    return {name: "\n".join(blocks[canonicalize_name(name)]).rstrip(" \\") for name in names}


@pytest.fixture(scope="session")
def cuda13_compiler_wheels(tmp_path_factory) -> Path:
    """The nvidia-cuda-nvcc/nvvm/crt/runtime/cccl wheels the committed pypi-cu13 lock pins, downloaded by pip from
    the package index (PyPI, or the one pip is configured with) into a session folder, each checked against the
    lock's hashes. Nothing on this machine's disk is assumed."""
    out = tmp_path_factory.mktemp("cuda13-wheels")
    reqs = out.parent / "cuda13-requirements.txt"
    reqs.write_text("\n".join(locked_requirements(COMPILER_LOCK, common.PIP_COMPILER_WHEELS).values()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--require-hashes", "-d", str(out), "-r", str(reqs)], check=True)
    return out


@pytest.mark.slow
@pytest.mark.network
def test_cuda13_compiler_from_wheels_on_a_mirror(tmp_path, monkeypatch, cuda13_compiler_wheels):
    """No host toolkit in reach: nvcc 13.0 comes from the nvidia-* wheels on a (local) mirror and runs."""
    want = {canonicalize_name(n): v for n, v in locks.pinned(COMPILER_LOCK).items()
            if canonicalize_name(n) in common.PIP_COMPILER_WHEELS}
    assert set(want) == set(common.PIP_COMPILER_WHEELS) and all(v.startswith("13.0.") for v in want.values()), want
    server = Pypiserver(cuda13_compiler_wheels)
    try:
        monkeypatch.setattr(host, "HOST_CUDA_CANDIDATES", ())
        monkeypatch.delenv("CUDA_HOME", raising=False)
        monkeypatch.delenv("CUDA_PATH", raising=False)
        monkeypatch.setenv("PATH", "/usr/bin:/bin")
        cli = {"profile": "seed", "workspace_root": str(tmp_path / "ws"), "cache_dir": str(tmp_path / "cache"),
               "env": {"backend": "venv", "python": "3.11", "installer": "uv"},
               "pypi": {"index_url": server.url, "timeout": 30, "retries": 0}}
        plan = build_plan(cli, environ={}, facts=HostFacts())
        plan = dataclasses.replace(plan, env=dataclasses.replace(plan.env, lock=None))
        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        python = venv / "bin" / "python"
        facts = envprobe.env_facts(python)
        ctx = StepContext(plan, HostFacts(), "env")
        got = common.resolve_compiler(ctx, plan, common.choose_installer(plan), python,
                                      {**facts, "torch": "2.14.1", "torch_cuda": "13.0"}, venv)
    finally:
        server.stop()
    assert got.source == "pip" and got.nvcc.version == "13.0", got.reason
    assert got.reason == "nvcc 13.0 from PyPI wheels (torch CUDA 13.0)"
    home = Path(got.cuda_home)
    [site] = facts["site_packages"]
    assert home == Path(site) / "nvidia" / "cu13" and Path(got.nvcc.path) == home / "bin" / "nvcc"
    assert (home / "lib64").is_symlink() and (home / "include" / "cuda_runtime.h").is_file()
    installed = dict(d.name.removesuffix(".dist-info").split("-") for d in Path(site).glob("*.dist-info"))
    installed = {canonicalize_name(name): version for name, version in installed.items()}
    assert installed == want                    # the lock's wheels, from the mirror, and nothing else
    kernel = tmp_path / "k.cu"
    kernel.write_text("__global__ void k(float *x) { x[threadIdx.x] *= 2; }\n")
    out = subprocess.run([got.nvcc.path, "-arch=sm_90", "-c", str(kernel), "-o", str(tmp_path / "k.o")],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    cuobjdump = envprobe.find_cuobjdump(None)
    assert cuobjdump, "the toolkit's venv carries cuobjdump (the nvidia-cuda-cuobjdump wheel)"
    assert envprobe.sass_of(tmp_path / "k.o", cuobjdump) == ("sm_90",)
