"""A fleet run: facts of every host in parallel -> kinds -> per kind a canary (it builds the wheel when the kind has
no cache entry yet, then installs it) -> the kind's other hosts in batches -> the report.

On a host the toolkit runs as it would by hand: a tarball of its own files is put over SFTP, unpacked into
fleet.remote_dir, and `./inv wheel --push --arch A` (builder) or `./inv provision --require-cache
--artifact-key KEY` runs there, with settings as VLLMP_* variables. Only non-secret values travel that way:
a setting with a credential is refused before anything connects.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import tarfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import fabric

from .. import PROJECT_ROOT, config
from ..errors import ConfigError
from ..redact import redact_text
from . import facts as host_facts
from . import kinds as kinds_mod
from . import report
from .connect import Outcome, SshOptions, connection, connection_failure, run
from .inventory import Host
from .policy import Policy, Slots, parallel

# not shipped to hosts: envs, workspaces, caches, VCS data
TOOLKIT_EXCLUDES = {".venv", ".provision", ".git", ".carry", "__pycache__", ".pytest_cache", ".mypy_cache",
                    ".ruff_cache", "wheelhouse", "node_modules", ".cache"}
REMOTE_TARBALL = ".vllm-provision-toolkit.tar.gz"
REMOTE_LOGS = ".vllm-provision-fleet-logs.tar.gz"
KINDS_INDEX = "kinds.json"          # kind id -> the key its wheel was built under, across runs

Event = Callable[[str, str, str, float], None]      # host, phase, status, seconds


def toolkit_tarball(root: Path = PROJECT_ROOT) -> bytes:
    """The toolkit's own files (what `./inv` needs on a host), without envs, workspaces and caches."""
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if any(p in TOOLKIT_EXCLUDES or p.endswith(".egg-info") for p in parts) or info.name.endswith(".pyc"):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for entry in sorted(root.iterdir()):
            tar.add(entry, arcname=entry.name, filter=keep)
    return buf.getvalue()


def remote_environment(settings: Mapping[str, Any], caches: list[str], extra: Mapping[str, str]) -> dict[str, str]:
    """The VLLMP_* variables a host's toolkit runs with. They travel on the remote command line (Fabric's
    inline env), so a value with a credential is refused here rather than shown to the host's `ps`."""
    env = {"VLLMP_RELEASE": str(settings["release"]), "VLLMP_PROFILE": str(settings["profile"]),
           "VLLMP_EXTRAS": "", "CI": "1"}         # the toolkit's venv without the test extras; plain output
    if caches:
        env["VLLMP_ARTIFACTS__CACHES"] = json.dumps(caches)
    env.update(extra)
    for name, value in env.items():
        if redact_text(value) != value or re.search(r"(PASSWORD|TOKEN|SECRET)", name, re.I):
            raise ConfigError(f"{name}={redact_text(value)} carries a credential, and fleet runs pass settings to "
                              "hosts on the command line", hint="give the hosts the credential themselves "
                              "(~/.netrc or their own VLLMP_* settings), and a URL without it here")
    return env


@dataclass
class FleetOptions:
    hosts: list[Host]
    settings: dict                         # resolved settings (config.resolve)
    run_dir: Path                          # <report_dir>/<timestamp>
    facts_only: bool = False
    caches: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    on_event: Event | None = None
    toolkit_root: Path = PROJECT_ROOT

    @property
    def fleet(self) -> dict:
        return self.settings["fleet"]

    @property
    def remote_dir(self) -> str:
        """fleet.remote_dir as the remote shell takes it quoted: `~/x` is `x` (sessions start in the home)."""
        path = self.fleet["remote_dir"]
        return path[2:] if path.startswith("~/") else path


def _error_lines(text: str) -> tuple[str | None, str | None]:
    """The toolkit's own `error:` and `hint:` lines (the last ones) from a remote run's output."""
    errors = [line[6:].strip() for line in text.splitlines() if line.startswith("error:")]
    hints = [line[5:].strip() for line in text.splitlines() if line.startswith("hint:")]
    return (errors[-1] if errors else None), (hints[-1] if hints else None)


def build_key(output: str) -> tuple[str | None, str | None, str | None]:
    """(key, sha256, wheel path) from `./inv wheel --push` output: lines `key: HEX`, `sha256: HEX`, `wheel: PATH`."""
    def last(pattern: str) -> str | None:
        found = re.findall(pattern, output, re.M | re.I)
        return found[-1] if found else None
    return (last(r"\bkey\b\W+([0-9a-f]{12,64})\b"), last(r"\bsha256\b\W+([0-9a-f]{64})\b"),
            last(r"(\S+\.whl)\b"))


class FleetRun:
    def __init__(self, options: FleetOptions):
        self.options = options
        self.policy = Policy.from_settings(options.fleet)
        self.ssh = SshOptions.from_settings(options.fleet)
        self.slots = Slots(self.policy.forks)
        self.results = {h.name: report.HostResult(h.name) for h in options.hosts}
        self.facts: dict[str, host_facts.RemoteFacts] = {}
        self.fields: dict[str, dict] = {}
        self.kinds: list[kinds_mod.Kind] = []
        self.kind_keys: dict[str, dict] = {}
        self.env = remote_environment(options.settings, options.caches, options.extra_env)
        self._tarball: bytes | None = None
        self._tarball_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self.backend = options.settings["env"]["backend"]
        self.open_connections: set[fabric.Connection] = set()

    # ------------------------------------------------------------------------------------------ helpers
    def event(self, result: report.HostResult, phase: str, status: str, seconds: float) -> None:
        result.phase = phase
        if self.options.on_event:
            self.options.on_event(result.name, phase, status, seconds)

    def host_dir(self, host: Host) -> Path:
        path = self.options.run_dir / "hosts" / host.slug
        path.mkdir(parents=True, exist_ok=True)
        return path

    def fail(self, result: report.HostResult, outcome: Outcome, phase: str, started: float) -> None:
        result.status, result.detail, result.hint, result.exit_code = (outcome.status, outcome.detail,
                                                                        outcome.hint, outcome.exit_code)
        self.event(result, phase, outcome.status, time.monotonic() - started)

    def tarball(self) -> bytes:
        with self._tarball_lock:
            if self._tarball is None:
                self._tarball = toolkit_tarball(self.options.toolkit_root)
            return self._tarball

    def _session(self, host: Host, phase: str, result: report.HostResult,
                 work: Callable[[fabric.Connection], None]) -> None:
        """Open a connection (under a fork slot), run work, close; connection errors become the host's status."""
        started = time.monotonic()
        with self.slots:
            conn = connection(host, self.ssh)
            self.open_connections.add(conn)
            try:
                conn.open()
                work(conn)
            except Exception as exc:        # noqa: BLE001 - one host's trouble must not end the others' runs
                outcome = connection_failure(exc, host, self.ssh)
                if outcome is None:
                    log = self.host_dir(host) / "error.log"
                    log.write_text(redact_text("".join(traceback.format_exception(exc))))
                    outcome = Outcome("failed", f"{type(exc).__name__}: {redact_text(str(exc))}",
                                      f"the traceback is in {log}")
                self.fail(result, outcome, phase if conn.is_connected else "connect", started)
            finally:
                self.open_connections.discard(conn)
                conn.close()
                result.seconds += time.monotonic() - started

    # ------------------------------------------------------------------------------------------ facts
    def probe(self, host: Host) -> None:
        result = self.results[host.name]
        started = time.monotonic()
        self.event(result, "connect", "start", 0.0)

        def work(conn: fabric.Connection) -> None:
            self.event(result, "facts", "start", time.monotonic() - started)
            found = host_facts.probe(conn, timeout=self.policy.facts_timeout, backend=self.backend,
                                     python_path=self.options.settings["env"].get("python_path"),
                                     log=self.host_dir(host) / "facts.log")
            result.log = str(self.host_dir(host).relative_to(self.options.run_dir))
            if isinstance(found, Outcome):
                self.fail(result, found, "facts", started)
                return
            fields = kinds_mod.kind_fields(found, self.options.settings)
            result.facts = found.summary()
            if isinstance(fields, Outcome):
                self.fail(result, fields, "facts", started)
                return
            self.facts[host.name], self.fields[host.name] = found, fields
            result.steps.append("facts")
            self.event(result, "facts", "ok", time.monotonic() - started)

        self._session(host, "facts", result, work)

    # ------------------------------------------------------------------------------------------ remote toolkit
    def upload(self, conn: fabric.Connection, result: report.HostResult) -> bool:
        remote_dir = self.options.remote_dir
        conn.put(io.BytesIO(self.tarball()), REMOTE_TARBALL)
        done = run(conn, f"sh -c 'mkdir -p \"$1\" && tar -xzf \"$2\" -C \"$1\"; rc=$?; rm -f \"$2\"; exit $rc' "
                         f"sh {_q(remote_dir)} {REMOTE_TARBALL}", timeout=300)
        if done.exit_code != 0:
            self.fail(result, Outcome("timed out" if done.timed_out else "failed",
                                      f"could not unpack the toolkit into {remote_dir}: "
                                      f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}",
                                      "check the disk space and permissions in the remote user's home",
                                      done.exit_code), "upload", time.monotonic())
            return False
        result.steps.append("upload")
        return True

    def toolkit(self, conn: fabric.Connection, host: Host, result: report.HostResult, phase: str, args: str,
                timeout: float) -> tuple[bool, str]:
        """Run `<toolkit_command> args` in remote_dir; the output goes to hosts/<host>/<phase>.log."""
        started = time.monotonic()
        self.event(result, phase, "start", 0.0)
        done = run(conn, f"{self.options.fleet['toolkit_command']} {args}", timeout=timeout,
                   cwd=self.options.remote_dir, env=self.env)
        output = done.stdout + done.stderr
        (self.host_dir(host) / f"{phase}.log").write_text(
            redact_text(f"$ {self.options.fleet['toolkit_command']} {args}\n{output}"))
        if done.timed_out:
            self.fail(result, Outcome("timed out", f"{phase} ran past {timeout:g} s and was stopped (its processes "
                                      "on the host were ended)", f"raise fleet.{'build' if phase == 'wheel' else 'install'}"
                                      f"_timeout, or read {result.log}/{phase}.log", done.exit_code), phase, time.monotonic())
            return False, output
        if done.exit_code != 0:
            error, hint = _error_lines(output)
            self.fail(result, Outcome("failed", error or f"{phase} failed with exit code {done.exit_code}",
                                      hint or f"read {result.log}/{phase}.log", done.exit_code),
                      phase, time.monotonic())
            return False, output
        result.steps.append(phase)
        self.event(result, phase, "ok", time.monotonic() - started)
        return True, output

    def fetch_reports(self, conn: fabric.Connection, host: Host, result: report.HostResult) -> None:
        """The host's report.json, report.md and logs/ into hosts/<host>/remote/; steps, GPU blocks, smoke."""
        settings = self.options.settings
        # the host's workspace root is the shipped default (no VLLMP_WORKSPACE_ROOT is sent): relative to the toolkit
        root = str(config.defaults(self.options.toolkit_root)["workspace_root"])
        root = root[2:] if root.startswith("~/") else root if root.startswith("/") else f"{self.options.remote_dir}/{root}"
        workspace = f"{root}/{settings['release']}-{settings['profile']}"
        done = run(conn, f"sh -c 'cd \"$1\" 2>/dev/null && tar -czf \"$HOME/$2\" $(ls -d report.json report.md logs "
                         f"2>/dev/null)' sh {_q(workspace)} {REMOTE_LOGS}", timeout=120)
        if done.exit_code != 0:
            return
        target = self.host_dir(host) / "remote"
        buf = io.BytesIO()
        try:
            conn.get(REMOTE_LOGS, buf)
        finally:
            run(conn, f"rm -f {REMOTE_LOGS}", timeout=30)
        buf.seek(0)
        with tarfile.open(fileobj=buf) as tar:
            tar.extractall(target, filter="data")
        try:
            data = json.loads((target / "report.json").read_text())
        except (OSError, ValueError):
            return
        steps = data.get("steps") or {}
        result.steps += [name for name, step in steps.items() if step.get("status") in ("ok", "up-to-date")]
        smoke = steps.get("smoke") or {}
        facts = smoke.get("facts") or {}
        result.gpu_blocks = facts.get("num_gpu_blocks")
        verdict = facts.get("verdict")
        result.smoke = ("pass" if verdict.get("ok") else "fail") if isinstance(verdict, dict) else \
            ("skipped" if smoke.get("status") == "skipped" else None)

    # ------------------------------------------------------------------------------------------ kinds
    def kinds_index(self) -> Path:
        return self.options.run_dir.parent / KINDS_INDEX

    def known_key(self, kind: kinds_mod.Kind) -> dict | None:
        """A key built for this kind by an earlier run into the same caches."""
        try:
            entry = json.loads(self.kinds_index().read_text()).get(kind.id)
        except (OSError, ValueError):
            return None
        return entry if entry and entry.get("caches") == self.options.caches else None

    def remember(self, kind: kinds_mod.Kind, entry: dict) -> None:
        with self._index_lock:
            try:
                index = json.loads(self.kinds_index().read_text())
            except (OSError, ValueError):
                index = {}
            index[kind.id] = entry | {"label": kind.label, "caches": self.options.caches,
                                      "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
            self.kinds_index().write_text(json.dumps(index, indent=2) + "\n")

    def install_on(self, host: Host, kind: kinds_mod.Kind, role: str, build: bool) -> bool:
        result = self.results[host.name]
        result.role = role
        entry = self.kind_keys.get(kind.id)

        def work(conn: fabric.Connection) -> None:
            nonlocal entry
            self.event(result, "upload", "start", 0.0)
            if not self.upload(conn, result):
                return
            if build:
                ok, output = self.toolkit(conn, host, result, "wheel", f"wheel --push --arch {_q(';'.join(kind.archs))}",
                                          self.policy.build_timeout)
                if not ok:
                    return
                key, sha256, wheel = build_key(output)
                if not key:
                    self.fail(result, Outcome("failed", "the wheel build printed no key",
                                              f"read {result.log}/wheel.log; `./inv wheel --push` prints "
                                              "`key: <hex>`"), "wheel", time.monotonic())
                    return
                entry = {"key": key, "sha256": sha256, "wheel": wheel, "built_on": host.name}
                self.kind_keys[kind.id] = entry
                self.remember(kind, entry)
            result.key, result.sha256 = entry["key"], entry.get("sha256")
            ok, _ = self.toolkit(conn, host, result, "install",
                                 f"provision --require-cache --artifact-key {_q(entry['key'])} "
                                 f"--arch {_q(';'.join(kind.archs))}",
                                 self.policy.install_timeout)
            self.fetch_reports(conn, host, result)
            if ok:
                result.status = "ok"

        result.log = str(self.host_dir(host).relative_to(self.options.run_dir))
        self._session(host, "install", result, work)
        return result.status == "ok"

    def skip(self, hosts: list[Host], why: str, hint: str | None = None) -> None:
        for host in hosts:
            result = self.results[host.name]
            result.status, result.detail, result.hint = "skipped", why, hint
            self.event(result, result.phase, "skipped", 0.0)

    def provision_kind(self, kind: kinds_mod.Kind) -> None:
        canary, rest = kind.hosts[0], kind.hosts[1:]
        known = self.known_key(kind)
        if known:
            self.kind_keys[kind.id] = known
        if not self.install_on(canary, kind, "canary", build=known is None):
            self.skip(rest, f"the canary {canary.name} of kind {kind.id} did not pass",
                      f"fix {canary.name} (see its row), then rerun with --rerun-failed")
            return
        failed = processed = 0
        batches = self.policy.batches(rest)
        for number, batch in enumerate(batches, 1):
            outcomes = parallel(batch, lambda h, n=number: self.install_on(h, kind, f"batch {n}", build=False),
                                self.policy.forks)
            processed += len(outcomes)
            failed += outcomes.count(False)
            if self.policy.over_budget(failed, processed) and number < len(batches):
                later = [h for b in batches[number:] for h in b]
                self.skip(later, f"failure budget spent: {failed} of {processed} hosts of kind {kind.id} failed "
                          f"(more than max_fail_percent {self.policy.max_fail_percent:g} %)",
                          "fix the failed hosts, then rerun with --rerun-failed")
                return

    # ------------------------------------------------------------------------------------------ the run
    def _run_phases(self) -> None:
        parallel(self.options.hosts, self.probe, self.policy.forks)
        self.kinds = kinds_mod.group(self.options.hosts, self.facts, self.fields)
        if self.options.facts_only:
            for name in self.facts:
                self.results[name].status = "ok"
        else:
            parallel(self.kinds, self.provision_kind, len(self.kinds))

    def run(self) -> dict:
        started_at = time.strftime("%Y-%m-%dT%H:%M:%S")
        started = time.monotonic()
        try:
            self._run_phases()
        except KeyboardInterrupt:      # close every session: the workers' remote commands end with their channels
            for conn in list(self.open_connections):
                conn.close()
            raise
        for kind in self.kinds:
            for h in kind.hosts:
                self.results[h.name].kind, self.results[h.name].kind_label = kind.id, kind.label
        for result in self.results.values():
            if result.status == "pending":     # a failure not classified above must not pass as ok
                result.status = "failed"
        data = {"started": started_at, "seconds": round(time.monotonic() - started, 2),
                "release": self.options.settings["release"], "profile": self.options.settings["profile"],
                "facts_only": self.options.facts_only,
                "policy": {"forks": self.policy.forks, "max_fail_percent": self.policy.max_fail_percent},
                "host_key_policy": self.ssh.host_key_policy, "caches": [redact_text(c) for c in self.options.caches],
                "kinds": [{"id": k.id, "label": k.label, "fields": k.fields, "hosts": [h.name for h in k.hosts],
                           **{f: (self.kind_keys.get(k.id) or {}).get(f) for f in ("key", "sha256", "built_on")}}
                          for k in self.kinds]}
        return report.write(self.options.run_dir, data, [self.results[h.name] for h in self.options.hosts])


_q = shlex.quote


def new_run_dir(report_root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = report_root / stamp
    n = 1
    while path.exists():
        n += 1
        path = report_root / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def report_root(settings: Mapping[str, Any], override: str | None = None) -> Path:
    path = Path(os.path.expanduser(override or settings["fleet"]["report_dir"]))
    return path if path.is_absolute() else PROJECT_ROOT / path


def select_hosts(*, hosts_file: str | None, ansible_inventory: str | None, limit: str | None,
                 rerun_failed: bool, root: Path) -> list[Host]:
    """The inventory, narrowed by --limit and --rerun-failed (hosts not ok in the latest report)."""
    from . import inventory
    if bool(hosts_file) == bool(ansible_inventory):
        raise ConfigError("give the hosts with exactly one of --hosts FILE and --ansible-inventory FILE",
                          hint="e.g. ./inv fleet --hosts hosts.txt (one ssh_config alias or user@host:port a line)")
    hosts = (inventory.read_hosts_file(Path(hosts_file)) if hosts_file
             else inventory.read_ansible_inventory(Path(ansible_inventory)))
    hosts = inventory.limit(hosts, limit)
    if rerun_failed:
        failed = set(report.failed_hosts(root))
        hosts = [h for h in hosts if h.name in failed]
    return hosts
