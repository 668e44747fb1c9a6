"""Quick tier for the image recipe's toolkit paths (the real image: tests/test_image_slow.py): the cache-hit
path of `inv wheel --out` (a checked copy of the cached wheel and its manifest) and the early refusal of a
pinned wheel made for another Python."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_artifacts import tiny_tree, tiny_wheel  # noqa: F401 - the fixtures are used by name

from vllm_provision.artifacts import cache, install
from vllm_provision.artifacts import manifest as mf
from vllm_provision.core.errors import StepFailed
from vllm_provision.sources.download import sha256_file

ROOT = Path(__file__).resolve().parent.parent


def test_a_cache_hit_is_copied_out_with_its_manifest_checked(tiny_wheel, tmp_path):
    entries = [cache.Entry.parse(f"dir:{tmp_path / 'cache'}")]
    cache.publish(entries[0], tiny_wheel.path, None)
    key = tiny_wheel.manifest["key"]
    copied = install.copy_out(entries, key, tiny_wheel.sha256, tmp_path / "out")
    assert copied.path == tmp_path / "out" / tiny_wheel.path.name and sha256_file(copied.path) == tiny_wheel.sha256
    assert copied.summary()["key"] == key
    side = json.loads((tmp_path / "out" / (tiny_wheel.path.name + mf.SIDECAR_SUFFIX)).read_text())
    assert side["key"] == key and side["sha256"] == tiny_wheel.sha256 and "auditwheel" in side
    # a cached file that is not the one this workspace installed is refused, and not left in --out
    with pytest.raises(StepFailed) as info:
        install.copy_out(entries, key, "0" * 64, tmp_path / "other")
    assert "not " + "0" * 64 in info.value.message and info.value.hint
    assert not list((tmp_path / "other").glob("*.whl"))
    with pytest.raises(StepFailed) as info:
        install.copy_out(entries, "ab" * 32, tiny_wheel.sha256, tmp_path / "third")
    assert "no cached build for key " + "ab" * 32 in info.value.message


def test_a_pinned_wheel_for_another_python_is_refused_before_any_download(tmp_path):
    key = "cd" * 32
    cached = tmp_path / "cache"
    cached.mkdir()
    # only its name is read before the env exists: a Python no profile locks
    (cached / f"vllm-0.2.2+cu130.torch2.11.0.k{key[:12]}-cp39-cp39-linux_x86_64.whl").write_bytes(b"")
    env = dict(os.environ, VLLMP_WORKSPACE_ROOT=str(tmp_path / "ws"), VLLMP_CACHE_DIR=str(tmp_path / "dl"),
               VLLMP_ARTIFACTS__CACHES=f"[dir:{cached}]")
    done = subprocess.run([str(ROOT / "inv"), "provision", "--profile", "pypi-cu13", "--arch", "9.0",
                           "--require-cache", "--artifact-key", key], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [l for l in (done.stdout + done.stderr).splitlines() if l.startswith(("error:", "hint:"))]
    assert len(lines) == 2 and "is for cp39" in lines[0] and "this env's Python is 3." in lines[0]
    assert "Traceback" not in done.stderr
    # nothing fetched, no env made
    assert not (tmp_path / "dl").exists() and not list((tmp_path / "ws").glob("*/src"))
