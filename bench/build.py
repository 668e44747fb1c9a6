#!/usr/bin/env python3
"""Build benchmark for a GPU host; prints JSON (no assertions).

Same sources, same arch, same env, side by side:
  plain  - the blog's `pip install -e .` (serial setuptools build, no compiler cache)
  cold     - the toolkit's build step (extensions in parallel, each in its own build-temp, the slowest
             units on cores of their own) on an empty ccache
  cold-off - the same with build.cpu_placement off (every compile anywhere), for comparison
  cold-poolN - the same with the other compiles sharing N CPUs (build.cpu_pool)
  cold-coresN - the same with N cores for the slowest unit (build.critical_unit_cores; nvcc -split-compile N)
  warm     - the toolkit's build step again from clean build dirs, on the ccache the cold run filled
  floor    - the slowest single translation unit (attention_kernels.cu) compiled alone on the idle host
             as the release's own build compiles it (one nvcc, unsplit): its extension built by itself
             without cache; the unit's time comes from ninja's log
  floor-build - the same unit alone as the toolkit's cold build compiles it (its reserved CPUs,
             nvcc -split-compile over them): the build's own critical path on an idle host
  floor-coresN - the same on the last N CPUs with nvcc -split-compile N (as cold-coresN places it)

Works on an existing workspace (after `inv fetch env patch`): pass --workspace <.provision/0.2.2-host-torch>.
Each phase can run alone (--phases plain,cold) so a run fits in the device's 10-minute limit;
results are merged into --out (JSON) across calls.

    python bench/build.py --workspace .provision/0.2.2-host-torch --arch 9.0 --phases plain
    python bench/build.py --workspace .provision/0.2.2-host-torch --arch 9.0 --phases cold,warm,floor
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vllm_provision.build import DRIVER, find_ccache, make_build_env, ninja_unit_times  # noqa: E402
from vllm_provision.build.placement import Placement, cpu_list, host_placement, physical_cores  # noqa: E402
from vllm_provision.core import envinfo, runner  # noqa: E402
from vllm_provision.core.errors import StepFailed  # noqa: E402
from vllm_provision.core.workspace import Workspace  # noqa: E402
from vllm_provision.pipeline import run_steps  # noqa: E402
from vllm_provision.plan import build_plan  # noqa: E402
from vllm_provision.probes import host  # noqa: E402
from vllm_provision.steps.build import cuda_sources_named  # noqa: E402


def _clean(src: Path) -> None:
    shutil.rmtree(src / "build", ignore_errors=True)
    for so in (src / "vllm").glob("*.so"):
        so.unlink()


def plain(ws: Workspace, info, arch: str, log: Path, limit: float) -> dict:
    """`pip install -e .` as the blog does (with --no-build-isolation so it keeps the env's torch).
    Stopped after `limit` seconds (the device's per-call limit): then only a lower bound is known."""
    _clean(ws.src)
    benv = make_build_env(base=os.environ, python=info.python, cuda_home=info.cuda_home,
                          include_dirs=info.include_dirs, arch_list=arch, jobs_per_ext=os.cpu_count() or 1,
                          tools_dir=Path(tempfile.mkdtemp()), src=ws.src, ccache_dir=Path(tempfile.mkdtemp()),
                          use_ccache=False)
    t0 = time.monotonic()
    try:
        runner.run([info.python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", str(ws.src)],
                   env=benv.env, cwd=ws.src, log=log, timeout=limit, what="plain pip install -e")
    except StepFailed as exc:
        if "timed out" not in str(exc):
            raise
        return {"seconds": None, "more_than": round(time.monotonic() - t0, 1), "stopped": str(exc)}
    return {"seconds": round(time.monotonic() - t0, 1)}


def toolkit(cli: dict, ccache_dir: Path, fresh: bool, placement: str = "auto", pool: int | None = None,
            unit_cores: int | None = None) -> dict:
    cli = dict(cli, build=dict(cli["build"], cpu_placement=placement, cpu_pool=pool, critical_unit_cores=unit_cores))
    if fresh:
        shutil.rmtree(ccache_dir, ignore_errors=True)
    os.environ["CCACHE_DIR"] = str(ccache_dir)
    plan = build_plan(cli)
    # Both start from sources without build outputs (as after a re-fetch): cold with an empty
    # compiler cache, warm with the cache the cold run filled.
    _clean(plan.workspace.src)
    facts = host.probe(str(plan.workspace.root.parent))
    t0 = time.monotonic()
    [r] = run_steps(plan, facts, ["build"], force=["build"])
    out = {"seconds": round(time.monotonic() - t0, 1), "status": r.status, "detail": r.detail}
    for k in ("compile_seconds", "startup_seconds", "pip_seconds", "per_extension", "units", "cpu_placement",
              "ccache", "max_jobs", "parallel"):
        out[k] = r.facts.get(k)
    if r.status != "ok":
        out["hint"] = r.hint
    return out


def floor(ws: Workspace, info, arch: str, log: Path, ext: str, unit: str, placement: Placement | None = None) -> dict:
    """The slowest unit alone: its extension built by itself on the idle host, no cache; placed (its
    reserved CPUs, nvcc -split-compile) as the build with that placement compiles it, else anywhere.
    The unit's own compile time from ninja's log."""
    benv = make_build_env(base=os.environ, python=info.python, cuda_home=info.cuda_home,
                          include_dirs=info.include_dirs, arch_list=arch, jobs_per_ext=2,
                          tools_dir=Path(tempfile.mkdtemp()), src=ws.src, ccache_dir=Path(tempfile.mkdtemp()),
                          use_ccache=False, placement=placement)
    temp = ws.src / "build" / f"bench-floor-{int(time.time())}"
    spec = Path(tempfile.mkdtemp()) / "spec.json"
    spec.write_text(json.dumps({"temp_root": str(temp), "logs_dir": str(spec.parent), "jobs": 2, "only": [ext]}))
    t0 = time.monotonic()
    runner.run([info.python, str(DRIVER), "build", str(spec)], env=benv.env, cwd=ws.src, log=log, timeout=7200,
               what=f"compile {ext} alone")
    ext_seconds = time.monotonic() - t0
    temp = temp / f"temp-{ext}"
    units = ninja_unit_times(temp, ws.src)
    shutil.rmtree(temp.parent, ignore_errors=True)
    mine = next((u["seconds"] for u in units if u["unit"] == unit), None)
    return {"unit": unit, "seconds": mine, "extension": ext, "extension_seconds": round(ext_seconds, 1),
            "units": units, "placement": benv.placement.describe() if benv.placement else None}


def topology() -> dict:
    cpus = sorted(os.sched_getaffinity(0))
    cores = physical_cores(cpus)
    lscpu = runner.capture(["lscpu"])
    return {"cpus": len(cpus), "cores": len(cores), "threads_per_core": max(len(c) for c in cores),
            "lscpu": lscpu.output.splitlines()[:25] if lscpu and lscpu.returncode == 0 else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", required=True, help="an existing workspace dir (<root>/<release>-<profile>)")
    ap.add_argument("--arch", default="9.0")
    ap.add_argument("--max-jobs", type=int, default=None)
    ap.add_argument("--plain-limit", type=float, default=7200, help="stop the plain build after this many seconds")
    ap.add_argument("--phases", default="plain,cold,warm,floor")
    ap.add_argument("--extension", default="vllm.attention_ops", help="extension holding the slowest unit")
    ap.add_argument("--unit", default="csrc/attention/attention_kernels.cu", help="the slowest unit")
    ap.add_argument("--ccache-dir", default=None, help="default: <workspace>/bench-ccache")
    ap.add_argument("--out", default=None, help="merge results into this JSON file")
    args = ap.parse_args()
    ws_dir = Path(args.workspace).resolve()
    release, _, profile = ws_dir.name.partition("-")
    cli = {"workspace_root": str(ws_dir.parent), "release": release, "profile": profile,
           "build": {"arch_list": args.arch, **({"max_jobs": args.max_jobs} if args.max_jobs else {})}}
    plan = build_plan(cli)
    ws = plan.workspace
    info = envinfo.load(ws)
    ccache_dir = Path(args.ccache_dir or ws.root / "bench-ccache")
    out_path = Path(args.out) if args.out else None
    result = json.loads(out_path.read_text()) if out_path and out_path.is_file() else {}
    result.update({"workspace": str(ws.root), "arch": args.arch, "cpus": os.cpu_count(), "torch": info.torch,
                   "nvcc": info.nvcc_version, "ccache": find_ccache(os.environ.get("PATH", "")), "host": topology()})
    log = ws.logs / "bench-build.log"
    for phase in [p.strip() for p in args.phases.split(",") if p.strip()]:
        if phase == "plain":
            result["plain"] = plain(ws, info, plan.build.torch_cuda_arch_list, log, args.plain_limit)
        elif phase == "cold":
            result["cold"] = toolkit(cli, ccache_dir, fresh=True)
        elif phase == "cold-off":
            result["cold-off"] = toolkit(cli, ccache_dir, fresh=True, placement="off")
        elif re.fullmatch(r"cold-pool\d+", phase):   # the other compiles on fewer CPUs
            result[phase] = toolkit(cli, ccache_dir, fresh=True, pool=int(phase.removeprefix("cold-pool")))
        elif re.fullmatch(r"cold-cores\d+", phase):   # the slowest unit on N cores, nvcc split over them
            result[phase] = toolkit(cli, ccache_dir, fresh=True, unit_cores=int(phase.removeprefix("cold-cores")))
        elif re.fullmatch(r"floor-cores\d+", phase):
            # the last N CPUs, as plan_placement reserves them (here even where the build would not)
            cpus = sorted(os.sched_getaffinity(0))
            n = min(len(cpus), int(phase.removeprefix("floor-cores")))
            placement = Placement(reserved={args.unit: cpu_list(cpus[-n:])}, pool=cpu_list(cpus[:-n] or cpus),
                                  threads_per_core=1)
            result[phase] = floor(ws, info, plan.build.torch_cuda_arch_list, log, args.extension, args.unit, placement)
        elif phase == "warm":
            result["warm"] = toolkit(cli, ccache_dir, fresh=False)
        elif phase == "floor":
            result["floor"] = floor(ws, info, plan.build.torch_cuda_arch_list, log, args.extension, args.unit)
        elif phase == "floor-build":
            placement = host_placement(cuda_sources_named((ws.src / "setup.py").read_text(), ws.src),
                                       plan.release.slowest_units, unit_cores=plan.build.critical_unit_cores)
            result[phase] = floor(ws, info, plan.build.torch_cuda_arch_list, log, args.extension, args.unit,
                                  placement)
        else:
            ap.error(f"unknown phase {phase}")
        if out_path:
            out_path.write_text(json.dumps(result, indent=2))
    p, c, o, w, f = (result.get(k, {}).get("seconds") for k in ("plain", "cold", "cold-off", "warm", "floor"))
    ratio = lambda a, b: round(a / b, 3) if a and b else None  # noqa: E731
    more_than = result.get("plain", {}).get("more_than")
    result["ratios"] = {"cold_over_plain": ratio(c, p) if p else (f"< {ratio(c, more_than)}" if c and more_than else None),
                        "cold_over_floor": ratio(c, f),
                        "cold_off_over_floor": ratio(o, f), "warm_seconds": w,
                        "cold_over_floor_build": ratio(c, result.get("floor-build", {}).get("seconds"))}
    if out_path:
        out_path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
