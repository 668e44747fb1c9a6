"""Where each compile runs: the slowest translation units get a physical core of their own.

A parallel build ends when its slowest unit ends (0.2.2: attention_kernels.cu, ~90 s on the H100,
then awq/gemm_kernels.cu). Started next to a dozen other compiles it runs ~20 % slower than alone,
sharing its core (SMT sibling) and the caches with them, while the other units have ample slack.
So each critical unit is pinned to a core whose sibling threads stay idle, and every other compile
shares the remaining CPUs. On small hosts the build is throughput-bound and nothing is reserved.

Pure functions plus one sysfs read; the compiler wrappers (`make_build_env`) apply the result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

SYSFS_CPU = Path("/sys/devices/system/cpu")
CUDA_SUFFIXES = (".cu",)
# A unit is critical when it is at least this share of the largest CUDA source (bytes): 0.2.2's
# attention_kernels.cu (39 KB) and awq/gemm_kernels.cu (31 KB); the next, cache_kernels.cu, is 15 KB.
CRITICAL_SHARE = 0.5
# Reserve a core only when the others keep at least this many cores per reserved one.
CORES_PER_RESERVED = 3


@dataclass(frozen=True)
class Placement:
    reserved: Mapping[str, str]     # source path relative to src -> CPU list for taskset ("3,11")
    pool: str                       # CPU list for every other compile
    cores: int                      # physical cores seen
    threads_per_core: int

    def describe(self) -> str:
        own = ", ".join(f"{Path(u).name} on CPU {c}" for u, c in self.reserved.items())
        return f"{own}; the other compiles on CPUs {self.pool}"


def cpu_list(cpus: Iterable[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def physical_cores(cpus: Iterable[int], sysfs: Path = SYSFS_CPU) -> list[tuple[int, ...]]:
    """The allowed CPUs grouped by physical core (SMT siblings together), in CPU order.
    A CPU whose topology sysfs cannot read is its own core."""
    allowed = sorted(set(cpus))
    seen: dict[tuple[int, ...], None] = {}
    for cpu in allowed:
        siblings = _read_cpu_list(sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list")
        core = tuple(c for c in siblings if c in allowed) if siblings else (cpu,)
        seen.setdefault(core or (cpu,), None)
    return list(seen)


def _read_cpu_list(path: Path) -> tuple[int, ...]:
    try:
        text = path.read_text().strip()
    except OSError:
        return ()
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(out)


def critical_units(source_bytes: Mapping[str, int]) -> list[str]:
    """CUDA sources at least CRITICAL_SHARE of the largest one, largest first."""
    cuda = {s: b for s, b in source_bytes.items() if s.endswith(CUDA_SUFFIXES) and b > 0}
    if not cuda:
        return []
    largest = max(cuda.values())
    return sorted((s for s, b in cuda.items() if b >= CRITICAL_SHARE * largest), key=lambda s: (-cuda[s], s))


def plan_placement(source_bytes: Mapping[str, int], cores: list[tuple[int, ...]],
                   pool_cpus: int | None = None) -> Placement | None:
    """A core of its own for each critical unit, while the others keep CORES_PER_RESERVED cores per
    reserved one; None when no core can be spared (the build is throughput-bound there).
    `pool_cpus` limits the CPUs the other compiles share (the lowest ones; the rest stay idle)."""
    units = critical_units(source_bytes)
    n = min(len(units), len(cores) // (CORES_PER_RESERVED + 1))
    if n == 0:
        return None
    # the last cores: CPU 0 takes most interrupts and housekeeping
    reserved_cores = cores[::-1][:n]
    pool = [c for core in cores[:-n] for c in core]
    if pool_cpus:
        pool = pool[:max(1, pool_cpus)]
    return Placement(reserved={u: cpu_list(core) for u, core in zip(units, reserved_cores)}, pool=cpu_list(pool),
                     cores=len(cores), threads_per_core=max(len(c) for c in cores))


def host_placement(source_bytes: Mapping[str, int], pool_cpus: int | None = None,
                   sysfs: Path = SYSFS_CPU) -> Placement | None:
    """plan_placement for the CPUs this process may run on."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return plan_placement(source_bytes, physical_cores(allowed, sysfs), pool_cpus)
