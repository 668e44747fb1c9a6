#!/usr/bin/env python3
"""Which CPUs slow a given CPU down: a probe for SMT siblings a VM does not show. Prints JSON.

A spin loop pinned to TARGET counts iterations for a fixed time, alone and then next to the same loop
on each other CPU. A hidden SMT sibling shows as a much lower ratio than the rest; a host-wide
effect (shared frequency or cache) lowers every ratio alike. The build's CPU placement reserves
whole cores as sysfs shows them (vllm_provision/build/placement.py); this tells whether a VM hides
siblings that it should also keep free. On the H100 VMs it found none (noise only).

    python bench/cpu_pairs.py [--target 15] [--seconds 0.3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time


def _spin(cpu: int, seconds: float, start: mp.Event, out: mp.Queue) -> None:
    os.sched_setaffinity(0, {cpu})
    start.wait()
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    out.put((cpu, n))


def run_together(cpus: list[int], seconds: float) -> dict[int, int]:
    start, out = mp.Event(), mp.Queue()
    procs = [mp.Process(target=_spin, args=(c, seconds, start, out)) for c in cpus]
    for p in procs:
        p.start()
    time.sleep(0.05)   # every worker pinned and waiting
    start.set()
    counts = dict(out.get() for _ in procs)
    for p in procs:
        p.join()
    return counts


def main() -> int:
    cpus = sorted(os.sched_getaffinity(0))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=int, default=cpus[-1])
    ap.add_argument("--seconds", type=float, default=0.3)
    args = ap.parse_args()
    if len(cpus) < 2 or args.target not in cpus:
        print(json.dumps({"error": f"needs two CPUs including {args.target}; have {cpus}"}))
        return 2
    alone = max(run_together([args.target], args.seconds)[args.target] for _ in range(3))
    ratios = {}
    for other in (c for c in cpus if c != args.target):
        ratios[other] = round(max(run_together([args.target, other], args.seconds)[args.target]
                                  for _ in range(2)) / alone, 3)
    median = statistics.median(ratios.values())
    print(json.dumps({"target": args.target, "alone_iterations": alone, "median_ratio": median,
                      "likely_siblings": sorted(c for c, r in ratios.items() if r < 0.85 * median),
                      "ratio_with": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
