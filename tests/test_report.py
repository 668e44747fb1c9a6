"""report.json sections merge atomically, report.md renders what onboarding docs need, JUnit is valid."""

from __future__ import annotations

import json
import threading
import xml.etree.ElementTree as ET

from vllm_provision import pipeline, report
from vllm_provision.checks import Check
from vllm_provision.host import HostFacts, parse_gpu_csv
from vllm_provision.pipeline import StepResult
from vllm_provision.plan import build_plan

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


def test_recorded_h100_report_renders_for_onboarding_docs():
    import pytest
    if not (RECORDED / "report.json").is_file():
        pytest.skip("no recorded H100 report")
    data = json.loads((RECORDED / "report.json").read_text())
    md = report.render_markdown(data)
    assert "| GPU 0 | NVIDIA H100 80GB HBM3, compute capability 9.0, 81559 MiB |" in md
    assert "| torch | 2.11.0+cu130 |" in md and "| host compiler | g++ 13.3.0 |" in md
    assert "`0002-no-xformers-sdpa-prompt-attention.patch` (sha256 d8bbea52e7ca…): xformers is imported" in md
    section = md.split("## Steps")[1].split("\n## ")[0]
    steps = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")][1:]
    assert steps == ["fetch", "env", "patch", "build", "verify", "smoke"]
    assert "| smoke | not run |" in section
    assert "## Verify: ok (19 pass, 0 warn, 0 fail, 0 skip" in md
    verify_json = json.loads((RECORDED / "verify-host-torch.json").read_text())
    checks = [Check(**c) for c in verify_json["checks"]]
    suite = ET.fromstring(report.junit_xml("v", [c.to_dict() for c in checks])).find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("19", "0")
