"""The CUDA 13.0 compiler the tests compile with: the test extra's nvidia-cuda-* wheels (site-packages/nvidia/cu13,
the same wheels the env step installs from the locks), so the tests that compile CUDA code run on any Linux host,
with or without a CUDA toolkit of its own."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

CU13 = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cu13"
NVCC = CU13 / "bin" / "nvcc"
# the wheels lay out no targets/<arch>/lib64, where nvcc.profile looks for cudart and cudadevrt
LINK = [f"-L{CU13 / 'lib'}"]
needs_nvcc = pytest.mark.skipif(not NVCC.is_file(), reason=f"needs the test extra's nvcc wheels ({NVCC} is missing)")


def use_wheel_toolkit(monkeypatch) -> Path:
    """This process as on a host whose CUDA toolkit is the wheels' (CUDA_HOME, PATH), nothing else found."""
    from vllm_provision.probes import host
    monkeypatch.setattr(host, "HOST_CUDA_CANDIDATES", ())
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("CUDA_HOME", str(CU13))
    path = [p for p in __import__("os").environ["PATH"].split(":") if "cuda" not in p and not (Path(p) / "nvcc").exists()]
    monkeypatch.setenv("PATH", ":".join([str(CU13 / "bin"), *path]))
    return NVCC
