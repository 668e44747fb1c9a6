"""report.json sections merge atomically, report.md renders what onboarding docs need, JUnit is valid."""

from __future__ import annotations

import json
import threading
import xml.etree.ElementTree as ET

import pytest

from vllm_provision import pipeline, report
from vllm_provision.checks import Check
from vllm_provision.pipeline import StepResult
from vllm_provision.plan import build_plan
from vllm_provision.probes.host import HostFacts, parse_gpu_csv

H100 = HostFacts(gpus=parse_gpu_csv("0, NVIDIA H100 80GB HBM3, 81559, 0, 9.0, 580.82.07, GPU-x\n"),
                 driver_cuda="13.0", cpu_count=16, mem_available_bytes=120 << 30, mem_total_bytes=128 << 30,
                 disk_free_bytes=500 << 30)


def test_sections_merge_without_losing_each_other(tmp_path):
    rep = tmp_path / "report.json"
    threads = [threading.Thread(target=report.merge_section, args=(rep, f"s{i}", {"i": i})) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = json.loads(rep.read_text())
    assert {f"s{i}" for i in range(20)} <= set(data)
    report.merge_steps(rep, {"fetch": {"status": "ok"}})
    report.merge_steps(rep, {"env": {"status": "failed"}})
    assert set(json.loads(rep.read_text())["steps"]) == {"fetch", "env"}
    assert not list(tmp_path.glob("*.tmp"))


def test_credentials_never_reach_the_report(tmp_path):
    rep = tmp_path / "report.json"
    report.merge_section(rep, "doctor", {"checks": [{"name": "index https://bob:hunter2@mirror/simple"}]})
    assert "hunter2" not in rep.read_text()
    assert "hunter2" not in report.render_markdown(json.loads(rep.read_text()))


def test_pipeline_run_renders_report_md_with_host_steps_patches_and_checks(isolated):
    plan = build_plan({}, facts=H100)
    ws = plan.workspace
    ws.ensure()
    report.merge_section(ws.report, "host", report.host_section(H100))
    report.merge_section(ws.report, "verify", {"ok": False, "checks": [
        Check("sass cache_ops", "fail", "missing sm_90", "rebuild with --arch 9.0").to_dict(),
        Check("import-vllm", "skip", "no GPU").to_dict()]})
    results = [StepResult("fetch", "ok", "vllm-0.2.2.tar.gz verified", 1.25,
                          {"archive": "/c/vllm-0.2.2.tar.gz", "source": "pypi-sdist", "tree_sha256": "ab"}),
               StepResult("patch", "ok", "2 applied", 0.1, {"applied": [
                   {"file": "0001-build-with-cxx20.patch", "why": "torch >= 2.13 needs C++20"}]}),
               StepResult("build", "failed", "nvcc failed", 3.0, {"units": [
                   {"unit": "csrc/attention/attention_kernels.cu", "seconds": 112.2, "extension": "vllm.attention_ops"},
                   {"unit": "csrc/cache_kernels.cu", "seconds": 70.8, "extension": "vllm.cache_ops"}],
                   "cpu_placement": {"csrc/attention/attention_kernels.cu": "15", "others": "0-13"}},
                   hint="lower MAX_JOBS", exit_code=1),
               StepResult("smoke", "not run", "an earlier step failed")]
    pipeline._record(ws, results, plan)
    data = json.loads(ws.report.read_text())
    assert set(data["steps"]) == {"fetch", "patch", "build"} and data["host"]["gpus"][0]["compute_cap"] == "9.0"
    md = ws.report.with_suffix(".md").read_text()
    assert f"# vLLM 0.2.2 / profile {plan.profile}" in md
    assert "NVIDIA H100 80GB HBM3" in md and "| driver CUDA | 13.0 |" in md
    assert "`0001-build-with-cxx20.patch`: torch >= 2.13 needs C++20" in md
    build_row = next(line for line in md.splitlines() if line.startswith("| build |")).split(" | ")
    assert build_row[1:3] == ["failed", "3.0 s"] and build_row[3].startswith("at ") and build_row[4] == "nvcc failed |"
    assert "| smoke | not run |  |  | never run in this workspace |" in md
    assert "## Build: the 2 slowest of 2 compile units" in md
    assert "| `csrc/attention/attention_kernels.cu` | 112.2 s | vllm.attention_ops | 15 |" in md
    assert "| `csrc/cache_kernels.cu` | 70.8 s | vllm.cache_ops | 0-13 |" in md
    assert "## Verify: FAILED (0 pass, 0 warn, 1 fail, 1 skip" in md and "missing sm_90" in md


def test_junit_marks_failures_and_skips(tmp_path):
    checks = [Check("gpus", "fail", "nvidia-smi not found", "install the driver"), Check("disk", "pass", "ok"),
              Check("driver", "skip", "no GPU"), Check("nvcc", "warn", "minor differs", "exact match better")]
    path = report.write_junit(tmp_path / "out" / "doctor.xml", "vllm-provision.doctor", checks)
    suite = ET.parse(path).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "1")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["gpus"].find("failure").get("message") == "nvidia-smi not found"
    assert "fix: install the driver" in cases["gpus"].find("failure").text
    assert cases["driver"].find("skipped") is not None
    assert cases["nvcc"].find("failure") is None and "warn" in cases["nvcc"].find("system-out").text


RECORDED = __import__("pathlib").Path(__file__).parent / "fixtures" / "gpu" / "h100" / "doctor-verify"


def recorded(name: str):
    """A committed fixture recorded on the H100 (README.md beside them): required, never skipped."""
    path = RECORDED / name
    assert path.is_file(), f"the committed fixture {path} is missing: restore it from git"
    return path


def test_recorded_h100_report_renders_for_onboarding_docs():
    data = json.loads(recorded("report.json").read_text())
    md = report.render_markdown(data)
    assert md.startswith("# vLLM 0.2.2 / profile host-torch\n\nUpdated 2026-11-25T08:11:57 by vllm-provision.\n")
    assert "| GPU 0 | NVIDIA H100 80GB HBM3, compute capability 9.0, 81559 MiB |" in md
    assert "| driver | 580.159.04 |" in md and "| driver CUDA | 13.0 |" in md
    assert "| torch | 2.11.0+cu130 |" in md and "| host compiler | g++ 13.3.0 |" in md
    assert "`0002-no-xformers-sdpa-prompt-attention.patch` (sha256 d8bbea52e7ca…): xformers is imported" in md
    assert "- not needed: `0001-build-with-cxx20.patch` (torch 2.11.0 not >=2.13)" in md
    section = md.split("## Steps")[1].split("\n## ")[0]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in section.splitlines() if line.startswith("| ")]
    assert [r[:3] for r in rows[1:]] == [["fetch", "ok", "0.1 s"], ["env", "ok", "11.7 s"], ["patch", "ok", "0.0 s"],
                                         ["build", "ok", "417.8 s"], ["verify", "ok", "24.7 s"],
                                         ["smoke", "not run", ""]]
    assert rows[4][4] == "vllm 0.2.2+cu130 (editable) for 9.0: 7 libraries in 413 s, no compiler cache"
    assert rows[5][4] == "19 checks passed, 0 warned, 0 skipped" and rows[6][4] == "never run in this workspace"
    assert "Build for arch 9.0, 16 jobs." in section
    assert "## Doctor: ok (8 pass, 0 warn, 0 fail, 1 skip; 2026-11-25T08:03:17)" in md
    assert "| mirrors | skip | --offline: no index or channel is contacted |  |" in md
    assert "## Verify: ok (19 pass, 0 warn, 0 fail, 0 skip" in md


@pytest.mark.parametrize("name, suite, counts", [("verify-host-torch", "vllm-provision.verify", ("19", "0", "0")),
                                                 ("doctor-host-torch", "vllm-provision.doctor", ("9", "0", "1"))])
def test_recorded_h100_checks_render_the_junit_recorded_beside_them(name, suite, counts):
    """The JUnit XML written on the H100 is what junit_xml makes of the same checks today, case for case."""
    checks = [Check(**c) for c in json.loads(recorded(f"{name}.json").read_text())["checks"]]
    made = ET.fromstring(report.junit_xml(suite, [c.to_dict() for c in checks])).find("testsuite")
    kept = ET.parse(recorded(f"{name}.xml")).getroot().find("testsuite")
    assert (made.get("tests"), made.get("failures"), made.get("skipped")) == counts

    def cases(ts):
        return [(c.get("name"), [(e.tag, e.text, dict(e.attrib)) for e in c]) for c in ts.findall("testcase")]
    assert cases(made) == cases(kept) and len(cases(made)) == int(counts[0])
    assert {k: v for k, v in made.attrib.items() if k != "timestamp"} == \
        {k: v for k, v in kept.attrib.items() if k != "timestamp"}


# ------------------------------------------------------------------------------------------ runs
def _fake_steps(monkeypatch, outcomes: dict):
    """Step modules whose run() gives outcomes[name](ctx) (the real steps have their own tests)."""
    import types

    from vllm_provision.pipeline import StepOutcome

    def module(name):
        def run(ctx):
            return outcomes.get(name, lambda ctx: StepOutcome(detail=f"{name} done"))(ctx)
        return types.SimpleNamespace(run=run, stamp_inputs=lambda ctx: {"step": name, "inputs": outcomes.get(f"_{name}")})
    monkeypatch.setattr(pipeline, "step_module", module)


def _task(monkeypatch, argv: list[str]) -> int:
    """Run `./inv ARGV` in this process (tasks.py's task, its real CLI glue); its exit code."""
    import sys

    import invoke
    from invoke.exceptions import Exit

    import tasks
    monkeypatch.setattr(sys, "argv", ["inv", *argv])
    task = getattr(tasks, argv[0].replace("-", "_"))
    flags = {}
    for i, arg in enumerate(argv[1:]):
        if arg.startswith("--"):
            value = argv[i + 2] if i + 2 < len(argv) and not argv[i + 2].startswith("--") else True
            flags[arg[2:].replace("-", "_")] = value
    try:
        task(invoke.Context(), **flags)
    except Exit as exc:
        return exc.code
    return 0


def test_each_step_row_is_its_latest_run_and_each_run_is_kept_with_its_exit_code(isolated, monkeypatch):
    import os

    import jsonschema

    from vllm_provision.core.errors import StepFailed
    from vllm_provision.pipeline import StepOutcome
    from vllm_provision.steps.facts import VerifyFacts
    plan = build_plan({"build": {"arch_list": "9.0"}}, facts=HostFacts())
    ws = plan.workspace
    home_log = os.path.expanduser("~/.cache/vllm-provision/env.log")

    def env_ok(ctx):
        return StepOutcome(detail=f"venv env at {ctx.workspace.root}/envs/1; log {home_log}")

    def no_cached_build(ctx):
        raise StepFailed("no cached build for key abc", hint="build it on a builder")

    _fake_steps(monkeypatch, {"env": env_ok, "smoke": lambda ctx: StepOutcome(detail="no GPU", status="skipped")})
    assert _task(monkeypatch, ["provision", "--arch", "9.0"]) == 0
    _fake_steps(monkeypatch, {"verify": lambda ctx: StepOutcome(detail="all pass", facts=VerifyFacts(checks=()))})
    assert _task(monkeypatch, ["verify", "--arch", "9.0"]) == 0
    _fake_steps(monkeypatch, {"build": no_cached_build, "_build": "--require-cache"})
    monkeypatch.setenv("VLLMP_ARTIFACTS__CACHES", f"dir:{ws.root.parent / 'wheels'}")   # set, and without the build
    assert _task(monkeypatch, ["build", "--arch", "9.0", "--require-cache"]) == 1

    data = json.loads(ws.report.read_text())
    schema = json.loads(report.SCHEMA.read_text())
    jsonschema.validate(data, schema)
    steps = data["steps"]
    ran_by = {name: row["run"]["command"] for name, row in steps.items()}
    assert ran_by == {"fetch": "./inv provision --arch 9.0", "env": "./inv provision --arch 9.0",
                      "patch": "./inv provision --arch 9.0", "build": "./inv build --arch 9.0 --require-cache",
                      "verify": "./inv verify --arch 9.0", "smoke": "./inv provision --arch 9.0"}
    assert (steps["verify"]["status"], steps["build"]["status"]) == ("ok", "failed")
    assert data["run"]["command"] == "./inv build --arch 9.0 --require-cache" and data["run"]["exit_code"] == 1
    assert data["run"]["flags"] == {"arch": "9.0", "require_cache": True}
    records = sorted((ws.root / "runs").glob("*/run.json"))
    runs = [json.loads(r.read_text()) for r in records]
    for run in runs:
        jsonschema.validate(run, {"$ref": "#/$defs/run_record", "$defs": schema["$defs"]})
    assert [(r["command"].split()[1], r["exit_code"], r["result"]) for r in runs] == [
        ("provision", 0, "ok"), ("verify", 0, "ok"), ("build", 1, "failed")]
    assert [s["step"] for s in runs[0]["steps"]] == list(pipeline.STEPS)
    assert [(s["step"], s["status"]) for s in runs[2]["steps"]] == [("build", "failed")]
    assert runs[0]["toolkit"]["version"] and runs[0]["started"] <= runs[0]["ended"]
    md = ws.report.with_suffix(".md").read_text()
    assert "| command | `./inv build --arch 9.0 --require-cache` |" in md
    assert "| result | failed (exit code 1) |" in md
    row = next(line for line in md.splitlines() if line.startswith("| fetch |"))
    assert "by `./inv provision --arch 9.0` at " in row
    row = next(line for line in md.splitlines() if line.startswith("| env |"))
    assert "venv env at envs/1; log ~/.cache/vllm-provision/env.log" in row
    assert str(ws.root) not in md and os.path.expanduser("~") + "/" not in md


def test_a_run_that_stops_early_lists_the_steps_it_did_not_run(isolated, monkeypatch):
    from vllm_provision.core.errors import StepFailed
    plan = build_plan({}, facts=HostFacts())

    def env_fails(ctx):
        raise StepFailed("the package index cannot be used", hint="check the mirror")
    _fake_steps(monkeypatch, {"env": env_fails})
    assert _task(monkeypatch, ["provision"]) == 1
    run = json.loads(plan.workspace.report.read_text())["run"]
    assert [(s["step"], s["status"]) for s in run["steps"]] == [
        ("fetch", "ok"), ("env", "failed"), ("patch", "not run"), ("build", "not run"), ("verify", "not run"),
        ("smoke", "not run")]
    md = plan.workspace.report.with_suffix(".md").read_text()
    assert "| build | not run |  |  | never run in this workspace |" in md


def test_a_section_names_the_command_that_wrote_it(tmp_path):
    rep = tmp_path / "ws" / "report.json"
    report.begin_run("doctor", ["--arch", "9.0"])
    report.merge_section(rep, "doctor", {"ok": True, "checks": [Check("disk", "pass", "ok").to_dict()],
                                         "when": "2026-12-03T16:00:00"})
    [record] = report.finish_run(0)
    assert record.parent.parent == tmp_path / "ws" / "runs"
    md = rep.with_suffix(".md").read_text()
    assert "Checked by `./inv doctor --arch 9.0` at 2026-12-03T16:00:00." in md
    assert report.finish_run(0) == []           # nothing runs any more: nothing is recorded twice
