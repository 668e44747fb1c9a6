"""Host facts, probed once per run: GPUs, driver, CPUs, RAM, disk, interpreters, every nvcc (one type,
NvccInfo, for doctor, preflight, the env step and verify) and the host C++ compiler.

GPU facts come from `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`; parsing is split
from running so recorded outputs from a real GPU host serve as test fixtures.
"""

from __future__ import annotations

import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import cache, lru_cache
from pathlib import Path

from packaging.version import InvalidVersion, Version

from vllm_provision.core import runner
from vllm_provision.probes import answer, program

GPU_QUERY = "index,name,memory.total,memory.used,compute_cap,driver_version,uuid"
# Where a host CUDA toolkit is looked for after $CUDA_HOME, $CUDA_PATH and `nvcc` on PATH.
HOST_CUDA_CANDIDATES: tuple[str, ...] = ("/usr/local/cuda",)


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_total_mib: int
    memory_used_mib: int
    compute_cap: str
    driver_version: str
    uuid: str = ""


@dataclass(frozen=True)
class HostFacts:
    gpus: tuple[Gpu, ...] = ()
    gpu_error: str | None = None          # why no GPU list: nvidia-smi missing / failed
    driver_cuda: str | None = None        # the CUDA version the driver supports ("CUDA Version: 13.0")
    cpu_count: int = 1
    mem_available_bytes: int = 0
    mem_total_bytes: int = 0
    disk_free_bytes: int = 0
    extra: dict = field(default_factory=dict)
    driver_version: str | None = None     # "580.95.05"
    nvcc: tuple = ()                      # NvccInfo for every candidate compiler found
    gcc_version: str | None = None        # the host C++ compiler's version ("12.2.0")
    gcc_path: str | None = None
    gpu_processes: tuple = ()             # GpuProcess: other programs holding GPU memory

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def compute_caps(self) -> tuple[str, ...]:
        return tuple(sorted({g.compute_cap for g in self.gpus}, key=lambda c: tuple(int(x) for x in c.split("."))))


@dataclass(frozen=True)
class NvccInfo:
    """One nvcc, the only type that describes one (doctor, preflight, the env step and verify use it)."""
    path: str
    source: str                  # CUDA_HOME | CUDA_PATH | PATH | /usr/local/cuda | env | pip | conda
    version: str | None          # "13.0"
    gcc_max: int | None = None   # newest gcc major it accepts (crt/host_config.h), None: no limit found
    archs: tuple[str, ...] = ()  # compute capabilities it compiles for (`--list-gpu-arch`: "7.5", "8.0", ...)
    top: str | None = None       # its CUDA home as nvcc itself reports it (`--dryrun`: wrapper scripts resolved)
    include_dirs: tuple[str, ...] = ()   # the -I dirs nvcc adds (`--dryrun`)

    @property
    def cuda_home(self) -> str:
        return os.path.normpath(self.top) if self.top else str(Path(self.path).parent.parent)

    def header_dirs(self) -> list[Path]:
        home = Path(self.cuda_home)
        return [Path(d) for d in self.include_dirs] + [home / "include", *sorted(home.glob("targets/*/include"))]


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str
    used_mib: int


COMPUTE_APPS_QUERY = "pid,process_name,used_memory"


def parse_gpu_csv(text: str, fields: str = GPU_QUERY) -> tuple[Gpu, ...]:
    """Rows of `nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits`, by column name."""
    names = fields.split(",")
    gpus = []
    for line in text.strip().splitlines():
        cells = dict(zip(names, (c.strip() for c in line.split(",")), strict=False))
        if not {"index", "name", "memory.total", "compute_cap"} <= cells.keys():
            continue
        gpus.append(Gpu(index=int(cells["index"]), name=cells["name"],
                        memory_total_mib=int(float(cells["memory.total"])),
                        memory_used_mib=int(float(cells.get("memory.used") or 0)), compute_cap=cells["compute_cap"],
                        driver_version=cells.get("driver_version", ""), uuid=cells.get("uuid", "")))
    return tuple(gpus)


def parse_driver_cuda(nvidia_smi_text: str) -> str | None:
    m = re.search(r"CUDA Version\s*:\s*([0-9]+\.[0-9]+)", nvidia_smi_text)
    return m.group(1) if m else None


def parse_driver_version(text: str) -> str | None:
    """`Driver Version: 580.95.05` from plain nvidia-smi, or the first cell of a one-column CSV."""
    m = re.search(r"Driver Version\s*:\s*([0-9.]+)", text)
    if m:
        return m.group(1)
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    return first if re.fullmatch(r"[0-9]+(\.[0-9]+)+", first) else None


def parse_nvcc_version(text: str) -> str | None:
    """`Cuda compilation tools, release 13.0, V13.0.88` -> "13.0"."""
    m = re.search(r"release (\d+\.\d+)", text)
    return m.group(1) if m else None


def parse_gcc_limit(header_text: str) -> int | None:
    """Newest gcc major nvcc accepts, from crt/host_config.h: `#if __GNUC__ > 15` -> 15."""
    m = re.search(r"#if\s+__GNUC__\s*>\s*(\d+)", header_text)
    return int(m.group(1)) if m else None


def parse_gpu_archs(text: str) -> tuple[str, ...]:
    """`nvcc --list-gpu-arch` (compute_75 ... compute_120) -> ("7.5", ..., "12.0")."""
    return tuple(dict.fromkeys(f"{m.group(1)}.{m.group(2)}" for m in re.finditer(r"compute_(\d+?)(\d)[a-z]?\b", text)))


def parse_dryrun(text: str) -> tuple[str | None, tuple[str, ...]]:
    """TOP and the -I dirs from `nvcc --dryrun -E -x cu /dev/null`."""
    top = re.search(r"^#\$ TOP=(.+)$", text, re.M)
    inc = re.search(r"^#\$ INCLUDES=(.+)$", text, re.M)
    dirs = tuple(re.findall(r'"-I([^"]+)"', inc.group(1))) if inc else ()
    return (top.group(1).strip() if top else None), dirs


def parse_gcc_version(text: str) -> str | None:
    """`gcc -dumpfullversion -dumpversion` ("12.2.0") or `gcc --version`'s first line."""
    m = re.search(r"(?<![\w.])(\d+\.\d+(?:\.\d+)?)(?![\w.])", text.strip().splitlines()[0] if text.strip() else "")
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*(\d+)\s*", text)
    return m.group(1) if m else None


def parse_compute_apps(text: str) -> tuple[GpuProcess, ...]:
    """`nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader,nounits`."""
    out = []
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.rsplit(",", 1)]
        head = [c.strip() for c in cells[0].split(",", 1)] if cells else []
        if len(cells) != 2 or len(head) != 2 or not head[0].isdigit():
            continue
        try:
            used = int(float(cells[1]))
        except ValueError:
            used = 0
        out.append(GpuProcess(pid=int(head[0]), name=head[1], used_mib=used))
    return tuple(out)


def parse_meminfo(text: str) -> tuple[int, int]:
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            values[key] = int(parts[0]) * 1024
    return values.get("MemAvailable", values.get("MemFree", 0)), values.get("MemTotal", 0)


def nvcc_candidates(environ=None, env_nvcc: str | None = None) -> list[NvccInfo]:
    """Every nvcc found, in torch's search order ($CUDA_HOME, $CUDA_PATH, PATH, /usr/local/cuda) then the
    env's pip-provisioned one; each probed (once per run). Duplicates (same real file) once."""
    environ = os.environ if environ is None else environ
    found: list[tuple[str, str]] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(var):
            found.append((str(Path(environ[var]) / "bin" / "nvcc"), var))
    which = shutil.which("nvcc", path=environ.get("PATH", ""))
    if which:
        found.append((which, "PATH"))
    found += [(str(Path(home) / "bin" / "nvcc"), home) for home in HOST_CUDA_CANDIDATES]
    if env_nvcc:
        found.append((env_nvcc, "env (pip wheels)"))
    out, seen = [], set()
    for path, source in found:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        out.append(probe_nvcc(path, source))
    return out


NVCC_TIMEOUT = 20


def probe_nvcc(path: str, source: str = "") -> NvccInfo:
    """An nvcc's version, archs, CUDA home, include dirs and gcc limit (each path probed once per run)."""
    return replace(_probe_nvcc(path), source=source)


@cache
def _probe_nvcc(path: str) -> NvccInfo:
    asks = ([path, "--version"], [path, "--list-gpu-arch"], [path, "--dryrun", "-E", "-x", "cu", os.devnull])
    with ThreadPoolExecutor(max_workers=len(asks)) as pool:     # three cold nvcc starts at once
        done, archs, dry = pool.map(lambda argv: runner.capture(argv, timeout=NVCC_TIMEOUT), asks)
    version = parse_nvcc_version(done.output) if done and done.returncode == 0 else None
    top, dirs = parse_dryrun(dry.output) if dry else (None, ())
    nvcc = NvccInfo(path=path, source="", version=version, top=top, include_dirs=dirs,
                    archs=parse_gpu_archs(archs.output) if archs and archs.returncode == 0 else ())
    return replace(nvcc, gcc_max=gcc_limit(nvcc.header_dirs()))


def gcc_limit(header_dirs) -> int | None:
    """nvcc's newest accepted gcc major, from the crt/host_config.h of the first header dir that has one."""
    for header in [Path(d) / "crt" / "host_config.h" for d in header_dirs]:
        try:
            limit = parse_gcc_limit(header.read_text(errors="replace"))
        except OSError:
            continue
        if limit:
            return limit
    return None


def best_nvcc(nvccs, torch_cuda: str | None) -> NvccInfo | None:
    """The nvcc a build for torch's CUDA picks: exact major.minor match, else same major, else the first found."""
    usable = [n for n in nvccs if n.version]
    want = _release(torch_cuda)
    exact = [n for n in usable if want and _release(n.version)[:2] == want[:2]]
    same = [n for n in usable if want and _release(n.version)[:1] == want[:1]]
    return (exact or same or usable or [None])[0]


def _release(version: str | None) -> tuple[int, ...]:
    try:
        return Version(version).release if version else ()
    except InvalidVersion:
        return ()


def host_compiler(environ=None) -> str | None:
    """The host C++ compiler: $CUDAHOSTCXX (nvcc's -ccbin), else $CXX (the build compiles C++ with it), else
    $CC, else g++/gcc on PATH."""
    environ = os.environ if environ is None else environ
    for var in ("CUDAHOSTCXX", "CXX", "CC"):
        if environ.get(var):
            return shutil.which(environ[var], path=environ.get("PATH")) or environ[var]
    return shutil.which("g++", path=environ.get("PATH")) or shutil.which("gcc", path=environ.get("PATH"))


@cache
def compiler_version(cc: str) -> str | None:
    """`cc -dumpfullversion -dumpversion` ("12.2.0"), once per run."""
    done = runner.capture([cc, "-dumpfullversion", "-dumpversion"], timeout=10)
    return parse_gcc_version(done.output) if done and done.returncode == 0 else None


def probe_gcc(environ=None) -> tuple[str | None, str | None]:
    """(path, version) of the host C++ compiler."""
    cc = host_compiler(environ)
    return (cc, compiler_version(cc)) if cc else (None, None)


def probe_gpus() -> tuple[tuple[Gpu, ...], str | None, str | None]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return (), "nvidia-smi not found", None
    result = runner.capture([smi, f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"])
    if result is None or result.returncode != 0:
        detail = (result.output.strip().splitlines() or ["no output"])[-1] if result else "could not run"
        return (), f"nvidia-smi failed: {detail}", None
    header = runner.capture([smi])
    return parse_gpu_csv(result.output), None, parse_driver_cuda(header.output) if header else None


@lru_cache(maxsize=4)
def probe(disk_path: str = ".") -> HostFacts:
    gpus, gpu_error, driver_cuda = probe_gpus()
    processes: tuple = ()
    smi = shutil.which("nvidia-smi")
    if gpus and smi:
        apps = runner.capture([smi, f"--query-compute-apps={COMPUTE_APPS_QUERY}", "--format=csv,noheader,nounits"])
        processes = parse_compute_apps(apps.output) if apps and apps.returncode == 0 else ()
    gcc_path, gcc_version = probe_gcc()
    try:
        available, total = parse_meminfo(Path("/proc/meminfo").read_text())
    except OSError:
        available = total = 0
    path = Path(disk_path)
    while not path.exists():
        path = path.parent
    return HostFacts(gpus=gpus, gpu_error=gpu_error, driver_cuda=driver_cuda,
                     cpu_count=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                     mem_available_bytes=available, mem_total_bytes=total,
                     disk_free_bytes=shutil.disk_usage(path).free,
                     driver_version=gpus[0].driver_version if gpus else None,
                     nvcc=tuple(nvcc_candidates()), gcc_version=gcc_version, gcc_path=gcc_path,
                     gpu_processes=processes)


@cache
def find_interpreter(minor: str) -> str | None:
    """A working python`minor` ("3.10"): PATH first, then pyenv's versions.

    Each candidate is run once, since a pyenv shim for a version that is not selected exists on
    PATH but fails.
    """
    candidates = [p for p in (shutil.which(f"python{minor}"),) if p]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(str(p) for p in pyenv_root.glob(f"{minor}.*/bin/python{minor}"))
    for path in candidates:
        result = runner.capture([path, program("python_info")], timeout=10)
        info = answer(result.output) if result and result.returncode == 0 else None
        if info and info.get("venv_module") and "{}.{}".format(*info["version_info"]) == minor:
            return path
    return None


def facts_from(*, gpu_csv: str = "", smi_text: str = "", apps_csv: str = "", meminfo: str = "", cpu_count: int = 1,
               disk_free_bytes: int = 0, gpu_error: str | None = None) -> HostFacts:
    """HostFacts from recorded command outputs (no commands run): the parsing half of `probe()`."""
    gpus = parse_gpu_csv(gpu_csv)
    available, total = parse_meminfo(meminfo) if meminfo else (0, 0)
    return HostFacts(gpus=gpus, gpu_error=None if gpus else (gpu_error or "nvidia-smi not found"),
                     driver_cuda=parse_driver_cuda(smi_text), cpu_count=cpu_count, mem_available_bytes=available,
                     mem_total_bytes=total, disk_free_bytes=disk_free_bytes,
                     driver_version=(gpus[0].driver_version if gpus else parse_driver_version(smi_text)),
                     gpu_processes=parse_compute_apps(apps_csv))


def parse_cmake_version(text: str) -> str | None:
    """`cmake version 3.26.4` -> "3.26.4"."""
    m = re.search(r"cmake version (\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else None


def probe_cmake(python: str | None = None, environ=None) -> tuple[str | None, str | None]:
    """(path, version) of the cmake a CMake-era build runs: beside the env's python (its lock's wheel) first,
    else on PATH."""
    environ = os.environ if environ is None else environ
    search = os.pathsep.join(([str(Path(python).parent)] if python else []) + [environ.get("PATH", "")])
    cmake = shutil.which("cmake", path=search)
    if not cmake:
        return None, None
    done = runner.capture([cmake, "--version"], timeout=20)
    return cmake, parse_cmake_version(done.output) if done and done.returncode == 0 else None
