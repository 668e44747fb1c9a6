"""Named checks on the compile toolchain, shared by doctor, preflight and the env step: nvcc vs torch's CUDA
(torch's own rule: a major mismatch is an error, a minor one a warning), the host compiler vs nvcc's gcc
limit (crt/host_config.h), the target archs vs the release and nvcc. They judge probed facts (host.NvccInfo)
and probe nothing themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..host import NvccInfo
from . import Check, parse_version


def matching_compiler_hint(cuda: str) -> str:
    """Where a compiler for torch's CUDA comes from: PyPI wheels exist for CUDA >= 13 only."""
    v = parse_version(cuda)
    if v is not None and v.major >= 13:
        return (f"let `./inv env --force` provision it (pip wheels nvidia-cuda-nvcc/nvvm/crt=={v.major}.{v.minor}.*), "
                f"or set CUDA_HOME to a CUDA {v.major}.{v.minor} toolkit")
    return (f"no PyPI wheel carries nvcc for CUDA {cuda}: set conda.channels to a channel with cuda-nvcc={cuda} "
            f"and run `./inv env --force`, install the CUDA {cuda} toolkit and set CUDA_HOME, or use the PyPI-only "
            f"profile (`--profile pypi-cu13`: torch for CUDA 13, nvcc from PyPI wheels)")


def check_nvcc_torch(torch_cuda: str | None, nvcc_version: str | None, nvcc_path: str | None) -> Check:
    name = "nvcc-vs-torch"
    if not torch_cuda:
        return Check(name, "fail", "the env's torch has no CUDA (a CPU build): nothing to compile against",
                     "install a CUDA build of torch (envs/locks pin one; `./inv env --force`)")
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


def check_compiler_for(torch_cuda: str, nvccs: Iterable[NvccInfo]) -> Check:
    """nvcc-vs-torch before the env exists: any host toolkit that fits the planned torch's CUDA passes."""
    checks = [check_nvcc_torch(torch_cuda, n.version, n.path) for n in nvccs]
    return next((c for c in checks if c.status != "fail"), checks[0] if checks else check_nvcc_torch(torch_cuda, None, None))


def check_gcc(gcc_version: str | None, gcc_path: str | None, nvcc: NvccInfo | None) -> Check:
    """The host C++ compiler (host.host_compiler's choice) within nvcc's gcc limit."""
    name = "gcc-vs-nvcc"
    if not gcc_version:
        return Check(name, "fail", "no host C++ compiler found (gcc/g++)",
                     "install gcc/g++ (apt-get install g++), or set CC/CXX/CUDAHOSTCXX")
    if nvcc is None:
        return Check(name, "skip", f"{Path(gcc_path or 'gcc').name} {gcc_version}; no nvcc to check it against")
    if nvcc.gcc_max is None:
        return Check(name, "skip", f"gcc {gcc_version} ({gcc_path}); nvcc's limit not found (crt/host_config.h)")
    parsed = parse_version(gcc_version)
    detail = f"gcc {gcc_version} ({gcc_path}); nvcc {nvcc.version or '?'} accepts gcc <= {nvcc.gcc_max}"
    if parsed is not None and parsed.major > nvcc.gcc_max:
        limit = nvcc.gcc_max
        return Check(name, "fail", detail + ": `unsupported GNU version` would stop the compile",
                     f"install gcc-{limit} and set CC=gcc-{limit} CXX=g++-{limit} CUDAHOSTCXX=g++-{limit}")
    return Check(name, "pass", detail)


def check_archs(archs: Iterable[str], arch_source: str, release, nvcc: NvccInfo | None) -> Check:
    """The target archs (from `arch_source`) supported by the release (catalog Release) and by nvcc."""
    name = "arch-list"
    archs = list(archs)
    origin = f" (archs from {arch_source})"
    wanted = [a.removesuffix("+PTX") for a in archs]
    bad_release = [a for a in wanted if a not in release.cuda_archs]
    if bad_release:
        return Check(name, "fail", f"{', '.join(bad_release)} not supported by vLLM {release.version} "
                     f"(it builds for {', '.join(release.cuda_archs)}){origin}",
                     "use --arch with supported values, e.g. --arch 9.0")
    nvcc_archs = nvcc.archs if nvcc else ()
    version = nvcc.version if nvcc else None
    if not nvcc_archs:
        return Check(name, "warn", f"{';'.join(archs)}: nvcc's arch list unknown (nvcc --list-gpu-arch failed){origin}")
    bad_nvcc = [a for a in wanted if a not in nvcc_archs]
    if bad_nvcc:
        ok = [a for a in wanted if a in nvcc_archs]
        return Check(name, "fail", f"nvcc {version} cannot compile for {', '.join(bad_nvcc)} "
                     f"(it supports {', '.join(nvcc_archs)}){origin}",
                     f"build for the archs this nvcc has: --arch '{';'.join(ok) or nvcc_archs[-1]}' "
                     "(or use an older CUDA for old GPUs)")
    return Check(name, "pass", f"{';'.join(archs)}: supported by vLLM {release.version} and nvcc {version}{origin}")
