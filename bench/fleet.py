"""Benchmark: a fleet run over 8 simulated hosts of 2 kinds (real sshd daemons on 127.0.0.11-18, tests/sshd.py;
4 hosts replay an H200 recording, 4 an A100-80GB one) against the same hosts one after another. Prints JSON.

Both runs go through the fleet engine: `forks 8` (the fleet) and `forks 1` (one host after another, what a loop
over `ssh host ./inv ...` does at best). Each counts the wheel builds; the fleet must build exactly 2 (one per
kind). The default toolkit command is the quick tests' stand-in (no compile, tests/fixtures/fleet/inv-standin),
so the figures are the fleet's own cost: connections, facts, upload, batches, reports. With
`--toolkit-command ./inv` the hosts run the real toolkit (minutes; needs a package index).

Usage (as root, with OpenSSH's sshd installed): .venv/bin/python bench/fleet.py [--toolkit-command CMD]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from sshd import SshFarm, sshd_usable  # noqa: E402

from vllm_provision import config  # noqa: E402
from vllm_provision.fleet.run import FleetOptions, FleetRun, new_run_dir, select_hosts  # noqa: E402


def one_run(farm: SshFarm, work: Path, forks: int, toolkit_command: str) -> dict:
    cache = farm.base / f"cache-forks{forks}"         # the simulated users reach it (a temp dir is 0700)
    cache.mkdir(mode=0o777)
    cache.chmod(0o1777)
    hosts_file = work / "hosts"
    hosts_file.write_text("\n".join(h.alias for h in farm.hosts) + "\n")
    reports = work / f"reports-forks{forks}"
    settings = config.resolve({"fleet": {"ssh_config": str(farm.ssh_config), "known_hosts": str(farm.known_hosts),
                                         "report_dir": str(reports), "forks": forks,
                                         "toolkit_command": toolkit_command}}, environ={})
    hosts = select_hosts(hosts_file=str(hosts_file), ansible_inventory=None, limit=None, rerun_failed=False,
                         root=reports)
    started = time.perf_counter()
    data = FleetRun(FleetOptions(hosts=hosts, settings=settings, run_dir=new_run_dir(reports),
                                 caches=[f"dir:{cache}"])).run()
    seconds = time.perf_counter() - started
    builds = (cache / "builds.log").read_text().splitlines() if (cache / "builds.log").exists() else []
    return {"forks": forks, "wall_s": round(seconds, 2), "ok": data["ok"], "counts": data["counts"],
            "kinds": len(data["kinds"]), "builds": len(builds) if builds else sum(bool(k.get("built_on"))
                                                                                 for k in data["kinds"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toolkit-command", default="tests/fixtures/fleet/inv-standin")
    args = parser.parse_args()
    why = sshd_usable()
    if why:
        sys.exit(f"error: the benchmark {why}")
    farm = SshFarm()
    try:
        for gpu in ("h200", "a100") * 4:
            farm.add(gpu)
        with tempfile.TemporaryDirectory(prefix="vllmp-bench-fleet-") as tmp:
            fleet = one_run(farm, Path(tmp), 8, args.toolkit_command)
            serial = one_run(farm, Path(tmp), 1, args.toolkit_command)
    finally:
        farm.stop()
    print(json.dumps({"hosts": 8, "kinds": 2, "toolkit_command": args.toolkit_command, "fleet": fleet,
                      "one_after_another": serial,
                      "speedup": round(serial["wall_s"] / fleet["wall_s"], 2) if fleet["wall_s"] else None,
                      "builds_ok": fleet["builds"] == 2}, indent=2))


if __name__ == "__main__":
    main()
