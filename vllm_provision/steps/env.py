"""env: the target environment, created at a new versioned prefix <workspace>/envs/<n> and switched
in through the stable link <workspace>/env only on success; then <workspace>/env.json.

Envs are not relocatable (venv and conda bake their prefix into files), so nothing is renamed: a
failure removes the half-made prefix and leaves the previous env (and its env.json) in use.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
from pathlib import Path

from packaging.version import InvalidVersion, Version

from vllm_provision import PROJECT_ROOT, minor_version
from vllm_provision.checks import CheckStatus
from vllm_provision.checks.toolchain import check_compiler_for
from vllm_provision.core import envinfo, runner
from vllm_provision.core.envinfo import EnvInfo
from vllm_provision.core.errors import ConfigError, StepFailed
from vllm_provision.core.workspace import Workspace
from vllm_provision.envs import common, conda, existing, mirrors
from vllm_provision.envs import lock as locks
from vllm_provision.pipeline import StepContext, StepOutcome
from vllm_provision.plan import EnvPlan
from vllm_provision.probes import envprobe, host
from vllm_provision.steps.facts import EnvFacts

BACKENDS = ("venv", "conda", "existing")


def envs_dir(ws: Workspace) -> Path:
    return ws.root / "envs"


def lock_file(env: EnvPlan) -> Path | None:
    return PROJECT_ROOT / env.lock if env.lock else None


def _shown(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def _sha256(path: Path | None) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path and path.is_file() else None


def stamp_inputs(ctx: StepContext) -> dict:
    inputs = {"env": ctx.plan.to_dict()["env"], "lock_sha256": _sha256(lock_file(ctx.plan.env)),
              "release": ctx.plan.release.version}
    if ctx.plan.env.backend == "existing":
        # the packages reused from the host are inputs too: an image upgrade of torch reruns the env
        # (and through the chained stamps everything built against it)
        try:
            inputs["base"] = envprobe.site_state(existing.interpreter(ctx.plan), with_base=True)
        except ConfigError:
            inputs["base"] = None    # no interpreter: the run says so
    return inputs


def intact(ctx: StepContext) -> bool:
    link = ctx.workspace.env
    if not link.is_symlink() or not envinfo.path(ctx.workspace).is_file():
        return False
    python = link / "bin" / "python"
    if not python.exists():
        return False
    result = runner.capture([str(python), "-c", "import sys"], timeout=30)
    return bool(result and result.returncode == 0)


def _next_prefix(ctx: StepContext) -> Path:
    base = envs_dir(ctx.workspace)
    base.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name) for p in base.iterdir() if p.name.isdigit()]
    n = max(numbers, default=0) + 1
    while (base / str(n)).exists():
        n += 1
    return base / str(n)


def switch_link(link: Path, prefix: Path) -> None:
    """Point `link` at `prefix` atomically (a temp symlink renamed over it)."""
    tmp = link.with_name(f".env.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(prefix, link.parent), tmp)
    os.replace(tmp, link)


def _prune(ctx: StepContext, keep: Path) -> None:
    for p in envs_dir(ctx.workspace).iterdir():
        if p != keep and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def check_compiler(plan, lock: Path | None) -> None:
    """In seconds, before anything is downloaded: an env whose torch no compiler here can build for
    is gigabytes for nothing. Skipped where the env brings its nvcc itself (PyPI wheels for CUDA >= 13
    or pinned in the lock, a conda channel) and for the existing backend (its torch is already there;
    the build's preflight judges it)."""
    cuda = plan.env.cuda
    if plan.env.backend == "existing" or not cuda or plan.env.channels:
        return
    try:
        if Version(cuda).major >= 13:
            return
    except InvalidVersion:
        return
    if lock is not None and common.PIP_COMPILER_WHEELS[0] in locks.pinned(lock):
        return
    check = check_compiler_for(cuda, host.nvcc_candidates())
    if check.status == CheckStatus.FAIL:
        raise StepFailed(f"no compiler for the env's torch (CUDA {cuda}), nothing downloaded: {check.detail}",
                         hint=check.hint)


def build_env(ctx: StepContext, prefix: Path) -> tuple[EnvInfo, dict]:
    plan = ctx.plan
    backend = plan.env.backend
    if backend not in BACKENDS:
        raise ConfigError(f"unknown env backend {backend!r}", hint=f"use one of {', '.join(BACKENDS)}")
    module = importlib.import_module(f"vllm_provision.envs.{backend}")
    if hasattr(module, "interpreter"):
        module.interpreter(plan)  # a missing interpreter is the first thing to say
    lock = lock_file(ctx.plan.env)
    if lock is not None:
        locks.check(lock, plan.release.version, plan.profile, minor_version(plan.env.python))
    check_compiler(plan, lock)
    python = module.create(ctx, prefix)
    installer = common.choose_installer(plan)
    if lock is not None:
        ctx.say(f"installing {_shown(lock)} with {installer.kind} from "
                f"{mirrors.describe(plan.env)}")
        common.install_lock(ctx, installer, python, lock, plan.env)
        # the lock fixes the versions: the env must hold exactly those
        want = locks.pinned(lock)
    else:
        want = {}
    facts = envprobe.env_facts(python)
    wrong = {n: (v, facts["packages"].get(n)) for n, v in want.items() if facts["packages"].get(n) != v}
    if wrong:
        first = ", ".join(f"{n} {got} (lock {v})" for n, (v, got) in list(wrong.items())[:5])
        raise StepFailed(f"the env does not match the lock: {first}", hint="rerun `./inv env --force`; report if it persists")
    compiler = common.resolve_compiler(ctx, plan, installer, python, facts, prefix,
                                       channel_compiler=conda.conda_compiler)
    if compiler.source == "pip":
        facts = envprobe.env_facts(python)  # the compiler wheels add packages and include dirs
    info = EnvInfo(
        backend=backend, prefix=str(prefix), python=str(python), python_version=facts["python_version"],
        packages=dict(sorted(facts["packages"].items())), torch=facts.get("torch"), torch_cuda=facts.get("torch_cuda"),
        cxx11_abi=facts.get("cxx11_abi"), cuda_home=compiler.cuda_home, nvcc=compiler.nvcc and compiler.nvcc.path,
        nvcc_version=compiler.nvcc and compiler.nvcc.version, include_dirs=tuple(facts.get("include_dirs") or ()),
        lock=_shown(lock) if lock else None, installer=installer.kind,
    )
    extra = {"compiler_source": compiler.source, "compiler_reason": compiler.reason}
    if facts.get("torch_error") and "No module named" not in facts["torch_error"]:
        extra["torch_error"] = facts["torch_error"]
    return info, extra


def run(ctx: StepContext) -> StepOutcome:
    prefix = _next_prefix(ctx)
    try:
        info, extra = build_env(ctx, prefix)
    except BaseException:
        shutil.rmtree(prefix, ignore_errors=True)
        raise
    switch_link(ctx.workspace.env, prefix)
    envinfo.save(ctx.workspace, info)
    _prune(ctx, prefix)
    torch = (f"torch {info.torch} ({'CUDA ' + info.torch_cuda if info.torch_cuda else 'no CUDA'})"
             if info.torch else "no torch")
    cc = (f"nvcc {info.nvcc_version} ({extra['compiler_source']})" if info.cuda_home
          else f"no matching nvcc: {extra['compiler_reason']}")
    ctx.say(f"{info.backend} env at {prefix}: Python {info.python_version}, {torch}, {cc}")
    if not info.cuda_home and info.torch_cuda:
        ctx.say(f"warning: {extra['compiler_reason']}")
    return StepOutcome(
        detail=f"{info.backend} Python {info.python_version}, {len(info.packages)} packages, {torch}, {cc}",
        facts=EnvFacts(prefix=info.prefix, python=info.python, python_version=info.python_version,
                       packages=len(info.packages), installer=info.installer, torch=info.torch,
                       torch_cuda=info.torch_cuda, cuda_home=info.cuda_home, nvcc_version=info.nvcc_version,
                       lock=info.lock, **extra))
