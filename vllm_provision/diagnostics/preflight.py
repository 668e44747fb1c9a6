"""Preflight: the build step's named checks, run in seconds before any compile, each with a clear fix.

nvcc vs torch's CUDA, the host compiler vs nvcc's gcc limit, target archs vs release and nvcc, the env's
torch vs the release's pin and build requirements, driver vs CUDA runtime, disk and RAM: the checks layer's (checks/toolchain.py,
checks/resources.py, doctor draws from the same), on the env the env step made and the host's probed facts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from vllm_provision import tomllib
from vllm_provision.checks import Check, check_driver, to_json
from vllm_provision.checks.resources import check_disk, check_ram, disk_needed
from vllm_provision.checks.toolchain import (
    check_archs,
    check_build_requirements,
    check_gcc,
    check_nvcc_torch,
    check_release_floor,
    check_torch_pin,
)
from vllm_provision.core.envinfo import EnvInfo
from vllm_provision.plan import BUILD_JOB_PEAK_BYTES, Plan
from vllm_provision.probes import host
from vllm_provision.probes.host import HostFacts, NvccInfo

__all__ = ["Check", "run", "resolve_nvcc", "write_report"]


def resolve_nvcc(info: EnvInfo | None, facts: HostFacts | None = None,
                 environ: Mapping[str, str] | None = None) -> NvccInfo | None:
    """The nvcc the build will use: env.json's (matched to torch by the env step), else torch's own search
    order ($CUDA_HOME, PATH, /usr/local/cuda); None when there is none."""
    if info is not None and info.nvcc:
        if os.path.exists(info.nvcc):
            return host.probe_nvcc(info.nvcc, "env")
        return NvccInfo(info.nvcc, "env", info.nvcc_version)
    candidates = list(facts.nvcc) if facts is not None and facts.nvcc else host.nvcc_candidates(environ)
    return candidates[0] if candidates else None


def build_requires(plan: Plan) -> list[str]:
    """The fetched source's [build-system] requires, for CMake-era releases (their setup.py imports
    setuptools-scm and setuptools-rust first thing); empty for others or before the fetch."""
    path = plan.workspace.src / "pyproject.toml"
    if plan.release.build_system != "cmake" or not path.is_file():
        return []
    try:
        return list(tomllib.loads(path.read_text()).get("build-system", {}).get("requires", []))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return []


def run(plan: Plan, facts: HostFacts, info: EnvInfo | None, environ: Mapping[str, str] | None = None) -> list[Check]:
    """All preflight checks for building `plan` in the env described by `info` on this host."""
    env = dict(os.environ if environ is None else environ)
    nvcc = resolve_nvcc(info, facts, env)
    torch_cuda = info.torch_cuda if info else None
    gcc_path, gcc_version = host.probe_gcc(env)
    requires = build_requires(plan)
    peak = plan.build.job_peak_bytes * max(1, plan.build.nvcc_threads) or BUILD_JOB_PEAK_BYTES
    floor = []
    if plan.release.gcc_min or plan.release.cmake_min or plan.release.nvcc_min:
        cmake_path, cmake_version = host.probe_cmake(info.python if info else None, env)
        floor = [check_release_floor(plan.release, gcc_version, cmake_version, nvcc.version if nvcc else None,
                                     cmake_path)]
    return [
        check_nvcc_torch(torch_cuda, nvcc.version if nvcc else None, nvcc.path if nvcc else None),
        check_gcc(gcc_version, gcc_path, nvcc),
        check_archs(plan.build.arch_list, plan.build.arch_source, plan.release, nvcc),
        check_torch_pin(plan.release, info.torch if info else None, f"the env ({info.prefix if info else 'not made'})"),
        *([check_build_requirements(requires, info.packages, info.python_version, plan.release.version,
                                    plan.env.backend)] if info is not None and requires else []),
        check_driver(facts, torch_cuda),
        check_disk(facts.disk_free_bytes, disk_needed(plan.env.backend, info is not None),
                   str(plan.workspace.root.parent)),
        check_ram(facts.mem_available_bytes, plan.build.max_jobs, peak),
        *floor,
    ]


def write_report(ws, checks: list[Check]) -> None:
    ws.logs.mkdir(parents=True, exist_ok=True)
    (ws.logs / "preflight.json").write_text(json.dumps(to_json(checks), indent=2))
