"""Benchmark: `inv doctor` wall time against loopback mirrors (goal < 5 s on a ready host).

Starts real HTTP servers on 127.0.0.1: a PEP 503 index that answers at once ("up"), one that answers
after 10 s ("slow"), and a closed port ("down"); runs the doctor library function with all three
configured (index + extra indexes + a conda channel), then the CLI `invoke doctor --json` once.
Prints JSON. Usage: .venv/bin/python bench/doctor.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# The test suite's real loopback servers and index pages, so the bench and the tests agree.
from conftest import FaultServer, Route, holding_a_refused_port  # noqa: E402
from test_doctor import serve_index  # noqa: E402

GOAL_S = 5.0
REPODATA = json.dumps({"packages": {"python-3.10.12-0.tar.bz2": {"name": "python"}}}).encode()


def serve(delay: float) -> tuple[FaultServer, str]:
    """A PEP 503 index (torch, vllm, xformers) and a conda channel answering after `delay` seconds."""
    server = FaultServer()
    server.thread.start()
    index = serve_index(server, delay=delay)
    for subdir in ("linux-64", "noarch"):
        server.add(f"/chan/{subdir}/repodata.json", Route(REPODATA, content_type="application/json", delay=delay))
    return server, index.removesuffix("/simple")


def main() -> None:
    with holding_a_refused_port() as down_port:
        measure(down_url=f"http://127.0.0.1:{down_port}")


def measure(down_url: str) -> None:
    up, up_url = serve(0.0)
    slow, slow_url = serve(10.0)
    tmp = tempfile.mkdtemp(prefix="bench-doctor-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLMP_")}
    env.update({"VLLMP_CACHE_DIR": f"{tmp}/cache", "VLLMP_WORKSPACE_ROOT": f"{tmp}/ws",
                "VLLMP_PYPI__INDEX_URL": up_url + "/simple",
                "VLLMP_PYPI__EXTRA_INDEX_URLS": json.dumps([slow_url + "/simple", down_url + "/simple"]),
                "VLLMP_CONDA__CHANNELS": json.dumps([up_url + "/chan"]), "VLLMP_FETCH__GITHUB": "false"})
    os.environ.update(env)
    from vllm_provision.diagnostics import doctor
    from vllm_provision.plan import build_plan
    from vllm_provision.probes import host
    started = time.monotonic()
    facts = host.probe(env["VLLMP_WORKSPACE_ROOT"])
    ready_env = {k: v for k, v in env.items() if k != "VLLMP_PYPI__EXTRA_INDEX_URLS"}
    plan = build_plan({"build": {"arch_list": "9.0"}}, environ=ready_env, facts=facts)
    ready = doctor.run_doctor(plan, facts)
    ready_s = time.monotonic() - started
    started = time.monotonic()
    plan = build_plan({"build": {"arch_list": "9.0"}}, environ=env, facts=facts)
    checks = doctor.run_doctor(plan, facts)
    library_s = time.monotonic() - started
    started = time.monotonic()
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "invoke"), "doctor", "--json", "--arch", "9.0"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    cli_s = time.monotonic() - started
    cli = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    print(json.dumps({
        "goal_s": GOAL_S,
        "ready_host_wall_s": round(ready_s, 2),
        "ready_checks": {c.name: c.status for c in ready},
        "library_wall_s_with_slow_and_down_mirrors": round(library_s, 2),
        "cli_wall_s": round(cli_s, 2),
        "within_goal": max(cli_s, library_s, ready_s) < GOAL_S,
        "mirrors": {"up": up_url, "slow (10 s)": slow_url, "down (closed port)": down_url},
        "timeout_s": doctor.DEFAULT_TIMEOUT,
        "cli_exit": done.returncode,
        "checks": {c.name: c.status for c in checks},
        "cli_checks": {c["name"]: c["status"] for c in cli.get("checks", [])},
    }, indent=2))
    for server in (up, slow):
        server.httpd.shutdown()


if __name__ == "__main__":
    main()
