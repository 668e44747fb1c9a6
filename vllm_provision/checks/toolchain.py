"""Named checks on the compile toolchain, shared by doctor, preflight and the env step: nvcc vs torch's CUDA
(torch's own rule: a major mismatch is an error, a minor one a warning), the host compiler vs nvcc's gcc
limit (crt/host_config.h), the target archs vs the release and nvcc, torch vs the release's torch pin, the
env vs the release's build requirements. They judge probed facts (host.NvccInfo) and probe nothing themselves."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from vllm_provision.checks import Check, CheckStatus, parse_version
from vllm_provision.core.archs import base_arch
from vllm_provision.probes.host import NvccInfo


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
        return Check(name, CheckStatus.FAIL, "the env's torch has no CUDA (a CPU build): nothing to compile against",
                     "install a CUDA build of torch (envs/locks pin one; `./inv env --force`)")
    if not nvcc_path or not nvcc_version:
        return Check(name, CheckStatus.FAIL, f"no nvcc found; torch needs CUDA {torch_cuda}", matching_compiler_hint(torch_cuda))
    have, want = parse_version(nvcc_version), parse_version(torch_cuda)
    detail = f"nvcc {nvcc_version} ({nvcc_path}), torch built with CUDA {torch_cuda}"
    if have is None or want is None:
        return Check(name, CheckStatus.WARN, detail + ": versions unparsable")
    fix = (f"use a CUDA {want.major}.{want.minor} compiler: {matching_compiler_hint(f'{want.major}.{want.minor}')}; "
           f"or pick a torch built for CUDA {have.major}.x (a lock/profile with that torch)")
    if have.major != want.major:
        return Check(name, CheckStatus.FAIL, detail + ": CUDA major versions differ, torch refuses to build "
                     "(`The detected CUDA version mismatches the version that was used to compile PyTorch`)", fix)
    if (have.major, have.minor) != (want.major, want.minor):
        return Check(name, CheckStatus.WARN, detail + ": minor versions differ (torch warns, builds usually work)", fix)
    return Check(name, CheckStatus.PASS, detail)


def check_compiler_for(torch_cuda: str, nvccs: Iterable[NvccInfo]) -> Check:
    """nvcc-vs-torch before the env exists: any host toolkit that fits the planned torch's CUDA passes."""
    checks = [check_nvcc_torch(torch_cuda, n.version, n.path) for n in nvccs]
    return next((c for c in checks if c.status != CheckStatus.FAIL),
                checks[0] if checks else check_nvcc_torch(torch_cuda, None, None))


def check_gcc(gcc_version: str | None, gcc_path: str | None, nvcc: NvccInfo | None) -> Check:
    """The host C++ compiler (host.host_compiler's choice) within nvcc's gcc limit."""
    name = "gcc-vs-nvcc"
    if not gcc_version:
        return Check(name, CheckStatus.FAIL, "no host C++ compiler found (gcc/g++)",
                     "install gcc/g++ (apt-get install g++), or set CC/CXX/CUDAHOSTCXX")
    if nvcc is None:
        return Check(name, CheckStatus.SKIP, f"{Path(gcc_path or 'gcc').name} {gcc_version}; no nvcc to check it against")
    if nvcc.gcc_max is None:
        return Check(name, CheckStatus.SKIP, f"gcc {gcc_version} ({gcc_path}); nvcc's limit not found (crt/host_config.h)")
    parsed = parse_version(gcc_version)
    detail = f"gcc {gcc_version} ({gcc_path}); nvcc {nvcc.version or '?'} accepts gcc <= {nvcc.gcc_max}"
    if parsed is not None and parsed.major > nvcc.gcc_max:
        limit = nvcc.gcc_max
        return Check(name, CheckStatus.FAIL, detail + ": `unsupported GNU version` would stop the compile",
                     f"install gcc-{limit} and set CC=gcc-{limit} CXX=g++-{limit} CUDAHOSTCXX=g++-{limit}")
    return Check(name, CheckStatus.PASS, detail)


def check_archs(archs: Iterable[str], arch_source: str, release, nvcc: NvccInfo | None) -> Check:
    """The target archs (from `arch_source`) supported by the release (catalog Release) and by nvcc."""
    name = "arch-list"
    archs = list(archs)
    origin = f" (archs from {arch_source})"
    wanted = [base_arch(a) for a in archs]
    bad_release = [a for a in wanted if a not in release.cuda_archs]
    if bad_release:
        return Check(name, CheckStatus.FAIL, f"{', '.join(bad_release)} not supported by vLLM {release.version} "
                     f"(it builds for {', '.join(release.cuda_archs)}){origin}",
                     "use --arch with supported values, e.g. --arch 9.0")
    nvcc_archs = nvcc.archs if nvcc else ()
    version = nvcc.version if nvcc else None
    if not nvcc_archs:
        return Check(name, CheckStatus.WARN, f"{';'.join(archs)}: nvcc's arch list unknown (nvcc --list-gpu-arch failed){origin}")
    bad_nvcc = [a for a in wanted if a not in nvcc_archs]
    if bad_nvcc:
        ok = [a for a in wanted if a in nvcc_archs]
        return Check(name, CheckStatus.FAIL, f"nvcc {version} cannot compile for {', '.join(bad_nvcc)} "
                     f"(it supports {', '.join(nvcc_archs)}; of vLLM {release.version}'s: "
                     f"{', '.join(a for a in release.cuda_archs if a in nvcc_archs) or 'none'}){origin}",
                     f"build for the archs this nvcc has: --arch '{';'.join(ok) or nvcc_archs[-1]}' "
                     "(or use an older CUDA for old GPUs)")
    both = [a for a in release.cuda_archs if a in nvcc_archs]
    return Check(name, CheckStatus.PASS, f"{';'.join(archs)}: supported by vLLM {release.version} and nvcc {version}{origin}; "
                               f"of the release's archs this nvcc builds {', '.join(both)}")



def check_torch_pin(release, torch_version: str | None, where: str) -> Check:
    """The torch the build compiles against (`where`'s) vs the release's pin (catalog `torch`): extensions
    built against another torch fail at import (`undefined symbol`). A local tag (+cu130) matches its version."""
    name = "torch-vs-release"
    if not release.torch:
        return Check(name, CheckStatus.SKIP, f"vLLM {release.version} pins no torch")
    pin = f"torch{release.torch}"
    hint = (f"use an interpreter with {pin} (env.python_path), or the profile that installs it: "
            f"--profile pypi-cu13 ({pin} from its lock)")
    if not torch_version:
        return Check(name, CheckStatus.FAIL, f"{where} has no torch; vLLM {release.version} builds against {pin}", hint)
    if not release.torch.contains(torch_version, prereleases=True):
        return Check(name, CheckStatus.FAIL, f"{where} has torch {torch_version}; vLLM {release.version} builds against "
                     f"{pin} only", hint)
    return Check(name, CheckStatus.PASS, f"{where} has torch {torch_version}: vLLM {release.version} pins {pin}")


def check_build_requirements(requires: Sequence[str], packages: Mapping[str, str], python_version: str,
                             release: str, backend: str) -> Check:
    """The release's build requirements (pyproject [build-system] requires) in the env: the build runs
    without isolation, so setup.py imports them from the env (0.26.0: `from setuptools_scm import ...` on its
    first lines). torch is left to torch-vs-release."""
    name = "build-requirements"
    env = {"python_version": ".".join(python_version.split(".")[:2]), "python_full_version": python_version}
    missing, wrong = [], []
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        key = canonicalize_name(req.name)
        if key == "torch" or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        have = packages.get(key)
        if have is None:
            missing.append(str(req))
        elif not req.specifier.contains(have, prereleases=True):
            wrong.append((str(req), f"{req.name} {have}"))
    if not missing and not wrong:
        return Check(name, CheckStatus.PASS, f"the env holds vLLM {release}'s build requirements ({len(requires)})")
    parts = ([f"lacks {', '.join(missing)}"] if missing else []) + [f"has {h}, not {r}" for r, h in wrong]
    fix = " ".join(f"'{r}'" for r in missing + [r for r, _ in wrong])
    hint = (f"install them into the host's Python (python -m pip install {fix}), or use --profile pypi-cu13 "
            "(its lock holds them)" if backend == "existing" else
            "recreate the env from its lock, which holds them: `./inv env --force`")
    return Check(name, CheckStatus.FAIL, f"the env {'; '.join(parts)}: vLLM {release} builds without isolation, "
                 "from the env's packages", hint)


def check_release_floor(release, gcc_version: str | None, cmake_version: str | None, nvcc_version: str | None,
                        cmake_path: str | None = None) -> Check:
    """The release's own compiler floor (catalog: gcc_min, cmake_min, nvcc_min): below it, its CMake stops
    at configure (GCC) or cannot run at all; refused in seconds instead. A cmake not installed yet is no
    failure: the env's lock brings it."""
    name = "toolchain-floor"
    floors = [("gcc", gcc_version, release.gcc_min), ("cmake", cmake_version, release.cmake_min),
              ("nvcc", nvcc_version, release.nvcc_min)]
    floors = [(tool, have, floor) for tool, have, floor in floors if floor]
    if not floors:
        return Check(name, CheckStatus.SKIP, f"vLLM {release.version} names no compiler floor")
    below, seen = [], []
    for tool, have, floor in floors:
        parsed, wanted = parse_version(have), parse_version(floor)
        if parsed is None:
            seen.append(f"{tool} ? (>= {floor}; " + ("the env's lock installs it)" if tool == "cmake" else "not found)"))
        elif wanted is not None and parsed < wanted:
            below.append((tool, have, floor))
            seen.append(f"{tool} {have} < {floor}")
        else:
            seen.append(f"{tool} {have} >= {floor}")
    detail = f"vLLM {release.version} needs " + ", ".join(seen)
    if below:
        fixes = {"gcc": lambda f: f"install gcc/g++ >= {f} (e.g. apt-get install g++-12) and set CC/CXX/CUDAHOSTCXX",
                 "cmake": lambda f: f"rerun `./inv env --force` (the lock installs cmake >= {f}) or "
                                    f"pip install 'cmake>={f}' into the env"
                                    + (f"; the one found is {cmake_path}" if cmake_path else ""),
                 "nvcc": lambda f: matching_compiler_hint(f)}
        return Check(name, CheckStatus.FAIL, detail, "; ".join(fixes[tool](floor) for tool, _have, floor in below))
    missing = [tool for tool, have, _f in floors if parse_version(have) is None and tool != "cmake"]
    return Check(name, CheckStatus.WARN if missing else CheckStatus.PASS, detail)
