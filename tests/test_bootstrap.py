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
