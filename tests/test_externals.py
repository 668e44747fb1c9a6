"""External sources of CMake-era releases: fetched by commit through tarball and git mirrors (a real loopback
HTTP server, a real git repository), trimmed to the files the build reads, verified by tree hash, cached as
reproducible archives, bundled and imported for hosts with no route out."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import Route, make_tarball

from vllm_provision.catalog import External, Submodule, get_release
from vllm_provision.core import config
from vllm_provision.core.errors import ConfigError, StepFailed
from vllm_provision.core.settings import Fetch
from vllm_provision.sources import externals
from vllm_provision.sources.download import HttpSettings
from vllm_provision.sources.extract import tree_sha256

PARENT = "1" * 40
CHILD = "2" * 40
HTTP = HttpSettings(timeout=5, retries=1, backoff=0)

PARENT_FILES = {"CMakeLists.txt": b"project(demo)\n", "src/kernel.cu": b"__global__ void k() {}\n",
                "docs/big.md": b"not read by the build\n" * 100, "third/dep/README": b""}
CHILD_FILES = {"include/dep.h": b"#pragma once\n", "test/huge.cc": b"// not read\n" * 100}


def demo_external(tree_hash: str = "") -> External:
    return External(name="demo", repo="acme/demo", commit=PARENT, override="DEMO_SRC_DIR", role="compiled",
                    include=("CMakeLists.txt", "src/**"), tree_sha256=tree_hash,
                    submodules=(Submodule(path="third/dep", repo="acme/dep", commit=CHILD, include=("include/**",)),))


def expected_hash(tmp_path: Path) -> str:
    """The hash of the tree the build reads, computed from the files alone (not by the code under test's fetch)."""
    tree = tmp_path / "expected"
    for name, data in [(n, d) for n, d in PARENT_FILES.items()] + [(f"third/dep/{n}", d) for n, d in CHILD_FILES.items()]:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    return tree_sha256(tree, demo_external().globs)


@pytest.fixture
def release(tmp_path):
    return dataclasses.replace(get_release("0.26.0"), externals=(demo_external(expected_hash(tmp_path)),))


def serve(http_server, prefix: str = "/gh", parent_files=PARENT_FILES) -> str:
    http_server.routes[f"{prefix}/acme/demo/{PARENT}.tar.gz"] = Route(make_tarball(parent_files, top=f"demo-{PARENT}"))
    http_server.routes[f"{prefix}/acme/dep/{CHILD}.tar.gz"] = Route(make_tarball(CHILD_FILES, top=f"dep-{CHILD}"))
    return f"{http_server.url}{prefix}/{{repo}}/{{commit}}.tar.gz"


def fetch_settings(**fetch) -> Fetch:
    """fetch.* over vllm-provision.yaml's defaults, checked by the schema as the toolkit's are."""
    return config.resolve({"fetch": fetch}, environ={}).fetch


def settings(*mirrors: str) -> Fetch:
    return fetch_settings(external_mirrors=list(mirrors), github=False)


def test_a_tarball_mirror_serves_the_trimmed_verified_tree_to_the_build(tmp_path, http_server, release):
    cache = tmp_path / "cache"
    got = externals.obtain(release, cache, settings(serve(http_server)), HTTP, offline=False)
    assert list(got) == ["demo"] and got["demo"].name == f"demo-{PARENT[:12]}.tar.gz"
    overrides = externals.prepare(release, cache, tmp_path / "ws" / "externals")
    root = overrides["DEMO_SRC_DIR"]
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == [".vllmp-external.json", "CMakeLists.txt", "src/kernel.cu", "third/dep/include/dep.h"]
    served = len(http_server.requests)
    externals.obtain(release, cache, settings(serve(http_server)), HTTP, offline=False)
    assert len(http_server.requests) == served, "a verified cached external is not fetched again"


def test_a_mirror_serving_other_files_is_refused_and_the_next_one_used(tmp_path, http_server, release):
    tampered = dict(PARENT_FILES, **{"src/kernel.cu": b"__global__ void evil() {}\n"})
    bad, good = serve(http_server, "/bad", tampered), serve(http_server, "/good")
    with pytest.raises(StepFailed) as err:
        externals.obtain(release, tmp_path / "c1", settings(bad), HTTP, offline=False)
    assert "the tree's content hash is" in err.value.message and release.externals[0].tree_sha256 in err.value.message
    assert externals.cached_archive(tmp_path / "c1", release.externals[0]) is None
    externals.obtain(release, tmp_path / "c2", settings(bad, good), HTTP, offline=False)   # first fails, second serves
    assert externals.cached_archive(tmp_path / "c2", release.externals[0]) is not None


def test_files_outside_the_include_globs_do_not_change_the_hash(tmp_path, http_server, release):
    extra = dict(PARENT_FILES, **{"docs/other.md": b"more docs\n", "assets/paper.pdf": b"%PDF"})
    externals.obtain(release, tmp_path / "cache", settings(serve(http_server, parent_files=extra)), HTTP, offline=False)
    assert externals.cached_archive(tmp_path / "cache", release.externals[0]) is not None


def git_repo(path: Path, files: dict[str, bytes]) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "HOME": str(path.parent), "PATH": "/usr/bin:/bin"}
    work = path.with_suffix(".work")
    for name, data in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(work), *argv], check=True, env=env)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(path)], check=True, env=env)
    return subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], check=True, env=env, capture_output=True,
                          text=True).stdout.strip()


def test_a_git_mirror_is_fetched_by_commit_with_each_submodule_by_its_own(tmp_path):
    parent = git_repo(tmp_path / "git" / "acme" / "demo.git", {k: v for k, v in PARENT_FILES.items()
                                                                if not k.startswith("third/")})
    child = git_repo(tmp_path / "git" / "acme" / "dep.git", CHILD_FILES)
    ext = dataclasses.replace(demo_external(expected_hash(tmp_path)), commit=parent,
                              submodules=(dataclasses.replace(demo_external().submodules[0], commit=child),))
    rel = dataclasses.replace(get_release("0.26.0"), externals=(ext,))
    template = f"git+file://{tmp_path}/git/{{owner}}/{{project}}.git"
    externals.obtain(rel, tmp_path / "cache", settings(template), HTTP, offline=False)
    assert externals.cached_archive(tmp_path / "cache", ext) is not None


def test_offline_without_the_externals_names_them_and_the_bundle_fix(tmp_path, release):
    with pytest.raises(ConfigError) as err:
        externals.obtain(release, tmp_path / "cache", settings(), HTTP, offline=True)
    assert f"demo-{PARENT[:12]}" in err.value.message and err.value.exit_code == 2
    assert "./inv fetch --bundle" in err.value.hint


def test_the_cached_archive_is_reproducible_and_a_corrupt_one_is_not_trusted(tmp_path, http_server, release):
    url = serve(http_server)
    a = externals.obtain(release, tmp_path / "a", settings(url), HTTP, offline=False)["demo"].read_bytes()
    b = externals.obtain(release, tmp_path / "b", settings(url), HTTP, offline=False)["demo"]
    assert b.read_bytes() == a
    b.write_bytes(a[:-10] + b"0" * 10)
    assert externals.cached_archive(tmp_path / "b", release.externals[0]) is None
    externals.obtain(release, tmp_path / "b", settings(url), HTTP, offline=False)
    assert b.read_bytes() == a


@pytest.mark.parametrize("form", ["dir", "tar", "tar.xz"])
def test_a_bundle_round_trips_to_a_host_with_no_route_out(tmp_path, http_server, release, form):
    online = tmp_path / "online"
    externals.obtain(release, online, settings(serve(http_server)), HTTP, offline=False)
    sdist = tmp_path / release.sdist.file
    sdist.write_bytes(b"not the real sdist")
    release = dataclasses.replace(release, sources=(dataclasses.replace(release.sdist, sha256=_sha(sdist)),))
    out = tmp_path / ("bundle" if form == "dir" else f"bundle.{form}")
    externals.write_bundle(release, sdist, online, out)
    offline = tmp_path / "offline"
    offline.mkdir()
    assert externals.import_bundle(release, out, offline / "sources", offline) == 2
    assert (offline / "sources" / release.sdist.file).read_bytes() == b"not the real sdist"
    externals.obtain(release, offline, settings(), HTTP, offline=True)   # no error: everything is there
    assert externals.import_bundle(release, out, offline / "sources", offline) == 0


def test_a_tampered_bundle_leaves_nothing_in_the_cache(tmp_path, http_server, release):
    online = tmp_path / "online"
    externals.obtain(release, online, settings(serve(http_server)), HTTP, offline=False)
    sdist = tmp_path / release.sdist.file
    sdist.write_bytes(b"sdist")
    release = dataclasses.replace(release, sources=(dataclasses.replace(release.sdist, sha256=_sha(sdist)),))
    out = tmp_path / "bundle"
    externals.write_bundle(release, sdist, online, out)
    (out / "externals" / f"demo-{PARENT[:12]}" / "src" / "kernel.cu").write_bytes(b"changed")
    offline = tmp_path / "offline"
    offline.mkdir()
    with pytest.raises(StepFailed) as err:
        externals.import_bundle(release, out, offline / "sources", offline)
    assert "content hash" in err.value.message
    assert externals.cached_archive(offline, release.externals[0]) is None
    assert not list((offline / "externals").glob("*.tar.gz"))


def test_a_bundle_for_another_release_is_refused(tmp_path, http_server, release):
    online = tmp_path / "online"
    externals.obtain(release, online, settings(serve(http_server)), HTTP, offline=False)
    sdist = tmp_path / release.sdist.file
    sdist.write_bytes(b"s")
    externals.write_bundle(release, sdist, online, tmp_path / "bundle")
    other = dataclasses.replace(release, version="0.22.0")
    with pytest.raises(ConfigError) as err:
        externals.import_bundle(other, tmp_path / "bundle", tmp_path / "x" / "sources", tmp_path)
    assert "is for vLLM 0.26.0, not 0.22.0" in err.value.message


def _sha(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("version", ["0.22.0", "0.26.0"])
def test_every_catalog_external_is_pinned_with_a_content_hash(version):
    release = get_release(version)
    assert {e.name for e in release.externals} >= {"cutlass", "vllm-flash-attn", "flashmla", "deepgemm", "qutlass",
                                                    "triton_kernels"}
    for ext in release.externals:
        assert (len(ext.commit) == 40 or ext.tag) and len(ext.tree_sha256) == 64, ext.name
        assert ext.override and ext.include, ext.name


def test_git_is_on_path_for_the_git_mirror_tests():
    assert shutil.which("git"), "the git mirror tests need git (CI clones with it)"


def test_the_artifact_key_covers_each_external_and_leaves_releases_without_any_unchanged():
    from vllm_provision.artifacts import manifest
    fields = {"format": 1, "release": "0.2.2", "sdist_sha256": "s", "patches": [], "torch": "2.11.0",
              "torch_cuda": "13.0", "cxx11_abi": True, "nvcc": "13.0", "host_compiler": {"name": "g++"},
              "archs": ["9.0"], "python_tag": "cp312", "platform_tag": "linux_x86_64"}
    plain = manifest.compute_key(fields)
    assert manifest.compute_key(fields | {"externals": {}}) == plain, "a release without externals keeps its key"
    one = manifest.compute_key(fields | {"externals": {"cutlass": "a" * 64}})
    other = manifest.compute_key(fields | {"externals": {"cutlass": "b" * 64}})
    assert len({plain, one, other}) == 3
    assert manifest.make(fields | {"externals": {"cutlass": "a" * 64}}, None, {})["externals"] == {"cutlass": "a" * 64}


def test_verify_finds_an_extension_below_the_package_by_its_dotted_name(tmp_path):
    from vllm_provision.probes.envprobe import extension_files
    (tmp_path / "vllm_flash_attn").mkdir()
    so = tmp_path / "vllm_flash_attn" / "_vllm_fa2_C.abi3.so"
    so.write_bytes(b"")
    (tmp_path / "_C.abi3.so").write_bytes(b"")
    found, missing = extension_files([tmp_path], ["_C", "vllm_flash_attn._vllm_fa2_C", "_moe_C"])
    assert found == {"_C": tmp_path / "_C.abi3.so", "vllm_flash_attn._vllm_fa2_C": so} and missing == ["_moe_C"]


SHIPPED = Path(__file__).parent / "fixtures" / "bundles" / "vllm-0.26.0-externals.tar.xz"


def test_the_shipped_0_26_0_bundle_verifies_against_the_catalog_and_feeds_an_offline_build(tmp_path):
    """The trimmed externals the slow tier builds from (2.5 MB: xz shares the five CUTLASS copies), written by
    `./inv bundle --externals-only`: every tree hashes to the catalog's pin, and prepare() hands each one over."""
    release = get_release("0.26.0")
    assert externals.import_bundle(release, SHIPPED, tmp_path / "sources", tmp_path) == len(release.externals) == 8
    externals.obtain(release, tmp_path, settings(), HTTP, offline=True)   # nothing missing
    overrides = externals.prepare(release, tmp_path, tmp_path / "ws" / "externals")
    assert set(overrides) == {e.override for e in release.externals}
    assert (overrides["VLLM_CUTLASS_SRC_DIR"] / "include" / "cute" / "tensor.hpp").is_file()
    assert (overrides["FETCHCONTENT_SOURCE_DIR_VLLM-FLASH-ATTN"] / "csrc" / "cutlass" / "include").is_dir()
    assert not (overrides["VLLM_CUTLASS_SRC_DIR"] / "test").exists(), "trimmed to what the build reads"


# --- the wheel origin: copied externals read from the release's own wheel --------------------------------------

WHEEL = "vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl"


@pytest.fixture(scope="module")
def copied_trees(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """The three copied externals' real files (name -> path inside the external's tree -> bytes), from the
    shipped bundle: their hashes are the catalog's pins."""
    import json

    from vllm_provision.sources.extract import safe_extract, tree_files
    root = safe_extract(SHIPPED, tmp_path_factory.mktemp("shipped") / "b")
    dirs = {e["name"]: e["dir"] for e in json.loads((root / "bundle.json").read_text())["externals"]}
    out = {}
    for ext in get_release("0.26.0").externals:
        if ext.role == "copied":
            tree = root / dirs[ext.name]
            out[ext.name] = {p.relative_to(tree).as_posix(): p.read_bytes() for p in tree_files(tree)}
    return out


def copied_release():
    release = get_release("0.26.0")
    return dataclasses.replace(release, externals=tuple(e for e in release.externals if e.role == "copied"))


def make_wheel(trees: dict[str, dict[str, bytes]], change: tuple[str, str] | None = None,
               extra: dict[str, bytes] | None = None) -> bytes:
    """A real wheel (zip) as the release's install lays it out: each copied external's files under its
    wheel_path, with the install's rewrite applied, and a module of vLLM's own; `change` = (external, file)
    whose copy differs."""
    import io
    import zipfile
    buf = io.BytesIO()
    by_name = {e.name: e for e in copied_release().externals}
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("vllm/__init__.py", b"__version__ = '0.26.0'\n")
        for name, files in trees.items():
            ext = by_name[name]
            for rel, data in files.items():
                if ext.wheel_tree:
                    assert rel.startswith(ext.wheel_tree + "/")
                    rel = rel[len(ext.wheel_tree) + 1:]
                for original, installed in ext.wheel_rewrite:
                    data = data.replace(original.encode(), installed.encode())
                if change == (name, rel):
                    data += b"# changed\n"
                zf.writestr(f"{ext.wheel_path}/{rel}", data)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
        zf.writestr("vllm-0.26.0.dist-info/RECORD", b"")
    return buf.getvalue()


def wheel_settings(*urls: str) -> Fetch:
    return fetch_settings(external_mirrors=[], github=False, release_wheels=list(urls))


def test_copied_externals_come_from_the_release_wheel_and_verify(tmp_path, http_server, copied_trees):
    release = copied_release()
    http_server.routes[f"/whl/{WHEEL}"] = Route(make_wheel(copied_trees))
    template = f"{http_server.url}/whl/vllm-{{version}}-cp38-abi3-manylinux_2_28_x86_64.whl"
    cache = tmp_path / "cache"
    got = externals.obtain(release, cache, wheel_settings(template), HTTP, offline=False)
    assert set(got) == {"triton_kernels", "fmha_sm100", "tml_fa4"}
    assert all(externals.cached_archive(cache, e) for e in release.externals)
    assert http_server.paths().count(f"/whl/{WHEEL}") == 1, "one download serves the three externals"
    assert (cache / "sources" / WHEEL).is_file(), "the wheel stays in the download cache"
    overrides = externals.prepare(release, cache, tmp_path / "ws")
    fa4 = (overrides["TML_FA4_SRC_DIR"] / "flash_attn" / "cute" / "flash_fwd.py").read_text()
    assert "from flash_attn.cute import utils" in fa4 and "vllm.third_party" not in fa4, "the rewrite is undone"
    assert (overrides["FMHA_SM100_SRC_DIR"] / "python" / "fmha_sm100" / "api.py").is_file()
    assert (overrides["TRITON_KERNELS_SRC_DIR"] / "matmul_ogs.py").is_file()
    assert not (overrides["TRITON_KERNELS_SRC_DIR"] / "__init__.py").read_bytes().startswith(b"__version__")


def test_the_wheel_in_the_download_cache_serves_with_no_url_configured(tmp_path, http_server, copied_trees):
    cache = tmp_path / "cache"
    (cache / "sources").mkdir(parents=True)
    (cache / "sources" / WHEEL).write_bytes(make_wheel(copied_trees))
    plans = externals.plan_externals(copied_release(), wheel_settings(), cache)
    assert [p.origins for p in plans] == [(f"wheel {cache / 'sources' / WHEEL}",)] * 3
    externals.obtain(copied_release(), cache, wheel_settings(), HTTP, offline=False)
    assert all(externals.cached_archive(cache, e) for e in copied_release().externals)


def test_a_wheel_whose_copy_differs_is_refused_and_the_next_origin_used(tmp_path, http_server, copied_trees):
    release = copied_release()
    tk = next(e for e in release.externals if e.name == "triton_kernels")
    other = WHEEL.replace("x86_64", "aarch64")
    http_server.routes[f"/bad/{other}"] = Route(make_wheel(copied_trees, change=("triton_kernels", "topk.py")))
    http_server.routes[f"/good/{WHEEL}"] = Route(make_wheel(copied_trees))
    bad = f"{http_server.url}/bad/vllm-{{version}}-cp38-abi3-manylinux_2_28_aarch64.whl"
    good = f"{http_server.url}/good/vllm-{{version}}-cp38-abi3-manylinux_2_28_x86_64.whl"
    with pytest.raises(StepFailed) as err:
        externals.obtain(release, tmp_path / "c1", wheel_settings(bad), HTTP, offline=False)
    assert "triton_kernels-0add68262ab0: the tree's content hash is" in err.value.message
    assert f"the catalog pins {tk.tree_sha256}" in err.value.message and f"wheel {bad.format(version='0.26.0')}" \
        in err.value.message
    assert externals.cached_archive(tmp_path / "c1", tk) is None
    said = []
    externals.obtain(release, tmp_path / "c2", wheel_settings(bad, good), HTTP, offline=False, say=said.append)
    assert all(externals.cached_archive(tmp_path / "c2", e) for e in release.externals)
    # the copy differing only in triton_kernels: the other two verified from the first wheel, never the second
    assert http_server.paths().count(f"/good/{WHEEL}") == 1


def test_a_compiled_external_never_uses_the_wheel_origin(tmp_path, http_server, copied_trees):
    release = get_release("0.26.0")
    cutlass = next(e for e in release.externals if e.name == "cutlass")
    cache = tmp_path / "cache"
    (cache / "sources").mkdir(parents=True)
    # a wheel that even holds cutlass's files: still not a source for a compiled external
    (cache / "sources" / WHEEL).write_bytes(make_wheel(copied_trees, extra={"vllm/third_party/cutlass/x.h": b""}))
    template = f"{http_server.url}/whl/vllm-{{version}}-cp38-abi3-manylinux_2_28_aarch64.whl"
    plans = {p.name: p for p in externals.plan_externals(release, wheel_settings(template), cache)}
    assert not [o for o in plans["cutlass"].origins if o.startswith("wheel")]
    assert [o.split()[0] for o in plans["tml_fa4"].origins] == ["wheel", "wheel"]
    with pytest.raises(StepFailed) as err:
        externals.obtain(dataclasses.replace(release, externals=(cutlass,)), cache, wheel_settings(template), HTTP,
                         offline=False)
    assert "no source is configured for NVIDIA/cutlass" in err.value.message and not http_server.requests
    with pytest.raises(ConfigError, match="has a wheel_path but is compiled"):
        from vllm_provision.catalog import _parse_external
        _parse_external({"name": "x", "repo": "a/b", "commit": "0" * 40, "override": "X", "role": "compiled",
                         "include": ["**"], "wheel_path": "vllm/third_party/x"}, "t.toml")


def test_the_wheel_origin_comes_after_the_mirrors_and_before_github(tmp_path):
    cache = tmp_path / "cache"
    (cache / "sources").mkdir(parents=True)
    (cache / "sources" / WHEEL).write_bytes(b"")
    settings_ = fetch_settings(external_mirrors=["https://m/{repo}/{commit}.tar.gz"], github=True,
                               release_wheels=["https://w/vllm-{version}-py3-none-any.whl"])
    plan = next(p for p in externals.plan_externals(get_release("0.26.0"), settings_, cache) if p.name == "tml_fa4")
    assert [o.split()[0] for o in plan.origins] == ["tarball", "wheel", "wheel", "tarball"]
    assert plan.origins[1:3] == (f"wheel {cache / 'sources' / WHEEL}", "wheel https://w/vllm-0.26.0-py3-none-any.whl")
    assert "github.com" in plan.origins[3]


@pytest.mark.parametrize("entry", ["vllm/third_party/triton_kernels/../../../escaped.py",
                                   "vllm/third_party/triton_kernels//abs.py",
                                   "vllm/third_party/triton_kernels/a\\..\\..\\b.py"])
def test_a_wheel_entry_escaping_its_directory_is_refused(tmp_path, copied_trees, entry):
    cache = tmp_path / "cache"
    (cache / "sources").mkdir(parents=True)
    (cache / "sources" / WHEEL).write_bytes(make_wheel(copied_trees, extra={entry: b"x"}))
    release = dataclasses.replace(copied_release(), externals=copied_release().externals[:1])
    with pytest.raises(StepFailed) as err:
        externals.obtain(release, cache, wheel_settings(), HTTP, offline=False)
    assert "escapes vllm/third_party/triton_kernels/" in err.value.message
    assert not list(tmp_path.rglob("escaped.py")) and externals.cached_archive(cache, release.externals[0]) is None


def test_a_link_in_the_wheel_is_refused(tmp_path, copied_trees):
    import io
    import zipfile
    data = io.BytesIO(make_wheel(copied_trees))
    with zipfile.ZipFile(data, "a") as zf:
        info = zipfile.ZipInfo("vllm/third_party/triton_kernels/link.py")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    cache = tmp_path / "cache"
    (cache / "sources").mkdir(parents=True)
    (cache / "sources" / WHEEL).write_bytes(data.getvalue())
    release = dataclasses.replace(copied_release(), externals=copied_release().externals[:1])
    with pytest.raises(StepFailed, match="is not a plain file"):
        externals.obtain(release, cache, wheel_settings(), HTTP, offline=False)


def test_release_wheels_are_set_like_any_list_and_must_name_a_vllm_wheel():
    from vllm_provision.core import config
    template = "https://files.corp/vllm/vllm-{version}-cp38-abi3-manylinux_2_28_x86_64.whl"
    assert config.resolve({}, {}).fetch.release_wheels == []
    assert config.resolve({}, {"VLLMP_FETCH__RELEASE_WHEELS": f"[{template}]"}).fetch.release_wheels == [template]
    for bad in ("https://files.corp/vllm/{file}", "https://files.corp/vllm/vllm-{commit}-x.whl",
                "https://files.corp/vllm/other-{version}-x.whl"):
        with pytest.raises(ConfigError, match="release_wheels"):
            config.resolve({}, {"VLLMP_FETCH__RELEASE_WHEELS": bad})
