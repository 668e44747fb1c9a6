"""Every task's --json output carries schema_version and kind, and follows its schema under
vllm_provision/schemas/ (docs/schemas.md): the real commands where they are cheap (plan, doctor, verify's
refusal), the pipeline's and wheel's last lines from their real printing code over stand-in step results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from vllm_provision.core import outputs

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "vllm_provision" / "schemas"


def schema(kind: str) -> dict:
    return json.loads((SCHEMAS / f"{outputs.SCHEMAS[kind]}.schema.json").read_text())


def valid(data: dict) -> dict:
    assert data["schema_version"] == outputs.SCHEMA_VERSION, data
    jsonschema.validate(data, schema(data["kind"]))
    return data


def inv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


def test_every_schema_is_a_valid_json_schema_and_every_kind_has_one():
    for path in sorted(SCHEMAS.glob("*.schema.json")):
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))
    for kind, name in outputs.SCHEMAS.items():
        assert (SCHEMAS / f"{name}.schema.json").is_file(), kind
        props = schema(kind)["properties"]
        assert props["schema_version"] == {"const": outputs.SCHEMA_VERSION}
        assert kind in (props["kind"].get("enum") or [props["kind"].get("const")])
    docs = (ROOT / "docs" / "schemas.md").read_text()
    assert all(f"{name}.schema.json" in docs for name in set(outputs.SCHEMAS.values()) | {"report"})


def test_plan_json(isolated):
    done = inv("plan", "--json")
    assert done.returncode == 0, done.stderr
    data = valid(json.loads(done.stdout))
    assert data["kind"] == "plan" and data["release"]["version"] == "0.2.2"


def test_doctor_json(isolated):
    done = inv("doctor", "--json", "--offline", "--timeout", "5")
    data = valid(json.loads(done.stdout))
    assert data["kind"] == "doctor" and done.returncode == (0 if data["ok"] else 1), done.stderr


def test_error_json(isolated):
    done = inv("verify", "--json")
    assert done.returncode == 2, done.stderr
    data = valid(json.loads(done.stdout.strip().splitlines()[-1]))
    assert data["kind"] == "error" and data["exit_code"] == 2


def test_pipeline_and_wheel_json(isolated, monkeypatch, capsys):
    from invoke.exceptions import Exit

    from vllm_provision import cli
    from vllm_provision.pipeline import StepResult

    ran = [StepResult("fetch", "up-to-date"), StepResult("patch", "ok")]
    monkeypatch.setattr(cli, "run_steps", lambda *a, **k: ran)
    cli.run_pipeline(["fetch", "patch"], as_json=True)
    assert valid(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))["steps"] == {"fetch": "up-to-date",
                                                                                          "patch": "ok"}
    ran = [StepResult("fetch", "failed", "no route to the mirror", hint="check fetch.mirrors", exit_code=1)]
    with pytest.raises(Exit):
        cli.run_pipeline(["fetch", "patch"], as_json=True)
    failed = valid(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert (failed["kind"], failed["ok"], failed["exit_code"]) == ("pipeline", False, 1)

    built = {"source": "cache", "cache": "dir:/srv/wheels", "file": "vllm-0.2.2-cp311-cp311-linux_x86_64.whl",
             "wheel_sha256": "a" * 64, "key": "0.2.2-cu13-sm90-abc", "version": "0.2.2", "archs": ["sm_90"],
             "arch_list": "9.0"}   # what an install from a cache records (steps.build.install_from_cache)
    monkeypatch.setattr(cli, "run_pipeline", lambda *a, **k: [StepResult("build", "up-to-date", facts=built)])
    cli.wheel_task(None, False, as_json=True)
    wheel = valid(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert (wheel["kind"], wheel["sha256"], wheel["published"]) == ("wheel", "a" * 64, ["already in dir:/srv/wheels"])



def test_the_fleet_reads_the_wheel_line_with_its_new_keys():
    """The fleet's module takes the last JSON line and reads keys by name: schema_version and kind change
    nothing. Its last_json is read from its source (the module imports Ansible's module_utils at the top)."""
    import ast
    path = ROOT / "vllm_provision" / "fleet" / "ansible" / "library" / "vllmp_toolkit.py"
    tree = ast.parse(path.read_text())
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "last_json")
    scope: dict = {"json": json}
    exec(compile(ast.Module(body=[func], type_ignores=[]), str(path), "exec"), scope)
    line = json.dumps(outputs.stamped("wheel", {"ok": True, "wheel": "w.whl", "sha256": "b" * 64, "key": "k",
                                                "version": "0.2.2", "archs": [], "published": []}))
    assert scope["last_json"]("building\n" + line + "\n")["key"] == "k"


H200_RUN = ROOT / "tests" / "fixtures" / "gpu" / "h200" / "provision-2026-12-03"


def test_a_real_h200_run_satisfies_the_committed_schemas():
    """Outputs of gpu/provision-check.sh on one H200 (host-torch, 0.2.2, kernel parity), recorded: doctor's
    --json and the workspace's report.json validate against the schemas the toolkit ships, and say what ran."""
    doctor = valid(json.loads((H200_RUN / "doctor.json").read_text()))
    assert doctor["ok"] and {c["name"] for c in doctor["checks"]} >= {"gpus", "driver-vs-cuda"}
    report = json.loads((H200_RUN / "report.json").read_text())
    jsonschema.validate(report, json.loads((SCHEMAS / "report.schema.json").read_text()))
    assert report["schema_version"] == 2 and list(report["steps"]) == ["fetch", "env", "patch", "build", "verify", "smoke"]
    smoke = report["steps"]["smoke"]["facts"]
    assert smoke["num_gpu_blocks"] == 8239484 and smoke["parity"]["ok"] is True
