"""Benchmark: a cached re-fetch and `inv plan` (toolkit time). Prints JSON. Goal: each well under 1 s.

Usage: .venv/bin/python bench/fetch.py [--release 0.2.2] [--repeat 5]
The first fetch (if the cache is cold) is excluded; it needs network once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vllm_provision import pipeline  # noqa: E402
from vllm_provision.plan import build_plan  # noqa: E402
from vllm_provision.probes import host  # noqa: E402


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--release", default="0.2.2")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    # A throwaway workspace: a forced re-fetch re-extracts src/, which must not touch a real build.
    os.environ["VLLMP_WORKSPACE_ROOT"] = tempfile.mkdtemp(prefix="vllmp-bench-")
    cli = {"release": args.release}
    plan = build_plan(cli)
    facts = host.probe()
    pipeline.run_steps(plan, facts, ["fetch"])                          # warm the cache (may download once)
    refetch = timed(lambda: pipeline.run_steps(build_plan(cli), facts, ["fetch"]), args.repeat)
    refetch_forced = timed(lambda: pipeline.run_steps(build_plan(cli), facts, ["fetch"], force=["fetch"]), args.repeat)
    plan_lib = timed(lambda: build_plan(cli).to_dict(), args.repeat)
    inv = [str(ROOT / ".venv" / "bin" / "invoke")]
    plan_cli = timed(lambda: subprocess.run([*inv, "plan", "--json", "--release", args.release], cwd=ROOT,
                                            capture_output=True, check=True), args.repeat)
    fetch_cli = timed(lambda: subprocess.run([*inv, "fetch", "--release", args.release], cwd=ROOT,
                                             capture_output=True, check=True), args.repeat)
    med = statistics.median
    print(json.dumps({
        "release": args.release, "repeat": args.repeat,
        "cached_refetch_s": round(med(refetch), 4),
        "cached_refetch_forced_reextract_s": round(med(refetch_forced), 4),
        "plan_s": round(med(plan_lib), 4),
        "inv_plan_wall_s": round(med(plan_cli), 3),
        "inv_fetch_cached_wall_s": round(med(fetch_cli), 3),
        "goal": "cached re-fetch and plan well under 1 s of toolkit time",
        "ok": med(refetch) < 1 and med(plan_lib) < 1,
    }, indent=2))


if __name__ == "__main__":
    main()
