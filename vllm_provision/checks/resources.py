"""Named checks on the host's resources for a build, shared by doctor and preflight: disk and RAM."""

from __future__ import annotations

from vllm_provision import GIB
from vllm_provision.checks import Check, CheckStatus

# Disk for a build: the source tree with 7 build-temp dirs and libraries (~0.3 GiB at one arch, more
# with more archs), pip's editable-wheel temp copy, and the compiler cache.
BUILD_DISK_BYTES = 3 * GIB
# Before the env exists: a fresh env with torch + CUDA wheels, the build tree, logs and caches.
NEW_ENV_DISK_BYTES = 12 * GIB


def disk_needed(backend: str, env_ready: bool) -> int:
    """Disk the rest of the plan needs: the build, plus a new env unless it exists or the profile reuses one."""
    return BUILD_DISK_BYTES if env_ready or backend == "existing" else NEW_ENV_DISK_BYTES


def check_disk(free: int, need: int, where: str = "") -> Check:
    detail = f"{free / GIB:.1f} GiB free, the build needs about {need / GIB:.1f} GiB" + (f" under {where}" if where else "")
    if not free:
        return Check("disk", CheckStatus.SKIP, detail)
    if free < need:
        return Check("disk", CheckStatus.FAIL, detail, "free disk space or move the workspace (workspace_root)")
    if free < 2 * need:
        return Check("disk", CheckStatus.WARN, detail, "little headroom for caches and a second env")
    return Check("disk", CheckStatus.PASS, detail)


def check_ram(available: int, max_jobs: int, peak: int) -> Check:
    """RAM for `max_jobs` compile jobs of `peak` bytes each."""
    detail = f"{available / GIB:.1f} GiB available; {max_jobs} job(s) x {peak / GIB:.1f} GiB peak"
    if not available:
        return Check("ram", CheckStatus.SKIP, "available RAM unknown")
    if available < peak:
        return Check("ram", CheckStatus.FAIL, detail + ": not enough for one compile job",
                     "free memory (stop other programs) or add swap")
    fit = max(1, available // peak)
    if max_jobs > fit:
        return Check("ram", CheckStatus.WARN, detail + ": more jobs than RAM allows, the compiler may be Killed",
                     f"--max-jobs {fit}")
    return Check("ram", CheckStatus.PASS, detail)
