"""The ./inv wrapper: offline bootstrap from a wheelhouse, and nothing half-made when it fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT


def copy_checkout(dest):
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("tests/fixtures/", "envs/locks/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def offline_env(wheelhouse):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLMP_")}
    env.update({"VLLMP_WHEELHOUSE": str(wheelhouse), "VLLMP_EXTRAS": "", "VLLMP_BOOTSTRAP_PYTHON": sys.executable,
                # any attempt to reach an index fails at once: proves the bootstrap is offline
                "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_NO_CACHE_DIR": "1"})
    return env


@pytest.mark.network
@pytest.mark.slow
def test_offline_bootstrap_from_a_wheelhouse(tmp_path):
    wheels = tmp_path / "wheels"
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    subprocess.run([sys.executable, "-m", "invoke", "wheelhouse", "--python-version", py, "--out", str(wheels)],
                   cwd=ROOT, check=True, capture_output=True)
    assert any(w.name.startswith("invoke-") for w in wheels.glob("*.whl"))
    repo = copy_checkout(tmp_path / "repo")
    proc = subprocess.run(["./inv", "--list"], cwd=repo, env=offline_env(wheels), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "provision" in proc.stdout and "offline, wheels from" in proc.stderr
    assert (repo / ".venv" / ".vllmp-installed").is_file()


def test_bootstrap_failure_leaves_no_half_made_venv(tmp_path):
    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir()
    repo = copy_checkout(tmp_path / "repo")
    proc = subprocess.run(["./inv", "--list"], cwd=repo, env=offline_env(empty), capture_output=True, text=True)
    assert proc.returncode == 1
    assert "error: could not install the toolkit" in proc.stderr and "hint: " in proc.stderr
    assert not (repo / ".venv").exists()


def test_bootstrap_names_a_missing_wheelhouse(tmp_path):
    repo = copy_checkout(tmp_path / "repo")
    proc = subprocess.run(["./inv", "--list"], cwd=repo, env=offline_env(tmp_path / "nope"), capture_output=True, text=True)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr


@pytest.mark.network
@pytest.mark.slow
def test_a_lean_first_run_then_test_adds_its_extra_in_place_with_a_heartbeat(tmp_path):
    """About 1-2 min here (two real pip installs from the index). The `test` extra of the copy is one small
    wheel instead of the suite's (torch...): what is checked is how ./inv picks and adds extras."""
    repo = copy_checkout(tmp_path / "repo")
    pyproject = repo / "pyproject.toml"
    text = pyproject.read_text()
    start = text.index("test = [")
    pyproject.write_text(text[:start] + 'test = ["iniconfig"]\n' + text[text.index("]\n", start) + 2:])
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLMP_")}
    env.update({"VLLMP_BOOTSTRAP_PYTHON": sys.executable, "VLLMP_HEARTBEAT_S": "1"})
    venv = repo / ".venv"
    has_extra = [str(venv / "bin" / "python"), "-c", "import iniconfig"]

    first = subprocess.run(["./inv", "--list"], cwd=repo, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "bootstrap: creating" in first.stderr and "(no extras; from the package index)" in first.stderr
    assert "bootstrap: installing the toolkit: " in first.stderr and "packages in .venv so far" in first.stderr
    assert subprocess.run(has_extra, capture_output=True).returncode == 1       # the pipeline needs no test extra

    inode = venv.stat().st_ino
    holder = subprocess.Popen([str(venv / "bin" / "python"), "-c", "import time; time.sleep(120)"])
    try:
        second = subprocess.run(["./inv", "test", "--help"], cwd=repo, env=env, capture_output=True, text=True)
        assert second.returncode == 0, second.stderr
        assert "Usage: ./inv [--core-opts] test " in second.stdout      # the task itself answered, after the bootstrap
        assert "bootstrap: adding to" in second.stderr and "(test extras;" in second.stderr
        assert subprocess.run(has_extra).returncode == 0
        assert venv.stat().st_ino == inode and holder.poll() is None      # the venv in use was not recreated
    finally:
        holder.kill()
        holder.wait()
    third = subprocess.run(["./inv", "--list"], cwd=repo, env=env, capture_output=True, text=True)
    assert third.returncode == 0 and "bootstrap:" not in third.stderr     # the extra stays; nothing to install
