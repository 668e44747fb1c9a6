"""A directory of wheels from which `./inv` bootstraps the toolkit with no package index."""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import Requirement

from vllm_provision import PROJECT_ROOT, tomllib
from vllm_provision.core import runner
from vllm_provision.core.errors import ConfigError

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
BOOTSTRAP = ("setuptools>=68", "wheel")   # the wrapper installs the toolkit with --no-build-isolation


def requirements(extras: list[str], root: Path = PROJECT_ROOT) -> list[str]:
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ConfigError(f"unknown extra {extra!r}", hint=f"extras: {', '.join(optional)}")
        reqs += optional[extra]
    return [*BOOTSTRAP, *reqs]


def build(out: Path, python_version: str, extras: list[str], log: Path | None = None) -> list[Path]:
    """Download every wheel the toolkit needs on a Linux x86_64 host running `python_version`."""
    if not python_version.count(".") == 1 or not all(p.isdigit() for p in python_version.split(".")):
        raise ConfigError(f"--python-version must look like 3.12, not {python_version!r}", hint="e.g. --python-version 3.12")
    out.mkdir(parents=True, exist_ok=True)
    major, minor = python_version.split(".")
    # Environment markers (tomli on <3.11) must be judged for the target Python, not this one.
    target = {"python_version": python_version, "python_full_version": f"{python_version}.0",
              "sys_platform": "linux", "platform_machine": "x86_64", "implementation_name": "cpython"}
    wanted = [r for r in requirements(extras) if not Requirement(r).marker or Requirement(r).marker.evaluate(target)]
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
            "--dest", str(out), "--python-version", python_version, "--implementation", "cp",
            "--abi", f"cp{major}{minor}", "--abi", "abi3", "--abi", "none"]
    for platform in PLATFORMS:
        argv += ["--platform", platform]
    argv += ["--platform", "any", *wanted]
    runner.run(argv, log=log, what="pip download (wheelhouse)", timeout=1800,
               diagnose=lambda out, rc: "no wheel for that Python/platform; try another --python-version"
               if "No matching distribution" in out else None)
    return sorted(out.glob("*.whl"))
