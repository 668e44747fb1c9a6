"""vllm-provision tasks. Thin: parse flags, build the Plan, call the library, print the summary."""

from __future__ import annotations

import os
import subprocess
import sys

from invoke import task

from vllm_provision import PROJECT_ROOT, cli
from vllm_provision.cli import handles_errors

COMMON = {
    "release": "vLLM release, e.g. 0.2.2 (default from invoke.yaml / profile)",
    "profile": "profile in envs/ (seed, host-torch)",
    "offline": "use only the download cache; never touch the network for sources",
}


@task(help={**COMMON, "json": "print JSON instead of a table", "arch": "CUDA archs, e.g. 9.0 or '8.0;9.0'"})
@handles_errors
def plan(c, release=None, profile=None, offline=False, arch=None, json=False):
    """Print the fully resolved plan (sources, env, patches, build flags); does nothing else."""
    cli.print_plan(cli.make_plan(release=release, profile=profile, offline=offline, arch=arch), json)


@task(help={**COMMON, "force": "download and extract again even if up to date"})
@handles_errors
def fetch(c, release=None, profile=None, offline=False, force=False):
    """Download the release (checksummed, cached, resumable) and extract it into the workspace."""
    cli.run_pipeline(["fetch"], ["fetch"] if force else [], release=release, profile=profile, offline=offline)


@task(iterable=["force"], help={**COMMON, "force": "rerun this step even if up to date (repeatable)",
                                "arch": "CUDA archs to compile for (default: this host's GPUs)",
                                "max_jobs": "parallel compile jobs (default: from free RAM and cores)",
                                "model": "local model dir for the smoke step (default: a tiny ChatGLM)"})
@handles_errors
def provision(c, release=None, profile=None, offline=False, force=None, arch=None, max_jobs=None, model=None):
    """Run everything: fetch -> env -> patch -> build -> verify -> smoke (unchanged steps are skipped)."""
    from vllm_provision.pipeline import STEPS
    cli.run_pipeline(STEPS, force or [], release=release, profile=profile, offline=offline, arch=arch,
                     max_jobs=max_jobs, model=model)


@task(help={"k": "only tests matching this pytest -k expression", "quick": "skip the slow and network tiers"})
def test(c, k=None, quick=False):
    """Run the test suite (pytest). CI runs exactly this through .ci/run."""
    args = [sys.executable, "-m", "pytest", "-q"]
    if k:
        args += ["-k", k]
    if quick:
        args += ["-m", "not slow and not network"]
    sys.exit(subprocess.call(args, cwd=PROJECT_ROOT))
