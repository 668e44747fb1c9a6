"""vllm-provision tasks. Thin: parse flags, build the Plan, call the library, print the summary."""

from __future__ import annotations

import functools
import os
import sys

import invoke

from vllm_provision import PROJECT_ROOT, cli
from vllm_provision.cli import handles_errors
from vllm_provision.core import config

# Invoke's automatic short flags gave one letter different meanings in different tasks (-u was --push in build
# and --out in wheel), so they are off; the one short flag is -v, --verbose, in every task that has it.
SHORT_FLAGS = {"verbose": "v"}


class Task(invoke.Task):
    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        if name in SHORT_FLAGS and SHORT_FLAGS[name] not in taken_names:
            opts["names"] = [*opts["names"], SHORT_FLAGS[name]]
        return opts


task = functools.partial(invoke.task, klass=Task, auto_shortflags=False)

COMMON = {
    "release": "vLLM release, e.g. 0.2.2 (default from vllm-provision.yaml / profile)",
    "profile": config.profile_help(),
    "offline": "use only the download cache; never touch the network for sources",
}
VERBOSE = {"verbose": "stream the underlying tools' own output (uv, pip, the compiler) as they run"}


@task(help={**COMMON, "json": "print JSON instead of a table", "arch": "CUDA archs, e.g. 9.0 or '8.0;9.0'"})
@handles_errors
def plan(c, release=None, profile=None, offline=False, arch=None, json=False):
    """Print the fully resolved plan (sources, env, patches, build flags); does nothing else."""
    cli.print_plan(cli.make_plan(release=release, profile=profile, offline=offline, arch=arch), json)


@task(help={**COMMON, **VERBOSE, "force": "download and extract again even if up to date",
            "bundle": "a source bundle (directory or .tar from `./inv bundle`) to import into the cache first"})
@handles_errors
def fetch(c, release=None, profile=None, offline=False, force=False, bundle=None, verbose=False):
    """Download the release and, for CMake-era releases, every external source its build reads (checksummed,
    cached, resumable), and extract the release into the workspace."""
    cli.run_pipeline(["fetch"], ["fetch"] if force else [], release=release, profile=profile, offline=offline,
                     bundle=bundle)


@task(name="catalog-hashes", help={"release": "vLLM release in the catalog, e.g. 0.26.0",
                                   "mirror": "a source template for the externals (as fetch.external_mirrors)"})
@handles_errors
def catalog_hashes(c, release=None, mirror=None):
    """For a new catalog entry: fetch each external source and print the tree_sha256 of its included files."""
    cli.catalog_hashes_task(release=release, mirror=mirror)


@task(help={**COMMON, "out": "a new or empty directory, or FILE.tar / .tar.gz / .tar.xz (xz is smallest)",
            "externals_only": "leave the sdist out (carry it apart, or let the offline host's mirror serve it)"})
@handles_errors
def bundle(c, out=None, release=None, profile=None, offline=False, externals_only=False):
    """Write the sdist and every external source (verified, trimmed) for hosts with no route out."""
    cli.bundle_task(out, externals_only, release=release, profile=profile, offline=offline)


@task(help={**COMMON, **VERBOSE, "force": "recreate the env even if up to date",
            "backend": "conda | venv | existing (default: from the profile)",
            "python": "Python for the env, e.g. 3.10"})
@handles_errors
def env(c, release=None, profile=None, offline=False, force=False, backend=None, python=None, verbose=False):
    """Create the target environment from the lock (new prefix, switched atomically) and write env.json."""
    cli.run_pipeline(["env"], ["env"] if force else [], release=release, profile=profile, offline=offline,
                     backend=backend, python=python)


@task(help={"release": "vLLM release, e.g. 0.2.2", "profile": COMMON["profile"],
            "python": "Python minor version to lock for, e.g. 3.11 (default: the profile's)"})
@handles_errors
def lock(c, release=None, profile=None, python=None):
    """Resolve the release's requirements as of its release date into envs/locks/<release>/<profile>-py<X.Y>.txt."""
    cli.lock_task(release=release, profile=profile, python=python)


ARTIFACTS = {"push": "after a compile, make the wheel and publish it to every writable artifacts.caches entry",
             "require_cache": "install the build from artifacts.caches; never compile (a miss fails)",
             "artifact_key": "install exactly this artifact key (the builder's, printed by `./inv wheel`)"}


@task(iterable=["force"], help={**COMMON, **VERBOSE, **ARTIFACTS,
                                "force": "rerun STEP even if up to date (repeatable); --force all: every step",
                                "arch": "CUDA archs to compile for (default: this host's GPUs)",
                                "max_jobs": "parallel compile jobs (default: from free RAM and cores)",
                                "model": "local model dir for the smoke step (default: a tiny ChatGLM)",
                                "json": "end with one JSON line: {ok, workspace, report, steps, error, hint}"})
@handles_errors
def provision(c, release=None, profile=None, offline=False, force=None, arch=None, max_jobs=None, model=None,
              push=False, require_cache=False, artifact_key=None, verbose=False, json=False):
    """Run everything: fetch -> env -> patch -> build -> verify -> smoke (unchanged steps are skipped)."""
    from vllm_provision.pipeline import STEPS
    cli.run_pipeline(STEPS, force or [], cli.task_args("provision"), as_json=json, release=release, profile=profile,
                     offline=offline, arch=arch, max_jobs=max_jobs, model=model, push=push,
                     require_cache=require_cache, artifact_key=artifact_key)


@task(help={**COMMON, **VERBOSE, "arch": "CUDA archs to compile for (default: this host's GPUs)",
            "max_jobs": "parallel compile jobs (default: from free RAM and cores)",
            "out": "directory for the wheel and its .manifest.json (default: <workspace>/wheels)",
            "push": "also publish it to every writable artifacts.caches entry",
            "json": "print {wheel, sha256, key, version, archs, published} as JSON"})
@handles_errors
def wheel(c, release=None, profile=None, offline=False, arch=None, max_jobs=None, out=None, push=False, json=False,
          verbose=False):
    """Build once, install many: a binary wheel of the built vLLM with its manifest and key (builds first if needed)."""
    cli.wheel_task(out, push, json, release=release, profile=profile, offline=offline, arch=arch, max_jobs=max_jobs)


@task(help={**COMMON, **VERBOSE, "model": "local model dir (default: make and use a tiny ChatGLM)",
            "parity": "also check vLLM's compiled kernels and greedy tokens against PyTorch references",
            "force": "run again even if up to date",
            "all_gpus": "the smoke on every GPU at once, each judged on its own; with 2+ GPUs also the NCCL "
                        "all-reduce check and tensor parallelism (when Ray is in the env)"})
@handles_errors
def smoke(c, release=None, profile=None, offline=False, model=None, parity=False, force=False, all_gpus=False,
          verbose=False):
    """Generate with the notes' sampling parameters; check and explain the GPU/CPU KV-cache blocks."""
    cli.require_gpu("./inv smoke")
    cli.run_smoke(force, all_gpus=all_gpus, release=release, profile=profile, offline=offline, model=model, parity=parity)


@task(help={**COMMON, "sizes": "message sizes, comma-separated (default 1MiB,64MiB,256MiB)",
            "timeout": "seconds before a hung all-reduce is ended (default 180)",
            "json": "print the check's JSON instead of the bandwidth table"})
@handles_errors
def nccl(c, release=None, profile=None, offline=False, sizes=None, timeout=None, json=False):
    """All-reduce across every GPU through NCCL in the target env: result checked, bus bandwidth per size."""
    from invoke.exceptions import Exit

    code = cli.nccl_task(sizes=sizes, timeout=timeout, as_json=json, release=release, profile=profile,
                         offline=offline)
    if code:
        raise Exit(code=code)


@task(name="make-tiny-model", help={**COMMON, "out": "output directory (default: <workspace>/models/tiny-chatglm)"})
@handles_errors
def make_tiny_model(c, out=None, release=None, profile=None, offline=False):
    """Write a deterministic random-weight ChatGLM checkpoint (THUDM layout) with the target env's python."""
    cli.make_tiny_model(out, release=release, profile=profile)


@task(help={"python_version": "target host's Python, e.g. 3.12", "out": "directory to fill with wheels",
            "extras": "comma-separated extras to include (e.g. test,conda); default none"})
@handles_errors
def wheelhouse(c, python_version=None, out="wheelhouse", extras=""):
    """Download the toolkit's wheels for an offline host; bootstrap there with VLLMP_WHEELHOUSE=DIR ./inv ..."""
    from pathlib import Path

    from vllm_provision.core import ui
    from vllm_provision.core.errors import ConfigError
    if not python_version:   # an option, not a positional: `./inv wheelhouse --help` must show the help
        raise ConfigError("--python-version is needed: the offline host's Python", hint="e.g. --python-version 3.12")
    from vllm_provision.envs import wheelhouse as wh
    wheels = wh.build(Path(out).resolve(), python_version, [e for e in extras.split(",") if e])
    ui.info(f"{len(wheels)} wheels in {Path(out).resolve()} ({sum(w.stat().st_size for w in wheels) / 1e6:.1f} MB); "
            f"on the offline host: VLLMP_WHEELHOUSE={out} VLLMP_EXTRAS= ./inv provision")


@task(help={**COMMON, "json": "print {ok, checks:[{name, status, detail, hint}]} instead of a table",
            "junit": "also write JUnit XML to this path (one testcase per check)",
            "arch": "CUDA archs for a GPU-less image build, e.g. 9.0 (no GPU is then a warning)",
            "timeout": "seconds for each mirror/channel look-up (default 3)"})
@handles_errors
def doctor(c, release=None, profile=None, offline=False, arch=None, json=False, junit=None, timeout=None):
    """Is this host ready to build? GPUs, driver, nvcc vs torch CUDA, compiler, RAM/disk, mirrors, source, archs."""
    from invoke.exceptions import Exit

    code = cli.doctor_task(as_json=json, junit=junit, timeout=timeout, release=release, profile=profile,
                       offline=offline, arch=arch)
    if code:
        raise Exit(code=code)


@task(help={**COMMON, **VERBOSE, "json": "print {ok, checks:[{name, status, detail, hint}]} instead of a table",
            "junit": "also write JUnit XML to this path (one testcase per check)",
            "arch": "CUDA archs the build used when this host has no GPU"})
@handles_errors
def verify(c, release=None, profile=None, offline=False, arch=None, json=False, junit=None, verbose=False):
    """Prove the install: vllm at the release (editable or a cached artifact), pip check, lock, imports, SASS vs GPUs."""
    from invoke.exceptions import Exit

    code = cli.verify_task(as_json=json, junit=junit, release=release, profile=profile, offline=offline, arch=arch)
    if code:
        raise Exit(code=code)


@task(iterable=["cache", "env"], help={
    "release": COMMON["release"], "profile": COMMON["profile"],
    "hosts": "hosts file: one ssh_config alias or user@host:port a line, [group] headers, # comments",
    "ansible_inventory": "an Ansible inventory, read with `ansible-inventory --list`",
    "limit": "only these hosts: names or globs, comma-separated (groups match too)",
    "rerun_failed": "only the hosts that were not ok in the latest fleet report",
    "forks": "hosts worked on at once (default fleet.forks: 8)",
    "max_fail_percent": "after a batch, stop when more than this share of a kind's hosts failed",
    "host_key_policy": "strict (default: known_hosts only) or accept-new",
    "facts_only": "probe the hosts and group them into kinds; build and install nothing",
    "arch": "CUDA archs to build for instead of the GPUs' (e.g. 9.0)",
    "cache": "artifact cache for the hosts (repeatable; default artifacts.caches), e.g. dir:/srv/wheels",
    "env": "NAME=VALUE for the toolkit on the hosts (repeatable; no credentials), e.g. CCACHE_DIR=/srv/ccache",
    "report_dir": "where the run's report goes (default fleet.report_dir)"})
@handles_errors
def fleet(c, hosts=None, ansible_inventory=None, limit=None, rerun_failed=False, forks=None, max_fail_percent=None,
          host_key_policy=None, facts_only=False, arch=None, cache=None, env=None, report_dir=None, release=None,
          profile=None):
    """Provision many hosts with Ansible: facts -> kinds -> one wheel build per kind -> installs in batches -> report."""
    from invoke.exceptions import Exit

    overrides = {k: v for k, v in {"forks": forks, "max_fail_percent": max_fail_percent,
                                   "host_key_policy": host_key_policy}.items() if v is not None}
    code = cli.fleet_task(hosts=hosts, ansible_inventory=ansible_inventory, limit=limit, rerun_failed=rerun_failed,
                          facts_only=facts_only, report_dir=report_dir, caches=cache or [], env=env or [],
                          fleet=overrides, release=release, profile=profile, arch=arch)
    if code:
        raise Exit(code=code)


@task(name="settings-doc")
@handles_errors
def settings_doc(c):
    """Regenerate the settings table in docs/configuration.md from the schema and vllm-provision.yaml."""
    from vllm_provision.core import settings_reference, ui
    changed = settings_reference.write()
    ui.info(f"{settings_reference.DOC.relative_to(PROJECT_ROOT)}: {'updated' if changed else 'up to date'}")


@task
def lint(c):
    """ruff (lint, import order) over the repository and mypy over the package and tasks.py (pyproject.toml)."""
    from invoke.exceptions import Exit

    from vllm_provision.core import lint as checks
    if code := checks.run():
        raise Exit(code=code)


@task(help={"k": "only tests matching this pytest -k expression (the lint still runs: it takes seconds)",
            "quick": "skip the slow and network tiers",
            "jobs": "parallel pytest workers (default: one per CPU, at least 2; 0: one process)"})
def test(c, k=None, quick=False, jobs=None):
    """Lint (as `./inv lint`; a finding stops here), then run the test suite (pytest). CI runs exactly this."""
    lint(c)
    # the 25 slowest steps and every skip with its reason (-ra) are printed at the end; tests run in parallel
    # (pytest-xdist) with the users of one session fixture on one worker (xdist_group, tests/conftest.py)
    args = [sys.executable, "-m", "pytest", "-q", "--durations=25"]
    workers = max(2, len(os.sched_getaffinity(0))) if jobs is None else int(jobs)
    if workers > 0:
        args += ["-n", str(workers), "--dist", "loadgroup"]
    if k:
        args += ["-k", k]
    if quick:
        args += ["-m", "not slow and not network"]
    # pytest replaces this process: Ctrl-C and SIGTERM reach it directly, nothing is left running
    os.chdir(PROJECT_ROOT)
    os.execv(sys.executable, args)


@task(help={**COMMON, **VERBOSE, "force": "check and apply the patches again even if up to date"})
@handles_errors
def patch(c, release=None, profile=None, offline=False, force=False, verbose=False):
    """Apply the release's patch series whose conditions hold for the env (idempotent)."""
    cli.run_pipeline(["patch"], ["patch"] if force else [], release=release, profile=profile, offline=offline)


@task(help={**COMMON, **VERBOSE, **ARTIFACTS, "force": "rebuild even if up to date",
            "arch": "CUDA archs, e.g. 9.0 or '8.0;9.0'",
            "max_jobs": "parallel compile jobs (default: from free RAM and cores)",
            "time_limit": "CMake-era releases: stop the compile cleanly after SECONDS; report the rate and the "
                          "projected total",
            "targets": "CMake-era releases: build only these CMake targets or ninja outputs (one object file), comma-separated"})
@handles_errors
def build(c, release=None, profile=None, offline=False, force=False, arch=None, max_jobs=None, push=False,
          require_cache=False, artifact_key=None, time_limit=None, targets=None, verbose=False):
    """Install vLLM from a cache (artifacts.caches) or: preflight, compile its CUDA extensions (parallel, ccache),
    install editable."""
    cli.run_pipeline(["build"], ["build"] if force else [], release=release, profile=profile, offline=offline,
                     arch=arch, max_jobs=max_jobs, push=push, require_cache=require_cache, artifact_key=artifact_key,
                     time_limit=time_limit, targets=[t for t in targets.split(",") if t] if targets else None)
