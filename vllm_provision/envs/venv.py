"""venv backend: a stdlib venv from plan.env.python_path; packages from the lock through uv (or pip)."""

from __future__ import annotations

import os
from pathlib import Path

from vllm_provision.core import runner
from vllm_provision.core.errors import ConfigError
from vllm_provision.envs.common import bin_python
from vllm_provision.probes import host


def found_interpreters() -> list[str]:
    out = []
    for n in range(8, 16):
        path = host.find_interpreter(f"3.{n}")
        if path:
            out.append(f"3.{n} ({path})")
    return out


def interpreter(plan) -> str:
    path = plan.env.python_path
    if not path:
        found = found_interpreters()
        raise ConfigError(f"no Python {plan.env.python} interpreter for the venv backend ({plan.env.note or 'not found'}); "
                          f"found: {', '.join(found) or 'none'}",
                          hint="install that Python (e.g. pyenv install) or set env.python / env.python_path to one found")
    if os.sep in path and not Path(path).exists():
        raise ConfigError(f"env.python_path {path} does not exist; found: {', '.join(found_interpreters()) or 'none'}",
                          hint="point env.python_path at an existing interpreter")
    return path


def create(ctx, prefix: Path) -> Path:
    python = interpreter(ctx.plan)
    ctx.say(f"creating a venv with {python} at {prefix}")
    runner.run([python, "-m", "venv", str(prefix)], log=ctx.log, timeout=300, what="python -m venv",
               diagnose=lambda out, rc: "the interpreter lacks the venv module (apt install python3-venv)"
               if "ensurepip" in out or "venv" in out else None)
    return bin_python(prefix)
