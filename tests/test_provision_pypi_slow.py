"""Slow tier: the default profile end to end on a GPU-less host with nothing but Python and the package
index: `./inv provision --profile pypi-cu13 --arch 9.0` from an empty workspace and cache runs fetch -> env
(the committed lock, from PyPI, hashes checked) -> patch -> build (the lock's CUDA 13.0 compiler wheels, no
host toolkit on PATH) -> verify; the smoke is skipped for want of a GPU. Per-step times land in the report."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _without_host_cuda(environ: dict) -> dict:
    env = {k: v for k, v in environ.items() if not k.startswith("VLLMP_") and k not in ("CUDA_HOME", "CUDA_PATH")}
    env["PATH"] = os.pathsep.join(p for p in environ["PATH"].split(os.pathsep)
                                  if "cuda" not in p and not (Path(p) / "nvcc").exists())
    return env


@pytest.mark.slow
@pytest.mark.network
def test_default_profile_provisions_from_pypi_alone(tmp_path):
    env = _without_host_cuda(dict(os.environ))
    env.update(VLLMP_WORKSPACE_ROOT=str(tmp_path / "ws"), VLLMP_CACHE_DIR=str(tmp_path / "cache"),
               CCACHE_DIR=str(tmp_path / "ccache"), CI="true")
    done = subprocess.run([str(ROOT / "inv"), "provision", "--profile", "pypi-cu13", "--arch", "9.0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    ws = tmp_path / "ws" / "0.2.2-pypi-cu13"
    report = json.loads((ws / "report.json").read_text())
    steps = report["steps"]
    assert [steps[n]["status"] for n in ("fetch", "env", "patch", "build", "verify")] == ["ok"] * 5
    assert steps["smoke"]["status"] == "skipped"
    info = json.loads((ws / "env.json").read_text())
    assert info["torch"] == "2.11.0+cu130" and info["nvcc_version"] == "13.0"
    assert info["nvcc"].startswith(str(ws)), "the compiler must be the lock's wheels inside the env"
    assert info["lock"].startswith("envs/locks/0.2.2/pypi-cu13-py3.")
    applied = {p["file"] for p in steps["patch"]["facts"]["applied"]}
    assert {"0002-no-xformers-sdpa-prompt-attention.patch", "0003-transformers5-rope-parameters.patch"} <= applied
    # the figures a reader of the closing note and docs/benchmarks.md needs
    print(json.dumps({n: round(steps[n]["seconds"], 1) for n in steps}))
