"""Where each compile runs: the slowest translation units get a physical core of their own.

A parallel build ends when its slowest unit ends (0.2.2: attention_kernels.cu, 98-119 s alone on
the H100 hosts measured; every other unit ~70 s). Started anywhere next to the other compiles it ran
1.22-1.34x slower than alone, while the other units have ample slack. So each critical unit (named,
with its measured time, in the release data; else the largest CUDA sources) is pinned to a core whose
sibling threads stay idle, and every other compile shares the remaining CPUs. On small hosts the
build is throughput-bound and nothing is reserved.

Pure functions plus one sysfs read; the compiler wrappers (`make_build_env`) apply the result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

SYSFS_CPU = Path("/sys/devices/system/cpu")
CUDA_SUFFIXES = (".cu",)
# Without release data, a unit is critical when it is at least this share of the largest CUDA source
# (bytes). For 0.2.2 that picks attention_kernels.cu (39 KB) and awq/gemm_kernels.cu (31 KB), but the
# H100 measured gemm_kernels.cu no slower than the 4-15 KB kernels: sizes are only a fallback.
CRITICAL_SHARE = 0.5
# Reserve a core only when the others keep at least this many cores per reserved one.
CORES_PER_RESERVED = 3
# Keep a reserved CPU's likely hidden SMT siblings idle only where that leaves enough for the others.
GUARD_MIN_CPUS = 8


@dataclass(frozen=True)
class Placement:
    reserved: Mapping[str, str]     # source path relative to src -> CPU list for taskset ("3,11")
    pool: str                       # CPU list for every other compile
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


def critical_units(source_bytes: Mapping[str, int], known: Mapping[str, float] | None = None) -> list[str]:
    """The units that set the build's length: those the release data names (measured), else the CUDA
    sources at least CRITICAL_SHARE of the largest one; largest first."""
    if known:
        return sorted((u for u in known if u in source_bytes), key=lambda u: (-known[u], u))
    cuda = {s: b for s, b in source_bytes.items() if s.endswith(CUDA_SUFFIXES) and b > 0}
    if not cuda:
        return []
    largest = max(cuda.values())
    return sorted((s for s in cuda if cuda[s] >= CRITICAL_SHARE * largest), key=lambda s: (-cuda[s], s))


def hidden_siblings(cpu: int, cpus: list[int]) -> set[int]:
    """The CPUs a VM's vCPU is most often paired with on the host's SMT core when the guest sees one
    thread per core: the adjacent one and the one half the CPU count away (by position in `cpus`)."""
    i, n = cpus.index(cpu), len(cpus)
    return {cpus[j] for j in (i ^ 1, (i + n // 2) % n) if j < n} - {cpu}


def plan_placement(units: list[str], cores: list[tuple[int, ...]], pool_cpus: int | None = None) -> Placement | None:
    """A core of its own for each critical unit, while the others keep CORES_PER_RESERVED cores per
    reserved one; None when no core can be spared (the build is throughput-bound there).
    With one thread per core (a VM may hide SMT) on 8+ CPUs, the reserved CPU's likely hidden
    siblings stay idle.
    `pool_cpus` limits the CPUs the other compiles share (the lowest ones; the rest stay idle)."""
    n = min(len(units), len(cores) // (CORES_PER_RESERVED + 1))
    if n == 0:
        return None
    # the last cores: CPU 0 takes most interrupts and housekeeping
    reserved_cores = cores[::-1][:n]
    idle: set[int] = set()
    threads = max(len(c) for c in cores)
    if threads == 1 and len(cores) >= GUARD_MIN_CPUS:
        allowed = [c for (c,) in cores]
        for (cpu,) in reserved_cores:
            idle |= hidden_siblings(cpu, allowed)
    pool = [c for core in cores[:-n] for c in core if c not in idle]
    if pool_cpus:
        pool = pool[:max(1, pool_cpus)]
    return Placement(reserved={u: cpu_list(core) for u, core in zip(units, reserved_cores)}, pool=cpu_list(pool),
                     threads_per_core=threads)


def host_placement(source_bytes: Mapping[str, int], known: Mapping[str, float] | None = None,
                   pool_cpus: int | None = None, sysfs: Path = SYSFS_CPU) -> Placement | None:
    """plan_placement for the CPUs this process may run on."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return plan_placement(critical_units(source_bytes, known), physical_cores(allowed, sysfs), pool_cpus)
