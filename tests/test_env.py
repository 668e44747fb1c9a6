"""The env step against real mirrors on 127.0.0.1: pypiserver (+ a slow/auth proxy), a conda channel."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cuda import needs_nvcc, use_wheel_toolkit
from mirrors import Proxy, conda_channels, proxy_factory, pypi_mirror, wheelhouse, write_lock  # noqa: F401 (fixtures)

from vllm_provision.core import envinfo
from vllm_provision.envs import mirrors
from vllm_provision.pipeline import StepContext, run_steps
from vllm_provision.plan import build_plan
from vllm_provision.probes.host import HostFacts

SECRET = "s3cret-Pw9"


@pytest.fixture(autouse=True)
def isolated_pip(monkeypatch):
    """pip must see only the mirror under test, not this machine's pip.conf / find-links."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)


def make_plan(tmp_path: Path, *, index_url: str, lock: Path | None, env: dict | None = None,
              pypi: dict | None = None, conda: dict | None = None, cuda: str | None = None):
    """The seed profile with a venv over `lock`; `cuda` is the planned torch's CUDA (None: the tiny
    locks hold no torch, so no compiler is asked for)."""
    cli = {"profile": "seed", "workspace_root": str(tmp_path / "ws"), "cache_dir": str(tmp_path / "cache"),
           "env": {"backend": "venv", "python": "3.11", "installer": "uv", **(env or {})},
           "pypi": {"index_url": index_url, "timeout": 10, "retries": 0, **(pypi or {})},
           "conda": {"channels": [], **(conda or {})}}
    plan = build_plan(cli, environ={}, facts=HostFacts())
    # retries as given: the plan reads a 0 as "unset" (5)
    return dataclasses.replace(plan, env=dataclasses.replace(plan.env, lock=str(lock) if lock else None, cuda=cuda,
                                                             retries=cli["pypi"]["retries"]))


def run_env(plan):
    [result] = [r for r in run_steps(plan, HostFacts(), ["env"], force=["env"]) if r.step == "env"]
    return result


def env_python(plan) -> Path:
    return plan.workspace.env / "bin" / "python"


@pytest.fixture
def lock(tmp_path, wheelhouse):
    return write_lock(tmp_path / "locks" / "seed-py3.11.txt", wheelhouse)


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_venv_from_mirror_installs_the_lock(tmp_path, proxy_factory, wheelhouse, lock, installer):
    mirror = proxy_factory()     # counts what the installer asks for
    plan = make_plan(tmp_path, index_url=mirror.url(), lock=lock, env={"installer": installer},
                     pypi={"trusted_hosts": ["127.0.0.1"]})
    result = run_env(plan)
    assert result.status == "ok", (result.detail, result.hint, result.facts.get("log_tail"))
    info = envinfo.load(plan.workspace)
    assert info.backend == "venv" and info.installer == installer
    assert {k: info.packages.get(k) for k in ("tinya", "tinyb", "tinyc")} == {"tinya": "1.0", "tinyb": "1.0", "tinyc": "2.0"}
    assert info.lock == str(lock) and info.python_version.startswith("3.11")
    assert os.readlink(plan.workspace.env) == os.path.join("envs", "1")
    assert Path(info.python).parent.parent == plan.workspace.root / "envs" / "1"
    # bytecode compiled at install (before anything imported it), whichever installer
    [site] = (plan.workspace.root / "envs" / "1" / "lib").glob("python3.11/site-packages")
    for name in ("tinya", "tinyb", "tinyc"):
        assert list((site / name / "__pycache__").glob("__init__.cpython-311*.pyc")), name
    out = subprocess.run([str(env_python(plan)), "-c", "import tinya, tinyc; print(tinya.VERSION, tinyc.VERSION)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1.0", "2.0"]
    # the installer took every file from the mirror under test: each locked project's page and wheel
    assert {p for p in mirror.requests if p.startswith("/simple/")} == {"/simple/tinya/", "/simple/tinyb/",
                                                                         "/simple/tinyc/"}
    assert {p.rsplit("/", 1)[-1].split("#")[0] for p in mirror.requests if p.startswith("/packages/")} \
        == {wheelhouse[n].name for n in ("tinya", "tinyb", "tinyc")}


def test_failed_rebuild_keeps_the_previous_env(tmp_path, pypi_mirror, refused_port, lock):
    good = make_plan(tmp_path, index_url=pypi_mirror.url, lock=lock)
    assert run_env(good).status == "ok"
    before = envinfo.path(good.workspace).read_text()
    down = f"http://127.0.0.1:{refused_port}/simple/"
    result = run_env(make_plan(tmp_path, index_url=down, lock=lock))
    assert result.status == "failed" and result.exit_code == 1
    assert result.detail == f"the package index {down} cannot be used: connection refused (mirror down or wrong URL)"
    # old env intact: link, env.json, interpreter; the half-made prefix is gone
    assert os.readlink(good.workspace.env) == os.path.join("envs", "1")
    assert envinfo.path(good.workspace).read_text() == before
    assert sorted(p.name for p in (good.workspace.root / "envs").iterdir()) == ["1"]
    subprocess.run([str(env_python(good)), "-c", "import tinya"], check=True)
    # and a later good run switches to a new prefix and prunes the old one
    assert run_env(good).status == "ok"
    new = os.readlink(good.workspace.env)
    assert new != os.path.join("envs", "1")
    assert [os.path.join("envs", p.name) for p in (good.workspace.root / "envs").iterdir()] == [new]


def test_slow_mirror_hits_the_timeout(tmp_path, proxy_factory, lock):
    slow = proxy_factory(delay=4)
    result = run_env(make_plan(tmp_path, index_url=slow.url(), lock=lock, pypi={"timeout": 1, "retries": 0}))
    assert result.status == "failed"
    assert "timed out" in result.detail and slow.url() in result.detail
    assert slow.requests, "the slow mirror was never asked"


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_credentials_never_leak(tmp_path, proxy_factory, lock, installer):
    proxy = proxy_factory(auth=("alice", SECRET))
    url = proxy.url(userinfo=f"alice:{SECRET}")
    plan = make_plan(tmp_path, index_url=url, lock=lock, env={"installer": installer})
    assert SECRET not in json.dumps(plan.to_dict())
    assert "alice:***@" in json.dumps(plan.to_dict())
    result = run_env(plan)
    assert result.status == "ok", (result.detail, result.facts.get("log_tail"))
    assert proxy.requests and proxy.denied < len(proxy.requests)
    # a wrong password fails, and the failure text carries no secret either
    bad = make_plan(tmp_path, index_url=proxy.url(userinfo=f"alice:{SECRET}-wrong"), lock=lock,
                    env={"installer": installer})
    failed = run_env(bad)
    assert failed.status == "failed" and "authentication" in failed.detail, failed.detail
    leaks = {p: p.read_text() for p in plan.workspace.root.rglob("*") if p.is_file() and p.suffix in (".log", ".json", ".md")}
    assert leaks, "nothing written?"
    for path, text in leaks.items():
        assert SECRET not in text, path
    for text in (failed.detail, failed.hint or "", failed.facts.get("log_tail") or ""):
        assert SECRET not in text


def test_lock_for_another_release_is_refused(tmp_path, pypi_mirror, wheelhouse):
    other = write_lock(tmp_path / "l" / "x.txt", wheelhouse, release="0.2.7")
    result = run_env(make_plan(tmp_path, index_url=pypi_mirror.url, lock=other))
    assert result.status == "failed" and result.exit_code == 2
    assert result.detail.startswith("refuse") and "0.2.7" in result.detail
    assert not (tmp_path / "ws" / "0.2.2-seed" / "env").exists()


def test_unknown_python_names_the_interpreters_found(tmp_path, pypi_mirror, lock):
    plan = make_plan(tmp_path, index_url=pypi_mirror.url, lock=lock)
    plan = dataclasses.replace(plan, env=dataclasses.replace(plan.env, python="3.9", python_path=None,
                                                             note="no Python 3.9 interpreter found"))
    result = run_env(plan)
    assert result.status == "failed" and result.exit_code == 2
    assert "3.9" in result.detail and "found: " in result.detail and f"3.{sys.version_info[1]} (" in result.detail


def test_existing_backend_reuses_packages_without_changing_them(tmp_path):
    # the toolkit's own venv stands in for an image's interpreter; it is itself a venv (the hard case)
    before = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    plan = make_plan(tmp_path, index_url="http://127.0.0.1:9/simple/", lock=None,
                     env={"backend": "existing", "python_path": sys.executable, "lock": False})
    result = run_env(plan)
    assert result.status == "ok", (result.detail, result.facts.get("log_tail"))
    info = envinfo.load(plan.workspace)
    assert info.backend == "existing" and info.lock is None
    assert info.packages.get("invoke") and info.packages.get("packaging")
    assert subprocess.run([info.python, "-c", "import invoke, rattler"]).returncode == 0
    assert Path(info.prefix) == plan.workspace.root / "envs" / "1" and Path(info.prefix) != Path(sys.prefix)
    after = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    assert after == before


def test_mirror_settings_as_installer_env_vars():
    env = mirrors.index_env({"index_url": "https://u:p@m.corp/simple", "extra_index_urls": ["https://x/simple"],
                             "trusted_hosts": ["m.corp", "x"], "timeout": 0, "retries": 7, "cert": "/ca.pem"},
                            cache_dir="/c")
    assert env["PIP_INDEX_URL"] == env["UV_INDEX_URL"] == "https://u:p@m.corp/simple"
    assert env["PIP_EXTRA_INDEX_URL"] == env["UV_EXTRA_INDEX_URL"] == "https://x/simple"
    assert env["PIP_TRUSTED_HOST"] == env["UV_INSECURE_HOST"] == "m.corp x"
    assert env["PIP_RETRIES"] == env["UV_HTTP_RETRIES"] == "7"
    assert env["PIP_CERT"] == env["SSL_CERT_FILE"] == "/ca.pem"
    assert "PIP_DEFAULT_TIMEOUT" not in env  # timeout 0 = the blog's `--timeout 0`: the installer default
    assert env["UV_CACHE_DIR"] == "/c"
    assert mirrors.describe({"index_url": "https://u:p@m.corp/simple"}) == "https://u:***@m.corp/simple"


@needs_nvcc
def test_host_nvcc_that_does_not_match_torch_cuda_gives_a_reason(tmp_path, pypi_mirror, monkeypatch):
    from vllm_provision.envs import common
    use_wheel_toolkit(monkeypatch)         # the host's toolkit: the test extra's CUDA 13.0 wheels
    host_major = common.host_toolkits()[0].version.split(".")[0]
    other = "12.1" if host_major != "12" else "11.8"
    plan = make_plan(tmp_path, index_url=pypi_mirror.url, lock=None)
    ctx = StepContext(plan, HostFacts(), "env")
    installer = common.choose_installer(plan)
    got = common.resolve_compiler(ctx, plan, installer, Path(sys.executable), {"torch": "2.1.0", "torch_cuda": other},
                                  tmp_path)
    assert got.cuda_home is None and other in got.reason and "conda.channels" in got.reason
    same = common.resolve_compiler(ctx, plan, installer, Path(sys.executable),
                                   {"torch": "x", "torch_cuda": common.host_toolkits()[0].version}, tmp_path)
    assert same.source == "host" and (Path(same.cuda_home) / "bin" / "nvcc").exists()
