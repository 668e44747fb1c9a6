"""The GPU archs of the built libraries, read back with cuobjdump (envprobe), against the plan and the GPUs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vllm_provision.checks.install import covers
from vllm_provision.core.archs import base_arch
from vllm_provision.core.envinfo import EnvInfo
from vllm_provision.core.errors import StepFailed
from vllm_provision.probes.envprobe import find_cuobjdump, sass_of


def read_archs(libraries: Iterable[Path], info: EnvInfo | None) -> dict[str, tuple[str, ...]]:
    """Library file name -> the SASS archs inside it (sorted)."""
    cuobjdump = find_cuobjdump(info)
    if not cuobjdump:
        raise StepFailed("cuobjdump not found: the archs inside the libraries cannot be read back",
                         hint="the toolkit installs it (the nvidia-cuda-cuobjdump wheel): reinstall its venv with "
                              "`rm -rf .venv; ./inv --list` (or put the CUDA toolkit's bin/ on PATH)")
    return {Path(so).name: tuple(sorted(sass_of(Path(so), cuobjdump))) for so in libraries}


def planned_archs(arch_list: Iterable[str]) -> tuple[str, ...]:
    """Plan archs ("8.0", "9.0+PTX") -> the SASS they compile to ("sm_80", "sm_90")."""
    return tuple(sorted({"sm_" + base_arch(a).replace(".", "") for a in arch_list}))


def uncovered(archs: Iterable[str], compute_caps: Iterable[str]) -> list[str]:
    """The compute capabilities none of the SASS archs runs on."""
    archs = list(archs)
    return [cc for cc in dict.fromkeys(compute_caps) if not any(covers(a, cc) for a in archs)]
