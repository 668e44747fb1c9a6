"""The fleet report from Ansible's event data: the playbook's callback (ansible/callback_plugins/vllmp_fleet.py)
feeds each task result here; at the end the hosts' statuses, the kinds and their keys, the hosts' own
report.json (returned as JSON by the vllmp_toolkit module) and their fetched logs make fleet-report.json,
.md and junit.xml. `./inv fleet` and a plain `ansible-playbook` write the same report this way."""

from __future__ import annotations

import base64
import io
import re
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from vllm_provision.checks import CheckStatus
from vllm_provision.fleet import plays, report
from vllm_provision.fleet.report import HostStatus
from vllm_provision.steps.facts import FactsUnreadable, SmokeFacts, StepStatus

Echo = Callable[[str], None]
# Ansible's word for one task's result on one host (its callback's v2_runner_on_* events), not a host's outcome
TaskStatus = Literal["ok", "failed", "skipped", "unreachable"]


def unreachable(host: str, message: str, known_hosts: str) -> dict:
    """The outcome of an SSH connection that failed, from ssh's own words."""
    found = re.search(r"(?:via|over) ssh: (.*)", message, re.S)
    text = (found.group(1) if found else message).strip()
    last = (text.splitlines() or [""])[-1].strip()
    if re.search(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for \S+ has changed", text):
        return {"status": HostStatus.REFUSED, "detail": f"the host key of {host} changed (it is not the key in {known_hosts})",
                "hint": f"if the host was reinstalled, check the new key out of band, then `ssh-keygen -R HOST -f "
                        f"{known_hosts}` and `ssh-keyscan HOST >> {known_hosts}`; otherwise this may be another "
                        "machine answering for it"}
    if re.search(r"host key is known for|Host key verification failed", text):
        return {"status": HostStatus.REFUSED, "detail": f"the host key of {host} is not in {known_hosts}",
                "hint": f"add it after checking it: `ssh-keyscan -H HOST >> {known_hosts}`, or run with "
                        "--host-key-policy accept-new to learn keys of new hosts"}
    if "Permission denied" in text:
        return {"status": HostStatus.UNREACHABLE, "detail": f"authentication failed for {host}: {last}",
                "hint": f"check the user and IdentityFile in ssh_config (or the ssh agent); `ssh {host} true` "
                        "must work without a password"}
    return {"status": HostStatus.UNREACHABLE, "detail": f"cannot connect to {host}: {last or 'no answer'}",
            "hint": f"check that {host} is up and sshd listens (`ssh -v {host} true`); raise "
                    "fleet.connect_timeout for slow links"}


def _module_failure(result: dict) -> dict:
    text = " ".join(str(result.get(k) or "") for k in ("msg", "module_stderr", "module_stdout"))
    if "in the expected time frame" in text:        # Ansible's task timeout: the backstop after the module's own
        return {"status": HostStatus.TIMED_OUT, "detail": str(result.get("msg")).strip(),
                "hint": "the host or its link stopped answering; check it with `ssh HOST true`"}
    if result.get("rc") == 127 and "python3" in text:
        return {"status": HostStatus.FAILED, "detail": "python3 is not installed on the host",
                "hint": "install python3 (3.10+ for the toolkit)", "exit_code": 127}
    return {"status": HostStatus.FAILED, "detail": str(result.get("msg") or "the task failed").strip(),
            "hint": None, "exit_code": result.get("rc")}


class Collector:
    def __init__(self, echo: Echo | None = None):
        self.echo = echo or (lambda line: None)
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.started = time.monotonic()
        self.results: dict[str, report.HostResult] = {}
        self.order: list[str] = []
        self.names: dict[str, str] = {}            # inventory name -> the name the operator wrote
        self.view: dict | None = None              # the plays' settings (plays.settings)
        self.run_dir: Path | None = None
        self.kinds: dict | None = None             # plays.kinds
        self.facts_only = False
        self.forks: int | None = None
        self.bundles: dict[str, str] = {}           # inventory name -> the host's bundle (tar.gz, base64)
        self.install_play = False
        self.batch = 0
        self.installed: list[str] = []             # hosts the install play started on

    # ---------------------------------------------------------------------------------------- events
    def host(self, name: str, display: str | None = None) -> report.HostResult:
        if name not in self.results:
            self.names[name] = display or name
            self.results[name] = report.HostResult(self.names[name])
            self.order.append(name)
        return self.results[name]

    def play_start(self, name: str) -> None:
        self.install_play = name.startswith("vllm-provision: the other hosts")
        if self.install_play:
            self.batch += 1

    def set_facts(self, facts: dict) -> None:
        if "vllmp" in facts and self.view is None:
            self.view = facts["vllmp"]
            self.run_dir = Path(self.view["run_dir"])
        if "vllmp_kinds" in facts and self.kinds is None:
            self.kinds = facts["vllmp_kinds"]

    def result(self, host: str, phase: str | None, status: TaskStatus, data: dict, seconds: float) -> None:
        """One task's result on one host, as Ansible reports it."""
        row = self.host(host)
        if phase or status == "unreachable":        # the run's own set-up tasks are nobody's time
            row.seconds += seconds
        if "ansible_facts" in data:
            self.set_facts(data["ansible_facts"])
        if status == "unreachable":
            known = (self.view or {}).get("fleet", {}).get("known_hosts", "known_hosts")
            self.end(row, "connect", unreachable(self.names[host], str(data.get("msg") or ""), known))
            return
        if not phase:
            return
        row.phase = phase if phase != "report" else row.phase
        if self.install_play and phase == "install" and status != "skipped" and host not in self.installed:
            self.installed.append(host)
            row.role = f"batch {self.batch}"
        if phase in ("wheel", "install") and data.get("unpacked"):     # the upload came with this call
            self.step(row, "upload", 0.0)
        if phase in ("wheel", "install") and isinstance(data.get("seconds"), (int, float)):
            row.toolkit_seconds += data["seconds"]
        if status == "failed":
            self.end(row, phase, data.get("vllmp") or _module_failure(data))
            return
        if status == "skipped":
            if data.get("vllmp"):
                self.end(row, phase, data["vllmp"])
            return
        if phase == "facts" and "vllmp_host" in data.get("ansible_facts", {}):
            from vllm_provision.fleet.facts import RemoteFacts
            row.facts = RemoteFacts.from_raw(data["ansible_facts"]["vllmp_host"]).summary()
            row.log = f"hosts/{host}"
            self.step(row, "facts", seconds)
        elif phase == "upload":
            self.step(row, "upload", seconds)
        elif phase == "wheel":
            built = data.get("result") or {}
            row.key, row.sha256 = built.get("key"), built.get("sha256")
            kind = self.kind_of(host)
            if kind is not None:
                kind["built"] = {"key": built.get("key"), "sha256": built.get("sha256"), "wheel": built.get("wheel"),
                                 "built_on": self.names[host]}
            self.step(row, "wheel", seconds)
        elif phase == "install":
            self.step(row, "install", seconds)
            self.remote_report(row, data.get("report"))
            row.status = HostStatus.OK
        elif phase == "report" and data.get("encoding") == "base64":
            self.bundles[host] = data["content"]

    def step(self, row: report.HostResult, phase: str, seconds: float) -> None:
        row.steps.append(phase)
        self.echo(f"{row.name} {phase} ok ({seconds:.1f} s)")

    def end(self, row: report.HostResult, phase: str, outcome: dict) -> None:
        row.phase = outcome.get("phase") or phase
        row.detail, row.hint = outcome.get("detail") or "", outcome.get("hint")
        try:
            row.status = HostStatus(outcome.get("status"))
        except ValueError:      # a failure that says the word: Ansible drops a callback's exceptions, and the row
            row.status = HostStatus.FAILED
            row.detail = f"status {outcome.get('status')!r} (unknown to this toolkit): {row.detail}"
        row.exit_code = outcome.get("exit_code")
        self.echo(f"{row.name} {row.phase} {row.status} ({row.seconds:.1f} s)")

    def kind_of(self, host: str) -> dict | None:
        if not self.kinds or host not in self.kinds["of"]:
            return None
        return self.kinds["kinds"][self.kinds["of"][host]]

    @staticmethod
    def remote_report(row: report.HostResult, data: Any) -> None:
        """Steps reached, GPU blocks and the smoke's verdict from the host's own report.json."""
        if not isinstance(data, dict):
            return
        steps = data.get("steps") or {}
        row.steps += [name for name, step in steps.items() if step.get("status") in (StepStatus.OK, StepStatus.UP_TO_DATE)]
        smoke = steps.get("smoke") or {}
        try:
            facts = SmokeFacts.from_dict(smoke.get("facts") or {})
        except FactsUnreadable as exc:       # the host's toolkit is the one the fleet sent: a bug, said as such
            row.detail = (row.detail + "; " if row.detail else "") + exc.message
            return
        row.gpu_blocks = facts.num_gpu_blocks
        row.smoke = ((CheckStatus.PASS if facts.passed else CheckStatus.FAIL) if facts.passed is not None else
                     (StepStatus.SKIPPED if smoke.get("status") == StepStatus.SKIPPED else None))

    # ---------------------------------------------------------------------------------------- the end
    def finish(self, stopped: bool = False) -> dict | None:
        """Classify the hosts that no event ended, write the report; None when the playbook never set up a run."""
        if self.view is None or self.run_dir is None:
            return None
        kinds = (self.kinds or {}).get("kinds", {})
        fleet = self.view["fleet"]
        budget = float(fleet["max_fail_percent"])
        failed = sum(self.results[h].status != HostStatus.OK for h in self.installed)
        for name in self.order:
            row = self.results[name]
            kind = self.kind_of(name)
            if kind is not None:
                row.kind, row.kind_label = kind["id"], kind["label"]
                if name == kind["canary"]:
                    row.role = "canary"
                entry = kind.get("built") or kind.get("known") or {}
                if "install" in row.steps and not row.key:
                    row.key, row.sha256 = entry.get("key"), entry.get("sha256")
            if row.status != HostStatus.PENDING:
                continue
            if stopped:
                row.status, row.detail = HostStatus.FAILED, "the run was interrupted"
            elif kind is None:
                row.status, row.detail = HostStatus.FAILED, "the host did not finish (see ansible.log)"
            elif self.facts_only:
                row.status = HostStatus.OK
            elif self.results[kind["canary"]].status != HostStatus.OK:
                row.status = HostStatus.SKIPPED
                row.detail = f"the canary {self.names[kind['canary']]} of kind {kind['id']} did not pass"
                row.hint = f"fix {self.names[kind['canary']]} (see its row), then rerun with --rerun-failed"
            elif failed * 100 > budget * max(len(self.installed), 1):
                row.status = HostStatus.SKIPPED
                row.detail = (f"failure budget spent: {failed} of {len(self.installed)} hosts failed (more than "
                              f"max_fail_percent {budget:g} %)")
                row.hint = "fix the failed hosts, then rerun with --rerun-failed"
            else:
                row.status = HostStatus.SKIPPED
                row.detail = "every host of the batch before failed, and Ansible ends a play then"
                row.hint = "fix the failed hosts, then rerun with --rerun-failed"
        self.unpack_bundles()
        (self.run_dir / plays.TOOLKIT_TARBALL).unlink(missing_ok=True)     # sent; a copy per run is no record
        kind_rows = []
        for kind in kinds.values():
            entry = kind.get("built") or kind.get("known") or {}
            kind_rows.append({"id": kind["id"], "label": kind["label"], "fields": kind["fields"],
                              "hosts": [self.names.get(h, h) for h in kind["hosts"]], "key": entry.get("key"),
                              "sha256": entry.get("sha256"), "built_on": entry.get("built_on")})
        data = {"started": self.started_at, "seconds": round(time.monotonic() - self.started, 2),
                "release": self.view["release"], "profile": self.view["profile"], "facts_only": self.facts_only,
                "policy": {"forks": self.forks or fleet["forks"], "max_fail_percent": budget},
                "host_key_policy": fleet["host_key_policy"], "caches": self.view["caches"], "kinds": kind_rows}
        written = report.write(self.run_dir, data, [self.results[n] for n in self.order])
        built = [row | {"wheel": kinds[row["id"]]["built"].get("wheel")} for row in kind_rows
                 if kinds[row["id"]].get("built")]
        if built:
            plays.remember(Path(self.view["report_root"]), built, self.view["caches"])
        return written

    def unpack_bundles(self) -> None:
        """Each host's fetched tarballs (the toolkit's output, the workspace report and logs) into hosts/<host>/."""
        for host, content in self.bundles.items():
            target = self.run_dir / "hosts" / host
            target.mkdir(parents=True, exist_ok=True)
            try:
                with tarfile.open(fileobj=io.BytesIO(base64.b64decode(content))) as tar:
                    tar.extractall(target, filter="data")
            except (OSError, ValueError, tarfile.TarError) as exc:
                (target / "bundle-error.txt").write_text(f"the host's report bundle could not be unpacked: {exc}\n")
