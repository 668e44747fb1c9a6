"""Console output: rich on a TTY, plain lines otherwise (CI logs).

One logging setup: every message the toolkit says (info, step, warn, error, hint, --verbose tool output) is a
record of the `vllm_provision` logger. Its console handler prints it on stderr as it always looked; while a
run holds a workspace, `recording()` also writes each record, timestamped, to that workspace's log of the run
(logs/toolkit.log). Tables and --json documents are output, not messages: they go to `out` as they are."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from vllm_provision.core.redact import redact_text

console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

log = logging.getLogger("vllm_provision")


class _ConsoleHandler(logging.Handler):
    """A record as the console line it always was: its text, in its style (`extra={"style": ...}`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            console.print(record.getMessage(), style=getattr(record, "style", None), markup=False)
        except Exception:  # noqa: BLE001 - logging's own contract: a handler never raises
            self.handleError(record)


if not any(isinstance(h, _ConsoleHandler) for h in log.handlers):
    log.addHandler(_ConsoleHandler())
log.setLevel(logging.INFO)
log.propagate = False       # the host application's root logger does not print them a second time


@contextmanager
def recording(path: Path) -> Iterator[Path]:
    """Every message of this block also to `path` (written afresh), one timestamped line each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    try:
        yield path
    finally:
        log.removeHandler(handler)
        handler.close()


def _say(message: str, style: str | None = None, level: int = logging.INFO) -> None:
    log.log(level, message, extra={"style": style})


_verbose = os.environ.get("VLLMP_VERBOSE", "").lower() in ("1", "true", "yes")


def set_verbose(on: bool) -> None:
    """-v/--verbose: every external command's own output streams to the console (runner.run)."""
    global _verbose
    _verbose = on or _verbose


def verbose() -> bool:
    return _verbose


def tool_output(line: str) -> None:
    """One line of a tool's own output, under --verbose: indented, dim, never taken for the toolkit's."""
    _say(f"  | {redact_text(line)}", "dim")


def duration(seconds: float) -> str:
    """45 s, 8 min 20 s, 1 h 02 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def interactive() -> bool:
    return console.is_terminal and os.environ.get("CI", "").lower() not in ("1", "true", "yes")


def info(message: str) -> None:
    _say(redact_text(message))


def warn(message: str) -> None:
    _say(f"warning: {redact_text(message)}", "yellow", logging.WARNING)


def quoted(output: str) -> str:
    """A tool's own output as shown above the toolkit's error: indented, so that the one line starting
    with `error:` is the toolkit's (uv, pip, nvcc and gcc print `error:` lines of their own)."""
    return "\n".join(f"  | {line}" for line in output.rstrip().splitlines())


def error(message: str, hint: str | None = None, log_tail: str | None = None) -> None:
    if log_tail:
        _say(quoted(redact_text(log_tail)), "dim", logging.ERROR)
    _say(f"error: {redact_text(message)}", "bold red", logging.ERROR)
    if hint:
        _say(f"hint: {redact_text(hint)}", "cyan", logging.ERROR)


def step(name: str, message: str) -> None:
    _say(f"[{name}] {redact_text(message)}")
