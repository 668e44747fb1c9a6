"""What runs on this host, read from /proc: the one reader of `/proc/<pid>/stat` for the toolkit (and its
tests). smoke/procgroup.py keeps its own copy, since it runs inside the target env without the toolkit;
tests/test_procs.py keeps the two in step."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str          # "R", "S", ..., "Z" for a zombie (dead, waiting for its parent)
    ppid: int
    pgrp: int
    rss_bytes: int
    comm: str
    start: str          # clock ticks since boot: with the pid, who the process is

    @property
    def alive(self) -> bool:
        return self.state != "Z"


def _parse(pid: int, text: str) -> Proc:
    # comm may hold spaces and parentheses: it ends at the last ")"
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return Proc(pid=pid, state=fields[0], ppid=int(fields[1]), pgrp=int(fields[2]),
                rss_bytes=int(fields[21]) * os.sysconf("SC_PAGE_SIZE"), comm=comm, start=fields[19])


def read(pid: int) -> Proc | None:
    """The process `pid`, or None when there is none (or no /proc)."""
    try:
        return _parse(pid, (PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def table() -> dict[int, Proc]:
    """Every process /proc shows, by pid."""
    out = {}
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            pid = int(stat.parent.name)
            out[pid] = _parse(pid, stat.read_text())
        except (OSError, ValueError, IndexError):
            continue
    return out


def group_running(pgid: int) -> bool:
    """Whether a process of the group still runs; zombies (dead, waiting for their parent) do not."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                # another user's group: /proc still tells
    if not (PROC / "self" / "stat").exists():
        return True         # without /proc, what kill(0) said
    return any(p.pgrp == pgid and p.alive for p in table().values())
