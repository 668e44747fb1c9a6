"""Console output: rich on a TTY, plain lines otherwise (CI logs)."""

from __future__ import annotations

import os

from rich.console import Console

from vllm_provision.core.redact import redact_text

console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


_verbose = os.environ.get("VLLMP_VERBOSE", "").lower() in ("1", "true", "yes")


def set_verbose(on: bool) -> None:
    """-v/--verbose: every external command's own output streams to the console (runner.run)."""
    global _verbose
    _verbose = on or _verbose


def verbose() -> bool:
    return _verbose


def tool_output(line: str) -> None:
    """One line of a tool's own output, under --verbose: indented, dim, never taken for the toolkit's."""
    console.print(f"  | {redact_text(line)}", markup=False, style="dim")


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
    console.print(redact_text(message), markup=False)


def warn(message: str) -> None:
    console.print(f"warning: {redact_text(message)}", style="yellow", markup=False)


def quoted(output: str) -> str:
    """A tool's own output as shown above the toolkit's error: indented, so that the one line starting
    with `error:` is the toolkit's (uv, pip, nvcc and gcc print `error:` lines of their own)."""
    return "\n".join(f"  | {line}" for line in output.rstrip().splitlines())


def error(message: str, hint: str | None = None, log_tail: str | None = None) -> None:
    if log_tail:
        console.print(quoted(redact_text(log_tail)), markup=False, style="dim")
    console.print(f"error: {redact_text(message)}", style="bold red", markup=False)
    if hint:
        console.print(f"hint: {redact_text(hint)}", style="cyan", markup=False)


def step(name: str, message: str) -> None:
    console.print(f"[{name}] {redact_text(message)}", markup=False)
