"""Capturing vLLM's log (stdout/stderr and the logging module) so generate.py can read the block counts
and keep the tail.

Runs inside the target environment with stdlib + torch + vllm only (never imports the toolkit).
"""

from __future__ import annotations

import io
import logging

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
