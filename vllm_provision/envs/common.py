"""Shared by the env backends: installers (uv/pip) fed by the mirror env vars, and the CUDA compiler that
matches the env's torch (the env's facts come from envprobe, each nvcc's from host)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from vllm_provision import minor_version
from vllm_provision.core import runner
from vllm_provision.core.errors import StepFailed
from vllm_provision.core.progress import Progress, progress
from vllm_provision.core.redact import redact_url
from vllm_provision.envs import lock as locks
from vllm_provision.envs import mirrors
from vllm_provision.probes import host
from vllm_provision.probes.host import NvccInfo

INSTALL_TIMEOUT = 3600
# CUDA >= 13: these PyPI wheels make a complete nvcc (they land under site-packages/nvidia/cu<major>/).
PIP_COMPILER_WHEELS = ("nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-runtime", "nvidia-cuda-cccl")


@dataclass(frozen=True)
class Installer:
    kind: str                  # uv | pip
    env: dict                  # mirror + cache environment variables

    def argv(self, python: Path, *args: str) -> list[str]:
        # Bytecode is compiled at install, as pip does by default (uv does not): otherwise the first
        # `import vllm` compiles transformers & co. (seconds), and every time in a read-only image or
        # under PYTHONDONTWRITEBYTECODE.
        if self.kind == "uv":
            from uv import find_uv_bin
            return [find_uv_bin(), "pip", "install", "--compile-bytecode", "--python", str(python), *args]
        return [str(python), "-m", "pip", "install", *args]


def uv_available() -> bool:
    try:
        from uv import find_uv_bin
        return Path(find_uv_bin()).is_file()
    except (ImportError, FileNotFoundError):
        return False


def choose_installer(plan) -> Installer:
    wanted = plan.env.installer
    kind = "uv" if wanted == "uv" or (wanted == "auto" and uv_available()) else "pip"
    env = mirrors.index_env(plan.env, cache_dir=plan.workspace.cache / "uv")
    if plan.offline:
        env["UV_OFFLINE"] = "1"
    return Installer(kind, env)


_PKG_PATTERNS = (
    re.compile(r"/simple/([A-Za-z0-9._-]+)/"),
    re.compile(r"(?:Failed to (?:fetch|download|prepare distributions?|build)|Because)\s*:?\s*`?([A-Za-z0-9._-]+)(?:==|`| )"),
    re.compile(r"(?:the requirement|distribution found for)\s+([A-Za-z0-9._-]+)"),
    re.compile(r"/packages/[^\s]*/([A-Za-z0-9_.]+?)-\d[^/\s]*\.(?:whl|tar\.gz)"),
)
# uv: "HTTP status server error (503 Service Unavailable)"; pip: "503 Server Error"; probe_index: "HTTP 503"
# 401/403 as a status code, not inside a port, a path or a temp dir's random name (a mirror on :14013 whose file
# fails its hash is a hash mismatch, not a login problem)
_AUTH_ERROR = re.compile(r"(?<![\w:/.-])40[13](?![\w:/.-])")
_SERVER_ERROR = re.compile(r"(?:server error \(|\bHTTP )(5\d\d)\b|\b(5\d\d) Server Error")
REFUSED = "connection refused (mirror down or wrong URL)"
TIMED_OUT = "timed out (raise pypi.timeout for a slow mirror)"
NOT_ON_MIRROR = "not available on the mirror"


@dataclass(frozen=True)
class InstallFailure:
    package: str | None
    reason: str
    mirror_down: bool      # the index itself fails (refused, timed out, 5xx): no package is to blame


def diagnose_install(output: str) -> InstallFailure:
    """Why pip/uv failed, from its output."""
    pkg = None
    for pattern in _PKG_PATTERNS:
        m = pattern.search(output)
        if m:
            pkg = m.group(1)
            break
    low = output.lower()
    server_error = _SERVER_ERROR.search(output)
    if "connection refused" in low or "newconnectionerror" in low or "failed to establish" in low:
        return InstallFailure(pkg, REFUSED, True)
    if "timed out" in low or "timeout" in low:
        return InstallFailure(pkg, TIMED_OUT, True)
    if server_error:
        return InstallFailure(pkg, f"HTTP {server_error.group(1) or server_error.group(2)} (a server error on the mirror)",
                              True)
    if "dns error" in low or "name or service not known" in low or "name resolution" in low:
        return InstallFailure(pkg, "unknown host (check the mirror URL)", True)
    if output.startswith("unreachable ("):   # mirrors.probe_index: the index could not be read at all
        return InstallFailure(pkg, output, True)
    if _AUTH_ERROR.search(output) or "unauthorized" in low or "forbidden" in low:
        reason = "authentication failed (check the credentials in the URL or ~/.netrc)"
    elif "hash" in low and ("mismatch" in low or "do not match" in low or "doesn't match" in low):
        reason = "hash mismatch against the lock (the mirror serves a different file)"
    elif "certificate" in low or "ssl" in low:
        reason = "TLS certificate not trusted (set pypi.cert or pypi.trusted_hosts)"
    elif "no solution" in low or "not found in the package registry" in low or "no matching distribution" in low \
            or "no version" in low or "were not found" in low:
        reason = NOT_ON_MIRROR
    else:
        lines = [l.strip() for l in output.strip().splitlines() if l.strip()]
        reason = lines[-1][:200] if lines else "unknown error"
    return InstallFailure(pkg, reason, False)


def _index_urls(index: Any) -> list[str]:
    return [u for u in [getattr(index, "index_url", None), *(getattr(index, "extra_index_urls", ()) or ())] if u]


_UV_SIZE = re.compile(r"^Downloading (\S+) \(([\d.]+)([KMG]i?B)\)")
_UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 1000, "MB": 10 ** 6, "GB": 10 ** 9}


def install_progress(kind: str, p: Progress) -> Callable[[str], None]:
    """A reader of the installer's output lines that keeps `p` current: pip names each package it collects
    (counted against the lock's pins); uv names only its large downloads, with their sizes (bytes done of
    those announced so far)."""
    sizes: dict[str, int] = {}

    def read(line: str) -> None:
        text = line.strip()
        if kind == "pip":
            if text.startswith("Collecting "):
                p.advance()
                p.note(text.split()[1])
            elif text.startswith("Installing collected packages"):
                p.note("installing")
            return
        m = _UV_SIZE.match(text)
        if m:
            sizes[m.group(1)] = int(float(m.group(2)) * _UNITS[m.group(3)])
            p.update(total=sum(sizes.values()))
            p.note(f"downloading {m.group(1)}")
        elif text.startswith("Downloaded ") and text.split()[1] in sizes:
            p.advance(sizes[text.split()[1]])
        elif text.startswith("Prepared "):
            p.note("installing")
    return read


def install(ctx, installer: Installer, python: Path, args: Sequence[str], *, what: str, index: Any,
            packages: int | None = None) -> None:
    """Run one install (showing its progress: `packages` is how many it installs, when known); a failure
    becomes one line naming the (redacted) mirror and, unless the mirror itself fails, the failing package."""
    argv = installer.argv(python, *args)
    unit, total = ("packages", packages) if installer.kind == "pip" else ("bytes", None)
    with progress(f"installing {what} with {installer.kind}", total, unit=unit, step=ctx.name) as p:
        result = runner.run(argv, log=ctx.log, extra_env=installer.env, timeout=INSTALL_TIMEOUT, check=False,
                            what=f"{installer.kind} install", echo=install_progress(installer.kind, p))
    if result.returncode == 0:
        return
    failure = diagnose_install(result.output)
    # the index that failed: the one named in the installer's output, else all of them
    mirror = next((redact_url(u) for u in _index_urls(index) if redact_url(u).rstrip("/") in result.output),
                  mirrors.describe(index))
    if failure.package and failure.reason == NOT_ON_MIRROR:
        # pip says only "from versions: none" for a 401, a refused connection or a 5xx: ask each index
        for url in _index_urls(index):
            why = mirrors.probe_index(url, failure.package, timeout=min(30, getattr(index, "timeout", 10) or 10))
            if why:
                probed = diagnose_install(why)
                failure = InstallFailure(failure.package, probed.reason if probed.mirror_down else why,
                                         probed.mirror_down)
                mirror = redact_url(url)
                break
    if failure.mirror_down:
        message = f"the package index {mirror} cannot be used: {failure.reason}"
        hint = f"check that the mirror is up and pypi.index_url is right; the previous env is unchanged; full log: {ctx.log}"
    else:
        message = f"could not install {failure.package or what} from {mirror}: {failure.reason}"
        hint = f"the previous env is unchanged; full log: {ctx.log}"
    tail = "\n".join(result.output.strip().splitlines()[-12:])
    raise StepFailed(mirrors.scrub(message, index), hint=hint, log_tail=mirrors.scrub(tail, index))


def install_lock(ctx, installer: Installer, python: Path, lock: Path, index: Any) -> None:
    """Exactly the lock: every pin, hash-checked, nothing resolved beyond it."""
    install(ctx, installer, python, ["--require-hashes", "--no-deps", "-r", str(lock)], what=f"the lock {lock.name}",
            index=index, packages=len(locks.pinned(lock)))


def host_toolkits(environ=None) -> list[NvccInfo]:
    """Each CUDA toolkit on the host with a working nvcc and its headers, in torch's order, deduplicated."""
    return [replace(n, source="host") for n in host.nvcc_candidates(environ)
            if n.version and has_headers(Path(n.cuda_home))]


def has_headers(home: Path) -> bool:
    """A usable CUDA_HOME has the runtime headers (a bare nvcc wrapper in /usr/local/bin is not one)."""
    return any((home / d / "cuda_runtime.h").is_file() for d in ("include", "targets/x86_64-linux/include",
                                                                  "targets/sbsa-linux/include"))


def cuda_matches(nvcc: str, torch_cuda: str) -> bool:
    """torch's rule (cpp_extension): the major versions must match."""
    try:
        return Version(nvcc).major == Version(torch_cuda).major
    except InvalidVersion:
        return False


@dataclass(frozen=True)
class CompilerChoice:
    """The nvcc chosen for the env's torch (None: none fits) and why."""
    nvcc: NvccInfo | None
    reason: str

    @property
    def source(self) -> str:        # host | pip | conda | none
        return self.nvcc.source if self.nvcc else "none"

    @property
    def cuda_home(self) -> str | None:
        return self.nvcc.cuda_home if self.nvcc else None


def env_compiler(torch_cuda: str, site_packages: Sequence[str]) -> CompilerChoice | None:
    """The nvcc the env's own CUDA wheels form (site-packages/nvidia/cu<major>), when they are installed."""
    minor, major = minor_version(torch_cuda), Version(torch_cuda).major
    for site in site_packages:
        home = Path(site) / "nvidia" / f"cu{major}"
        nvcc = home / "bin" / "nvcc"
        if nvcc.is_file():
            lib64 = home / "lib64"
            if not lib64.exists() and (home / "lib").is_dir():
                lib64.symlink_to("lib")  # its nvcc.profile looks in lib64
            found = host.probe_nvcc(str(nvcc), "pip")
            if found.version and cuda_matches(found.version, torch_cuda):
                return CompilerChoice(found, f"nvcc {found.version} from PyPI wheels (torch CUDA {torch_cuda})")
            return CompilerChoice(None, f"the nvcc wheel at {nvcc} reports {found.version}, not {minor}")
    return None


def pip_compiler(ctx, installer: Installer, python: Path, torch_cuda: str, site_packages: Sequence[str],
                 index: Any) -> CompilerChoice:
    """CUDA >= 13: assemble CUDA_HOME from the nvidia-cuda-nvcc/nvvm/crt/runtime/cccl wheels."""
    minor = minor_version(torch_cuda)
    specs = [f"{name}=={minor}.*" for name in PIP_COMPILER_WHEELS]
    ctx.say(f"installing nvcc {minor} from the package index ({', '.join(PIP_COMPILER_WHEELS)})")
    install(ctx, installer, python, specs, what=f"nvcc {minor} wheels", index=index)
    return env_compiler(torch_cuda, site_packages) or CompilerChoice(
        None, f"the nvcc {minor} wheels installed no bin/nvcc under nvidia/cu{Version(torch_cuda).major}")


def resolve_compiler(ctx, plan, installer: Installer, python: Path, facts: dict, prefix: Path,
                     channel_compiler: Callable[..., CompilerChoice] | None = None) -> CompilerChoice:
    """A CUDA_HOME whose nvcc matches the env's torch: the env's own (locked) compiler wheels first, then the
    host's when it fits, else one provisioned into the env (`channel_compiler(ctx, plan, torch_cuda, target)`:
    the conda backend's, for plans with conda channels)."""
    torch_cuda = facts.get("torch_cuda")
    own = env_compiler(torch_cuda, facts.get("site_packages", ())) if torch_cuda else None
    if own is not None and own.source == "pip":
        return own
    toolkits = host_toolkits()
    if not torch_cuda:
        why = "torch is not installed in the env" if not facts.get("torch") else f"torch {facts['torch']} has no CUDA"
        if toolkits:
            return CompilerChoice(toolkits[0], f"{why}; host nvcc {toolkits[0].version} recorded")
        return CompilerChoice(None, f"{why}; no nvcc on the host")
    fits = host.best_nvcc(toolkits, torch_cuda)
    if fits is not None and cuda_matches(fits.version, torch_cuda):
        return CompilerChoice(fits, f"host nvcc {fits.version} matches torch CUDA {torch_cuda}")
    found = ", ".join(f"{n.version} at {n.cuda_home}" for n in toolkits) or "none"
    if Version(torch_cuda).major >= 13:
        return pip_compiler(ctx, installer, python, torch_cuda, facts.get("site_packages", ()), plan.env)
    if plan.env.channels and channel_compiler is not None:
        return channel_compiler(ctx, plan, torch_cuda, prefix / "cuda")
    return CompilerChoice(None, f"no nvcc matching torch's CUDA {torch_cuda} (host toolkits: {found}); no PyPI wheel "
                    f"carries nvcc for CUDA {Version(torch_cuda).major} and no conda channel is configured: set "
                    f"conda.channels to one with cuda-nvcc={minor_version(torch_cuda)}, or install CUDA "
                    f"{minor_version(torch_cuda)} and set CUDA_HOME")


def bin_python(prefix: Path) -> Path:
    return prefix / "bin" / "python"


def toolkit_python() -> str:
    return sys.executable
