"""verify: prove the install in the target env is right (after build).

Checks, each pass/warn/fail/skip with one line of detail and a fix (the checks layer's checks/install.py
judges; envprobe asks the env):
  vllm-version   `pip inspect`: vllm at the release's version
  vllm-editable  installed editable (direct_url.json dir_info.editable) from the workspace's src/
  pip-check      `pip check` clean apart from the complaints verify.allowed_pip_check accepts (with reasons)
  locked         torch, its CUDA and every other locked package exactly the lock's (and unchanged since env)
  import <ext>   each compiled extension module (plan.release.extensions) imports
  sass <ext>     `cuobjdump --list-elf` of each .so covers every GPU's compute capability (else the plan's archs)
  import-vllm    `from vllm import LLM, SamplingParams` (GPU hosts only; in a run that goes on to the smoke, the
                 smoke's own import of vLLM proves it, once: it takes seconds of torch/transformers imports)
CHECKS lists them; another check on the same facts is one more function appended to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from packaging.utils import canonicalize_name

from vllm_provision import PROJECT_ROOT, report
from vllm_provision.artifacts.installed import artifact_checks
from vllm_provision.checks import Check, CheckStatus
from vllm_provision.checks.install import (
    IMPORT_VLLM_IN_SMOKE,
    NO_GPU_IMPORT_VLLM,
    check_extension_imports,
    check_import_vllm,
    check_locked,
    check_pip,
    check_sass,
    check_vllm_install,
)
from vllm_provision.core import envinfo
from vllm_provision.core.archs import base_arch, split_archs
from vllm_provision.core.errors import NotBuiltYet, ProvisionError, StepFailed
from vllm_provision.core.settings import AllowedPipCheck
from vllm_provision.core.settings import Verify as VerifySettings
from vllm_provision.envs.lock import pinned
from vllm_provision.pipeline import StepContext, StepOutcome, read_stamp, upstream_facts
from vllm_provision.plan import EnvPlan
from vllm_provision.probes import envprobe
from vllm_provision.steps.build import built_digest
from vllm_provision.steps.facts import BuildFacts, BuildSource, VerifyFacts


def _lock_file(env: EnvPlan, info: envinfo.EnvInfo) -> Path | None:
    raw = info.lock or env.lock
    if not raw:
        return None
    path = Path(raw)
    return path if path.is_absolute() else PROJECT_ROOT / path


def allowed_pip_check(verify: VerifySettings, profile: str) -> list[AllowedPipCheck]:
    """verify.allowed_pip_check entries for this profile (an entry with `profiles:` applies only to those)."""
    return [r for r in verify.allowed_pip_check if not r.profiles or profile in r.profiles]


def required_archs(ctx: StepContext) -> tuple[tuple[str, ...], str]:
    """Every GPU's compute capability; without GPUs the archs given for this run (--arch/config), else
    the arch list the build recorded in its stamp, else the plan's default."""
    if ctx.facts.compute_caps:
        return ctx.facts.compute_caps, "this host's GPUs"
    if ctx.plan.build.arch_source != "config":
        built = upstream_facts(ctx.workspace, BuildFacts)
        if built and built.arch_list:
            return tuple(base_arch(a) for a in split_archs(built.arch_list)), "the arch list the build used (no GPU here)"
    return tuple(base_arch(a) for a in ctx.plan.build.arch_list), f"the plan's archs ({ctx.plan.build.arch_source})"


def ensure_built(ctx: StepContext) -> envinfo.EnvInfo:
    where = f"{ctx.plan.release.version}/{ctx.plan.profile}"
    try:
        info = envinfo.load(ctx.workspace)
    except NotBuiltYet:
        info = None
    if info is None or read_stamp(ctx.workspace, "build") is None:
        raise NotBuiltYet(f"nothing built for {where} yet; run `./inv build`",
                          hint="run `./inv build` (or `./inv provision`) first, then `./inv verify`")
    return info


@dataclass(frozen=True)
class Verifying:
    """What verify's checks read: the step's context, the env, and the env's facts, each probed once."""
    ctx: StepContext
    info: envinfo.EnvInfo
    inspected: Mapping[str, dict]          # pip inspect, by canonical name
    torch: envprobe.TorchInfo
    dirs: tuple[str, ...]                  # where vllm's extensions are looked for
    so_files: Mapping[str, Path]           # extension -> its .so
    missing: tuple[str, ...]               # extensions with no .so
    lock_file: Path | None                 # the profile's lock, if it has one
    lock: Mapping[str, str] | None         # its pins (None: no lock, or the file is missing)
    vllm_import: Future | None = None      # `import vllm`, started before the probe (GPU hosts)

    @property
    def has_gpu(self) -> bool:
        return bool(self.ctx.facts.gpus)


def probe_env(ctx: StepContext, info: envinfo.EnvInfo) -> Verifying:
    with ThreadPoolExecutor(max_workers=1) as side:     # two interpreters at once: each takes seconds
        inspecting = side.submit(envprobe.pip_inspect, info.python)
        torch = envprobe.torch_of(info.python, envprobe.PROBE_TIMEOUT, ctx.log)
        inspected = inspecting.result()
    if torch.error:
        raise StepFailed(f"could not probe the env's python {info.python}: {torch.error}",
                         hint="rebuild the env with `./inv env --force`")
    dirs = tuple(dict.fromkeys([*torch.vllm_dirs, str(ctx.workspace.src / "vllm")]))
    so_files, missing = envprobe.extension_files(dirs, ctx.plan.release.extensions)
    lock_file = _lock_file(ctx.plan.env, info)
    lock = pinned(lock_file) if lock_file and lock_file.is_file() else None
    return Verifying(ctx, info, inspected, torch, dirs, so_files, tuple(missing), lock_file, lock)


def vllm_install(v: Verifying) -> list[Check]:
    """Both shapes: editable from src/ (compiled here) or installed from a cached artifact (its manifest's key
    and the archs read back from the installed libraries besides)."""
    built = upstream_facts(v.ctx.workspace, BuildFacts)
    cached = built if built is not None and built.source == BuildSource.CACHE else None
    return (check_vllm_install(v.inspected, v.ctx.plan.release.version, v.ctx.workspace.src,
                               artifact=cached.to_dict() if cached else None)
            + artifact_checks(v.torch.vllm_dirs, v.info, cached.key if cached else None))


def pip_clean(v: Verifying) -> list[Check]:
    ours = ["vllm", *(v.lock or {})] if v.info.backend == "existing" else None
    allowed = allowed_pip_check(v.ctx.plan.settings.verify, v.ctx.plan.profile)
    return [check_pip(envprobe.pip_check(v.info.python, v.ctx.log), v.info.python, allowed, ours)]


def locked(v: Verifying) -> list[Check]:
    if v.lock_file and v.lock is None:
        return [Check("locked", CheckStatus.FAIL, f"lock {v.lock_file} is missing", "restore it from git or `./inv lock`")]
    before = {canonicalize_name(name): version for name, version in (v.info.packages or {}).items()}
    if v.info.torch and "torch" not in before:
        before["torch"] = v.info.torch
    return [check_locked(envprobe.installed_versions(v.inspected), v.lock, before, v.torch.cuda, v.info.torch_cuda,
                         lock_name=v.lock_file.name if v.lock_file else "lock")]


def extension_imports(v: Verifying) -> list[Check]:
    checks = [Check(f"import {name}", CheckStatus.FAIL, f"{name}*.so not found in {', '.join(v.dirs)}",
                    "the build did not produce it: `./inv build --force`") for name in v.missing]
    if v.so_files:
        imported = envprobe.import_extensions(v.info.python, v.so_files, v.ctx.log)
        checks += check_extension_imports(v.so_files, imported, v.has_gpu, v.info.python)
    return checks


def sass(v: Verifying) -> list[Check]:
    cuobjdump = envprobe.find_cuobjdump(v.info)
    found = {name: envprobe.sass_of(so, cuobjdump) for name, so in v.so_files.items()} if cuobjdump else None
    archs, why = required_archs(v.ctx)
    return check_sass(found, v.so_files, archs, why)


def _import_vllm(ctx: StepContext, python: str) -> envprobe.ImportVllm:
    return envprobe.import_vllm(python, ctx.log, ctx.plan.settings.verify.import_timeout)


def _imports_vllm_here(ctx: StepContext) -> bool:
    return bool(ctx.facts.gpus) and "smoke" not in ctx.then


def vllm_imports(v: Verifying) -> list[Check]:
    if not v.has_gpu:
        return [NO_GPU_IMPORT_VLLM]
    if not _imports_vllm_here(v.ctx):
        return [IMPORT_VLLM_IN_SMOKE]
    imported = v.vllm_import.result() if v.vllm_import else _import_vllm(v.ctx, v.info.python)
    return [check_import_vllm(imported, v.ctx.log)]


# In report order; each takes the probed facts and returns its checks.
CHECKS: list[Callable[[Verifying], Iterable[Check]]] = [vllm_install, pip_clean, locked, extension_imports, sass,
                                                        vllm_imports]


def collect(ctx: StepContext, info: envinfo.EnvInfo,
            checks: Iterable[Callable[[Verifying], Iterable[Check]]] | None = None) -> list[Check]:
    checks = list(CHECKS if checks is None else checks)
    # Each check probes in its own child processes (imports, pip check, cuobjdump): run them at once, so
    # verify takes about as long as its slowest check, and report them in CHECKS' order. The slowest,
    # `import vllm` (torch, transformers), needs none of the probed facts: it starts before the probe.
    with ThreadPoolExecutor(max_workers=len(checks) + 1) as pool:
        early = pool.submit(_import_vllm, ctx, info.python) if _imports_vllm_here(ctx) and vllm_imports in checks else None
        facts = replace(probe_env(ctx, info), vllm_import=early)
        return [c for found in pool.map(lambda check: list(check(facts)), checks) for c in found]


def _dists_digest(info: envinfo.EnvInfo | None) -> dict | None:
    """The dist-infos of every site-packages dir the env sees (the host's too, under the existing
    backend) and its torch: a changed package re-triggers verify."""
    return envprobe.site_state(info.python) if info else None


def stamp_inputs(ctx: StepContext) -> dict:
    try:
        info = envinfo.load(ctx.workspace)
    except ProvisionError:
        info = None
    return {"release": ctx.plan.release.version, "archs": required_archs(ctx), "settings": ctx.plan.settings.verify.model_dump(),
            "lock": ctx.plan.env.lock, "dists": _dists_digest(info), "built": built_digest(ctx.workspace)}


def run(ctx: StepContext) -> StepOutcome:
    info = ensure_built(ctx)
    started = time.monotonic()
    checks = collect(ctx, info)
    found = VerifyFacts(tuple(checks))
    section = found.to_dict() | {"when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                 "seconds": round(time.monotonic() - started, 2)}
    rep = ctx.workspace.report
    report.merge_section(rep, "host", report.host_section(ctx.facts))
    report.merge_section(rep, "verify", section, release=ctx.plan.release.version, profile=ctx.plan.profile)
    failed = [c for c in checks if c.status == CheckStatus.FAIL]
    if failed:
        raise StepFailed(f"verify: {len(failed)} check(s) failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed[:3]),
                         hint=failed[0].hint, facts=found.to_dict())
    n = {s: sum(c.status == s for c in checks) for s in (CheckStatus.PASS, CheckStatus.WARN, CheckStatus.SKIP)}
    return StepOutcome(detail=f"{n[CheckStatus.PASS]} checks passed, {n[CheckStatus.WARN]} warned, "
                              f"{n[CheckStatus.SKIP]} skipped", facts=found)
