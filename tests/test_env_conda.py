"""The conda backend through rattler (child process) against real channels served on 127.0.0.1."""

from __future__ import annotations

import dataclasses

import pytest
import rattler  # noqa: E402,F401 (a test dependency (pyproject's test extra): a broken install fails here, never skips)
from mirrors import conda_channels  # noqa: F401 (fixture)

from vllm_provision.core.errors import ConfigError
from vllm_provision.envs import conda
from vllm_provision.pipeline import StepContext, run_steps
from vllm_provision.plan import build_plan
from vllm_provision.probes.host import HostFacts


@pytest.fixture(autouse=True)
def no_conda_cli(monkeypatch):
    monkeypatch.setattr(conda, "TOOLS", ())  # rattler, even where a conda is installed


def make_ctx(tmp_path, channels, override=True):
    cli = {"profile": "seed", "workspace_root": str(tmp_path / "ws"), "cache_dir": str(tmp_path / "cache"),
           "env": {"backend": "conda", "python": "3.11", "installer": "uv"},
           "conda": {"channels": list(channels), "override_channels": override}}
    plan = build_plan(cli, environ={}, facts=HostFacts())
    plan = dataclasses.replace(plan, env=dataclasses.replace(plan.env, lock=None))
    plan.workspace.ensure()
    return StepContext(plan, HostFacts(), "env")


def test_rattler_creates_an_env_from_the_channel_only(tmp_path, conda_channels, monkeypatch):
    main, other = conda_channels
    monkeypatch.setattr(conda, "DEFAULT_CHANNELS", (other.url,))  # what a default channel would be
    ctx = make_ctx(tmp_path, [main.url], override=True)
    prefix = tmp_path / "env"
    info = conda.solve_install(ctx, conda.channels(ctx.plan), ["tinyconda"], prefix, what="test env")
    assert info["tool"] == "rattler" and info["packages"] == {"tinyconda": "1.0", "tinydep": "1.0"}
    assert (prefix / "share" / "tinyconda" / "README").read_text() == "tinyconda 1.0\n"
    assert main.requests and other.requests == []
    # without override_channels the default channel is asked too: the count above is not vacuous
    ctx2 = make_ctx(tmp_path / "b", [main.url], override=False)
    conda.solve_install(ctx2, conda.channels(ctx2.plan), ["tinyconda"], tmp_path / "env2", what="test env")
    assert other.requests


def test_channel_without_the_python_says_so(tmp_path, conda_channels):
    main, other = conda_channels
    ctx = make_ctx(tmp_path, [main.url])
    [result] = [r for r in run_steps(ctx.plan, HostFacts(), ["env"]) if r.step == "env"]
    assert result.status == "failed" and result.exit_code == 2
    assert "have no python 3.11" in result.detail and main.url in result.detail
    assert not ctx.plan.workspace.env.exists()
    assert list((ctx.plan.workspace.root / "envs").iterdir()) == []
    assert other.requests == []


def test_unreachable_channel_is_one_line(tmp_path, refused_port):
    url = f"http://127.0.0.1:{refused_port}/nothing"
    ctx = make_ctx(tmp_path, [url])
    with pytest.raises(Exception) as err:
        conda.solve_install(ctx, [url], ["tinyconda"], tmp_path / "env", what="test env")
    assert not isinstance(err.value, ConfigError)
    assert "unreachable" in err.value.message and url in err.value.message and "\n" not in err.value.message
