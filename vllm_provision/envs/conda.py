"""conda backend: conda/mamba/micromamba when one is on PATH and the channels carry no credentials, else
py-rattler in a child process.

Only the configured channels are used; with override_channels (the default) no default channel is
ever contacted. Python comes from the channel; the lock is then installed with uv/pip.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from packaging.version import Version

from vllm_provision import minor_version
from vllm_provision.core import runner
from vllm_provision.core.errors import ConfigError, ProvisionError, StepFailed
from vllm_provision.core.progress import progress
from vllm_provision.core.redact import has_secret, redact_url
from vllm_provision.envs import mirrors, rattler_child
from vllm_provision.envs.common import CompilerChoice, bin_python, cuda_matches
from vllm_provision.probes import host

DEFAULT_CHANNELS = ("conda-forge",)
TOOLS = ("micromamba", "mamba", "conda")


def channels(plan) -> list[str]:
    out = list(plan.env.channels)
    if not plan.env.override_channels:
        out += [c for c in DEFAULT_CHANNELS if c not in out]
    return out


def _shown(chs: Sequence[str]) -> str:
    return ", ".join(redact_url(c) for c in chs)


def find_tool() -> str | None:
    for name in TOOLS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _rattler_installed() -> bool:
    try:
        import rattler  # noqa: F401
    except ImportError:
        return False
    return True


def solve_install(ctx, chs: Sequence[str], specs: Sequence[str], prefix: Path, *, what: str) -> dict:
    """Create `prefix` with `specs` from `chs`: the conda CLI if present, else rattler in a child process.

    Channels with credentials always go through rattler, which takes them from its environment and holds
    them in memory: the CLI would show them in its argv to every user of the host (/proc/*/cmdline)."""
    plan = ctx.plan
    tool = find_tool()
    credentialed = [c for c in chs if has_secret(c)]
    if tool and not credentialed:
        argv = [tool, "create", "-y", "-p", str(prefix)]
        if plan.env.override_channels:
            argv.append("--override-channels")
        for c in chs:
            argv += ["-c", c]
        with progress(f"{Path(tool).name} create", step=ctx.name):     # a heartbeat: conda prints no counts
            result = runner.run(argv + list(specs), log=ctx.log, timeout=3600, check=False,
                                what=f"{Path(tool).name} create")
        if result.returncode != 0:
            _fail(result.output, chs, specs, what, plan)
        return {"tool": Path(tool).name}
    if not _rattler_installed():
        if tool:
            raise ConfigError(f"conda channel(s) {_shown(credentialed)} carry credentials, which "
                              f"`{Path(tool).name} create` would show in the process list",
                              hint="install the toolkit's `conda` extra (VLLMP_EXTRAS=conda,test ./inv ...): "
                                   "py-rattler keeps the credentials out of every argv and file")
        raise ConfigError("the conda backend needs conda, mamba or micromamba on PATH, or py-rattler installed",
                          hint="install the toolkit's `conda` extra (VLLMP_EXTRAS=conda,test ./inv ...) "
                               "or put micromamba on PATH")
    cache_dir = plan.workspace.cache / "rattler"
    throwaway = None
    if any(has_secret(url) for url in rattler_child.split_credentials(list(chs))[0]):
        # rattler keeps each URL in its caches: a token in the URL itself gets a cache removed afterwards
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        cache_dir = throwaway = Path(tempfile.mkdtemp(prefix="rattler-tokened-", dir=cache_dir.parent))
    spec = {"channels": list(chs), "specs": list(specs), "prefix": str(prefix), "timeout": plan.env.timeout,
            "cache_dir": str(cache_dir)}
    ctx.say(f"solving {' '.join(specs)} from {_shown(chs)} (rattler)")
    try:
        with progress("solving and installing (rattler)", step=ctx.name):
            result = runner.run([sys.executable, "-m", "vllm_provision.envs.rattler_child"], log=ctx.log,
                                extra_env={rattler_child.SPEC_VARIABLE: json.dumps(spec)},
                                timeout=max(600, plan.env.timeout * 10), check=False, what="rattler")
    finally:
        if throwaway:
            shutil.rmtree(throwaway, ignore_errors=True)
    data = None
    for line in result.output.splitlines():
        if line.startswith("VLLMP-RATTLER "):
            data = json.loads(line[len("VLLMP-RATTLER "):])
    if not data or not data.get("ok") or result.returncode != 0:
        _fail((data or {}).get("error") or result.output, chs, specs, what, plan)
    return {"tool": "rattler", "packages": data.get("packages", {})}


def _fail(output: str, chs: Sequence[str], specs: Sequence[str], what: str, plan) -> None:
    text = mirrors.scrub(output, plan.env)
    low = text.lower()
    shown = _shown(chs)
    python_spec = next((s for s in specs if s.split("=")[0].split(" ")[0] == "python"), None)
    if python_spec and ("python" in low and ("no candidates" in low or "cannot solve" in low
                                               or "nothing provides" in low or "packagesnotfound" in low
                                               or "not available" in low)):
        version = python_spec.split("=", 1)[-1].strip()
        raise ConfigError(f"conda channel(s) {shown} have no python {version}",
                          hint="pick a Python the channel has (env.python) or add a channel that has it")
    if "connect" in low or "timed out" in low or "timeout" in low or "dns" in low or "error sending request" in low:
        raise StepFailed(f"conda channel(s) {shown} unreachable while creating {what}",
                         hint=f"check conda.channels and the network; the previous env is unchanged. Detail: {text[-300:]}")
    last = [l for l in text.strip().splitlines() if l.strip()][-1:] or ["unknown error"]
    raise StepFailed(f"could not create {what} from {shown}: {last[0][:300]}",
                     hint="the previous env is unchanged; read the step log")


def create(ctx, prefix: Path) -> Path:
    plan = ctx.plan
    chs = channels(plan)
    if not chs:
        raise ConfigError("the conda backend needs conda.channels", hint="set conda.channels or use --backend venv")
    specs = [f"python={plan.env.python}"]
    installer = plan.env.installer
    if installer == "pip":
        specs.append("pip")
    info = solve_install(ctx, chs, specs, prefix, what=f"the conda env {prefix.name}")
    python = bin_python(prefix)
    if not python.exists():
        raise StepFailed(f"the conda env at {prefix} has no bin/python", hint=f"check that {_shown(chs)} serves python")
    ctx.say(f"conda env created with {info['tool']} from {_shown(chs)}")
    return python


def conda_compiler(ctx, plan, torch_cuda: str, target: Path) -> CompilerChoice:
    """CUDA 12.x: `cuda-nvcc=<major.minor>` from the configured channel into its own prefix (the CUDA_HOME)."""
    minor = minor_version(torch_cuda)
    chs = channels(plan)
    ctx.say(f"installing cuda-nvcc {minor} from {_shown(chs)} (no PyPI wheel carries nvcc for CUDA {Version(torch_cuda).major})")
    try:
        solve_install(ctx, chs, [f"cuda-nvcc={minor}"], target, what=f"cuda-nvcc {minor}")
    except ProvisionError as exc:
        return CompilerChoice(None, f"cuda-nvcc={minor} could not come from {_shown(chs)}: {exc}")
    nvcc = target / "bin" / "nvcc"
    found = host.probe_nvcc(str(nvcc), "conda") if nvcc.exists() else None
    if found and found.version and cuda_matches(found.version, torch_cuda):
        return CompilerChoice(found, f"nvcc {found.version} from conda channel {_shown(chs)}")
    return CompilerChoice(None, f"cuda-nvcc={minor} from {_shown(chs)} gave no working nvcc "
                                f"(found {found.version if found and found.version else 'none'})")

