"""Benchmark: a second `inv provision` with nothing changed (every step up to date). Prints JSON. Goal: < 2 s.

Usage: ./inv provision [FLAGS]  (once, until it succeeds), then
       .venv/bin/python bench/noop.py [FLAGS passed to inv provision, e.g. --profile host-torch]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    argv = [str(ROOT / ".venv" / "bin" / "invoke"), "provision", *sys.argv[1:]]
    # The first re-run is the figure: later ones would hide a stamp that changes between runs.
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    last = proc
    statuses = [line.split("]")[1].split(":")[0].strip() for line in last.stderr.splitlines()
                if line.startswith("[") and "]" in line and ":" in line]
    print(json.dumps({"args": sys.argv[1:], "second_provision_wall_s": round(seconds, 3),
                      "exit_code": last.returncode, "step_statuses": statuses,
                      "all_up_to_date": last.returncode == 0 and all(s in ("up-to-date", "skipped") for s in statuses),
                      "goal_s": 2.0}, indent=2))


if __name__ == "__main__":
    main()
