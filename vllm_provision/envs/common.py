"""Shared by the env backends: installers (uv/pip) fed by the mirror env vars, the env probe,
and the CUDA compiler that matches the env's torch."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from packaging.version import InvalidVersion, Version

from .. import minor_version, mirrors, runner
from ..redact import redact_url
from ..errors import StepFailed

INSTALL_TIMEOUT = 3600
# Where a host CUDA toolkit is looked for after $CUDA_HOME, $CUDA_PATH and `nvcc` on PATH.
HOST_CUDA_CANDIDATES: tuple[str, ...] = ("/usr/local/cuda",)
# CUDA >= 13: these PyPI wheels make a complete nvcc (they land under site-packages/nvidia/cu<major>/).
PIP_COMPILER_WHEELS = ("nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-runtime", "nvidia-cuda-cccl")


@dataclass(frozen=True)
class Installer:
    kind: str                  # uv | pip
    env: dict                  # mirror + cache environment variables

    def argv(self, python: Path, *args: str) -> list[str]:
        if self.kind == "uv":
            from uv import find_uv_bin
            return [find_uv_bin(), "pip", "install", "--python", str(python), *args]
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
    if "401" in output or "unauthorized" in low or "403" in output:
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


def install(ctx, installer: Installer, python: Path, args: Sequence[str], *, what: str, index: Any) -> None:
    """Run one install; a failure becomes one line naming the (redacted) mirror and, unless the mirror
    itself fails, the failing package."""
    argv = installer.argv(python, *args)
    result = runner.run(argv, log=ctx.log, extra_env=installer.env, timeout=INSTALL_TIMEOUT, check=False,
                        what=f"{installer.kind} install")
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
            index=index)


PROBE = r"""
import json, platform, sys, os, glob
from importlib import metadata
out = {"python_version": platform.python_version(), "executable": sys.executable, "packages": {}}
for d in metadata.distributions():
    name = d.metadata["Name"]
    if name:
        key = name.lower().replace("_", "-").replace(".", "-")
        out["packages"].setdefault(key, d.version)
sites = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
out["site_packages"] = sites
out["include_dirs"] = sorted({d for s in sites for d in glob.glob(os.path.join(s, "nvidia", "*", "include"))})
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cxx11_abi"] = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
except Exception as exc:
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
print("VLLMP-PROBE " + json.dumps(out))
"""


def probe(python: Path, timeout: float = 300) -> dict:
    """Facts about an env, read by its own interpreter."""
    result = runner.run([str(python), "-c", PROBE], timeout=timeout, check=False, what="env probe",
                        extra_env={"PYTHONNOUSERSITE": "1"})
    for line in result.output.splitlines():
        if line.startswith("VLLMP-PROBE "):
            return json.loads(line[len("VLLMP-PROBE "):])
    raise StepFailed(f"the env's interpreter {python} does not run: {result.output.strip()[-300:]}",
                     hint="recreate it with `inv env --force`")


SITE_LISTING = r"""
import ast, importlib.util, json, os, site, sys
sys.path[:] = [p for p in sys.path if p]   # not the current directory
dirs = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
if "--with-base" in sys.argv:   # what a --system-site-packages venv over this interpreter sees as well
    dirs += site.getsitepackages([sys.base_prefix])
listing = {}
for d in dict.fromkeys(os.path.realpath(p) for p in dirs):
    if os.path.isdir(d):
        listing[d] = sorted(n for n in os.listdir(d) if n.endswith((".dist-info", ".egg-info")))
torch = {}
spec = importlib.util.find_spec("torch")
try:
    with open(os.path.join(os.path.dirname(spec.origin), "version.py")) as fh:
        tree = ast.parse(fh.read())
except (AttributeError, TypeError, OSError, SyntaxError):
    tree = ast.Module(body=[], type_ignores=[])
for node in tree.body:
    target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
    if isinstance(target, ast.Name) and isinstance(getattr(node, "value", None), ast.Constant):
        torch[target.id] = node.value.value
print("VLLMP-SITES " + json.dumps({"dirs": listing, "torch": torch.get("__version__"), "torch_cuda": torch.get("cuda")}))
"""


def site_state(python: str, *, with_base: bool = False, outside: str | None = None) -> dict:
    """What an interpreter's packages are, cheaply (a directory listing, nothing imported or hashed):
    torch's version and CUDA from torch/version.py, and the dist-info names (name-version) of every
    site-packages dir it sees. `with_base`: also those of the base interpreter under a venv (what a
    --system-site-packages venv over `python` sees); `outside`: only the dirs not under that prefix."""
    try:
        result = runner.run([python, "-c", SITE_LISTING, *(["--with-base"] if with_base else [])], timeout=60,
                            check=False, what="site-packages listing", extra_env={"PYTHONNOUSERSITE": "1"})
    except StepFailed as exc:   # no such interpreter: the step that needs it says so
        return {"error": exc.message}
    line = next((l for l in result.output.splitlines() if l.startswith("VLLMP-SITES ")), None)
    if line is None:
        return {"error": result.output.strip()[-300:]}
    data = json.loads(line[len("VLLMP-SITES "):])
    skip = os.path.realpath(outside) + os.sep if outside else None
    names = sorted({n for d, listed in data["dirs"].items() if not (skip and (d + os.sep).startswith(skip))
                    for n in listed})
    return {"torch": data["torch"], "torch_cuda": data["torch_cuda"], "dists": len(names),
            "dists_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}


def nvcc_version(nvcc: Path | str) -> str | None:
    result = runner.capture([str(nvcc), "--version"], timeout=30)
    if result is None or result.returncode != 0:
        return None
    m = re.search(r"release (\d+\.\d+)", result.output)
    return m.group(1) if m else None


def host_toolkits(environ=None) -> list[tuple[str, str, str]]:
    """(cuda_home, nvcc, version) of each CUDA toolkit on the host, in preference order, deduplicated."""
    environ = os.environ if environ is None else environ
    homes = [environ.get("CUDA_HOME"), environ.get("CUDA_PATH")]
    on_path = shutil.which("nvcc", path=environ.get("PATH"))
    if on_path:
        homes.append(str(Path(on_path).resolve().parent.parent))
    homes += list(HOST_CUDA_CANDIDATES)
    out, seen = [], set()
    for home in homes:
        if not home:
            continue
        nvcc = Path(home) / "bin" / "nvcc"
        real = str(nvcc.resolve()) if nvcc.exists() else None
        if not real or real in seen or not has_headers(Path(home)):
            continue
        seen.add(real)
        version = nvcc_version(nvcc)
        if version:
            out.append((str(Path(home)), str(nvcc), version))
    return out


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
class Compiler:
    cuda_home: str | None
    nvcc: str | None
    nvcc_version: str | None
    source: str            # host | pip | conda | none
    reason: str            # why this one / why none


def env_compiler(torch_cuda: str, site_packages: Sequence[str]) -> Compiler | None:
    """The nvcc the env's own CUDA wheels form (site-packages/nvidia/cu<major>), when they are installed."""
    minor, major = minor_version(torch_cuda), Version(torch_cuda).major
    for site in site_packages:
        home = Path(site) / "nvidia" / f"cu{major}"
        nvcc = home / "bin" / "nvcc"
        if nvcc.is_file():
            lib64 = home / "lib64"
            if not lib64.exists() and (home / "lib").is_dir():
                lib64.symlink_to("lib")  # its nvcc.profile looks in lib64
            version = nvcc_version(nvcc)
            if version and cuda_matches(version, torch_cuda):
                return Compiler(str(home), str(nvcc), version, "pip", f"nvcc {version} from PyPI wheels (torch CUDA {torch_cuda})")
            return Compiler(None, None, None, "none", f"the nvcc wheel at {nvcc} reports {version}, not {minor}")
    return None


def pip_compiler(ctx, installer: Installer, python: Path, torch_cuda: str, site_packages: Sequence[str],
                 index: Any) -> Compiler:
    """CUDA >= 13: assemble CUDA_HOME from the nvidia-cuda-nvcc/nvvm/crt/runtime/cccl wheels."""
    minor = minor_version(torch_cuda)
    specs = [f"{name}=={minor}.*" for name in PIP_COMPILER_WHEELS]
    ctx.say(f"installing nvcc {minor} from the package index ({', '.join(PIP_COMPILER_WHEELS)})")
    install(ctx, installer, python, specs, what=f"nvcc {minor} wheels", index=index)
    return env_compiler(torch_cuda, site_packages) or Compiler(
        None, None, None, "none", f"the nvcc {minor} wheels installed no bin/nvcc under nvidia/cu{Version(torch_cuda).major}")


def resolve_compiler(ctx, plan, installer: Installer, python: Path, facts: dict, prefix: Path,
                     channel_compiler: Callable[..., Compiler] | None = None) -> Compiler:
    """A CUDA_HOME whose nvcc matches the env's torch: the env's own (locked) compiler wheels first, then the
    host's when it fits, else one provisioned into the env (`channel_compiler(ctx, plan, torch_cuda, target)`:
    the conda backend's, for plans with conda channels)."""
    torch_cuda = facts.get("torch_cuda")
    own = env_compiler(torch_cuda, facts.get("site_packages", ())) if torch_cuda else None
    if own is not None and own.source == "pip":
        return own
    host = host_toolkits()
    if not torch_cuda:
        why = "torch is not installed in the env" if not facts.get("torch") else f"torch {facts['torch']} has no CUDA"
        if host:
            return Compiler(host[0][0], host[0][1], host[0][2], "host", f"{why}; host nvcc {host[0][2]} recorded")
        return Compiler(None, None, None, "none", f"{why}; no nvcc on the host")
    exact = [t for t in host if minor_version(t[2]) == minor_version(torch_cuda)]
    same_major = [t for t in host if cuda_matches(t[2], torch_cuda)]
    for home, nvcc, version in exact + same_major:
        return Compiler(home, nvcc, version, "host", f"host nvcc {version} matches torch CUDA {torch_cuda}")
    found = ", ".join(f"{v} at {h}" for h, _, v in host) or "none"
    if Version(torch_cuda).major >= 13:
        return pip_compiler(ctx, installer, python, torch_cuda, facts.get("site_packages", ()), plan.env)
    if plan.env.channels and channel_compiler is not None:
        return channel_compiler(ctx, plan, torch_cuda, prefix / "cuda")
    return Compiler(None, None, None, "none",
                    f"no nvcc matching torch's CUDA {torch_cuda} (host toolkits: {found}); no PyPI wheel carries nvcc "
                    f"for CUDA {Version(torch_cuda).major} and no conda channel is configured: set conda.channels "
                    f"to one with cuda-nvcc={minor_version(torch_cuda)}, or install CUDA {minor_version(torch_cuda)} and set CUDA_HOME")


def bin_python(prefix: Path) -> Path:
    return prefix / "bin" / "python"


def toolkit_python() -> str:
    return sys.executable
