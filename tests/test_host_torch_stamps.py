"""host-torch: an upgrade of the host's packages (its torch above all) reruns env -> build -> verify -> smoke.

The host interpreter is a real venv holding a torch package laid out as torch's own (torch/version.py
with `__version__` and `cuda`, a dist-info); the existing backend builds its env over it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_provision import pipeline
from vllm_provision.core import envinfo
from vllm_provision.pipeline import StepContext, read_stamp, run_steps
from vllm_provision.plan import build_plan
from vllm_provision.probes.host import HostFacts
from vllm_provision.steps import build, env, verify


def install_fake(site: Path, name: str, version: str, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def install_torch(site: Path, version: str, cuda: str) -> None:
    for old in site.glob("torch-*.dist-info"):
        shutil.rmtree(old)
    install_fake(site, "torch", version, {
        "torch/__init__.py": "from . import version, _C\n__version__ = version.__version__\n",
        "torch/_C.py": "_GLIBCXX_USE_CXX11_ABI = True\n",
        "torch/version.py": f"from typing import Optional\n__version__ = {version!r}\ncuda: Optional[str] = {cuda!r}\n"})


@pytest.fixture
def host_python(tmp_path) -> tuple[Path, Path]:
    """(interpreter, its site-packages) of a venv standing in for an image's Python with torch 2.11.0+cu130."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "host")], check=True)
    python = tmp_path / "host" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    install_torch(site, "2.11.0+cu130", "13.0")
    return python, site


def test_a_changed_host_reruns_the_env_and_everything_built_on_it(tmp_path, host_python):
    python, site = host_python
    cli = {"profile": "host-torch", "workspace_root": str(tmp_path / "ws"), "cache_dir": str(tmp_path / "cache"),
           "env": {"python_path": str(python)}, "pypi": {"index_url": "http://127.0.0.1:9/simple/"}}
    plan = build_plan(cli, environ={}, facts=HostFacts())
    assert plan.env.backend == "existing"

    def env_run() -> str:
        [result] = [r for r in run_steps(plan, HostFacts(), ["env"]) if r.step == "env"]
        assert result.status in ("ok", "up-to-date"), (result.detail, result.facts.get("log_tail"))
        return result.status

    def downstream() -> list[dict]:
        return [m.stamp_inputs(StepContext(plan, HostFacts(), n)) for m, n in ((build, "build"), (verify, "verify"))]

    assert env_run() == "ok"
    info = envinfo.load(plan.workspace)
    assert (info.torch, info.torch_cuda) == ("2.11.0+cu130", "13.0")
    first_stamp, first_downstream = read_stamp(plan.workspace, "env")["stamp"], downstream()
    assert env_run() == "up-to-date" and downstream() == first_downstream     # nothing changed: nothing reruns

    install_torch(site, "2.12.0+cu130", "13.0")            # the image's torch is upgraded
    # `inv build` / `inv verify` alone (the env stamp on disk is the old one) see it in their own inputs
    after_upgrade = downstream()
    assert after_upgrade[0] != first_downstream[0] and after_upgrade[1] != first_downstream[1]
    assert env_run() == "ok"
    assert envinfo.load(plan.workspace).torch == "2.12.0+cu130"
    # a new env stamp: every later stamp holds it (pipeline chains them), so build, verify and smoke rerun
    second_stamp = read_stamp(plan.workspace, "env")["stamp"]
    assert second_stamp != first_stamp

    assert env_run() == "up-to-date"

    def env_would_rerun() -> bool:      # the pipeline's own test: the stamp now against the one on disk
        now = pipeline.stamp_of(env, StepContext(plan, HostFacts(), "env"), upstream="")
        return now != read_stamp(plan.workspace, "env")["stamp"]

    assert not env_would_rerun()
    before = downstream()
    install_torch(site, "2.12.0+cu130", "12.8")            # same version, another CUDA build
    assert env_would_rerun() and downstream() != before
    install_torch(site, "2.12.0+cu130", "13.0")
    assert not env_would_rerun() and downstream() == before
    install_fake(site, "triton", "3.5.0", {"triton/__init__.py": ""})   # a package added next to torch
    assert env_would_rerun() and downstream() != before
