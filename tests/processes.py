"""What still runs, read from /proc (through the toolkit's own reader): for tests that a stopped command left
nothing behind."""

from __future__ import annotations

from vllm_provision.core import procs


def group_gone(pgid: int) -> bool:
    """No process of the group runs (zombies waiting for their parent do not count)."""
    return not any(p.pgrp == pgid and p.alive for p in procs.table().values())


def children_of(pid: int) -> list[int]:
    return [p.pid for p in procs.table().values() if p.ppid == pid]


def alive(pid: int) -> bool:
    proc = procs.read(pid)
    return proc is not None and proc.alive
