"""`inv lock`'s recipe: per-profile pins, dropped and extra requirements, and a committed lock that is
only replaced once the resolved lock has passed its pin check. Real uv against a real pypiserver."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import pytest

from vllm_provision import lock

from mirrors import pypi_mirror, wheelhouse  # noqa: F401 (fixtures)
from vllm_provision.errors import StepFailed

ROOT = Path(__file__).resolve().parent.parent
# The release's build requirements are not on the tiny mirror: the test recipes drop them.
NO_BUILD_REQS = 'drop = ["ninja", "packaging", "setuptools", "wheel", "torch"]\n'


def _index(url: str):
    return SimpleNamespace(index_url=url, extra_index_urls=(), trusted_hosts=(), timeout=30, retries=0, cert=None)


def _project(tmp_path: Path, recipe: str, requirements: str = "tinya\n") -> tuple[Path, Path, SimpleNamespace]:
    root = tmp_path / "project"
    (root / "envs" / "pins").mkdir(parents=True)
    (root / "envs" / "pins" / "9.9.9-demo.toml").write_text(recipe)
    src = tmp_path / "src"
    src.mkdir()
    (src / "requirements.txt").write_text(requirements)
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
