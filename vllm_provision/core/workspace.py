"""Per (release, profile) workspace: src/, env, logs/, stamps/, report.json, and a run lock."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vllm_provision.core.errors import ProvisionError
from vllm_provision.core.redact import redact_text


@dataclass(frozen=True)
class Workspace:
    root: Path
    cache: Path

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def env(self) -> Path:
        """Stable link to the current env prefix (envs are created at versioned prefixes)."""
        return self.root / "env"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def stamps(self) -> Path:
        return self.root / "stamps"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def downloads(self) -> Path:
        return self.cache / "sources"

    def log(self, step: str) -> Path:
        return self.logs / f"{step}.log"

    def ensure(self) -> None:
        for d in (self.root, self.logs, self.stamps, self.downloads):
            d.mkdir(parents=True, exist_ok=True)


class RunLock:
    """An flock on <workspace>/.lock; the holder's pid/host/command are written into it.

    Busy is a runtime condition (another run is working here), not bad input: exit 1."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read()
            fh.close()
            raise self._busy(holder) from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "command": redact_text(" ".join(sys.argv)), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        fh.flush()
        self._fh = fh
        return self

    def _busy(self, holder: str) -> ProvisionError:
        try:
            who = json.loads(holder)
        except ValueError:
            who = None
        if not isinstance(who, dict) or "pid" not in who:
            return ProvisionError(f"another run holds the workspace lock {self.path}",
                                  hint=f"wait for the other run to finish; if none is running, remove {self.path}")
        host = who.get("host", "?")
        return ProvisionError(
            f"another run holds the workspace lock {self.path}: pid {who['pid']} on {host} "
            f"since {who.get('since', '?')} (`{who.get('command', '?')}`)",
            hint=f"wait for the other run to finish; if no process {who['pid']} runs on {host}, remove {self.path}")

    def __exit__(self, *exc) -> None:
        if self._fh:
            self._fh.seek(0)
            self._fh.truncate()
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
