"""Run one command on a fleet host as its own process group, and end the whole group when it runs past its
time, when the module is signalled, or when the SSH session that started it is gone (the controller's Ctrl-C,
Ansible's task timeout, a dropped link). Stdlib only: it runs on the host with the host's python3.

Without a tty (SSH pipelining) sshd sends no SIGHUP when the session ends: the module's stdout, a pipe to sshd,
reports POLLERR/POLLHUP once sshd has closed its end, and that is what is watched.
"""

import os
import select
import signal
import subprocess
import time

KILL_AFTER_S = 10           # after SIGTERM, the group's time to exit before SIGKILL (the toolkit stops in 5 s)
WATCH_S = 0.5


def _signal(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_group(proc, kill_after=KILL_AFTER_S):
    """SIGTERM to the group, SIGKILL after kill_after s; returns when no process of the group is left."""
    _signal(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + kill_after
    while time.monotonic() < deadline:
        proc.poll()
        if not _group_alive(proc.pid):
            return "stopped"
        time.sleep(0.1)
    _signal(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(100):
        if not _group_alive(proc.pid):
            break
        time.sleep(0.1)
    return "killed"


class ConnectionLost(Exception):
    pass


def _session_gone(poller):
    return any(mask & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, mask in poller.poll(0))


def run_group(argv, timeout, cwd=None, env=None, output=None, kill_after=KILL_AFTER_S):
    """(returncode, timed_out). stdout and stderr go to the file object `output` (None: discarded).
    Raises ConnectionLost after ending the group when the session is gone."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=output or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    interrupted = []

    def on_signal(signum, frame):
        interrupted.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    poller = select.poll()
    poller.register(1, 0)           # only POLLERR / POLLHUP, which poll always reports
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return proc.wait(timeout=WATCH_S), False
            except subprocess.TimeoutExpired:
                pass
            if interrupted or _session_gone(poller):
                stop_group(proc, kill_after)
                raise ConnectionLost()
            if time.monotonic() > deadline:
                stop_group(proc, kill_after)
                return proc.returncode, True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def capture(argv, timeout, env=None):
    """(returncode, output, timed_out) of a quick probe; returncode None when argv[0] cannot run."""
    import tempfile
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as out:
        try:
            rc, timed_out = run_group(argv, max(timeout, 0.1), env=env, output=out)
        except OSError as exc:
            return None, str(exc), False
        out.seek(0)
        return rc, out.read(), timed_out
