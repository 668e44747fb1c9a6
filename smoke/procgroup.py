"""Child processes in one process group of their own: start them, wait with a deadline, end them all.

Imported by the smoke/ scripts next to it (per_gpu.py, nccl_check.py), with their bad-input convention
(one error: and one hint: line, exit 2); runs inside the target env with the stdlib only and never
imports the toolkit.

Every child joins one new process group (the first child leads it), so ending the group reaches
whatever the children started too: SIGTERM, then SIGKILL for what still runs after a grace. A
separate group rather than the parent's, so that the parent survives the stop and reports what
happened. SIGTERM to the parent is turned into KeyboardInterrupt (like Ctrl-C), so a parent that is
itself being stopped ends its children before it exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

STOP_GRACE_S = 3.0    # short: the toolkit's runner gives the parent 5 s after SIGTERM before SIGKILL


class Group:
    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.pgid: int | None = None

    def start(self, argv: list[str], env: dict | None = None, log: str | None = None) -> subprocess.Popen:
        """Start argv in the group; stdout and stderr go to `log` (a file path), else are dropped."""
        target = 0 if self.pgid is None else self.pgid   # 0: a new group, led by this child
        if sys.version_info >= (3, 11):
            where = {"process_group": target}
        else:   # the seed env's Python 3.10 has no process_group argument
            where = {"preexec_fn": lambda: os.setpgid(0, target)}
        out = open(log, "wb") if log else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    **where)
        finally:
            if log:
                out.close()
        if self.pgid is None:
            self.pgid = proc.pid
        self.procs.append(proc)
        return proc

    def wait(self, deadline: float, give_up=None) -> bool:
        """Until every child ended (True) or time.monotonic() passed `deadline` (False).

        `give_up(proc)` is asked about each child that ended; True ends the wait at once (e.g. a failed
        child whose peers would otherwise wait for it until the deadline)."""
        while True:
            ended = [p for p in self.procs if p.poll() is not None]
            if len(ended) == len(self.procs):
                return True
            if give_up is not None and any(give_up(p) for p in ended):
                return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def running(self) -> bool:
        """Whether a process of the group still runs (zombies waiting for a parent do not count)."""
        for p in self.procs:
            p.poll()        # reap our own children
        if self.pgid is None:
            return False
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        for stat in os.listdir("/proc"):
            if not stat.isdigit():
                continue
            try:
                with open(f"/proc/{stat}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == self.pgid and fields[0] != "Z":
                return True
        return False

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def _ended_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, grace: float = STOP_GRACE_S) -> str:
        """End the whole group; returns when none of it runs. Says how, for the report."""
        if self.pgid is None or not self.running():
            return "already ended"
        # a second Ctrl-C or SIGTERM must not cut the stop short
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._signal(signal.SIGTERM)
            if self._ended_within(grace):
                return "stopped with SIGTERM"
            self._signal(signal.SIGKILL)
            self._ended_within(10.0)
            return f"still running {grace:g} s after SIGTERM: killed with SIGKILL"
        finally:
            self._reap()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _reap(self) -> None:
        """Collect the exit status of children that died after their last poll (zombies until then)."""
        for p in self.procs:
            try:
                p.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass


@contextmanager
def sigterm_as_interrupt():
    """Within: SIGTERM raises KeyboardInterrupt, so `finally`/`except` blocks stop the children first."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt()

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def log_tail(path: str | None, lines: int = 20) -> str:
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""


class BadInput(Exception):
    """Input a script refuses: reported by fail_bad_input."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message, self.hint = message, hint


def fail_bad_input(message: str, hint: str) -> int:
    """Bad input: one error line and one hint line on stderr, exit code 2 (the toolkit reads both lines)."""
    print(f"error: {message}", file=sys.stderr)
    print(f"hint: {hint}", file=sys.stderr)
    return 2
