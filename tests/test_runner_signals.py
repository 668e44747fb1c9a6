"""Ctrl-C, SIGTERM and timeouts end every process a command started, before the workspace lock is freed.

A driver process takes a workspace RunLock and runs, through the toolkit's runner and the CLI's error
handling, a child that starts a grandchild in its process group; the test signals the driver for real.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from processes import alive

from vllm_provision.core import runner
from vllm_provision.core.errors import StepFailed

# The child: starts a grandchild (`sleep`, in the child's process group), writes both pids, then waits.
# On SIGTERM it records whether the workspace lock was still held at that moment; a "stubborn" child
# (and its grandchild, which inherits SIG_IGN) does not exit on SIGTERM.
CHILD = r"""
import fcntl, json, os, signal, subprocess, sys
out, lock, mode = sys.argv[1], sys.argv[2], sys.argv[3]

def on_term(signum, frame):
    with open(lock) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            state = "free"
        except BlockingIOError:
            state = "held"
    with open(out + ".term", "w") as fh:
        fh.write(state)
    if mode != "stubborn":
        sys.exit(0)

signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else signal.SIG_DFL)
grandchild = subprocess.Popen(["sleep", "300"])
signal.signal(signal.SIGTERM, on_term)
print("child started", flush=True)
with open(out + ".tmp", "w") as fh:
    json.dump({"child": os.getpid(), "grandchild": grandchild.pid}, fh)
os.replace(out + ".tmp", out)
while True:
    signal.pause()
"""

# The driver: what a toolkit command does, the CLI's error handling around a run under the lock.
DRIVER = r"""
import signal, sys
from pathlib import Path
from invoke.exceptions import Exit
from vllm_provision.core import runner
from vllm_provision.cli import handles_errors
from vllm_provision.core.workspace import RunLock

signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal, even if started with SIGINT ignored
lock, log, grace, argv = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
runner.STOP_GRACE_S = grace

@handles_errors
def main():
    with RunLock(Path(lock)):
        runner.run(argv, log=Path(log), what="child")

try:
    main()
except Exit as exc:
    sys.exit(exc.code)
"""


def _lock_free(path: Path) -> bool:
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the child never started: {proc.communicate()}")
        time.sleep(0.05)


def _interrupt(tmp_path: Path, sig: int, mode: str = "plain", grace: float = 5) -> dict:
    """Start the driver, send `sig` once the child runs, and watch the lock until the driver exits."""
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "driver.py").write_text(DRIVER)
    lock, pids, log = tmp_path / "ws" / ".lock", tmp_path / "pids.json", tmp_path / "logs" / "step.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(lock), str(log), str(grace),
                               sys.executable, str(tmp_path / "child.py"), str(pids), str(lock), mode],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started: dict = {}
    freed_early = False
    try:
        _wait_for(pids, driver)
        started = json.loads(pids.read_text())
        assert alive(started["child"]) and alive(started["grandchild"])
        driver.send_signal(sig)
        # Whenever the lock is seen free, nothing the run started may still be running.
        while driver.poll() is None:
            freed_early = freed_early or (_lock_free(lock) and any(alive(pid) for pid in started.values()))
            time.sleep(0.02)
        stdout, stderr = driver.communicate(timeout=60)
        survivors = [pid for pid in started.values() if alive(pid)]
    finally:
        if driver.poll() is None:
            driver.kill()
        for pid in started.values():        # leave nothing behind, even when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    term = tmp_path / "pids.json.term"
    return {"code": driver.returncode, "stderr": stderr, "survivors": survivors, "freed_early": freed_early,
            "lock": lock, "term": term.read_text() if term.exists() else None, "log": log.read_text()}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_ends_child_and_grandchild_before_the_lock_is_freed(tmp_path, sig):
    done = _interrupt(tmp_path, sig)
    assert done["survivors"] == [] and not done["freed_early"]
    assert done["term"] == "held"               # the child was told to stop while the lock was still held
    # SIGTERM is handled like Ctrl-C; the exit code says which it was
    assert done["code"] == (130 if sig == signal.SIGINT else 143)
    assert _lock_free(done["lock"]) and done["lock"].read_text() == ""
    errors = [line for line in done["stderr"].splitlines() if line.startswith("error:")]
    assert errors == ["error: interrupted" if sig == signal.SIGINT else "error: terminated (SIGTERM)"], done["stderr"]
    assert done["stderr"].count("hint: rerun the same command") == 1
    assert "Traceback" not in done["stderr"]
    assert "child started" in done["log"] and "stopped with SIGTERM" in done["log"]


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    done = _interrupt(tmp_path, signal.SIGINT, mode="stubborn", grace=1)
    assert done["term"] == "held"               # it got SIGTERM first, and ignored it
    assert done["survivors"] == [] and not done["freed_early"]
    assert done["code"] == 130
    assert "SIGKILL" in done["log"]


def test_timeout_asks_the_group_to_stop_then_ends_all_of_it(tmp_path):
    """The runner's own timeout: SIGTERM first (a child may clean up), and no grandchild outlives it."""
    (tmp_path / "child.py").write_text(CHILD)
    pids, lock = tmp_path / "pids.json", tmp_path / ".lock"
    lock.touch()
    with pytest.raises(StepFailed) as err:
        runner.run([sys.executable, tmp_path / "child.py", pids, lock, "plain"], timeout=5, what="child",
                   log=tmp_path / "child.log")
    assert err.value.message == "child timed out after 5 s"
    assert (tmp_path / "pids.json.term").read_text() == "free"     # it got SIGTERM (nobody held the lock)
    assert not any(alive(pid) for pid in json.loads(pids.read_text()).values())
