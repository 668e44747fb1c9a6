#!/usr/bin/env python3
"""Build once, install many: install-from-cache time and install+verify time against the cold build, on one
host, from the reports of two workspaces; prints JSON (no assertions).

  builder    a workspace whose build step compiled (cold: empty ccache) and made the wheel (`./inv wheel --push`)
  installer  a fresh workspace of the same host that ran `./inv provision --require-cache`

    python bench/artifacts.py --builder .provision-artifacts/builder/0.2.2-host-torch \
        --installer .provision-artifacts/installer/0.2.2-host-torch [--wall wheel=123.4 ...]

gpu/artifact-check.sh makes both workspaces and runs this. The goal: install + verify <= 10 % of the cold build.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path


def steps_of(workspace: Path) -> dict:
    return json.loads((workspace / "report.json").read_text())["steps"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builder", type=Path, required=True)
    parser.add_argument("--installer", type=Path, required=True)
    parser.add_argument("--wall", action="append", default=[], help="NAME=SECONDS measured by the caller")
    args = parser.parse_args(argv)
    built, installed = steps_of(args.builder), steps_of(args.installer)
    build, from_cache, verify = built["build"], installed["build"], installed.get("verify", {})
    if build.get("facts", {}).get("source") != "compiled" or from_cache.get("facts", {}).get("source") != "cache":
        print(json.dumps({"error": "the builder must have compiled and the installer installed from a cache",
                          "builder_source": build.get("facts", {}).get("source"),
                          "installer_source": from_cache.get("facts", {}).get("source")}))
        return 1
    cold = build["facts"].get("seconds") or build["seconds"]
    install_s = from_cache["seconds"]
    verify_s = verify.get("seconds", 0.0)
    out = {
        "host": {"machine": platform.machine(), "node": platform.node()},
        "key": from_cache["facts"]["key"], "wheel": from_cache["facts"]["file"],
        "cold_build_s": round(cold, 1),
        "compile_s": build["facts"].get("compile_seconds"),
        "install_from_cache_s": round(install_s, 1),
        "verify_s": round(verify_s, 1), "verify_status": verify.get("status"),
        "install_plus_verify_s": round(install_s + verify_s, 1),
        "install_plus_verify_vs_cold": round((install_s + verify_s) / cold, 3) if cold else None,
        "installer_steps_s": {name: round(step["seconds"], 1) for name, step in installed.items()},
        "wall_s": {k: round(float(v), 1) for k, v in (w.split("=", 1) for w in args.wall)},
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
