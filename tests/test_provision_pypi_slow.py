"""Slow tier: the default profile end to end on a GPU-less host with nothing but Python and the package
index: `./inv provision --profile pypi-cu13 --arch 9.0 --push` from an empty workspace and cache runs fetch ->
env (the committed lock, from PyPI, hashes checked) -> patch -> build (the lock's CUDA 13.0 compiler wheels, no
host toolkit on PATH) -> verify; the smoke is skipped for want of a GPU. Per-step times land in the report.

The same compile (the session fixture `real_vllm_wheel`, conftest.py) also makes the real wheel into a
directory cache; it is then published to a real pypiserver that asks for a password and to a static tree
served over HTTP, and a fresh workspace installs it from each with `--require-cache` (nothing compiled) and
verifies it. No second compile.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_artifacts import AuthPypiserver, static_server  # noqa: F401 - the fixture is used by name

from vllm_provision.artifacts import cache
from vllm_provision.artifacts import manifest as mf

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.network
def test_default_profile_provisions_from_pypi_alone(real_vllm_wheel):
    ws = real_vllm_wheel["workspace"]
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


@pytest.mark.slow
@pytest.mark.network
def test_the_compile_made_a_verified_wheel(real_vllm_wheel):
    wheel, key = real_vllm_wheel["wheel"], real_vllm_wheel["key"]
    built = json.loads((real_vllm_wheel["workspace"] / "report.json").read_text())["steps"]["build"]["facts"]
    assert built["source"] == "compiled" and built["artifact"]["published"] == [f"copied to dir:{wheel.parent}"]
    inside = mf.read_from_wheel(wheel)
    assert inside["key"] == key == mf.compute_key(inside)
    assert inside["archs"] == ["sm_90"] and inside["torch"] == "2.11.0+cu130" and inside["nvcc"] == "13.0"
    assert len(inside["libraries"]) == 7        # vLLM 0.2.2's seven extensions
    assert all(archs == ["sm_90"] for archs in inside["libraries"].values())
    assert wheel.name.startswith(f"vllm-0.2.2+cu130.torch2.11.0.k{key[:12]}-cp3")
    side = json.loads(wheel.with_name(wheel.name + mf.SIDECAR_SUFFIX).read_text())
    assert side["sha256"] == cache.download.sha256_file(wheel) and side["auditwheel"]["ok"]
    # torch's and CUDA's libraries are needed from the target env, not vendored
    assert {"libc10.so", "libtorch_cpu.so", "libcudart.so.13"} <= set(side["auditwheel"]["external_libs"])
    # torch and CUDA are not vendored: the wheel holds vLLM's own libraries only
    import zipfile
    with zipfile.ZipFile(wheel) as whl:
        libs = [n for n in whl.namelist() if ".so" in n]
    assert libs and all(n.startswith("vllm/") and "libtorch" not in n and "libcudart" not in n for n in libs)
    print(json.dumps({"wheel": wheel.name, "mb": round(wheel.stat().st_size / 1e6, 1), "glibc_floor": inside["glibc_floor"],
                      "auditwheel": side["auditwheel"]}))


def _provision_from(cache_entry: str, real: dict, name: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """A fresh workspace (same download and uv caches) that may only install the build from `cache_entry`."""
    env = dict(real["env"], VLLMP_WORKSPACE_ROOT=str(real["workspace"].parent.parent / name),
               VLLMP_ARTIFACTS__CACHES=f"[{cache_entry}]")
    done = subprocess.run([str(ROOT / "inv"), "provision", "--profile", "pypi-cu13", "--arch", "9.0",
                           "--require-cache", *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    report = real["workspace"].parent.parent / name / "0.2.2-pypi-cu13" / "report.json"
    return done, (json.loads(report.read_text())["steps"] if report.is_file() else {})


@pytest.mark.slow
@pytest.mark.network
def test_fresh_workspaces_install_the_wheel_from_pypiserver_and_a_static_tree(real_vllm_wheel, static_server,
                                                                              tmp_path):
    wheel, key = real_vllm_wheel["wheel"], real_vllm_wheel["key"]
    (tmp_path / "packages").mkdir()
    server = AuthPypiserver(tmp_path / "packages")
    try:
        tree, url = static_server
        cache.publish(cache.Entry.parse(f"static:{tree}"), wheel, tmp_path / "publish.log")
        cache.publish(cache.Entry.parse(f"pypi:{server.url()}"), wheel, tmp_path / "publish.log")
        timings = {}
        for name, entry in (("from-pypi", f"pypi:{server.url()}"), ("from-static", f"static+{url}")):
            done, steps = _provision_from(entry, real_vllm_wheel, name)
            assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
            assert server.PASSWORD not in done.stdout + done.stderr
            build = steps["build"]
            assert build["facts"]["source"] == "cache" and build["facts"]["key"] == key
            assert "installed from cache" in build["detail"] and key in build["detail"]
            assert steps["verify"]["status"] == "ok", steps["verify"]
            names = {c["name"]: c["status"] for c in steps["verify"]["facts"]["checks"]}
            assert names.get("artifact-manifest") == "pass" and names.get("artifact-archs") == "pass"
            timings[name] = {n: round(steps[n]["seconds"], 1) for n in ("env", "build", "verify")}
            # the same workspace verified again without --require-cache: the build stands for the same key,
            # so it is not out of date
            again = subprocess.run([str(ROOT / "inv"), "verify", "--profile", "pypi-cu13", "--arch", "9.0"], cwd=ROOT,
                                   env=dict(real_vllm_wheel["env"], VLLMP_ARTIFACTS__CACHES=f"[{entry}]",
                                            VLLMP_WORKSPACE_ROOT=str(real_vllm_wheel["workspace"].parent.parent / name)),
                                   capture_output=True, text=True, timeout=1200)
            assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        print(json.dumps(timings))
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.network
def test_require_cache_on_a_miss_fails_naming_the_key_and_compiles_nothing(real_vllm_wheel, tmp_path):
    done, steps = _provision_from(f"dir:{tmp_path / 'empty'}", real_vllm_wheel, "miss")
    assert done.returncode == 1
    lines = [l for l in done.stderr.splitlines() if l.startswith(("error:", "hint:"))]
    assert "no cached build for key" in lines[0] and f"dir:{tmp_path / 'empty'}" in lines[0]
    assert "./inv wheel --push" in lines[1]
    assert steps["build"]["status"] == "failed" and "compile_seconds" not in steps["build"]["facts"]
    # a pinned key that is in the cache installs it even without computing one (the fleet's way)
    done, steps = _provision_from(f"dir:{real_vllm_wheel['cache']}", real_vllm_wheel, "pinned",
                                  "--artifact-key", real_vllm_wheel["key"])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert steps["build"]["facts"]["source"] == "cache"
