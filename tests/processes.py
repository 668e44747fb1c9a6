"""What still runs, read from /proc: for tests that a stopped command left nothing behind."""

from __future__ import annotations

from pathlib import Path


def _stats():
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError, IndexError):
            continue
        yield int(stat.parent.name), state, int(ppid), int(pgrp)


def group_gone(pgid: int) -> bool:
    """No process of the group runs (zombies waiting for their parent do not count)."""
    return not any(pgrp == pgid and state != "Z" for _pid, state, _ppid, pgrp in _stats())


def children_of(pid: int) -> list[int]:
    return [p for p, _state, ppid, _pgrp in _stats() if ppid == pid]


def alive(pid: int) -> bool:
    return any(p == pid and state != "Z" for p, state, _ppid, _pgrp in _stats())
