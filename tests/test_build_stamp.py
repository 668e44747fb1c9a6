"""The build's stamp holds what changes the output, not how fast it was made."""

from __future__ import annotations

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
