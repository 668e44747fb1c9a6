"""The one place that starts external commands.

Logs the argv (credentials redacted), streams output to the step's log file, applies a
timeout, and turns failure into a StepFailed with the log tail and a diagnosis hint.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .errors import StepFailed
from .redact import redact_text


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    output: str          # combined stdout+stderr, redacted
    seconds: float


Diagnose = Callable[[str, int], "str | None"]


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
) -> Completed:
    """Run argv (never through a shell), tee output to `log`, and return its result.

    `diagnose(output, returncode)` may return a hint for a failure; `echo` receives each
    output line (redacted) for progress display.
    """
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
    try:
        try:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise StepFailed(f"{what}: command not found: {argv[0]}",
                             hint=f"install {os.path.basename(argv[0])} or put it on PATH") from exc
        timed_out = threading.Event()

        def _kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, _kill) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = redact_text(raw)
            tail.append(line)
            lines.append(line)
            if log_fh:
                log_fh.write(line)
            if echo:
                echo(line.rstrip("\n"))
        returncode = proc.wait()
        if timer:
            timer.cancel()
    finally:
        if log_fh:
            log_fh.close()
    seconds = time.monotonic() - started
    output = "".join(lines)
    result = Completed(tuple(argv), returncode, output, seconds)
    if timed_out.is_set():
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
        return run(argv, timeout=timeout, env=env, cwd=cwd, check=False)
    except StepFailed:
        return None
