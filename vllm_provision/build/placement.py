"""Where each compile runs: the slowest translation units get cores of their own, and nvcc splits
their device optimisation over them.

A parallel build ends when its slowest unit ends (0.2.2: attention_kernels.cu, 84-132 s alone on the
H100 hosts measured, on one CPU; every other unit 45-90 s). Started anywhere next to the other
compiles it ran 1.22-1.34x slower than alone, while the other units have slack. So each critical
unit (named, with its measured time, in the release data; else the largest CUDA sources) runs on
cores of its own with `nvcc -split-compile N` over them (H100: 84.2 s alone on one CPU, 61.0 s split
over 4, 59.2 s over 16), and every other compile shares the remaining CPUs. On small hosts the build
is throughput-bound and nothing is reserved.

Pure functions plus one sysfs read; the compiler wrappers (`make_build_env`) apply the result.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

SYSFS_CPU = Path("/sys/devices/system/cpu")
CUDA_SUFFIXES = (".cu",)
# Without release data, a unit is critical when it is at least this share of the largest CUDA source
# (bytes). For 0.2.2 that picks attention_kernels.cu (39 KB) and awq/gemm_kernels.cu (31 KB), but the
# H100 measured gemm_kernels.cu no slower than the 4-15 KB kernels: sizes are only a fallback.
CRITICAL_SHARE = 0.5
# Reserve a core only when the others keep at least this many cores per reserved one.
CORES_PER_RESERVED = 3
# At most this many cores for one unit by default: split over 16 CPUs the unit took 59.2 s, over 4
# 61.0 s (H100); the other compiles make better use of the rest.
MAX_UNIT_CORES = 4


@dataclass(frozen=True)
class Placement:
    reserved: Mapping[str, str]     # source path relative to src -> CPU list for taskset ("3,11")
    pool: str                       # CPU list for every other compile
    threads_per_core: int
    # nvcc spreads a critical CUDA unit's device optimisation (cicc, ptxas) over its reserved CPUs
    # (`-split-compile N`); set by make_build_env where nvcc has the option
    split_compile: bool = False

    def cpus_of(self, unit: str) -> int:
        """How many CPUs `unit` has to itself (0: it shares the pool)."""
        return len(self.reserved[unit].split(",")) if unit in self.reserved else 0

    def split_threads(self, unit: str) -> int:
        """nvcc threads for `unit`: its reserved CPUs when split compilation applies, else 1."""
        return max(1, self.cpus_of(unit)) if self.split_compile and unit.endswith(CUDA_SUFFIXES) else 1

    def describe(self) -> str:
        own = ", ".join(f"{Path(u).name} on CPU {c}" + (f" (nvcc -split-compile {self.split_threads(u)})"
                                                           if self.split_threads(u) > 1 else "")
                        for u, c in self.reserved.items())
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


def auto_unit_cores(n_units: int, n_cores: int) -> int:
    """Cores per critical unit: as many as the reservation rule allows, at most MAX_UNIT_CORES."""
    return max(1, min(MAX_UNIT_CORES, n_cores // ((CORES_PER_RESERVED + 1) * max(1, n_units))))


def plan_placement(units: list[str], cores: list[tuple[int, ...]], pool_cpus: int | None = None,
                   unit_cores: int | None = None) -> Placement | None:
    """`unit_cores` cores of its own for each critical unit (None: auto_unit_cores), while the others
    keep CORES_PER_RESERVED cores per reserved one; None when no core can be spared (the build is
    throughput-bound there). Whole cores: SMT siblings the host shows are reserved together.
    `pool_cpus` limits the CPUs the other compiles share (the lowest ones; the rest stay idle)."""
    unit_cores = max(1, unit_cores or auto_unit_cores(len(units), len(cores)))
    n = min(len(units), len(cores) // (unit_cores * (CORES_PER_RESERVED + 1)))
    if n == 0:
        return None
    # the last cores: CPU 0 takes most interrupts and housekeeping
    backwards = cores[::-1]
    reserved = [sorted(c for core in backwards[i * unit_cores:(i + 1) * unit_cores] for c in core) for i in range(n)]
    pool = [c for core in cores[:-n * unit_cores] for c in core]
    if pool_cpus:
        pool = pool[:max(1, pool_cpus)]
    return Placement(reserved={u: cpu_list(cpus) for u, cpus in zip(units, reserved, strict=False)}, pool=cpu_list(pool),
                     threads_per_core=max(len(c) for c in cores))


def host_placement(source_bytes: Mapping[str, int], known: Mapping[str, float] | None = None,
                   pool_cpus: int | None = None, unit_cores: int | None = None,
                   sysfs: Path = SYSFS_CPU) -> Placement | None:
    """plan_placement for the CPUs this process may run on."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return plan_placement(critical_units(source_bytes, known), physical_cores(allowed, sysfs), pool_cpus, unit_cores)
