"""host-torch for a release that pins torch (vLLM 0.26.0: torch==2.11.0): the host's torch is the one the
build compiles against, so another torch is refused before anything is downloaded (one error naming both
versions, a hint, exit 2), and preflight refuses an env whose torch moved since.

The host interpreter is a real venv holding a torch package laid out as torch's own (torch/version.py,
a dist-info), as in test_host_torch_stamps; the release is the catalog's 0.26.0 entry."""

from __future__ import annotations

import dataclasses
import types

import pytest
from invoke.exceptions import Exit
from test_host_torch_stamps import host_python, install_torch  # noqa: F401 (fixture)

from vllm_provision import GIB, cli, pipeline
from vllm_provision.catalog import get_release
from vllm_provision.core.envinfo import EnvInfo
from vllm_provision.diagnostics import preflight
from vllm_provision.pipeline import StepOutcome
from vllm_provision.plan import build_plan, host_torch_refusal
from vllm_provision.probes.host import HostFacts

RELEASE = get_release("0.26.0")


def host_torch_plan(tmp_path, python):
    """host-torch over `python`, for the catalog's 0.26.0 (its recipe's own completeness is not this test's)."""
    plan = build_plan({"profile": "host-torch", "workspace_root": str(tmp_path / "ws"),
                       "cache_dir": str(tmp_path / "cache"), "env": {"python_path": str(python)},
                       "pypi": {"index_url": "http://127.0.0.1:9/simple/"}}, environ={}, facts=HostFacts())
    return dataclasses.replace(plan, release=RELEASE)


def test_a_host_torch_other_than_the_pin_is_refused_before_any_step(tmp_path, host_python, monkeypatch, capsys):
    python, site = host_python
    install_torch(site, "2.12.0+cu130", "13.0")                # the image's torch moved on
    plan = host_torch_plan(tmp_path, python)
    monkeypatch.setattr(cli, "make_plan", lambda **flags: plan)
    ran: list[str] = []
    monkeypatch.setattr(pipeline, "step_module", lambda name: types.SimpleNamespace(
        run=lambda ctx: ran.append(name) or StepOutcome(detail="ran"), stamp_inputs=lambda ctx: {}))
    with pytest.raises(Exit) as done:
        cli.handles_errors(cli.run_pipeline)(["fetch", "env", "patch", "build"])
    assert done.value.code == 2 and ran == []                  # nothing downloaded, no env made
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: the host's Python ({python}) has torch 2.12.0+cu130; vLLM 0.26.0 builds against "
                   "torch==2.11.0 only",
                   "hint: use an interpreter with torch==2.11.0 (env.python_path), or the profile that installs "
                   "it: --profile pypi-cu13 (torch==2.11.0 from its lock)"], err
    cli.run_pipeline(["fetch"])                                 # fetching alone does not touch torch
    assert ran == ["fetch"]

    install_torch(site, "2.11.0+cu130", "13.0")                # the pin, with PyPI's local CUDA tag
    assert host_torch_refusal(plan) is None
    # 0.2.2 pins no torch: any host torch is built against, as before
    assert host_torch_refusal(dataclasses.replace(plan, release=get_release("0.2.2"))) is None


def test_preflight_refuses_an_env_whose_torch_is_not_the_release_s(tmp_path, host_python):
    python, _ = host_python
    plan = host_torch_plan(tmp_path, python)
    facts = HostFacts(cpu_count=2, mem_available_bytes=20 * GIB, disk_free_bytes=100 * GIB)

    def verdict(release, torch):
        info = EnvInfo(backend="existing", prefix=str(tmp_path / "env"), python=str(python), python_version="3.11",
                       torch=torch, torch_cuda="13.0")
        [check] = [c for c in preflight.run(dataclasses.replace(plan, release=release), facts, info)
                   if c.name == "torch-vs-release"]
        return check

    moved = verdict(RELEASE, "2.12.0+cu130")
    assert moved.status == "fail" and "torch 2.12.0+cu130" in moved.detail and "torch==2.11.0" in moved.detail
    assert "--profile pypi-cu13" in moved.hint
    assert verdict(RELEASE, "2.11.0+cu130").status == "pass"
    assert verdict(get_release("0.2.2"), "2.12.0+cu130").status == "skip"


# vLLM 0.26.0's pyproject.toml [build-system] (from its sdist, sha256 23e9fa19...8502)
PYPROJECT_0_26_0 = '''[build-system]
requires = [
    "cmake>=3.26.1",
    "ninja",
    "packaging>=24.2",
    "setuptools>=77.0.3,<81.0.0",
    "setuptools-scm>=8.0",
    "setuptools-rust>=1.9.0",
    "torch == 2.11.0",
    "wheel",
    "jinja2",
]
build-backend = "setuptools.build_meta"
'''
# The H200 image's interpreter (/opt/torch/.venv, Python 3.12.3), as importlib.metadata lists it
H200_IMAGE = {"torch": "2.11.0+cu130", "cmake": "4.4.3", "ninja": "1.13.2", "setuptools": "81.0.0",
              "packaging": "26.3", "wheel": "0.48.0", "jinja2": "3.1.6", "regex": "2026.9.3"}


def test_preflight_names_the_build_requirements_the_env_lacks(tmp_path, host_python):
    """The build runs without isolation: 0.26.0's setup.py imports setuptools_scm and setuptools_rust on its
    first lines, and the GPU image has neither (and setuptools 81). Said before any compile, with the fix;
    the pypi-cu13 lock holds them all."""
    from conftest import ROOT

    from vllm_provision.envs import lock

    python, _ = host_python
    plan = host_torch_plan(tmp_path, python)
    plan.workspace.src.mkdir(parents=True)
    (plan.workspace.src / "pyproject.toml").write_text(PYPROJECT_0_26_0)
    facts = HostFacts(cpu_count=2, mem_available_bytes=20 * GIB, disk_free_bytes=100 * GIB)

    def verdict(packages, backend="existing"):
        info = EnvInfo(backend=backend, prefix=str(tmp_path / "env"), python=str(python), python_version="3.12.3",
                       packages=packages, torch=packages.get("torch"), torch_cuda="13.0")
        at = dataclasses.replace(plan, env=dataclasses.replace(plan.env, backend=backend))
        [check] = [c for c in preflight.run(at, facts, info) if c.name == "build-requirements"]
        return check

    image = verdict(H200_IMAGE)
    assert image.status == "fail"
    assert image.detail.startswith("the env lacks setuptools-scm>=8.0, setuptools-rust>=1.9.0; has setuptools "
                                   "81.0.0, not setuptools<81.0.0,>=77.0.3: vLLM 0.26.0 builds without isolation")
    assert image.hint.startswith("install them into the host's Python (python -m pip install 'setuptools-scm>=8.0'")
    assert "--profile pypi-cu13" in image.hint
    locked = lock.pinned(ROOT / "envs" / "locks" / "0.26.0" / "pypi-cu13-py3.12.txt")
    assert verdict(locked, backend="venv").status == "pass"
    # a release built by setup.py alone (0.2.2) is not judged here
    plain = dataclasses.replace(plan, release=get_release("0.2.2"))
    info = EnvInfo(backend="existing", prefix="", python=str(python), python_version="3.12.3", packages=H200_IMAGE)
    assert "build-requirements" not in [c.name for c in preflight.run(plain, facts, info)]
