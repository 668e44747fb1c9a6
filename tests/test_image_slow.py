"""Slow tier: the repository's Dockerfile built and run for real on a registry-less host (tests/images.py).

The base is Debian bookworm minbase + Python 3.11 with venv (mmdebstrap from the host's apt mirror, kept
between runs in the test image cache), imported with podman. buildah builds the recipe with
WHEEL_FROM=context: the wheel stage takes the session's real vLLM wheel (`real_vllm_wheel`, no second
compile) from the build context, and the runtime stage installs it with `--require-cache` and runs
`./inv verify` as its last step. The toolkit's download and uv caches of that compile are mounted into the
build, so the env's torch and CUDA wheels are not downloaded again. Then, in a container of the image:
`./inv verify --json`, and the documented cache-hit path, `./inv wheel --out` copying the cached wheel.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import images
import pytest

from vllm_provision.artifacts import manifest as mf
from vllm_provision.sources.download import sha256_file

BASE_TAG = "localhost/vllmp-test-bookworm-minbase:12"
IMAGE = "localhost/vllmp-test-vllm:0.2.2"
# the base tarball, made once per package list and mirror (about 90 s and 225 MB)
IMAGE_CACHE = Path(os.environ.get("VLLMP_TEST_IMAGE_CACHE", "~/.cache/vllm-provision-tests/images")).expanduser()


@pytest.fixture(scope="module")
def container_host(tmp_path_factory):
    missing = images.missing_tools()
    if missing:
        # under CI=true the skip fails the run (conftest.py)
        pytest.skip(f"{', '.join(missing)} not found (.ci/run installs them: apt-get install buildah podman mmdebstrap runc)")
    root = tmp_path_factory.mktemp("containers")
    yield images.ContainerHost(root)
    shutil.rmtree(root, ignore_errors=True)      # vfs storage holds every layer in full: gigabytes


def host_state(context: Path) -> None:
    """A working tree's own state, which must not reach the image: a .venv whose stamp `./inv` would trust
    (its invoke fails loudly) and a workspace."""
    import hashlib
    stamp = hashlib.sha256((context / "pyproject.toml").read_bytes()).hexdigest()[:16] + "-"
    (context / ".venv" / "bin").mkdir(parents=True)
    (context / ".venv" / ".vllmp-installed").write_text(stamp + "\n")
    invoke = context / ".venv" / "bin" / "invoke"
    invoke.write_text("#!/bin/sh\necho HOST-ONLY venv used >&2\nexit 1\n")
    invoke.chmod(0o755)
    (context / ".provision").mkdir()
    (context / ".provision" / "HOST-ONLY").write_text("")


@pytest.mark.slow
@pytest.mark.network
def test_the_image_installs_the_real_wheel_and_verifies_in_a_container(real_vllm_wheel, container_host, tmp_path):
    host, wheel, key = container_host, real_vllm_wheel["wheel"], real_vllm_wheel["key"]
    tarball, base_seconds = images.cached_base_tarball(IMAGE_CACHE)
    import_seconds = host.import_base(tarball, BASE_TAG)
    context = images.build_context(tmp_path / "context", wheel)
    host_state(context)
    toolkit_cache = real_vllm_wheel["env"]["VLLMP_CACHE_DIR"]
    built, build_seconds = host.build(context, IMAGE, {"BASE": BASE_TAG, "WHEEL_FROM": "context", "ARCH": "9.0"},
                                      volumes={toolkit_cache: images.TOOLKIT_CACHE_IN_BUILD})
    log = built.stdout + built.stderr
    # the wheel stage handed on the context's wheel; the runtime stage installed that key from it, compiled
    # nothing, and verified last
    assert f"wheel: key {key}" in log
    assert f"installed from cache dir:/wheels, key {key}" in log
    assert "no cached build" not in log and "[build] compiling" not in log
    assert "bootstrap: creating" in log and "HOST-ONLY" not in log
    assert "FAILED" not in log

    out = tmp_path / "out"
    out.mkdir()
    ran, run_seconds = host.run_in(
        IMAGE, "sh", "-c", "ls -A .provision/HOST-ONLY 2>/dev/null; "
                           ".venv/bin/python -c 'import pytest' 2>/dev/null && echo test-extra-installed; "
                           "./inv verify --json; echo verify-exit=$?; ./inv wheel --out /out --json",
        volumes={str(real_vllm_wheel["cache"]): "/wheels:ro", str(out): "/out"})
    assert "verify-exit=0" in ran.stdout, ran.stdout[-4000:] + ran.stderr[-4000:]
    # .dockerignore kept the working tree's .venv and .provision out; the toolkit's venv has no test extra
    assert "HOST-ONLY" not in ran.stdout and "test-extra-installed" not in ran.stdout
    report = images.json_object(ran, "ok", "checks")
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] and not [c for c in report["checks"] if c["status"] == "fail"]
    # an installed artifact: its key against the installed version, its archs read back, each of vLLM's seven
    # libraries imported against the image's torch (vLLM itself is imported on GPU hosts only)
    assert any(key[:12] in c["detail"] for c in checks.values()), checks
    imports = [c for name, c in checks.items() if name.startswith("import ") and name != "import-vllm"]
    assert len(imports) == 7 and all(c["status"] == "pass" for c in imports), imports

    # the documented hit path: the image's workspace installed from a cache, so `./inv wheel --out` copies that
    # cached wheel (sha256 and key checked) with its manifest and prints the key
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-4000:]
    summary = json.loads(ran.stdout.strip().splitlines()[-1])
    assert summary["key"] == key and summary["wheel"] == f"/out/{wheel.name}"
    assert sha256_file(out / wheel.name) == sha256_file(wheel) == summary["sha256"]
    side = json.loads((out / (wheel.name + mf.SIDECAR_SUFFIX)).read_text())
    assert side["key"] == key and side["sha256"] == summary["sha256"] and side["auditwheel"]["ok"]

    size = host.size_bytes(IMAGE)
    print(json.dumps({"base_s": round(base_seconds, 1), "import_s": round(import_seconds, 1),
                      "build_s": round(build_seconds, 1), "image_mb": round(size / 1e6),
                      "verify_and_wheel_in_container_s": round(run_seconds, 1)}))
