"""existing backend: reuse an interpreter that already holds torch (NGC/CI images).

A `--system-site-packages` venv over it: everything installed there stays as it is (nothing is
installed, upgraded or removed in it); only what later steps install goes into the venv.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vllm_provision.core import runner
from vllm_provision.core.errors import ConfigError, StepFailed
from vllm_provision.envs.common import bin_python
from vllm_provision.probes import envprobe


def interpreter(plan) -> str:
    want = plan.env.python_path or "python3"
    path = want if os.sep in want else shutil.which(want)
    if not path or not Path(path).exists():
        raise ConfigError(f"existing backend: interpreter {want!r} not found",
                          hint="set env.python_path to the interpreter that holds torch, e.g. /usr/bin/python3")
    return path


def create(ctx, prefix: Path) -> Path:
    python = interpreter(ctx.plan)
    ctx.say(f"creating a --system-site-packages venv over {python} at {prefix} (its packages are left untouched)")
    runner.run([python, "-m", "venv", "--system-site-packages", str(prefix)], log=ctx.log, timeout=300,
               what="python -m venv --system-site-packages")
    _see_source_venv(ctx, python, prefix)
    return bin_python(prefix)


def _python_info(python: str) -> dict:
    info = envprobe.python_info(python)
    if info is None:
        raise StepFailed(f"{python} gave no answer to the interpreter probe", hint="run it by hand: is it a working Python?")
    return info


def _see_source_venv(ctx, python: str, prefix: Path) -> None:
    """`venv --system-site-packages` over a python that is itself a venv sees only the base interpreter's
    packages; a .pth file adds the source venv's site-packages (read-only use, nothing installed there)."""
    src = _python_info(python)
    if not src["is_venv"]:
        return
    dst = _python_info(str(bin_python(prefix)))
    (Path(dst["sites"][0]) / "_vllmp_existing.pth").write_text("\n".join(src["sites"]) + "\n")
    ctx.say(f"{python} is a venv: its site-packages are visible through _vllmp_existing.pth")
