"""The probe layer: facts about the host (GPUs, driver, CPUs, RAM, compilers) and about a Python env,
each asked once and reported as seen; the checks layer judges them."""

from __future__ import annotations

import json
from pathlib import Path

PROGRAMS = Path(__file__).with_name("programs")


def program(name: str) -> str:
    """The path of a probe program (probes/programs/<name>.py), to run with a target env's interpreter."""
    return str(PROGRAMS / f"{name}.py")


def answer(output: str) -> dict | None:
    """A probe program's answer: the last line of its output that is a JSON object; None when there is none."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return None
