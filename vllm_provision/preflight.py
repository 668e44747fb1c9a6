"""Preflight: named checks run in seconds before any compile, each with a clear fix.

nvcc vs torch's CUDA (torch's own rule: a major mismatch is an error, a minor one a warning), gcc
vs nvcc's limit (crt/host_config.h), target archs vs release and nvcc, driver vs CUDA runtime,
disk and RAM for the plan. The Check dataclass lives in `checks.py` (shared with doctor/verify).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Mapping

from . import GIB, host, runner
from .checks import Check, check_driver, parse_version, to_json
from .envinfo import EnvInfo
from .host import HostFacts
from .plan import BUILD_JOB_PEAK_BYTES, Plan

__all__ = ["Check", "run", "resolve_nvcc", "write_report"]

# Disk for a build: the source tree with 7 build-temp dirs and libraries (~0.3 GiB at one arch, more
# with more archs), pip's editable-wheel temp copy, and the compiler cache.
BUILD_DISK_BYTES = 3 * GIB


@dataclass(frozen=True)
class Compiler:
    nvcc: str | None
    cuda_home: str | None
    version: str | None
    source: str
    gcc_max: int | None


def resolve_nvcc(info: EnvInfo | None, facts: HostFacts | None = None, environ: Mapping[str, str] | None = None) -> Compiler:
    """The nvcc the build will use: env.json's (matched to torch by the env step), else torch's own search
    order ($CUDA_HOME, PATH, /usr/local/cuda)."""
    if info is not None and info.nvcc:
        return Compiler(info.nvcc, info.cuda_home or os.path.dirname(os.path.dirname(info.nvcc)),
                        info.nvcc_version or (host.probe_nvcc(info.nvcc).version if os.path.exists(info.nvcc) else None),
                        "env", host.gcc_limit_of(info.cuda_home) if info.cuda_home else None)
    candidates = list(facts.nvcc) if facts is not None and facts.nvcc else host.nvcc_candidates(environ)
    if not candidates:
        return Compiler(None, None, None, "none", None)
    c = candidates[0]
    return Compiler(c.path, c.cuda_home, c.version, c.source, c.gcc_max)


def matching_compiler_hint(cuda: str) -> str:
    """Where a compiler for torch's CUDA comes from: PyPI wheels exist for CUDA >= 13 only."""
    v = parse_version(cuda)
    if v is not None and v.major >= 13:
        return (f"let `inv env --force` provision it (pip wheels nvidia-cuda-nvcc/nvvm/crt=={v.major}.{v.minor}.*), "
                f"or set CUDA_HOME to a CUDA {v.major}.{v.minor} toolkit")
    return (f"no PyPI wheel carries nvcc for CUDA {cuda}: set conda.channels to a channel with cuda-nvcc={cuda} "
            f"and run `inv env --force`, install the CUDA {cuda} toolkit and set CUDA_HOME, or use the PyPI-only "
            f"profile (`--profile pypi-cu13`: torch for CUDA 13, nvcc from PyPI wheels)")


def check_nvcc_torch(torch_cuda: str | None, nvcc_version: str | None, nvcc_path: str | None) -> Check:
    name = "nvcc-vs-torch"
    if not torch_cuda:
        return Check(name, "fail", "the env's torch has no CUDA (a CPU build): nothing to compile against",
                     "install a CUDA build of torch (envs/locks pin one; `inv env --force`)")
    if not nvcc_path or not nvcc_version:
        return Check(name, "fail", f"no nvcc found; torch needs CUDA {torch_cuda}", matching_compiler_hint(torch_cuda))
    have, want = parse_version(nvcc_version), parse_version(torch_cuda)
    detail = f"nvcc {nvcc_version} ({nvcc_path}), torch built with CUDA {torch_cuda}"
    if have is None or want is None:
        return Check(name, "warn", detail + ": versions unparsable")
    fix = (f"use a CUDA {want.major}.{want.minor} compiler: {matching_compiler_hint(f'{want.major}.{want.minor}')}; "
           f"or pick a torch built for CUDA {have.major}.x (a lock/profile with that torch)")
    if have.major != want.major:
        return Check(name, "fail", detail + ": CUDA major versions differ, torch refuses to build "
                     "(`The detected CUDA version mismatches the version that was used to compile PyTorch`)", fix)
    if (have.major, have.minor) != (want.major, want.minor):
        return Check(name, "warn", detail + ": minor versions differ (torch warns, builds usually work)", fix)
    return Check(name, "pass", detail)


def check_compiler_for(torch_cuda: str, environ: Mapping[str, str] | None = None) -> Check:
    """nvcc-vs-torch before the env exists: any host toolkit that fits the planned torch's CUDA passes."""
    checks = [check_nvcc_torch(torch_cuda, c.version, c.path) for c in host.nvcc_candidates(environ)]
    return next((c for c in checks if c.status != "fail"), checks[0] if checks else check_nvcc_torch(torch_cuda, None, None))


def check_gcc(gcc_version: str | None, gcc_path: str | None, gcc_max: int | None, nvcc_version: str | None) -> Check:
    name = "gcc-vs-nvcc"
    if not gcc_version:
        return Check(name, "fail", "no host C++ compiler found (gcc/g++)",
                     "install gcc/g++ (apt-get install g++), or set CC/CXX/CUDAHOSTCXX")
    parsed = parse_version(gcc_version)
    major = parsed.major if parsed else None
    if gcc_max is None:
        return Check(name, "skip", f"gcc {gcc_version} ({gcc_path}); nvcc's limit not found (crt/host_config.h)")
    detail = f"gcc {gcc_version} ({gcc_path}); nvcc {nvcc_version or '?'} accepts gcc <= {gcc_max}"
    if major is not None and major > gcc_max:
        return Check(name, "fail", detail + ": `unsupported GNU version` would stop the compile",
                     f"install gcc-{gcc_max} and set CC=gcc-{gcc_max} CXX=g++-{gcc_max} CUDAHOSTCXX=g++-{gcc_max}")
    return Check(name, "pass", detail)


def check_archs(archs, release_archs, release: str, nvcc_archs, nvcc_version: str | None) -> Check:
    name = "arch-list"
    wanted = [a.removesuffix("+PTX") for a in archs]
    bad_release = [a for a in wanted if a not in release_archs]
    if bad_release:
        return Check(name, "fail", f"{', '.join(bad_release)} not supported by vLLM {release} "
                     f"(it builds for {', '.join(release_archs)})", "use --arch with supported values, e.g. --arch 9.0")
    if not nvcc_archs:
        return Check(name, "warn", f"{';'.join(archs)}: nvcc's arch list unknown (nvcc --list-gpu-arch failed)")
    bad_nvcc = [a for a in wanted if a not in nvcc_archs]
    if bad_nvcc:
        ok = [a for a in wanted if a in nvcc_archs]
        return Check(name, "fail", f"nvcc {nvcc_version} cannot compile for {', '.join(bad_nvcc)} "
                     f"(it supports {', '.join(nvcc_archs)})",
                     f"build for the archs this nvcc has: --arch '{';'.join(ok) or nvcc_archs[-1]}' "
                     "(or use an older CUDA for old GPUs)")
    return Check(name, "pass", f"{';'.join(archs)}: supported by vLLM {release} and nvcc {nvcc_version}")


def check_disk(free: int, need: int = BUILD_DISK_BYTES) -> Check:
    detail = f"{free / GIB:.1f} GiB free, the build needs about {need / GIB:.1f} GiB"
    if free and free < need:
        return Check("disk", "fail", detail, "free disk space or move the workspace (workspace_root)")
    return Check("disk", "pass" if free else "skip", detail)


def check_ram(available: int, max_jobs: int, peak: int = BUILD_JOB_PEAK_BYTES) -> Check:
    detail = f"{available / GIB:.1f} GiB available; {max_jobs} job(s) x {peak / GIB:.1f} GiB peak"
    if not available:
        return Check("ram", "skip", "available RAM unknown")
    if available < peak:
        return Check("ram", "fail", detail + ": not enough for one compile job",
                     "free memory (stop other programs) or add swap")
    fit = max(1, available // peak)
    if max_jobs > fit:
        return Check("ram", "warn", detail + ": more jobs than RAM allows, the compiler may be Killed",
                     f"--max-jobs {fit}")
    return Check("ram", "pass", detail)


def run(plan: Plan, facts: HostFacts, info: EnvInfo | None, environ: Mapping[str, str] | None = None) -> list[Check]:
    """All preflight checks for building `plan` in the env described by `info` on this host."""
    env = dict(os.environ if environ is None else environ)
    comp = resolve_nvcc(info, facts, env)
    torch_cuda = info.torch_cuda if info else None
    nvcc_archs: tuple[str, ...] = ()
    if comp.nvcc:
        done = runner.capture([comp.nvcc, "--list-gpu-arch"], timeout=20)
        nvcc_archs = host.parse_gpu_archs(done.output) if done and done.returncode == 0 else ()
    gcc_path, gcc_version = host.probe_gcc(env)
    return [
        check_nvcc_torch(torch_cuda, comp.version, comp.nvcc),
        check_gcc(gcc_version, gcc_path, comp.gcc_max, comp.version),
        check_archs(plan.build.arch_list, plan.release.cuda_archs, plan.release.version, nvcc_archs, comp.version),
        check_driver(facts, torch_cuda),
        check_disk(facts.disk_free_bytes),
        check_ram(facts.mem_available_bytes, plan.build.max_jobs),
    ]


def write_report(ws, checks: list[Check]) -> None:
    ws.logs.mkdir(parents=True, exist_ok=True)
    (ws.logs / "preflight.json").write_text(json.dumps(to_json(checks), indent=2))
