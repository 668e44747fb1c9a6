"""Capturing vLLM's log (stdout/stderr and the logging module) so generate.py can read the block counts
and keep the tail.

Runs inside the target environment with stdlib + torch + vllm only (never imports the toolkit).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time


class Tee(io.TextIOBase):
    """Writes through to the real stream and keeps a copy."""

    def __init__(self, real, buf: io.StringIO):
        self.real, self.buf = real, buf

    def write(self, s):
        try:
            self.real.write(s)
        except Exception:
            pass
        self.buf.write(s)
        return len(s)

    def flush(self):
        try:
            self.real.flush()
        except Exception:
            pass

    def isatty(self):
        return False

    def fileno(self):
        return self.real.fileno()

    @property
    def encoding(self):
        return getattr(self.real, "encoding", "utf-8")


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record):
        try:
            self.records.append(self.format(record))
        except Exception:
            pass


def attach_handler(handler: logging.Handler) -> None:
    """vLLM's loggers do not propagate (0.2.x sets propagate=False on each): attach to all of them."""
    mgr = logging.Logger.manager
    for name, lg in list(mgr.loggerDict.items()):
        if name == "vllm" or name.startswith("vllm."):
            if isinstance(lg, logging.Logger) and handler not in lg.handlers:
                lg.addHandler(handler)
    root = logging.getLogger("vllm")
    if handler not in root.handlers:
        root.addHandler(handler)


class FdCapture:
    """Copies everything written to file descriptors 1 and 2, by this process and by the processes it starts,
    into a buffer, and passes it on to the real stderr.

    The V1 engine runs its core (and, with tensor parallelism, its workers) in child processes: their log
    lines, the KV-cache figures among them, never pass through this process's sys.stdout or logging. The
    children inherit descriptors 1 and 2, so a pipe there sees them. After ``stop`` the descriptors are
    restored; a child still alive keeps writing into the pipe, and a daemon thread keeps passing that on."""

    IDLE_S = 0.3        # stop waits until the pipe has been quiet this long ...
    DRAIN_S = 5.0       # ... or this long at most

    def __init__(self):
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._saved: dict[int, int] = {}
        self._thread = None

    def start(self) -> FdCapture:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        self._saved = {fd: os.dup(fd) for fd in (1, 2)}
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(target=self._pump, args=(read_end, self._saved[2]), daemon=True,
                                        name="fd-capture")
        self._thread.start()
        return self

    def _pump(self, read_end: int, passthrough: int) -> None:
        while True:
            try:
                chunk = os.read(read_end, 65536)
            except OSError:
                return
            if not chunk:
                return
            try:
                os.write(passthrough, chunk)
            except OSError:
                pass
            with self._lock:
                self._chunks.append(chunk)
                self._last = time.monotonic()

    def stop(self) -> str:
        """Restore descriptors 1 and 2; the text captured so far (children may still add to the pass-through)."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
        deadline = time.monotonic() + self.DRAIN_S
        while time.monotonic() < deadline and self._thread is not None and self._thread.is_alive():
            with self._lock:
                if time.monotonic() - self._last >= self.IDLE_S:
                    break
            time.sleep(0.05)
        return self.text()

    def text(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode("utf-8", errors="replace")
