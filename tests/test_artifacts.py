"""Build once, install many, quick tier: a tiny real `vllm` wheel (a CUDA library compiled here by nvcc for
sm_90, packaged by `pip wheel` through artifacts/wheel.py) goes through the real caches: a directory, a
static PEP 503 tree written by simple503 and served by a stdlib HTTP server, a real pypiserver that asks
for a password. Each install lands in a fresh `uv venv`; each refusal (torch, arch, ABI, glibc, corrupted
file, wrong index sha256, key collision) names the field and both values and leaves that env unchanged."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import sys
import textwrap
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from cuda import LINK, NVCC, needs_nvcc
from mirrors import Pypiserver
from uv import find_uv_bin

from vllm_provision.artifacts import cache, install, installed
from vllm_provision.artifacts import manifest as mf
from vllm_provision.artifacts.wheel import make_wheel, sidecar_of
from vllm_provision.core.errors import StepFailed
from vllm_provision.envs.common import Installer

ROOT = Path(__file__).resolve().parent.parent
PY_TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"
FIELDS = {"format": mf.FORMAT, "release": "0.2.2",
          "sdist_sha256": "d047bec3c28a93325e8c7f3bc4db01aff20e64c77d56fbb53a1542cde34c6fdc",
          "patches": [{"file": "0004-reuse-prebuilt-extensions.patch", "sha256": "ab" * 32}],
          "torch": "2.11.0+cu130", "torch_cuda": "13.0", "cxx11_abi": True, "nvcc": "13.0",
          "host_compiler": {"name": "gcc", "version": "14.2.0"}, "archs": ["sm_90"], "python_tag": PY_TAG,
          "platform_tag": "linux_x86_64"}
TARGET = mf.Target(torch="2.11.0+cu130", torch_cuda="13.0", cxx11_abi=True, python_tag=PY_TAG,
                   compute_caps=("9.0",), glibc="2.36")
UV = Installer("uv", {})
# setup.py of the tiny project: the same switches as patches/0.2.2/0004-reuse-prebuilt-extensions.patch
SETUP = textwrap.dedent('''
    import os, setuptools
    PACKAGE_DATA = ["py.typed"]
    PREBUILT_SETUP = {}
    if os.environ.get("VLLM_PROVISION_PREBUILT") == "1":
        PACKAGE_DATA += ["*.so", "_build_manifest.json"]
        class PrebuiltDistribution(setuptools.Distribution):
            def has_ext_modules(self):
                return True
        PREBUILT_SETUP["distclass"] = PrebuiltDistribution
    label = os.environ.get("VLLM_PROVISION_LOCAL_VERSION")
    setuptools.setup(name="vllm", version="0.2.2" + ("+" + label if label else "+cu130"), packages=["vllm"],
                     package_data={"vllm": PACKAGE_DATA}, **PREBUILT_SETUP)
''')

pytestmark = needs_nvcc


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory) -> Path:
    """A built-workspace look-alike: vllm/ with a real sm_90 CUDA library in place, and the setup.py switches."""
    src = tmp_path_factory.mktemp("tiny") / "src"
    (src / "vllm").mkdir(parents=True)
    (src / "vllm" / "__init__.py").write_text('__version__ = "0.2.2"\n')
    (src / "vllm" / "py.typed").write_text("")
    (src / "setup.py").write_text(SETUP)
    cu = src / "tiny.cu"
    cu.write_text('__global__ void twice(float *x) { x[threadIdx.x] *= 2.0f; }\n'
                  'extern "C" void run(float *x) { twice<<<1, 32>>>(x); }\n')
    subprocess.run([str(NVCC), "-shared", "-Xcompiler", "-fPIC", "-gencode", "arch=compute_90,code=sm_90",
                    "-o", str(src / "vllm" / "_C.so"), str(cu), *LINK], check=True)
    return src


def _make(tree: Path, out: Path, **changes):
    return make_wheel(python=sys.executable, src=tree, out_dir=out, fields={**FIELDS, **changes},
                      env={**__import__("os").environ, "PIP_CONFIG_FILE": "/dev/null"}, info=None,
                      log=out / "wheel.log")


@pytest.fixture(scope="session")
def tiny_wheel(tiny_tree, tmp_path_factory):
    return _make(tiny_tree, tmp_path_factory.mktemp("wheels"))


def fresh_env(path: Path) -> Path:
    subprocess.run([find_uv_bin(), "venv", "-q", "--python", sys.executable, str(path)], check=True)
    return path / "bin" / "python"


def freeze(python: Path) -> str:
    return subprocess.run([find_uv_bin(), "pip", "freeze", "--python", str(python)], check=True,
                          capture_output=True, text=True).stdout


def install_into(python: Path, entries, key: str, target=TARGET, log: Path | None = None):
    found = install.look_up(entries, key)
    assert found, f"no hit for {key} in {entries}"
    return install.install_found(found, key, target, python=str(python), work_dir=python.parent.parent / "work",
                                 installer=UV, log=log)


def refused(python: Path, entries, key: str, target=TARGET) -> str:
    """The refusal's message; asserts the env is exactly as before and no download is left behind."""
    before = freeze(python)
    with pytest.raises(StepFailed) as info:
        install_into(python, entries, key, target)
    assert freeze(python) == before
    assert not any((python.parent.parent / "work").glob("artifact-*")), "the download must not be left behind"
    assert info.value.hint
    return info.value.message


# ------------------------------------------------------------------------------------------------ the wheel
def test_wheel_is_a_platform_wheel_with_manifest_key_and_label(tiny_wheel, tiny_tree):
    key = tiny_wheel.manifest["key"]
    assert key == mf.compute_key(FIELDS)
    assert tiny_wheel.path.name == f"vllm-0.2.2+cu130.torch2.11.0.k{key[:12]}-{PY_TAG}-{PY_TAG}-linux_x86_64.whl"
    with zipfile.ZipFile(tiny_wheel.path) as whl:
        names = whl.namelist()
        wheel_meta = whl.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    assert "vllm/_C.so" in names and mf.IN_WHEEL in names
    assert "Root-Is-Purelib: false" in wheel_meta
    inside = mf.read_from_wheel(tiny_wheel.path)
    assert inside["archs"] == ["sm_90"] and inside["libraries"] == {"_C.so": ["sm_90"]}
    assert inside["glibc_floor"] and inside["version"] == f"0.2.2+cu130.torch2.11.0.k{key[:12]}"
    side = json.loads(sidecar_of(tiny_wheel.path).read_text())
    assert {k: side[k] for k in inside} == inside
    assert side["sha256"] == cache.download.sha256_file(tiny_wheel.path)
    assert side["auditwheel"]["ok"] and side["auditwheel"]["sym_tag"].startswith("manylinux_2_")
    assert not (tiny_tree / mf.IN_WHEEL).exists(), "the manifest is packaged, not left in the tree"


def test_the_same_tree_makes_the_same_wheel_bytes(tiny_wheel, tiny_tree, tmp_path):
    assert _make(tiny_tree, tmp_path).sha256 == tiny_wheel.sha256


def test_wheel_refuses_a_build_whose_archs_differ_from_the_plan(tiny_tree, tmp_path):
    with pytest.raises(StepFailed) as info:
        _make(tiny_tree, tmp_path, archs=["sm_80", "sm_90"])
    assert "_C.so holds SASS sm_90, the plan asks for sm_80, sm_90" in info.value.message
    assert not list(tmp_path.glob("*.whl"))


@pytest.mark.parametrize("field,value", [("torch", "2.11.0+cu128"), ("torch_cuda", "12.8"), ("cxx11_abi", False),
                                         ("nvcc", "13.1"), ("host_compiler", {"name": "gcc", "version": "13.3.0"}),
                                         ("archs", ["sm_80"]), ("python_tag", "cp310"),
                                         ("patches", []), ("sdist_sha256", "0" * 64)])
def test_every_binary_shaping_field_changes_the_key(field, value):
    assert mf.compute_key({**FIELDS, field: value}) != mf.compute_key(FIELDS)


def test_glibc_floor_is_checked_but_not_looked_up():
    made = mf.make(FIELDS, "2.17", {"_C.so": ("sm_90",)})
    assert made["key"] == mf.make(FIELDS, "2.34", {"_C.so": ("sm_90",)})["key"]


def test_a_key_cannot_be_computed_without_every_field():
    with pytest.raises(StepFailed) as info:
        mf.compute_key({**FIELDS, "host_compiler": None})
    assert "host_compiler unknown" in info.value.message and "--artifact-key" in info.value.hint


# ------------------------------------------------------------------------------------------------ caches
def test_installs_from_a_directory_cache_and_verify_checks_it(tiny_wheel, tmp_path):
    entry = cache.Entry.parse(f"dir:{tmp_path / 'dircache'}")
    assert cache.publish(entry, tiny_wheel.path, None).startswith("copied to dir:")
    python = fresh_env(tmp_path / "env")
    done = install_into(python, [entry], tiny_wheel.manifest["key"])
    assert f"vllm=={tiny_wheel.manifest['version']}" in freeze(python)
    assert done.sha256 == tiny_wheel.sha256 and done.facts()["cache"] == entry.shown
    assert "archs sm_90 cover GPU compute capability 9.0" in done.fit
    site = next((tmp_path / "env").glob("lib/python3*/site-packages/vllm"))
    checks = installed.artifact_checks([site], None, tiny_wheel.manifest["key"])
    assert [(c.name, c.status) for c in checks] == [("artifact-manifest", "pass"), ("artifact-archs", "pass")]
    # an editable build (no manifest, no expected key) gets no extra checks; an expected one that is missing fails
    assert installed.artifact_checks([tmp_path], None, None) == []
    assert installed.artifact_checks([tmp_path], None, "f" * 64)[0].status == "fail"


def test_nothing_to_cover_without_gpus_or_planned_archs(tiny_wheel, tmp_path):
    entry = cache.Entry.parse(f"dir:{tmp_path / 'c'}")
    cache.publish(entry, tiny_wheel.path, None)
    done = install_into(fresh_env(tmp_path / "env"), [entry], tiny_wheel.manifest["key"],
                        replace(TARGET, compute_caps=()))
    assert "nothing for the archs to cover" in done.fit


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def static_server(tmp_path):
    """A static tree (simple503) served by a stdlib HTTP server under /vllm-index/."""
    root = tmp_path / "www"
    tree = root / "vllm-index"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tree, f"http://127.0.0.1:{server.server_address[1]}/vllm-index/"
    server.shutdown()
    server.server_close()


def test_installs_from_a_static_tree_on_disk_and_served(tiny_wheel, static_server, tmp_path):
    tree, url = static_server
    cache.publish(cache.Entry.parse(f"static:{tree}"), tiny_wheel.path, tmp_path / "publish.log")
    page = (tree / "vllm" / "index.html").read_text()
    assert f"#sha256={tiny_wheel.sha256}" in page and "data-dist-info-metadata" in page    # PEP 503 + PEP 658
    assert (tree / (tiny_wheel.path.name + ".metadata")).is_file()
    served = cache.Entry.parse(f"static+{url}")
    assert not served.writable
    found = cache.find(served, tiny_wheel.manifest["key"])
    assert found.sha256 == tiny_wheel.sha256 and found.where.startswith(url)
    for name, entry in (("served", served), ("disk", cache.Entry.parse(f"static:{tree}"))):
        python = fresh_env(tmp_path / name)
        install_into(python, [entry], tiny_wheel.manifest["key"])
        assert f"vllm=={tiny_wheel.manifest['version']}" in freeze(python)


class AuthPypiserver:
    """The test pypiserver asking for ci/PASSWORD to list, download and upload."""

    PASSWORD = "s3cret-upload-token"

    def __init__(self, root: Path):
        self.server = Pypiserver(root, password=self.PASSWORD)
        self.port = self.server.port

    def url(self, password: str | None = None) -> str:
        return f"http://ci:{password or self.PASSWORD}@127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def auth_pypiserver(tmp_path):
    (tmp_path / "packages").mkdir()
    server = AuthPypiserver(tmp_path / "packages")
    yield server
    server.stop()


def test_uploads_to_a_pypi_server_with_a_password_and_installs_from_it(tiny_wheel, auth_pypiserver, tmp_path):
    log = tmp_path / "publish.log"
    entry = cache.Entry.parse(f"pypi:{auth_pypiserver.url()}")
    assert "ci:***@" in entry.shown and auth_pypiserver.PASSWORD not in entry.shown
    assert cache.publish(entry, tiny_wheel.path, log) == f"uploaded to {entry.shown}"
    assert cache.publish(entry, tiny_wheel.path, log) == f"already in {entry.shown}"    # a second push is fine
    assert (tmp_path / "packages" / tiny_wheel.path.name).is_file()
    assert auth_pypiserver.PASSWORD not in log.read_text()         # not in argv, not in output
    python = fresh_env(tmp_path / "env")
    install_log = tmp_path / "install.log"
    install_into(python, [entry], tiny_wheel.manifest["key"], log=install_log)
    assert f"vllm=={tiny_wheel.manifest['version']}" in freeze(python)
    assert auth_pypiserver.PASSWORD not in install_log.read_text()
    # without the password the index refuses, and says so without echoing any secret
    with pytest.raises(StepFailed) as info:
        cache.find(cache.Entry.parse(f"pypi:http://127.0.0.1:{auth_pypiserver.port}/"), tiny_wheel.manifest["key"])
    assert "cannot be read" in info.value.message and "credentials" in info.value.hint


def test_an_upload_with_a_wrong_password_fails_without_showing_it(tiny_wheel, auth_pypiserver, tmp_path):
    wrong = "not-the-right-password"
    with pytest.raises(StepFailed) as info:
        cache.publish(cache.Entry.parse(f"pypi:{auth_pypiserver.url(wrong)}"), tiny_wheel.path, tmp_path / "p.log")
    assert "twine upload" in info.value.message and "credentials" in (info.value.hint or "")
    assert wrong not in info.value.message + (info.value.log_tail or "") + (tmp_path / "p.log").read_text()


def test_lookup_is_by_key_in_cache_order(tiny_wheel, tmp_path):
    empty, full = cache.Entry.parse(f"dir:{tmp_path / 'empty'}"), cache.Entry.parse(f"dir:{tmp_path / 'full'}")
    cache.publish(full, tiny_wheel.path, None)
    assert install.look_up([empty, full], tiny_wheel.manifest["key"]).entry == full
    assert install.look_up([empty, full], "0" * 64) is None
    error = install.missing_error("0" * 64, [empty, full])
    assert "0" * 64 in error.message and empty.shown in error.message and full.shown in error.message
    assert "./inv wheel --push" in error.hint


# ------------------------------------------------------------------------------------------------ refusals
@pytest.fixture
def dir_cache(tiny_wheel, tmp_path):
    entry = cache.Entry.parse(f"dir:{tmp_path / 'cache'}")
    cache.publish(entry, tiny_wheel.path, None)
    return entry


@pytest.fixture
def target_env(tmp_path):
    return fresh_env(tmp_path / "target")


@pytest.mark.parametrize("change,words", [
    ({"torch": "2.10.0+cu130"}, "torch is 2.11.0+cu130 in the artifact, 2.10.0+cu130 here"),
    ({"torch_cuda": "12.8"}, "torch_cuda is 13.0 in the artifact, 12.8 here"),
    ({"cxx11_abi": False}, "cxx11_abi is True in the artifact, False here"),
    ({"python_tag": "cp310"}, f"python_tag is {PY_TAG} in the artifact, cp310 here"),
    ({"compute_caps": ("8.0", "9.0")}, "archs is sm_90 in the artifact, GPU compute capability 8.0 here"),
    ({"glibc": "2.0"}, "glibc_floor is"),
])
def test_an_artifact_that_does_not_fit_is_refused(tiny_wheel, dir_cache, target_env, change, words):
    message = refused(target_env, [dir_cache], tiny_wheel.manifest["key"], replace(TARGET, **change))
    assert words in message and "does not fit this env/host" in message


def test_a_corrupted_wheel_is_refused(tiny_wheel, dir_cache, target_env):
    stored = Path(dir_cache.location) / tiny_wheel.path.name
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    message = refused(target_env, [dir_cache], tiny_wheel.manifest["key"])
    assert "checksum mismatch" in message and tiny_wheel.sha256 in message


def test_a_wrong_sha256_on_the_index_is_refused(tiny_wheel, static_server, target_env, tmp_path):
    tree, url = static_server
    cache.publish(cache.Entry.parse(f"static:{tree}"), tiny_wheel.path, tmp_path / "publish.log")
    page = tree / "vllm" / "index.html"
    page.write_text(page.read_text().replace(tiny_wheel.sha256, "e" * 64))
    message = refused(target_env, [cache.Entry.parse(f"static+{url}")], tiny_wheel.manifest["key"])
    assert "checksum mismatch" in message and "e" * 64 in message


def test_a_key_collision_is_refused_naming_both_keys(tiny_wheel, dir_cache, target_env):
    real = tiny_wheel.manifest["key"]
    other = real[:12] + ("0" if real[12] != "0" else "1") + real[13:]     # same label marker, another key
    message = refused(target_env, [dir_cache], other)
    assert real in message and other in message


def test_an_edited_manifest_is_refused(tiny_wheel, tmp_path, target_env):
    """A wheel whose manifest was edited after the build (here: the torch it claims) no longer hashes to its key."""
    edited = tmp_path / "edited" / tiny_wheel.path.name
    edited.parent.mkdir()
    with zipfile.ZipFile(tiny_wheel.path) as src, zipfile.ZipFile(edited, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == mf.IN_WHEEL:
                data = json.dumps({**json.loads(data), "torch": "2.10.0+cu130"}).encode()
            dst.writestr(item, data)
    message = refused(target_env, [cache.Entry.parse(f"dir:{edited.parent}")], tiny_wheel.manifest["key"])
    assert "edited manifest" in message


def test_bad_cache_settings_exit_2_with_error_and_hint(tmp_path):
    env = {**__import__("os").environ, "VLLMP_ARTIFACTS__CACHES": "[ftp://host/wheels]",
           "VLLMP_WORKSPACE_ROOT": str(tmp_path / "ws"), "VLLMP_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([str(ROOT / "inv"), "plan"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = [l for l in (done.stdout + done.stderr).splitlines() if l.startswith(("error:", "hint:"))]
    assert len(lines) == 2 and "artifacts.caches" in lines[0] and "not a cache entry" in lines[0]
    assert "Traceback" not in done.stderr


def test_every_inv_command_line_of_the_dockerfile_parses():
    """Each `./inv TASK --flag` the image recipe runs exists (the slow tier builds it: test_image_slow.py)."""
    import re
    text = (ROOT / "Dockerfile").read_text()
    commands = re.findall(r"\./inv ([a-z-]+)((?: +--[a-z-]+(?: +(?:\"[^\"]*\"|[^-\s&\\][^\s&\\]*))?)*)", text)
    assert {task for task, _ in commands} == {"wheel", "provision", "verify"}
    for task, args in commands:
        shown = subprocess.run([str(ROOT / "inv"), task, "--help"], cwd=ROOT, capture_output=True, text=True,
                               timeout=300)
        assert shown.returncode == 0, shown.stderr
        for flag in re.findall(r"--[a-z-]+", args):
            assert flag in shown.stdout, f"./inv {task} has no {flag}"


def test_flags_reach_the_artifacts_settings_and_a_bad_key_is_bad_input(isolated):
    from vllm_provision import cli
    from vllm_provision.core.errors import ConfigError
    key = "ab" * 32
    assert cli.cli_settings(push=True, require_cache=True, artifact_key=key, arch="9.0")["artifacts"] == \
        {"push": True, "require_cache": True, "key": key}
    assert "artifacts" not in cli.cli_settings(push=False, require_cache=False, artifact_key=None)
    plan = cli.make_plan(require_cache=True, artifact_key=key, arch="9.0")
    assert plan.settings.artifacts.key == key and plan.settings.artifacts.require_cache is True
    with pytest.raises(ConfigError) as info:
        cli.make_plan(artifact_key="3f2a", arch="9.0")
    assert "artifacts.key" in info.value.message and "64 lowercase hex digits" in info.value.message


def test_the_build_steps_mode_follows_the_settings(isolated, monkeypatch):
    from vllm_provision import cli
    from vllm_provision.steps import build
    modes = {}
    for name, flags, caches in (("build", {}, None), ("cache-or-build", {}, "[dir:/srv/w]"),
                                ("cache-only", {"require_cache": True}, "[dir:/srv/w]")):
        if caches:
            monkeypatch.setenv("VLLMP_ARTIFACTS__CACHES", caches)
        modes[name] = build.artifact_mode(cli.make_plan(arch="9.0", **flags).settings.artifacts)
    assert modes == {"build": "build", "cache-or-build": "cache-or-build", "cache-only": "cache-only"}
