"""Facts about a Python env, asked of its own interpreter: torch (read from torch/version.py, not
imported), where vllm lives, `pip inspect`, `pip check`, each compiled extension's SASS (cuobjdump) and
whether it imports. Probes report what they saw; the checks layer (checks/install.py) judges it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name

from vllm_provision.core import runner
from vllm_provision.core.envinfo import EnvInfo
from vllm_provision.core.errors import ProvisionError, StepFailed
from vllm_provision.probes import answer, program

PROBE_TIMEOUT = 120
IMPORT_TIMEOUT = 600
QUIET_PIP = {"PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@dataclass(frozen=True)
class TorchInfo:
    """An interpreter's torch as torch/version.py states it, and where vllm would be imported from."""
    python: str | None = None          # the interpreter's version ("3.11.7"); None: it did not run
    version: str | None = None         # torch.__version__; None: no torch
    cuda: str | None = None            # torch.version.cuda; None: a CPU build (or no torch)
    vllm_dirs: tuple[str, ...] = ()
    error: str = ""                    # why the interpreter could not be asked


def python_info(python: str, timeout: float = 60) -> dict | None:
    """The interpreter's version, sys.path, prefixes and torch distribution (probes/programs/python_info.py);
    None when it does not run or answer."""
    done = runner.capture([python, program("python_info")], timeout=timeout)
    return answer(done.output) if done and done.returncode == 0 else None


def torch_of(python: str, timeout: float = PROBE_TIMEOUT, log: Path | None = None) -> TorchInfo:
    """The interpreter's torch and vllm location, asked in a child with a timeout; never raises."""
    exe = shutil.which(python) or python
    try:
        done = runner.run([exe, program("torch_info")], log=log, timeout=timeout, check=False,
                          what=f"{python} (torch probe)")
    except ProvisionError as exc:
        return TorchInfo(error=exc.message)
    last = (done.output.strip().splitlines() or ["no output"])[-1]
    data = answer(done.output) if done.returncode == 0 else None
    if data is None:
        return TorchInfo(error=f"{python}: {last[-200:]}")
    return TorchInfo(python=data.get("python"), version=data.get("version"), cuda=data.get("cuda"),
                     vllm_dirs=tuple(data.get("vllm_dirs") or ()))


@dataclass(frozen=True)
class Bytecode:
    """Whether an interpreter's package has compiled bytecode where that interpreter looks for it, and
    whether it may write what is missing."""
    package: str
    dir: str | None = None             # None: not installed
    modules: int = 0                   # .py files
    compiled: int = 0                  # of them, with a .pyc where this interpreter reads it
    dont_write: bool = False           # PYTHONDONTWRITEBYTECODE / -B
    writable: bool = False             # the package dir (or the pycache prefix) accepts new .pyc files
    error: str = ""


def bytecode_of(python: str, package: str = "torch", timeout: float = PROBE_TIMEOUT) -> Bytecode:
    """How much of `package` the interpreter can import from bytecode (never raises)."""
    try:
        done = runner.run([shutil.which(python) or python, program("bytecode"), package], timeout=timeout,
                          check=False, what=f"{python} (bytecode probe)")
    except ProvisionError as exc:
        return Bytecode(package, error=exc.message or "no output")
    data = answer(done.output)
    if data is None:
        return Bytecode(package, error=(done.output.strip().splitlines() or ["no output"])[-1][-200:])
    return Bytecode(package, dir=data.get("dir"), modules=data.get("modules", 0), compiled=data.get("compiled", 0),
                    dont_write=data["dont_write"], writable=data.get("writable", False))


def env_facts(python: Path, timeout: float = 300) -> dict:
    """An env's packages, site-packages and CUDA include dirs, and its torch (imported: the env step wants
    its C++ ABI too), read by its own interpreter."""
    result = runner.run([str(python), program("env_facts")], timeout=timeout, check=False, what="env probe",
                        extra_env={"PYTHONNOUSERSITE": "1"})
    data = answer(result.output)
    if data is not None:
        return data
    raise StepFailed(f"the env's interpreter {python} does not run: {result.output.strip()[-300:]}",
                     hint="recreate it with `./inv env --force`")


def site_state(python: str, *, with_base: bool = False, outside: str | None = None) -> dict:
    """What an interpreter's packages are, cheaply (a directory listing, nothing imported or hashed):
    torch's version and CUDA from torch/version.py, and the dist-info names (name-version) of every
    site-packages dir it sees. `with_base`: also those of the base interpreter under a venv (what a
    --system-site-packages venv over `python` sees); `outside`: only the dirs not under that prefix."""
    try:
        result = runner.run([python, program("site_listing"), *(["--with-base"] if with_base else [])], timeout=60,
                            check=False, what="site-packages listing", extra_env={"PYTHONNOUSERSITE": "1"})
    except StepFailed as exc:   # no such interpreter: the step that needs it says so
        return {"error": exc.message}
    data = answer(result.output)
    if data is None:
        return {"error": result.output.strip()[-300:]}
    skip = os.path.realpath(outside) + os.sep if outside else None
    names = sorted({n for d, listed in data["dirs"].items() if not (skip and (d + os.sep).startswith(skip))
                    for n in listed})
    return {"torch": data["torch"], "torch_cuda": data["torch_cuda"], "dists": len(names),
            "dists_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}


def pip_inspect(python: str) -> dict[str, dict]:
    """canonical name -> pip inspect entry ({metadata:{name,version}, direct_url, ...}) of the env."""
    # not logged: its JSON (every package's metadata) is megabytes; the argv and exit code are what matter
    done = runner.run([python, "-m", "pip", "inspect"], timeout=PROBE_TIMEOUT, check=False,
                      what="pip inspect", extra_env=QUIET_PIP)
    text = done.output
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        raise StepFailed("pip inspect printed no JSON (pip older than 22.2?)",
                         hint=f"upgrade pip in the env: {python} -m pip install -U pip") from None
    out: dict[str, dict] = {}
    for entry in data.get("installed", []):
        name = canonicalize_name(entry.get("metadata", {}).get("name", ""))
        out.setdefault(name, entry)   # first on sys.path wins, as for imports
    return out


def installed_versions(inspected: Mapping[str, dict]) -> dict[str, str]:
    return {n: e.get("metadata", {}).get("version", "") for n, e in inspected.items()}


@dataclass(frozen=True)
class PipCheck:
    returncode: int
    output: str
    complaints: tuple[tuple[str, str, str], ...] = field(default=())   # (package, requirement, line)


_NOT_INSTALLED = re.compile(r"^(\S+) \S+ requires (\S+?), which is not installed")
_WRONG = re.compile(r"^(\S+) \S+ has requirement (\S+?)(?:[<>=!~;\[ ].*)?, but you have (\S+) (\S+)")


def parse_pip_check(output: str) -> list[tuple[str, str, str]]:
    """(package, requirement name, line) for each complaint of `pip check`."""
    out = []
    for line in output.splitlines():
        line = line.strip()
        m = _NOT_INSTALLED.match(line) or _WRONG.match(line)
        if m:
            out.append((canonicalize_name(m.group(1)), canonicalize_name(m.group(2).split("[")[0]), line))
        elif line and not line.startswith("No broken requirements"):
            out.append(("", "", line))
    return out


def pip_check(python: str, log: Path | None = None) -> PipCheck:
    done = runner.run([python, "-m", "pip", "check"], log=log, timeout=PROBE_TIMEOUT, check=False,
                      what="pip check", extra_env=QUIET_PIP)
    return PipCheck(done.returncode, done.output, tuple(parse_pip_check(done.output)))


def find_cuobjdump(info: EnvInfo | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """cuobjdump next to the env's nvcc, in the env's/toolkit's nvidia wheels, /usr/local/cuda/bin, PATH."""
    environ = os.environ if environ is None else environ
    dirs: list[Path] = []
    if info and info.nvcc:
        dirs.append(Path(info.nvcc).parent)
    if info and info.cuda_home:
        dirs.append(Path(info.cuda_home) / "bin")
    prefixes = [Path(info.prefix)] if info and info.prefix else []
    prefixes.append(Path(sys.prefix))
    for root in prefixes:
        dirs += sorted(root.glob("lib/python3*/site-packages/nvidia/cu*/bin"), reverse=True)
        dirs += sorted(root.glob("lib/python3*/site-packages/nvidia/cuda_cuobjdump/bin"))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(var):
            dirs.append(Path(environ[var]) / "bin")
    dirs.append(Path("/usr/local/cuda/bin"))
    for d in dirs:
        exe = d / "cuobjdump"
        if exe.is_file() and os.access(exe, os.X_OK):
            return str(exe)
    return shutil.which("cuobjdump", path=environ.get("PATH"))


def parse_list_elf(text: str) -> tuple[str, ...]:
    """`ELF file 1: x.1.sm_90.cubin` lines -> ("sm_90", ...)."""
    return tuple(dict.fromkeys(re.findall(r"\.(sm_\d+[a-z]?)\.cubin", text)))


def sass_of(so: Path, cuobjdump: str) -> tuple[str, ...]:
    """The SASS archs a shared object carries (`cuobjdump --list-elf`); () when it has none or it fails.
    Read once per file version: verify's arch checks and the artifact's read-back ask about the same files."""
    try:
        st = Path(so).stat()
    except OSError:
        return ()
    return _sass_of(str(so), cuobjdump, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _sass_of(so: str, cuobjdump: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    done = runner.capture([cuobjdump, "--list-elf", so], timeout=PROBE_TIMEOUT)
    return parse_list_elf(done.output) if done else ()


def extension_files(dirs: Iterable[str | Path], extensions: Iterable[str]) -> tuple[dict[str, Path], list[str]]:
    """extension name -> its .so in the vllm package dir(s); plus the names not found. A dotted name is a
    module below the package (`vllm_flash_attn._vllm_fa2_C` is vllm_flash_attn/_vllm_fa2_C.*.so)."""
    extensions = list(extensions)
    found: dict[str, Path] = {}
    for name in extensions:
        stem = name.replace(".", "/")
        for d in dirs:
            hits = sorted(Path(d).glob(f"{stem}.*.so")) + sorted(Path(d).glob(f"{stem}.so"))
            if hits:
                found[name] = hits[0]
                break
    return found, [n for n in extensions if n not in found]


@dataclass(frozen=True)
class ImportResult:
    """Each extension's import error (None: it imported); `crash`: the probe itself died before answering."""
    errors: dict = field(default_factory=dict)
    torch_error: str | None = None
    crash: str | None = None


def import_extensions(python: str, so_files: Mapping[str, Path], log: Path | None = None) -> ImportResult:
    """Load each extension .so in the env's python (after torch), without running vllm/__init__.py."""
    done = runner.run([python, program("import_extensions"), json.dumps({k: str(v) for k, v in so_files.items()})],
                      log=log, timeout=PROBE_TIMEOUT, check=False, what="extension import probe")
    res = answer(done.output)
    if res is None:
        tail = done.output.strip().splitlines()[-1:] or ["no output"]
        return ImportResult(crash=f"import probe crashed (exit {done.returncode}): {tail[0][:200]}")
    return ImportResult(errors=res["errors"], torch_error=res["torch_error"])


@dataclass(frozen=True)
class ImportVllm:
    ok: bool
    detail: str               # the last line of the error, or how long the import took
    hint: str | None = None


def import_vllm(python: str, log: Path | None = None, timeout: float = IMPORT_TIMEOUT) -> ImportVllm:
    """`from vllm import LLM, SamplingParams` in the env (needs the GPU driver)."""
    try:
        done = runner.run([python, "-c", "from vllm import LLM, SamplingParams"], log=log, timeout=timeout,
                          check=False, what="import vllm")
    except ProvisionError as exc:
        return ImportVllm(False, exc.message, exc.hint)
    if done.returncode != 0:
        last = (done.output.strip().splitlines() or ["no output"])[-1]
        return ImportVllm(False, last[:300])
    return ImportVllm(True, f"{done.seconds:.1f} s")
