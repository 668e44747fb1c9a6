"""Progress for every long step: one facility, two forms.

On a terminal a live line (rich): what is being done, done/total, elapsed, ETA. Without one (CI, `| tee`,
SSH without a tty) a plain heartbeat line every `heartbeat_s` seconds (default 30, `VLLMP_HEARTBEAT_S`),
so a log never looks hung. The ETA is the plan's estimate until something is done, then the measured rate.

    from vllm_provision.core.progress import progress, ninja_status

    with progress("compiling", total=400, unit="units", estimate_s=500, step="build") as p:
        for line in ninja_output:                 # or runner.run(..., echo=p.feed_ninja)
            p.feed_ninja(line)                    # "[N/M] ..." lines set done/total
        p.advance()                               # one more done
        p.update(done=120, total=400)             # absolute counts (either may be None: unchanged)
        p.note("linking")                         # what is being done now (shown after the counts)
        p.finish("built in 6 min 40 s")           # the closing line (default: counts and time taken)

`watch=fn` polls fn() -> (done, total) once a second, for progress read from outside (a directory's
files, a log); `unit="bytes"` shows sizes; `say=fn` takes the plain form's lines and the closing line
instead of the console (a caller that records them). The context never swallows an exception; on one it prints no
closing line (the error says what happened).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from vllm_provision.core import ui

DEFAULT_HEARTBEAT_S = 30.0
POLL_S = 1.0
_active: list[Progress] = []     # one display at a time: a progress opened inside another is quiet
_NINJA = re.compile(r"^\s*\[(\d+)/(\d+)\]")


def ninja_status(line: str) -> tuple[int, int] | None:
    """(done, total) from a ninja status line (`[12/400] Building CUDA object ...`), else None."""
    m = _NINJA.match(line)
    return (int(m.group(1)), int(m.group(2))) if m else None


def heartbeat_seconds() -> float:
    """The heartbeat interval: VLLMP_HEARTBEAT_S when it is a positive number, else 30 s."""
    try:
        value = float(os.environ.get("VLLMP_HEARTBEAT_S", ""))
    except ValueError:
        return DEFAULT_HEARTBEAT_S
    return value if 0 < value < 86400 else DEFAULT_HEARTBEAT_S


def _size(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):     # as uv prints them
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


class Progress:
    """Counts and times of one long operation; the line both forms show (see the module's docstring)."""

    def __init__(self, what: str, total: int | None = None, *, unit: str = "", estimate_s: float | None = None,
                 step: str | None = None, clock: Callable[[], float] = time.monotonic,
                 say: Callable[[str], None] | None = None) -> None:
        self.what, self.total, self.unit, self.estimate_s, self.step = what, total, unit, estimate_s, step
        self.say = say
        self.done = 0
        self.doing = ""
        self.closing: str | None = None
        self._clock = clock
        self.started = clock()

    # ------------------------------------------------------------------ what callers report
    def advance(self, n: int = 1) -> None:
        self.done += n

    def update(self, done: int | None = None, total: int | None = None) -> None:
        if done is not None:
            self.done = done
        if total is not None:
            self.total = total

    def note(self, doing: str) -> None:
        self.doing = doing

    def feed_ninja(self, line: str) -> None:
        """A line of ninja's output: `[N/M]` sets done/total; anything else is ignored."""
        status = ninja_status(line)
        if status:
            self.update(*status)

    def finish(self, line: str) -> None:
        """The closing line, instead of the default (counts and time taken)."""
        self.closing = line

    # ------------------------------------------------------------------ what is shown
    @property
    def elapsed(self) -> float:
        return self._clock() - self.started

    def remaining(self) -> tuple[float, str] | None:
        """(seconds left, "measured" | "planned"), or None when neither a rate nor an estimate is known."""
        if self.total and 0 < self.done < self.total:
            return self.elapsed * (self.total - self.done) / self.done, "measured"
        if self.total and self.done >= self.total:
            return 0.0, "measured"
        if self.estimate_s:
            return max(0.0, self.estimate_s - self.elapsed), "planned"
        return None

    def counts(self) -> str:
        if self.unit == "bytes":
            return _size(self.done) + (f"/{_size(self.total)}" if self.total else "")
        shown = f"{self.done}/{self.total}" if self.total else str(self.done)
        return f"{shown} {self.unit}".strip()

    def timing(self) -> str:
        text = f"{ui.duration(self.elapsed)} elapsed"
        left = self.remaining()
        if left is None:
            return text
        seconds, how = left
        if how == "planned" and self.elapsed > (self.estimate_s or 0):
            return text + f", over the plan's {ui.duration(self.estimate_s or 0)}"
        return text + f", about {ui.duration(seconds)} left" + (" (planned)" if how == "planned" else "")

    def line(self) -> str:
        doing = f" ({self.doing})" if self.doing else ""
        return f"{self.what}: {self.counts()}, {self.timing()}{doing}"

    def final_line(self) -> str:
        return self.closing or f"{self.what}: {self.counts()} in {ui.duration(self.elapsed)}"


def _say(p: Progress, text: str) -> None:
    if p.say:
        p.say(text)
    else:
        ui.step(p.step, text) if p.step else ui.info(text)


def _poller(p: Progress, watch: Callable[[], tuple[int | None, int | None] | None] | None,
            stop: threading.Event, heartbeat_s: float | None,
            tick: Callable[[], None] = lambda: None) -> threading.Thread:
    """Once a second: poll `watch`, then `tick`; every heartbeat_s (None: never) say the line."""
    def loop() -> None:
        next_beat = time.monotonic() + heartbeat_s if heartbeat_s else None
        while not stop.wait(min(POLL_S, heartbeat_s or POLL_S)):
            if watch:
                try:
                    got = watch()
                except Exception:  # noqa: BLE001 - progress must never break the step it reports on
                    got = None
                if got:
                    p.update(*got)
            tick()
            if next_beat is not None and time.monotonic() >= next_beat:
                _say(p, p.line())
                next_beat += heartbeat_s
    return threading.Thread(target=loop, daemon=True, name=f"progress {p.what}")


@contextmanager
def progress(what: str, total: int | None = None, *, unit: str = "", estimate_s: float | None = None,
             step: str | None = None, heartbeat_s: float | None = None,
             watch: Callable[[], tuple[int | None, int | None] | None] | None = None,
             live: bool | None = None, say: Callable[[str], None] | None = None) -> Iterator[Progress]:
    """Show the progress of one long operation while the block runs (see the module's docstring).

    what: what is being done ("compiling", "installing the lock"); total/unit: what is counted
    ("units", "packages", "bytes"); estimate_s: the plan's estimate, shown until a rate is measured;
    step: the step's name for the `[step]` prefix; heartbeat_s: the plain form's interval (default
    VLLMP_HEARTBEAT_S or 30 s); watch: polled once a second for (done, total); live: force the terminal
    (True) or the plain (False) form, default by whether stderr is a terminal; say: where the plain lines
    and the closing line go (default: the console, with the `[step]` prefix)."""
    p = Progress(what, total, unit=unit, estimate_s=estimate_s, step=step, say=say)
    if _active:      # e.g. pip's install alongside the compile: the compile's display speaks for both
        yield p
        return
    _active.append(p)
    try:
        yield from _shown(p, watch, ui.interactive() if live is None else live, heartbeat_s)
    finally:
        _active.remove(p)


def _shown(p: Progress, watch, live: bool, heartbeat_s: float | None) -> Iterator[Progress]:
    what, step = p.what, p.step
    stop = threading.Event()
    if live:
        from rich.progress import BarColumn, ProgressColumn, SpinnerColumn, TextColumn
        from rich.progress import Progress as Bar
        from rich.text import Text

        class _Status(ProgressColumn):
            def render(self, task) -> Text:
                return Text(f"{p.counts()}, {p.timing()}" + (f" ({p.doing})" if p.doing else ""))

        prefix = f"[{step}] " if step else ""
        bar = Bar(SpinnerColumn(), TextColumn(prefix + what, markup=False), BarColumn(), _Status(),
                  console=ui.console, transient=True, refresh_per_second=4)
        task = bar.add_task(what, total=None)
        # the bar's own fraction follows p
        thread = _poller(p, watch, stop, None, tick=lambda: bar.update(task, total=p.total, completed=p.done))
        display = bar
    else:
        _say(p, p.line())
        thread = _poller(p, watch, stop, heartbeat_s or heartbeat_seconds())
        display = contextlib.nullcontext()
    with display:
        thread.start()
        try:
            yield p
        finally:
            stop.set()
            thread.join()
    _say(p, p.final_line())
