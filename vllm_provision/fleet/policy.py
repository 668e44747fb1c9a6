"""Execution policy, with Ansible's controls as the anchor: forks (hosts at once), batches of a kind after its
canary, a failure budget (max_fail_percentage) checked after each batch, per-phase timeouts."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Policy:
    forks: int = 8
    max_fail_percent: float = 100.0
    connect_timeout: float = 15
    facts_timeout: float = 120
    build_timeout: float = 7200
    install_timeout: float = 3600

    @classmethod
    def from_settings(cls, fleet: Mapping) -> "Policy":
        return cls(**{name: fleet[name] for name in cls.__dataclass_fields__})

    def batches(self, hosts: Sequence[T]) -> list[list[T]]:
        return [list(hosts[i:i + self.forks]) for i in range(0, len(hosts), self.forks)]

    def over_budget(self, failed: int, processed: int) -> bool:
        """Ansible's rule: stop when the failed share exceeds the percentage (0: any failure stops)."""
        return processed > 0 and failed * 100 > self.max_fail_percent * processed


class Slots:
    """At most `forks` hosts worked on at once across every kind (sshd's MaxStartups drops bursts)."""

    def __init__(self, forks: int):
        self._semaphore = threading.BoundedSemaphore(forks)

    def __enter__(self):
        self._semaphore.acquire()
        return self

    def __exit__(self, *exc):
        self._semaphore.release()


def parallel(items: Iterable[T], work: Callable[[T], R], workers: int) -> list[R]:
    """work(item) for each item on a pool of `workers` threads; results in the items' order."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))), thread_name_prefix="fleet") as pool:
        return list(pool.map(work, items))
