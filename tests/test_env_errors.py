"""The env step's failures as users see them: one `error:` line, naming the mirror when the mirror is
the problem (the installer's own lines are quoted above it); and an env no compiler here can build
for is refused in seconds, before anything is downloaded."""

from __future__ import annotations

import os
import sys

import pytest
from conftest import Route
from mirrors import proxy_factory, pypi_mirror, wheelhouse, write_lock  # noqa: F401 (fixtures)
from test_env import isolated_pip, make_plan, run_env  # noqa: F401 (fixture)
from test_preflight import fake_nvcc

from vllm_provision import PROJECT_ROOT
from vllm_provision.core import ui

SEED_LOCK = PROJECT_ROOT / "envs" / "locks" / "0.2.2" / "seed-py3.11.txt"


@pytest.fixture
def lock(tmp_path, wheelhouse):
    return write_lock(tmp_path / "locks" / "seed-py3.11.txt", wheelhouse)


def shown(result, capsys) -> list[str]:
    """The lines the CLI prints for a failed step (cli.run_pipeline's own call)."""
    capsys.readouterr()
    ui.error(f"step {result.step} {result.status}: {result.detail}", result.hint, result.facts.get("log_tail"))
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("installer", ["uv", "pip"])
@pytest.mark.parametrize("fault", ["closed port", "HTTP 503"])
def test_a_failing_mirror_is_named_in_the_one_error_line(tmp_path, http_server, refused_port, lock, capsys, installer,
                                                        fault):
    if fault == "closed port":
        index = f"http://127.0.0.1:{refused_port}/simple/"
        reason = "connection refused (mirror down or wrong URL)"
    else:
        for name in ("tinya", "tinyb", "tinyc"):
            http_server.add(f"/simple/{name}/", Route(status=503))
        index = f"{http_server.url}/simple/"
        reason = "HTTP 503 (a server error on the mirror)"
    result = run_env(make_plan(tmp_path, index_url=index, lock=lock, env={"installer": installer}))
    assert result.status == "failed" and result.exit_code == 1
    assert result.detail == f"the package index {index} cannot be used: {reason}"
    lines = shown(result, capsys)
    assert [line for line in lines if line.lower().startswith("error:")] == [f"error: step env failed: {result.detail}"]
    assert [line for line in lines if line.startswith("hint:")] == [f"hint: {result.hint}"]
    assert "pypi.index_url" in result.hint
    # the installer's own words are still there, quoted above the toolkit's line
    tail = [line for line in lines if line.startswith("  | ")]
    assert tail and len(tail) == len(result.facts["log_tail"].strip().splitlines())
    if installer == "uv":
        assert any(line.startswith("  | error: ") for line in tail), "\n".join(tail)


def test_a_package_missing_from_a_working_mirror_is_still_named(tmp_path, pypi_mirror, wheelhouse):
    lock = write_lock(tmp_path / "locks" / "seed-py3.11.txt", wheelhouse)
    lock.write_text(lock.read_text() + "tinyz==9.9 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    result = run_env(make_plan(tmp_path, index_url=pypi_mirror.url, lock=lock))
    assert result.status == "failed"
    assert result.detail.startswith(f"could not install tinyz from {pypi_mirror.url}: "), result.detail


def only_cuda13_on_path(monkeypatch) -> None:
    """The host as a CUDA 13-only machine: /usr/local/cuda (13.0 here) is the one toolkit found."""
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/local/cuda/bin", os.path.dirname(sys.executable), "/usr/bin",
                                                "/bin"]))
    monkeypatch.setenv("CUDA_HOME", "/usr/local/cuda")
    monkeypatch.delenv("CUDA_PATH", raising=False)


def test_no_compiler_for_the_seed_torch_stops_before_any_download(tmp_path, http_server, monkeypatch):
    """The seed profile (torch 2.1.0 for CUDA 12.1, committed lock) on a host whose only nvcc is 13.0."""
    only_cuda13_on_path(monkeypatch)
    plan = make_plan(tmp_path, index_url=f"{http_server.url}/simple/", lock=SEED_LOCK, cuda="12.1")
    result = run_env(plan)
    assert result.status == "failed" and result.exit_code == 1
    assert result.detail.startswith("no compiler for the env's torch (CUDA 12.1), nothing downloaded: nvcc 13.0 ")
    assert "--profile pypi-cu13" in result.hint and "cuda-nvcc=12.1" in result.hint and "CUDA_HOME" in result.hint
    assert http_server.requests == []                                  # not one request to the index
    assert not plan.workspace.env.exists() and not any((plan.workspace.root / "envs").iterdir())


@pytest.mark.parametrize("case", ["CUDA 13: nvcc wheels from PyPI", "a CUDA 12 toolkit in CUDA_HOME"])
def test_an_env_with_a_compiler_goes_ahead(tmp_path, pypi_mirror, lock, monkeypatch, case):
    only_cuda13_on_path(monkeypatch)
    cuda = "13.0"
    if case == "a CUDA 12 toolkit in CUDA_HOME":
        cuda = "12.1"
        monkeypatch.setenv("CUDA_HOME", str(fake_nvcc(tmp_path / "cuda-12.4", "12.4").parent.parent))
    result = run_env(make_plan(tmp_path, index_url=pypi_mirror.url, lock=lock, cuda=cuda))
    assert result.status == "ok", (result.detail, result.hint)


@pytest.mark.parametrize("output, reason", [
    ("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n"
     "    tinya from http://127.0.0.1:14013/simple/tinya/tinya-1.0-py3-none-any.whl:\n"
     "        Expected sha256 ab\n             Got        cd",
     "hash mismatch against the lock (the mirror serves a different file)"),
    ("ERROR: No matching distribution found for tinya (from /tmp/pip-req-401abc/r.txt)", "not available on the mirror"),
    ("ERROR: HTTP error 401 while getting http://127.0.0.1:8080/simple/tinya/", "authentication failed "
     "(check the credentials in the URL or ~/.netrc)"),
    ("error: HTTP status client error (403 Forbidden) for url (http://127.0.0.1:8080/simple/tinya/)",
     "authentication failed (check the credentials in the URL or ~/.netrc)"),
])
def test_a_401_inside_a_port_or_a_path_is_not_read_as_a_login_failure(output, reason):
    from vllm_provision.envs.common import diagnose_install
    assert diagnose_install(output).reason == reason
