"""Host facts, probed once per run: GPUs, driver, CPUs, RAM, disk, interpreters.

GPU facts come from `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`; parsing is split
from running so recorded outputs from a real GPU host serve as test fixtures.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from . import runner

GPU_QUERY = "index,name,memory.total,memory.used,compute_cap,driver_version,uuid"


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

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def compute_caps(self) -> tuple[str, ...]:
        return tuple(sorted({g.compute_cap for g in self.gpus}, key=lambda c: tuple(int(x) for x in c.split("."))))


def parse_gpu_csv(text: str) -> tuple[Gpu, ...]:
    gpus = []
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 6:
            continue
        gpus.append(Gpu(index=int(cells[0]), name=cells[1], memory_total_mib=int(float(cells[2])),
                        memory_used_mib=int(float(cells[3])), compute_cap=cells[4], driver_version=cells[5],
                        uuid=cells[6] if len(cells) > 6 else ""))
    return tuple(gpus)


def parse_driver_cuda(nvidia_smi_text: str) -> str | None:
    m = re.search(r"CUDA Version\s*:\s*([0-9]+\.[0-9]+)", nvidia_smi_text)
    return m.group(1) if m else None


def parse_meminfo(text: str) -> tuple[int, int]:
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            values[key] = int(parts[0]) * 1024
    return values.get("MemAvailable", values.get("MemFree", 0)), values.get("MemTotal", 0)


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
                     disk_free_bytes=shutil.disk_usage(path).free)


@lru_cache(maxsize=None)
def find_interpreter(minor: str) -> str | None:
    """A working python`minor` ("3.10"): PATH first, then pyenv's versions.

    Each candidate is run once, since a pyenv shim for a version that is not selected exists on
    PATH but fails.
    """
    candidates = [p for p in (shutil.which(f"python{minor}"),) if p]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(str(p) for p in pyenv_root.glob(f"{minor}.*/bin/python{minor}"))
    for path in candidates:
        result = runner.capture([path, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"], timeout=10)
        if result and result.returncode == 0 and result.output.strip().endswith(minor):
            return path
    return None
