"""Patch conditions, idempotent apply and a failing hunk, on a real small tree with real `patch`."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_provision.catalog import patches
from vllm_provision.core.errors import StepFailed
from vllm_provision.steps import patch as step

PATCH = """--- a/setup.py
+++ b/setup.py
@@ -1,3 +1,3 @@
 import torch
-CXX_FLAGS = ["-std=c++17"]
+CXX_FLAGS = ["-std=c++20"]
 print("ok")
"""


def tree(tmp_path: Path, text='import torch\nCXX_FLAGS = ["-std=c++17"]\nprint("ok")\n') -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "setup.py").write_text(text)
    return src


def series(tmp_path: Path, when: str = '{ torch = ">=2.13" }') -> tuple:
    d = tmp_path / "patches" / "9.9"
    d.mkdir(parents=True)
    (d / "0001-cxx20.patch").write_text(PATCH)
    (d / "series.toml").write_text(f'[[patch]]\nfile = "0001-cxx20.patch"\nwhy = "c++20"\nupstream = ""\nwhen = {when}\n')
    return patches.load_series("9.9", tmp_path)


def test_conditions(tmp_path):
    [p] = series(tmp_path)
    assert p.applies({"torch": "2.14.1"})[0]
    assert not p.applies({"torch": "2.1.0"})[0]
    assert not p.applies({})[0]
    [q] = series(tmp_path / "x", '{ xformers = "absent", release = "==9.9" }')
    assert q.applies({"release": "9.9"})[0]
    assert not q.applies({"release": "9.9", "xformers": "0.0.23"})[0]


def test_apply_is_idempotent(tmp_path):
    [p] = series(tmp_path)
    src = tree(tmp_path)
    assert step.apply_one(p, src, tmp_path / "log") == "applied"
    assert "c++20" in (src / "setup.py").read_text()
    assert step.apply_one(p, src, tmp_path / "log") == "already applied"
    assert (src / "setup.py").read_text().count("c++20") == 1
    assert not list(src.glob("*.orig")) and not list(src.glob("*.rej"))


def test_failing_hunk_is_named(tmp_path):
    [p] = series(tmp_path)
    src = tree(tmp_path, 'import torch\nCXX_FLAGS = ["-std=gnu++14"]\nprint("ok")\n')
    with pytest.raises(StepFailed) as err:
        step.apply_one(p, src, tmp_path / "log")
    assert "0001-cxx20.patch" in err.value.message and "setup.py hunk #1" in err.value.message
    assert "gnu++14" in (src / "setup.py").read_text()            # untouched
    assert not list(src.glob("*.rej"))


def test_real_022_series_is_picked_by_the_env_it_patches():
    series = patches.load_series("0.2.2")

    def pick(**versions) -> tuple[list[str], dict[str, str]]:
        """(patches applied, {patch left out: why}) for an env holding these versions."""
        chosen = step.selected(series, dict(versions, release="0.2.2"))
        return [p.file[:4] for p, ok, _ in chosen if ok], {p.file[:4]: why for p, ok, why in chosen if not ok}

    # the seed lock's env (the blog's): torch 2.1.0 builds as C++17, xformers is there, transformers 4
    applied, left_out = pick(torch="2.1.0", xformers="0.0.23", transformers="4.35.2")
    assert applied == ["0004"]
    assert left_out == {"0001": "torch 2.1.0 not >=2.13", "0002": "xformers 0.0.23 is installed",
                        "0003": "transformers 4.35.2 not >=5"}
    # the slow tier's env: torch 2.14.1 (C++20 headers), no xformers, transformers 5: the whole series
    assert pick(torch="2.14.1+cu130", transformers="5.17.0")[0] == ["0001", "0002", "0003", "0004"]
    # a host torch below 2.13 keeps C++17
    assert pick(torch="2.11.0+cu130", transformers="5.17.0")[0] == ["0002", "0003", "0004"]


@pytest.mark.network
def test_every_022_patch_applies_to_the_pristine_sdist_and_does_its_job(isolated, tmp_path):
    """The whole series, in order, on the real PyPI sdist; then each patch's change is in the tree."""
    from vllm_provision.plan import build_plan
    from vllm_provision.probes.host import HostFacts
    from vllm_provision.sources.release import extract_to, obtain

    archive, _ = obtain(build_plan({}, facts=HostFacts()))
    src = extract_to(archive, tmp_path / "src")
    series = patches.load_series("0.2.2")
    assert [p.file[:4] for p in series] == ["0001", "0002", "0003", "0004"]
    for p in series:
        step.apply_one(p, src, tmp_path / "log")
        assert step.is_applied(p.path, src, None)
    setup = (src / "setup.py").read_text()
    assert "-std=c++20" in setup and "-std=c++17" not in setup                       # 0001
    assert 'os.environ.get("VLLM_PROVISION_PREBUILT") == "1"' in setup              # 0004
    attention = (src / "vllm/model_executor/layers/attention.py").read_text()
    assert "scaled_dot_product_attention" in attention                               # 0002
    assert '"factor" not in rope_scaling' in (src / "vllm/config.py").read_text()       # 0003: no factor = no scaling
    assert "rope_parameters" in (src / "vllm/transformers_utils/config.py").read_text()
    for p in series:                                                                 # idempotent: a second pass skips
        assert step.is_applied(p.path, src, None)


@pytest.mark.network
def test_a_patch_no_longer_wanted_leaves_the_tree(isolated, tmp_path):
    """The env's torch drops below 2.13: 0001 (C++20) is no longer wanted, so the step starts again from the
    verified archive instead of leaving it applied; a changed patch file is handled the same way."""
    from vllm_provision.core import envinfo
    from vllm_provision.pipeline import StepContext
    from vllm_provision.plan import build_plan
    from vllm_provision.probes.host import HostFacts
    from vllm_provision.steps import fetch

    plan = build_plan({}, facts=HostFacts())
    ws = plan.workspace
    ws.ensure()
    ctx = StepContext(plan, HostFacts(), "patch")
    fetch.extract_release(ctx)

    def patch_with(torch: str) -> list[str]:
        envinfo.save(ws, envinfo.EnvInfo(backend="venv", prefix=str(tmp_path), python="python3",
                                         python_version="3.12.3", torch=torch, packages={"transformers": "5.17.0"}))
        return [a.file[:4] for a in step.run(ctx).facts.applied]

    assert patch_with("2.14.1+cu130") == ["0001", "0002", "0003", "0004"]
    assert "-std=c++20" in (ws.src / "setup.py").read_text()
    assert patch_with("2.11.0+cu130") == ["0002", "0003", "0004"]
    setup = (ws.src / "setup.py").read_text()
    assert "-std=c++20" not in setup and "-std=c++17" in setup
    assert {a.state for a in step.run(ctx).facts.applied} == {"already applied"}   # and idempotent again
