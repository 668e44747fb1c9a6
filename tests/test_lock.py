"""`inv lock`'s recipe: per-profile pins, dropped and extra requirements, and a committed lock that is
only replaced once the resolved lock has passed its pin check. Real uv against a real pypiserver."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from mirrors import pypi_mirror, wheelhouse  # noqa: F401 (fixtures)
from packaging.specifiers import SpecifierSet

from vllm_provision.core.errors import ConfigError, NotBuiltYet, StepFailed
from vllm_provision.envs import lock

ROOT = Path(__file__).resolve().parent.parent
# The release's build requirements are not on the tiny mirror: the test recipes drop them.
NO_BUILD_REQS = 'drop = ["ninja", "packaging", "setuptools", "wheel", "torch"]\n'


def _index(url: str):
    return SimpleNamespace(index_url=url, extra_index_urls=(), trusted_hosts=(), timeout=30, retries=0, cert=None)


def _project(tmp_path: Path, recipe: str, requirements: str = "tinya\n",
             files: dict[str, str] | None = None) -> tuple[Path, Path, SimpleNamespace]:
    root = tmp_path / "project"
    (root / "envs" / "pins").mkdir(parents=True)
    (root / "envs" / "pins" / "9.9.9-demo.toml").write_text(recipe)
    src = tmp_path / "src"
    for rel, text in ({"requirements.txt": requirements} | (files or {})).items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    return root, src, SimpleNamespace(version="9.9.9", released=dt.date(2023, 11, 19))


def _compile(tmp_path, pypi_mirror, recipe, out, **kw):
    root, src, release = _project(tmp_path, recipe, **kw)
    return lock.compile_lock(release=release, profile="demo", python="3.11", cuda="13.0", src=src, out=out,
                             index=_index(pypi_mirror.url), root=root, cache_dir=tmp_path / "uv")


def test_profile_recipe_pins_extra_and_drop(tmp_path, pypi_mirror):
    recipe = NO_BUILD_REQS.replace('"torch"', '"torch", "tinyc"') + (
        'exclude_newer = "none"\nextra = ["tinyc==2.0"]\n'
        '[pins.tinyb]\nspec = "==1.0"\nwhy = "test"\n')
    out = _compile(tmp_path, pypi_mirror, recipe, tmp_path / "locks" / "demo-py3.11.txt",
                   requirements="tinya\ntinyc\n")
    meta = lock.read_header(out)
    assert meta["profile"] == "demo" and meta["exclude-newer"] == "none"
    assert meta["pins"] == "tinyb==1.0" and "tinyc" in meta["dropped"]
    assert lock.pinned(out) == {"tinya": "1.0", "tinyb": "1.0", "tinyc": "2.0"}
    assert out.read_text().count("--hash=sha256:") == 3


def test_a_failed_pin_check_leaves_the_committed_lock_untouched(tmp_path, pypi_mirror):
    committed = tmp_path / "locks" / "demo-py3.11.txt"
    committed.parent.mkdir()
    committed.write_text("# the committed lock\n")
    # a pin on a package nothing requires any more: the resolved lock lacks it
    recipe = NO_BUILD_REQS + 'exclude_newer = "none"\n[pins.tinyc]\nspec = "==2.0"\nwhy = "stale"\n'
    with pytest.raises(StepFailed) as caught:
        _compile(tmp_path, pypi_mirror, recipe, committed)
    assert "tinyc None, not ==2.0" in caught.value.message and "unchanged" in caught.value.message
    assert committed.read_text() == "# the committed lock\n"
    assert not committed.with_name(committed.name + ".part").exists()


def test_the_pypi_cu13_locks_are_complete_and_hashed():
    """The committed PyPI-only locks: torch 2.11.0 (CUDA 13.0) and the CUDA 13.0 compiler wheels, no xformers."""
    for minor in ("3.10", "3.11", "3.12"):
        path = ROOT / "envs" / "locks" / "0.2.2" / f"pypi-cu13-py{minor}.txt"
        meta = lock.check(path, "0.2.2", "pypi-cu13", minor)
        assert meta["cuda"] == "13.0"
        pins = lock.pinned(path)
        assert pins["torch"] == "2.11.0" and pins["transformers"] == "5.17.0"
        assert all(pins[w].startswith("13.0.") for w in ("nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt"))
        assert "xformers" not in pins
        body = [l for l in path.read_text().splitlines() if l and not l.startswith("#")]
        assert sum("==" in l and not l.startswith(" ") for l in body) == len(pins)
        assert all(l.rstrip().endswith("\\") for l in body if "==" in l and not l.startswith(" "))


def test_a_recipe_reads_the_release_s_own_requirement_files_through_their_includes(tmp_path, pypi_mirror):
    """CMake-era releases keep requirements in requirements/<device>.txt (`-r common.txt`) and the build's in
    requirements/build/<device>.txt; option lines (another index) are not followed; the glibc floor is the
    recipe's."""
    recipe = NO_BUILD_REQS + (
        'exclude_newer = "none"\nplatform = "x86_64-manylinux_2_31"\n'
        'requirements = ["requirements/cuda.txt", "requirements/build/cuda.txt"]\n')
    files = {"requirements/common.txt": "tinya  # the common part\n",
             "requirements/cuda.txt": "-r common.txt\n--extra-index-url http://127.0.0.1:9/simple/\n",
             "requirements/build/cuda.txt": "# build\ntinyc==2.0\n"}
    out = _compile(tmp_path, pypi_mirror, recipe, tmp_path / "locks" / "demo-py3.11.txt",
                   requirements="nothing-reads-this\n", files=files)
    assert lock.pinned(out) == {"tinya": "1.0", "tinyb": "1.0", "tinyc": "2.0"}
    assert lock.read_header(out)["platform"] == "x86_64-manylinux_2_31"
    assert "127.0.0.1:9" not in out.read_text()


def test_requirement_files_missing_or_malformed_are_named(tmp_path):
    (tmp_path / "req").mkdir()
    (tmp_path / "req" / "cuda.txt").write_text("-r common.txt\n")
    with pytest.raises(NotBuiltYet) as caught:
        lock.read_requirements(tmp_path, ("req/cuda.txt",))
    assert caught.value.message == f"no {tmp_path / 'req' / 'common.txt'} (the release's requirements)"
    root, _, release = _project(tmp_path, 'requirements = "requirements/cuda.txt"\n')
    with pytest.raises(ConfigError, match="`requirements` must be a list of files"):
        lock.load_recipe(release, "demo", root)


LOCK_0_26_0 = ROOT / "envs" / "locks" / "0.26.0"


@pytest.mark.parametrize("minor", ["3.10", "3.11", "3.12"])
def test_the_0_26_0_pypi_cu13_locks_hold_the_runtime_the_build_and_the_compiler(minor):
    """vLLM 0.26.0 builds without isolation from its locked env: its runtime requirements, its build
    requirements and a CUDA 13.0 nvcc, all pinned with hashes, and torch exactly the release's."""
    from vllm_provision.catalog import get_release

    path = LOCK_0_26_0 / f"pypi-cu13-py{minor}.txt"
    meta = lock.check(path, "0.26.0", "pypi-cu13", minor)
    assert meta["cuda"] == "13.0" and meta["platform"] == "x86_64-manylinux_2_31"
    pins = lock.pinned(path)
    assert pins["torch"] == "2.11.0" and get_release("0.26.0").torch.contains(pins["torch"])
    build = {"cmake": ">=3.26.1", "ninja": "", "packaging": ">=24.2", "setuptools": ">=77.0.3,<81",
             "setuptools-scm": ">=8", "setuptools-rust": ">=1.9.0", "wheel": "", "jinja2": ">=3.1.6"}
    assert {n: pins.get(n) for n in build if n not in pins or not SpecifierSet(build[n]).contains(pins[n])} == {}
    compiler = ("nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-runtime", "nvidia-cuda-cccl")
    assert all(pins[w].startswith("13.0.") for w in compiler)
    # torch's own CUDA wheels carry the library headers and libraries the CMake build finds
    assert {"nvidia-cublas", "nvidia-cusparse", "nvidia-cusolver", "nvidia-curand", "nvidia-cufft",
            "nvidia-nvtx", "nvidia-cuda-nvrtc"} <= set(pins)
    assert pins["flashinfer-python"] == "0.6.14" and "flashinfer-cubin" not in pins   # not on PyPI
    # every requirement exactly pinned, each with its hashes, nothing from another index
    body = re.sub(r"(?m)^#.*\n", "", path.read_text())
    blocks = re.split(r"\n(?=\S)", body.strip())
    assert len(blocks) == len(pins)
    assert [b.split(" ")[0] for b in blocks if not re.match(r"\S+==\S+ \\\n    --hash=sha256:[0-9a-f]{64}", b)] == []
    assert "--index-url" not in path.read_text() and "flashinfer.ai" not in path.read_text()
    # markers, judged for this Python: six for > 3.11 (requirements/common.txt), the 3.10 backports
    assert ("six" in pins) == (minor == "3.12")
    assert ("tomli" in pins) == ("exceptiongroup" in pins) == (minor == "3.10")


@pytest.mark.parametrize("path", sorted((ROOT / "envs" / "locks").glob("*/*-py*.txt")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_committed_lock_was_made_from_its_committed_recipe(path):
    """A recipe edited without re-locking is caught here: the header records the cut-off, platform, pins and
    dropped requirements the lock was resolved with; every pin and extra holds in it, nothing dropped is in it."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from vllm_provision.catalog import get_release

    profile, _ = path.stem.rsplit("-py", 1)
    recipe = lock.load_recipe(get_release(path.parent.name), profile, ROOT)
    meta = lock.read_header(path)
    assert (meta["exclude-newer"], meta["platform"]) == (recipe.exclude_newer, recipe.platform)
    assert meta["pins"] == ", ".join(f"{n}{p['spec']}" for n, p in recipe.pins.items())
    assert meta.get("dropped", "") == ", ".join(recipe.drop)
    pins = lock.pinned(path)
    wanted = [Requirement(f"{n}{p['spec']}") for n, p in recipe.pins.items()] + [Requirement(r) for r in recipe.extra]
    unmet = [str(r) for r in wanted if canonicalize_name(r.name) not in pins
             or not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)]
    assert unmet == []
    assert [n for n in recipe.drop if canonicalize_name(n) in pins] == []
