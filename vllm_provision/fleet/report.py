"""The fleet run's report: fleet-report.json (machines), fleet-report.md (one row per host), junit.xml (one
testcase per host, for CI), in <report_dir>/<timestamp>/ with a `latest` link; per-host logs under hosts/."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vllm_provision import report as run_report
from vllm_provision.core import outputs
from vllm_provision.core.errors import ConfigError
from vllm_provision.core.files import atomic_write
from vllm_provision.core.redact import redact_text
from vllm_provision.core.words import Word


class HostStatus(Word):
    """A host's outcome in a fleet run (fleet-report.json's `status`). The modules that run on the hosts
    (ansible/library/) cannot import it and write the same words; tests/test_fleet.py keeps them in step."""
    PENDING = "pending"             # not ended yet; never in a written report
    OK = "ok"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    TIMED_OUT = "timed out"
    REFUSED = "refused"
    SKIPPED = "skipped"


STATUSES = tuple(s for s in HostStatus if s is not HostStatus.PENDING)
LATEST = "latest"
JSON_NAME, MD_NAME, JUNIT_NAME = "fleet-report.json", "fleet-report.md", "junit.xml"


@dataclass
class HostResult:
    name: str
    status: HostStatus = HostStatus.PENDING
    phase: str = "connect"           # the last phase started: connect, facts, upload, wheel, install
    kind: str | None = None
    kind_label: str | None = None
    role: str | None = None          # canary | batch N
    key: str | None = None
    sha256: str | None = None
    steps: list[str] = field(default_factory=list)     # reached, in order
    exit_code: int | None = None
    detail: str = ""
    hint: str | None = None
    seconds: float = 0.0
    toolkit_seconds: float = 0.0     # of `seconds`, the toolkit's own calls on the host (the rest is Ansible's)
    gpu_blocks: int | None = None
    smoke: str | None = None         # pass | fail | skipped
    log: str | None = None           # hosts/<host>/, relative to the report
    facts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 2)
        data["toolkit_seconds"] = round(self.toolkit_seconds, 2)
        return json.loads(redact_text(json.dumps(data)))


def write(run_dir: Path, data: dict, results: list[HostResult]) -> dict:
    """Write the three files and point `latest` at run_dir; returns the JSON written."""
    data = outputs.stamped("fleet", data | {
        "hosts": [r.to_dict() for r in results],
        "counts": {s: sum(r.status == s for r in results) for s in STATUSES},
        "ok": bool(results) and all(r.status == HostStatus.OK for r in results)})
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / JSON_NAME, json.dumps(data, indent=2) + "\n")
    atomic_write(run_dir / MD_NAME, markdown(data))
    atomic_write(run_dir / JUNIT_NAME, run_report.junit_xml("vllm-provision.fleet", junit_cases(results)))
    link = run_dir.parent / LATEST
    tmp = run_dir.parent / f".{LATEST}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    tmp.replace(link)
    return data


# the workspace report's Markdown table (cells escaped and redacted)
_table = run_report._table


def markdown(data: dict) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in data["counts"].items() if n)
    lines = [f"# Fleet run {data['started']}", "",
             f"vLLM {data['release']} / profile {data['profile']}: {len(data['hosts'])} hosts, {counts}; "
             f"{data['seconds']:.1f} s; forks {data['policy']['forks']}, max fail {data['policy']['max_fail_percent']:g} %,"
             f" host keys {data['host_key_policy']}.", ""]
    if data["kinds"]:
        lines += ["## Kinds", ""]
        lines += _table(["kind", "hosts", "label", "key", "built on"],
                        [[k["id"], len(k["hosts"]), k["label"], k.get("key") or "", k.get("built_on") or
                          ("cache" if k.get("key") else "")] for k in data["kinds"]])
        lines.append("")
    lines += ["## Hosts", ""]
    lines += _table(["host", "kind", "key", "steps reached", "status", "time", "GPU blocks", "smoke", "log"],
                    [[h["name"], h["kind"] or "", (h["key"] or "")[:16], " > ".join(h["steps"]),
                      h["status"] + (f" (exit {h['exit_code']})" if h["exit_code"] not in (None, 0) else ""),
                      f"{h['seconds']:.1f} s", h["gpu_blocks"] if h["gpu_blocks"] is not None else "",
                      h["smoke"] or "", h["log"] or ""] for h in data["hosts"]])
    bad = [h for h in data["hosts"] if h["status"] != HostStatus.OK]
    if bad:
        lines += ["", "## Not ok", ""]
        lines += _table(["host", "status", "phase", "what happened", "fix"],
                        [[h["name"], h["status"], h["phase"], h["detail"], h["hint"] or ""] for h in bad])
    return "\n".join(lines) + "\n"


def junit_cases(results: list[HostResult]) -> list[dict]:
    """One testcase per host: not ok is a failure (its status in the message), skipped is skipped."""
    def case(r: HostResult) -> dict:
        status = r.status if r.status in (HostStatus.OK, HostStatus.SKIPPED) else HostStatus.FAILED
        detail = (r.detail if r.status in (HostStatus.OK, HostStatus.FAILED, HostStatus.SKIPPED)
                  else f"{r.status}: {r.detail}")
        return {"name": r.name, "status": status, "detail": detail, "hint": r.hint, "seconds": r.seconds}
    return [case(r) for r in results]


def load_latest(report_root: Path) -> dict:
    path = report_root / LATEST / JSON_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--rerun-failed needs the latest fleet report and {path} cannot be read",
                          hint="run the fleet once without --rerun-failed (reports go to fleet.report_dir)") from exc
    if not isinstance(data, dict) or data.get("schema_version") != outputs.SCHEMA_VERSION or data.get("kind") != "fleet":
        raise ConfigError(f"{path} is not a fleet report this toolkit reads (schema_version "
                          f"{data.get('schema_version') if isinstance(data, dict) else None!r}, this toolkit reads "
                          f"{outputs.SCHEMA_VERSION})",
                          hint="run the fleet once without --rerun-failed to write a current report")
    return data


def failed_hosts(report_root: Path) -> list[str]:
    """The hosts that were not ok in the latest report."""
    return [h["name"] for h in load_latest(report_root)["hosts"] if h["status"] != HostStatus.OK]
