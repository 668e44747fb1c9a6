"""The one place that starts external commands.

Logs the argv (credentials redacted), streams output to the step's log file, applies a
timeout, and turns failure into a StepFailed with the log tail and a diagnosis hint.

Each command runs in its own process group (Ctrl-C in a terminal reaches only the toolkit). On
Ctrl-C, SIGTERM or a timeout the whole group gets SIGTERM, then SIGKILL after STOP_GRACE_S, and the
runner waits until none of it runs before the exception goes on: the workspace lock is released
only when nothing the run started can still write into the workspace. SIGTERM is handled like Ctrl-C
(the CLI exits 143 for it, 130 for Ctrl-C). Under -v/--verbose (ui.verbose) every command's own output
is shown on the console as it comes.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vllm_provision.core import procs, ui
from vllm_provision.core.errors import StepFailed
from vllm_provision.core.redact import redact_text


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    output: str          # combined stdout+stderr, redacted
    seconds: float


Diagnose = Callable[[str, int], "str | None"]

STOP_GRACE_S = 5.0      # a stopped command's time to exit after SIGTERM, before SIGKILL
KILL_WAIT_S = 10.0      # after SIGKILL, only a process stuck in the kernel (e.g. on NFS) takes longer


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it is cleaned up after exactly like Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within: SIGTERM raises Terminated (by default it ends Python at once: no cleanup, no lock release).

    Only the main thread can handle signals; a handler someone else installed is left alone."""
    if not _main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C while a group is being stopped must not cut the stop short."""
    if not _main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _group_ended(proc: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        proc.poll()         # reaps the group's leader
        if not procs.group_running(proc.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop_group(proc: subprocess.Popen) -> str:
    """End the process group proc leads: SIGTERM, then SIGKILL for what still runs after STOP_GRACE_S;
    returns when none of it runs. Says what it took, for the log."""
    with _signals_ignored():
        _signal_group(proc.pid, signal.SIGTERM)
        if _group_ended(proc, STOP_GRACE_S):
            return "stopped with SIGTERM"
        _signal_group(proc.pid, signal.SIGKILL)
        _group_ended(proc, KILL_WAIT_S)
        return f"still running {STOP_GRACE_S:g} s after SIGTERM: killed with SIGKILL"


def format_argv(argv: Sequence[str]) -> str:
    return redact_text(shlex.join(str(a) for a in argv))


def run(
    argv: Sequence[str | os.PathLike],
    *,
    log: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    check: bool = True,
    what: str | None = None,
    diagnose: Diagnose | None = None,
    echo: Callable[[str], None] | None = None,
    tail_lines: int = 40,
    stream: bool = True,
) -> Completed:
    """Run argv (never through a shell), tee output to `log`, and return its result.

    `diagnose(output, returncode)` may return a hint for a failure; `echo` receives each
    output line (redacted) for progress display. Under -v/--verbose (ui.verbose) each line is also
    shown on the console, unless `stream` is False (quick probes).
    """
    stream = stream and ui.verbose()
    argv = [str(a) for a in argv]
    run_env = dict(os.environ if env is None else env)
    if extra_env:
        run_env.update(extra_env)
    what = what or os.path.basename(argv[0])
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=tail_lines)
    lines: list[str] = []
    log_fh = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log_fh = open(log, "a", encoding="utf-8", errors="replace")
        log_fh.write(f"$ {format_argv(argv)}\n")
        log_fh.flush()
    stopped_on_timeout: list[str] = []
    try:
        with sigterm_as_interrupt():
            try:
                proc = subprocess.Popen(
                    argv, cwd=cwd, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1,
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise StepFailed(f"{what}: command not found: {argv[0]}",
                                 hint=f"install {os.path.basename(argv[0])} or put it on PATH") from exc
            timer = threading.Timer(timeout, lambda: stopped_on_timeout.append(stop_group(proc))) if timeout else None
            if timer:
                timer.daemon = True
                timer.start()
            assert proc.stdout is not None
            try:
                for raw in proc.stdout:
                    line = redact_text(raw)
                    tail.append(line)
                    lines.append(line)
                    if log_fh:
                        log_fh.write(line)
                    if stream:
                        ui.tool_output(line.rstrip("\n"))
                    if echo:
                        echo(line.rstrip("\n"))
                returncode = proc.wait()
            except BaseException as exc:      # Ctrl-C, SIGTERM: nothing it started may outlive the run
                how = stop_group(proc)
                if log_fh:
                    log_fh.write(f"--- {what} interrupted ({type(exc).__name__}): {how}\n")
                raise
            finally:
                if timer:
                    timer.cancel()
                    timer.join()     # a timeout that fired has finished stopping the group
                proc.stdout.close()
                if stopped_on_timeout and log_fh:
                    log_fh.write(f"--- {what} timed out after {timeout:g} s: {stopped_on_timeout[0]}\n")
    finally:
        if log_fh:
            log_fh.close()
    seconds = time.monotonic() - started
    output = "".join(lines)
    result = Completed(tuple(argv), returncode, output, seconds)
    if stopped_on_timeout:
        raise StepFailed(f"{what} timed out after {timeout:.0f} s",
                         hint=f"raise the timeout or look at {log}" if log else "raise the timeout",
                         log_tail="".join(tail))
    if check and returncode != 0:
        hint = diagnose(output, returncode) if diagnose else None
        where = f"; full log: {log}" if log else ""
        raise StepFailed(f"{what} failed with exit code {returncode}{where}",
                         hint=hint or (f"read {log}" if log else None), log_tail="".join(tail))
    return result


def capture(argv: Sequence[str | os.PathLike], *, timeout: float = 20, env: Mapping[str, str] | None = None,
            cwd: Path | None = None) -> Completed | None:
    """Run a quick probe command; None when it is not installed. Never raises on failure."""
    try:
        return run(argv, timeout=timeout, env=env, cwd=cwd, check=False, stream=False)
    except StepFailed:
        return None
