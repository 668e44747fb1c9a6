"""The build's stamp holds what changes the output, not how fast it was made."""

from __future__ import annotations

import pytest

from vllm_provision.catalog.patches import load_series
from vllm_provision.core import envinfo
from vllm_provision.pipeline import StepContext
from vllm_provision.plan import build_plan
from vllm_provision.probes.host import Gpu, HostFacts
from vllm_provision.steps import build

GPU = (Gpu(0, "NVIDIA H100 80GB HBM3", 81559, 0, "9.0", "580.159.04"),)


def _ctx(mem_gib: float, arch=None) -> StepContext:
    facts = HostFacts(gpus=GPU, cpu_count=16, mem_available_bytes=int(mem_gib * (1 << 30)))
    plan = build_plan({"profile": "host-torch", **({"build": {"arch_list": arch}} if arch else {})}, facts=facts)
    plan.workspace.ensure()
    envinfo.save(plan.workspace, envinfo.EnvInfo(backend="existing", prefix="/p", python="/p/bin/python",
                                                 python_version="3.12.3", torch="2.11.0+cu130", torch_cuda="13.0"))
    return StepContext(plan, facts, "build")


def test_free_ram_changes_max_jobs_but_not_the_build_stamp(isolated):
    low, high = _ctx(20), _ctx(120.3)
    assert low.plan.build.max_jobs != high.plan.build.max_jobs
    assert build.stamp_inputs(low) == build.stamp_inputs(high)


def test_arch_list_changes_the_build_stamp(isolated):
    assert build.stamp_inputs(_ctx(120)) != build.stamp_inputs(_ctx(120, arch="8.0;9.0"))


def test_prebuilt_patch_always_applies_and_names_the_flag():
    entry = next(p for p in load_series("0.2.2") if "reuse-prebuilt" in p.file)
    assert entry.applies({"release": "0.2.2"}) == (True, "always")
    assert build.PREBUILT_FLAG in entry.path.read_text()


def test_every_rebuild_reruns_the_steps_that_test_its_libraries(isolated):
    # a forced rebuild keeps build's own stamp (same inputs) but writes a new marker: verify and smoke
    # must not report the previous libraries' results as up to date
    from vllm_provision.steps import smoke, verify
    ctx = _ctx(64)
    marker = ctx.workspace.src / build.MARKER
    marker.parent.mkdir(parents=True, exist_ok=True)
    stamps = lambda: [m.stamp_inputs(StepContext(ctx.plan, ctx.facts, n))  # noqa: E731
                      for m, n in ((verify, "verify"), (smoke, "smoke"))]
    marker.write_text('{"seconds": 91.8}')
    first = stamps()
    assert stamps() == first                              # nothing rebuilt: up to date
    marker.write_text('{"seconds": 85.4}')
    second = stamps()
    assert second[0] != first[0] and second[1] != first[1]


# ------------------------------------------------------------------------------------ the key's patches
CXX20 = """--- a/setup.py
+++ b/setup.py
@@ -1,2 +1,2 @@
 import torch
-CXX_FLAGS = ["-std=c++17"]
+CXX_FLAGS = ["-std=c++20"]
"""


def _patched_key(ctx: StepContext, monkeypatch, tmp_path, patch_text: str) -> str:
    """The patch step run through the pipeline on a fresh tree with a one-patch series holding `patch_text`;
    then the artifact key the build computes from what that step recorded."""
    import json

    from vllm_provision.catalog import patches
    from vllm_provision.pipeline import run_steps

    series = tmp_path / "patches" / ctx.plan.release.version
    series.mkdir(parents=True, exist_ok=True)
    (series / "0001-cxx20.patch").write_text(patch_text)
    (series / "series.toml").write_text('[[patch]]\nfile = "0001-cxx20.patch"\nwhy = "c++20"\nupstream = ""\n')
    monkeypatch.setattr(patches, "load_series", lambda release, *a: load_series(release, tmp_path))
    src = ctx.workspace.src
    src.mkdir(parents=True, exist_ok=True)
    (src / "setup.py").write_text('import torch\nCXX_FLAGS = ["-std=c++17"]\n')
    (src / ".vllmp-patches.json").unlink(missing_ok=True)
    [result] = run_steps(ctx.plan, ctx.facts, ["patch"])
    assert result.status == "ok", result.detail
    recorded = json.loads((ctx.workspace.stamps / "patch.json").read_text())["facts"]
    assert [p["file"] for p in recorded["applied"]] == ["0001-cxx20.patch"]
    return build.planned_key(ctx, _key_env())


def _key_env() -> envinfo.EnvInfo:
    return envinfo.EnvInfo(backend="existing", prefix="/p", python="/p/bin/python", python_version="3.12.3",
                           torch="2.11.0+cu130", torch_cuda="13.0", cxx11_abi=True, nvcc_version="13.0")


def test_a_changed_patch_changes_the_artifact_key(isolated, monkeypatch, tmp_path):
    """patch step -> PatchFacts in its stamp -> PatchFacts.from_dict -> key_fields -> key."""
    monkeypatch.setattr(build.host, "probe_gcc", lambda: ("/usr/bin/gcc", "13.3.0"))
    ctx = _ctx(64)
    first = _patched_key(ctx, monkeypatch, tmp_path / "a", CXX20)
    assert _patched_key(ctx, monkeypatch, tmp_path / "b", CXX20) == first            # same patch: same key
    changed = _patched_key(ctx, monkeypatch, tmp_path / "c", CXX20.replace("c++20", "c++23"))
    assert changed != first


@pytest.mark.parametrize("facts", [
    {"patches": [{"file": "0001-cxx20.patch", "sha256": "a" * 64, "state": "applied"}], "skipped": []},  # renamed
    {"skipped": []},                                                                                     # missing
    {"applied": [{"file": "0001-cxx20.patch", "hash": "a" * 64, "state": "applied"}], "skipped": []},   # sha256 renamed
    {"applied": "0001-cxx20.patch", "skipped": []},                                                      # wrong type
])
def test_an_unreadable_patch_record_is_a_load_error_not_an_empty_patch_list(isolated, monkeypatch, facts):
    import json

    from vllm_provision.steps.facts import FactsUnreadable
    monkeypatch.setattr(build.host, "probe_gcc", lambda: ("/usr/bin/gcc", "13.3.0"))
    ctx = _ctx(64)
    (ctx.workspace.stamps / "patch.json").write_text(json.dumps({"stamp": "s", "facts": facts}))
    with pytest.raises(FactsUnreadable) as info:
        build.key_fields(ctx, _key_env())
    assert "patch step" in info.value.message and "./inv patch --force" in info.value.hint


def test_without_a_patch_record_the_key_names_no_patches(isolated, monkeypatch):
    """The patch step never ran in this workspace: nothing is applied, and the key says so."""
    monkeypatch.setattr(build.host, "probe_gcc", lambda: ("/usr/bin/gcc", "13.3.0"))
    assert build.key_fields(_ctx(64), _key_env())["patches"] == []


def test_patch_facts_record_the_json_they_always_have():
    """report.json and the stamps hold the same keys, in the same order, as when the facts were a dict."""
    import json

    from vllm_provision.steps.facts import PatchFacts
    recorded = {"applied": [{"file": "0001-cxx20.patch", "sha256": "a" * 64, "state": "applied"}],
                "skipped": [{"file": "0002-old.patch", "reason": "torch 2.11.0 < 2.13"}]}
    assert json.dumps(PatchFacts.from_dict(recorded).to_dict()) == json.dumps(recorded)


def test_fetch_and_build_facts_round_trip_the_json_steps_record():
    """The fetch and build steps' facts, typed: what a stamp holds loads back to the same JSON, and the fields
    the steps after them read (a cache install's key, the arch list verify falls back to) are typed."""
    from vllm_provision.steps.facts import BuildFacts, BuildSource, FetchFacts
    fetched = {"archive": "/c/vllm-0.2.2.tar.gz", "source": "pypi-sdist", "tree_sha256": "ab" * 32,
               "externals": {"cutlass": "cutlass-v4.4.2.tar.gz"}}
    assert FetchFacts.from_dict(fetched).to_dict() == fetched
    installed = {"source": "cache", "cache": "dir:/w", "file": "vllm.whl", "key": "k" * 64, "version": "0.2.2+cu130",
                 "wheel_sha256": "s" * 64, "archs": ["9.0"], "arch_list": "9.0", "libraries": ["_C.so"]}
    typed = BuildFacts.from_dict(installed)
    assert typed.source is BuildSource.CACHE and typed.key == "k" * 64 and typed.details["wheel_sha256"] == "s" * 64
    assert typed.to_dict() == installed
    compiled = {"source": "compiled", "arch_list": "9.0", "max_jobs": 2, "units": [], "version": "0.2.2"}
    assert BuildFacts.from_dict(compiled).key is None and BuildFacts.from_dict(compiled).max_jobs == 2


@pytest.mark.parametrize(("step", "facts", "problem"), [
    ("fetch", {"archive": "a.tar.gz", "source": "pypi-sdist", "tree_sha256": "ab"}, "no `externals`"),
    ("fetch", {"archive": "a.tar.gz", "source": "pypi-sdist", "tree_sha256": "ab", "externals": {"fmt": 1}},
     "`externals` is not a map"),
    ("build", {"source": "built", "arch_list": "9.0"}, "`source` is 'built'"),
    ("build", {"source": "cache", "arch_list": "9.0"}, "no `key`"),      # a cache install without its key
    ("build", {"source": "compiled", "arch_list": ["9.0"]}, "`arch_list` is list"),
    ("build", {"source": "compiled", "arch_list": "9.0", "max_jobs": "2"}, "`max_jobs` is str"),
])
def test_fetch_and_build_records_of_another_shape_are_refused(step, facts, problem):
    from vllm_provision.steps.facts import BuildFacts, FactsUnreadable, FetchFacts
    with pytest.raises(FactsUnreadable) as refused:
        {"fetch": FetchFacts, "build": BuildFacts}[step].from_dict(facts)
    assert problem in refused.value.message and f"./inv {step} --force" in refused.value.hint



def test_smoke_facts_carry_what_the_fleet_reads_and_keep_the_rest():
    from vllm_provision.fleet import report as fleet_report
    from vllm_provision.fleet.collect import Collector
    from vllm_provision.steps.facts import FactsUnreadable, SmokeFacts
    one_gpu = {"verdict": {"ok": True, "checks": []}, "num_gpu_blocks": 8239484, "num_cpu_blocks": 512,
               "model": "/m/tiny-chatglm", "kv_cache_tokens": None, "timings": {"load_s": 30.1}}
    typed = SmokeFacts.from_dict(one_gpu)
    assert typed.num_gpu_blocks == 8239484 and typed.passed is True and typed.to_dict() == one_gpu
    every_gpu = {"gpus": [{"gpu": 0, "status": "pass", "num_gpu_blocks": 10}], "nccl": None, "tensor_parallel": {}}
    assert SmokeFacts.from_dict(every_gpu).passed is None and SmokeFacts.from_dict(every_gpu).to_dict() == every_gpu
    with pytest.raises(FactsUnreadable):
        SmokeFacts.from_dict({"verdict": {"checks": []}, "num_gpu_blocks": 3})        # a verdict without ok
    # the fleet's row from a host's report.json: its blocks and verdict, through the typed facts
    row = fleet_report.HostResult("gpu-a")
    Collector.remote_report(row, {"steps": {"smoke": {"status": "ok", "facts": one_gpu | {"verdict": {"ok": False}}}}})
    assert row.gpu_blocks == 8239484 and row.smoke == "fail"
    row = fleet_report.HostResult("gpu-b")
    Collector.remote_report(row, {"steps": {"smoke": {"status": "ok", "facts": {"num_gpu_blocks": "many"}}}})
    assert row.gpu_blocks is None and "smoke step's recorded facts cannot be read" in row.detail


def test_env_and_verify_facts_round_trip_the_json_steps_record():
    """Every step's facts are a typed record: the env's summary and verify's checks read back as recorded, and
    a record of another shape is refused, not read as empty (an empty check list would read as a pass)."""
    from vllm_provision.steps.facts import EnvFacts, FactsUnreadable, VerifyFacts
    env = {"prefix": "/ws/envs/env-1", "python": "/ws/envs/env-1/bin/python", "python_version": "3.12.3",
           "packages": 87, "installer": "uv", "compiler_source": "pip wheels", "compiler_reason": "matches torch",
           "torch": "2.11.0+cu130", "torch_cuda": "13.0", "cuda_home": "/ws/envs/env-1/cuda", "nvcc_version": "13.0",
           "lock": "envs/locks/0.2.2/pypi-cu13-py3.12.txt"}
    assert EnvFacts.from_dict(env).to_dict() == env and EnvFacts.from_dict(env).packages == 87
    with_error = env | {"torch": None, "torch_error": "libcudart.so.13: cannot open shared object file"}
    assert EnvFacts.from_dict(with_error).to_dict() == with_error
    verify = {"ok": False, "checks": [{"name": "pip-check", "status": "fail", "detail": "vllm needs x", "hint": "h"},
                                      {"name": "import-vllm", "status": "skip", "detail": "no GPU", "hint": None}]}
    typed = VerifyFacts.from_dict(verify)
    assert [c.status for c in typed.checks] == ["fail", "skip"] and typed.ok is False and typed.to_dict() == verify
    for bad, problem in (({k: v for k, v in env.items() if k != "packages"}, "no `packages`"),
                         (env | {"packages": "87"}, "`packages` is str"),
                         ({"ok": True}, "no `checks`"),
                         ({"ok": True, "checks": [{"status": "pass"}]}, "no `name`"),
                         ({"ok": True, "checks": [{"name": "x", "status": "fine"}]}, "`status` is 'fine', not one of pass")):
        with pytest.raises(FactsUnreadable, match=problem):
            (VerifyFacts if "ok" in bad else EnvFacts).from_dict(bad)
