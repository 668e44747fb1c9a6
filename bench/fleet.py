"""Benchmark: `./inv fleet`'s Ansible path over 8 simulated hosts of 2 kinds (real sshd daemons on
127.0.0.11-18, tests/sshd.py; 4 hosts replay an H200 recording, 4 an A100-80GB one). Prints JSON.

The run is the one `./inv fleet` makes: ansible-playbook with the toolkit's playbook, SSH pipelining, facts
gathered once, one toolkit call per host (two on each kind's canary: build, then install). The wall time is
split into the toolkit's share (its calls on the hosts, as the vllmp_toolkit module timed them, along the
critical path: the slowest canary, then the slowest host of each later batch) and the engine's (everything
else: ansible-playbook's start, connections, facts, kinds, the upload, the report). The default toolkit
command is the quick tests' stand-in (no compile, tests/fixtures/fleet/inv-standin), so the toolkit's share is
small and the engine's is what is measured. On a loaded machine the wall time says little; the controller's CPU
seconds (ansible-playbook, its workers, its ssh clients) depend little on the load. `--forks 1` runs one host after
another; each run counts the wheel builds (the fleet must build exactly 2, one per kind).

Usage (as root, with OpenSSH's sshd installed): .venv/bin/python bench/fleet.py [--forks N] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from sshd import SshFarm, sshd_usable  # noqa: E402

from vllm_provision.core import config  # noqa: E402
from vllm_provision.fleet import engine  # noqa: E402
from vllm_provision.fleet.plays import new_run_dir  # noqa: E402


def one_run(farm: SshFarm, work: Path, forks: int, toolkit_command: str, n: int) -> dict:
    cache = farm.base / f"cache-forks{forks}-{n}"         # the simulated users reach it (a temp dir is 0700)
    cache.mkdir(mode=0o777)
    cache.chmod(0o1777)
    hosts_file = work / "hosts"
    hosts_file.write_text("\n".join(h.alias for h in farm.hosts) + "\n")
    reports = work / f"reports-forks{forks}-{n}"
    layer = {"fleet": {"ssh_config": str(farm.ssh_config), "known_hosts": str(farm.known_hosts),
                       "report_dir": str(reports), "forks": forks, "toolkit_command": toolkit_command}}
    settings = config.resolve(layer, environ={})
    hosts = engine.select_hosts(hosts_file=str(hosts_file), ansible_inventory=None, limit=None, rerun_failed=False,
                                root=reports)
    controller_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    data = engine.run(engine.FleetOptions(hosts=hosts, overrides=layer | {"caches": [f"dir:{cache}"]},
                                          run_dir=new_run_dir(reports), fleet=settings.fleet))
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    controller_cpu_s = after.ru_utime + after.ru_stime - controller_cpu.ru_utime - controller_cpu.ru_stime
    builds = (cache / "builds.log").read_text().splitlines() if (cache / "builds.log").exists() else []
    rows = {h["name"]: h for h in data["hosts"]}
    canaries = [h for h in data["hosts"] if h["role"] == "canary"]
    batches: dict[str, list[dict]] = {}
    for h in data["hosts"]:
        if h["role"] and h["role"].startswith("batch"):
            batches.setdefault(h["role"], []).append(h)
    critical = max((h["toolkit_seconds"] for h in canaries), default=0.0) + sum(
        max(h["toolkit_seconds"] for h in batch) for batch in batches.values())
    return {"forks": forks, "wall_s": round(wall, 2), "ok": data["ok"], "counts": data["counts"],
            "kinds": len(data["kinds"]), "builds": len(builds),
            "toolkit_s_critical_path": round(critical, 2), "engine_s": round(wall - critical, 2),
            "engine_s_per_host": round((wall - critical) / len(rows), 2),
            "toolkit_s_all_hosts": round(sum(h["toolkit_seconds"] for h in data["hosts"]), 2),
            # CPU time, which the machine's load changes little: ansible-playbook with its workers and ssh clients
            "cpu_s_controller": round(controller_cpu_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toolkit-command", help="default: the quick tests' stand-in")
    parser.add_argument("--forks", type=int, action="append", help="repeatable (default: 8, then 1)")
    parser.add_argument("--runs", type=int, default=1, help="runs per forks value")
    args = parser.parse_args()
    why = sshd_usable()
    if why:
        sys.exit(f"error: the benchmark {why}")
    farm = SshFarm()
    results = []
    try:
        for gpu in ("h200", "a100") * 4:
            farm.add(gpu)
        with tempfile.TemporaryDirectory(prefix="vllmp-bench-fleet-") as tmp:
            for forks in args.forks or [8, 1]:
                for n in range(args.runs):
                    results.append(one_run(farm, Path(tmp), forks, args.toolkit_command or str(farm.standin), n))
    finally:
        farm.stop()
    from ansible.release import __version__ as ansible_version
    print(json.dumps({"hosts": 8, "kinds": 2, "toolkit_command": args.toolkit_command or "inv-standin",
                      "engine": "ansible-playbook",
                      "ansible_core": ansible_version, "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
                      "platform": platform.platform(), "runs": results,
                      "builds_ok": all(r["builds"] == 2 for r in results)}, indent=2))


if __name__ == "__main__":
    main()
