"""Benchmark: a fresh clone's first `./inv doctor`, online (goal: well under a minute on a 2-core host).

Clones this repository's HEAD into a temporary directory, runs `./inv doctor` there (the bootstrap of .venv
from the package index, then doctor itself) and prints JSON: the wall time of the whole command, the
bootstrap's share (its own `bootstrap: done in N s` line), doctor's exit code (no GPU here is a failed check,
not a failed run), and the size and package count of the venv it made. pip's cache is used as the host has
it; `--cold` gives pip an empty cache (every wheel downloaded); `--ref REF` measures another commit (for a
before/after). Usage:
    .venv/bin/python bench/first_run.py [--cold] [--ref REF]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 60.0


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def main() -> None:
    args = sys.argv[1:]
    cold = "--cold" in args
    ref = args[args.index("--ref") + 1] if "--ref" in args else None
    with tempfile.TemporaryDirectory(prefix="bench-first-run-") as tmp:
        clone = Path(tmp) / "vllm-provision"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        if ref:
            subprocess.run(["git", "-C", str(clone), "checkout", "-q", ref], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VLLMP_")}
        env.update({"VLLMP_WORKSPACE_ROOT": f"{tmp}/ws", "VLLMP_CACHE_DIR": f"{tmp}/cache", "CI": "true"})
        if cold:
            env["PIP_CACHE_DIR"] = f"{tmp}/pip-cache"
        started = time.monotonic()
        done = subprocess.run(["./inv", "doctor"], cwd=clone, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - started
        bootstrap = re.search(r"bootstrap: done in (\d+) s", done.stderr)
        load = os.getloadavg()[0]
        venv = clone / ".venv"
        site = next(venv.glob("lib/python*/site-packages"), venv)
        result = {
            "bench": "first ./inv doctor from a fresh clone, online",
            "commit": subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
            "pip_cache": "empty" if cold else "the host's",
            "seconds": round(seconds, 1),
            "bootstrap_seconds": int(bootstrap.group(1)) if bootstrap else None,
            "doctor_exit_code": done.returncode,
            "venv_mib": round(tree_bytes(venv) / 2 ** 20, 1),
            "packages": len(list(site.glob("*.dist-info"))),
            "test_extra_installed": (site / "pytest").is_dir(),
            "load_average_1min": round(load, 1),
            "goal_s": GOAL_S,
            "ok": seconds < GOAL_S and done.returncode in (0, 1),
        }
        if bootstrap is None:
            result["stderr_tail"] = done.stderr[-2000:]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
