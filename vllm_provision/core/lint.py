"""`./inv lint`, and the first thing `./inv test` does: ruff (lint and import order) over the repository, then mypy
over the package and tasks.py. Both read their settings from pyproject.toml; each prints its own findings."""

from __future__ import annotations

import subprocess
import sys
import time

from vllm_provision import PROJECT_ROOT
from vllm_provision.core import ui

# (name, argv after `python -m`): what each checks is in pyproject.toml ([tool.ruff], [tool.mypy] files)
TOOLS: list[tuple[str, list[str]]] = [
    ("ruff", ["ruff", "check", "--no-fix", "."]),
    ("mypy", ["mypy"]),
]


def run() -> int:
    """Run ruff, then mypy, each with its own output; 0 when both pass, else the first failing tool's exit code.
    mypy runs even after ruff failed, so one run shows every finding."""
    failed: list[tuple[str, int]] = []
    for name, argv in TOOLS:
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", *argv], cwd=PROJECT_ROOT)
        if code:
            failed.append((name, code))
        else:
            ui.info(f"lint: {name} passed ({time.monotonic() - started:.1f} s)")
    if failed:
        ui.error(f"lint: {' and '.join(name for name, _ in failed)} found problems (above)",
                 "`.venv/bin/ruff check --fix .` fixes the mechanical ones (import order, unused imports); "
                 "docs/contributing.md has the rules")
        return failed[0][1]
    return 0
