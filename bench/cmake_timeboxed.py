#!/usr/bin/env python3
"""A time-boxed CMake-era build through the toolkit's driver: configure offline, compile for at most
--time-limit seconds, print JSON (configure time, units done/total, units a minute, the projected total,
peak memory in all and per job, ccache). For a GPU host whose machine time is limited; no assertions.

    python bench/cmake_timeboxed.py --src vllm-0.26.0 --python python3 --time-limit 420 \
        --external VLLM_CUTLASS_SRC_DIR=trees/cutlass-da5e086dab31 ... [--max-jobs 16] [--targets _C,...]

The host's plan (jobs x nvcc threads from free RAM and cores) is printed beside what ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vllm_provision import GIB, catalog
from vllm_provision.build import cmake as driver  # noqa: E402
from vllm_provision.core import config  # noqa: E402
from vllm_provision.core.workspace import Workspace  # noqa: E402
from vllm_provision.plan import Plan, plan_build  # noqa: E402
from vllm_provision.probes import host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="0.26.0")
    parser.add_argument("--src", type=Path, required=True, help="the release's unpacked sdist")
    parser.add_argument("--python", default=sys.executable, help="the env's python (its torch is built against)")
    parser.add_argument("--external", action="append", default=[], help="OVERRIDE=DIR, one per external")
    parser.add_argument("--time-limit", type=float, default=None)
    parser.add_argument("--targets", default="", help="comma-separated CMake targets (default: setup.py's)")
    parser.add_argument("--arch", default="9.0")
    parser.add_argument("--max-jobs", type=int, default=None, help="default: the plan's")
    parser.add_argument("--offline", action="store_true", help="configure and build in a network namespace")
    parser.add_argument("--build-dir", type=Path, default=None)
    parser.add_argument("--cmake-arg", action="append", default=[])
    parser.add_argument("--include-dir", action="append", default=[], help="CUDA library headers (pip wheels)")
    args = parser.parse_args(argv)

    release = catalog.get_release(args.release)
    facts = host.probe()
    settings = config.resolve({"release": args.release, "build": {"arch_list": [args.arch]}}, environ={})
    planned = plan_build(release, settings.build, facts, "13.0")
    build = dataclasses.replace(planned, max_jobs=args.max_jobs) if args.max_jobs else planned
    work = (args.build_dir or args.src / "build").parent
    plan = Plan(release=release, profile="bench", offline=args.offline,
                workspace=Workspace(root=work / "ws", cache=work / "cache"), sources=(), env=None, patches=(),
                build=build, smoke=settings.smoke, settings=settings)
    externals = dict(e.split("=", 1) for e in args.external)
    nvcc = shutil.which("nvcc")
    started = time.monotonic()
    built = driver.drive(plan, args.src.resolve(), args.python, {k: Path(v) for k, v in externals.items()},
                         [t for t in args.targets.split(",") if t] or None, args.time_limit,
                         build_dir=args.build_dir, cuda_home=str(Path(nvcc).resolve().parent.parent) if nvcc else None,
                         ccache_dir=work / "ccache", heartbeat_s=30, live=False, extra_cmake_args=args.cmake_arg,
                         include_dirs=args.include_dir)
    out = built.to_dict() | {
        "wall_seconds": round(time.monotonic() - started, 1),
        "host": {"cpus": facts.cpu_count, "mem_available_gib": round(facts.mem_available_bytes / GIB, 1),
                 "platform": platform.platform()},
        "plan": {"jobs": planned.max_jobs, "nvcc_threads": planned.nvcc_threads, "why": planned.max_jobs_reason,
                 "expected_seconds": planned.expected_seconds},
        "job_peak_gib": round((built.job_peak_memory_bytes or 0) / GIB, 2),
        "peak_gib": round((built.peak_memory_bytes or 0) / GIB, 2),
        "slowest_units": list(built.unit_times)[:10]}
    out.pop("unit_times", None)
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("CI", "true")      # progress as heartbeat lines, not a live line
    sys.exit(main())
