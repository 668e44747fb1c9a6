"""Facts of one fleet host, probed over SSH by probe_remote.py with the host's own python3."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

import fabric

from .. import host as host_probe
from .connect import Outcome, run

PROBE_SCRIPT = Path(__file__).with_name("probe_remote.py")


@dataclass(frozen=True)
class RemoteFacts:
    gpus: tuple[host_probe.Gpu, ...]
    python: str                      # the python3 that ran the probe, e.g. "3.11.2"
    interpreters: dict[str, str]     # minor -> path of every python3.X with venv
    platform: str                    # linux_x86_64
    glibc: str
    gcc: str | None
    cpu_count: int | None
    home: str
    torch: dict | None = None        # host-torch: {version, cuda, cxx11_abi} or {error}
    nvidia_smi: str | None = None    # path, None: not installed
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def compute_caps(self) -> tuple[str, ...]:
        return tuple(sorted({g.compute_cap for g in self.gpus}, key=lambda c: tuple(int(x) for x in c.split("."))))

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("raw")
        data["gpus"] = [{"name": g.name, "compute_cap": g.compute_cap, "memory_total_mib": g.memory_total_mib,
                         "driver_version": g.driver_version} for g in self.gpus]
        return data


def command(profile_backend: str, python_path: str | None) -> str:
    args = [host_probe.GPU_QUERY] + (["host-torch", python_path or "python3"] if profile_backend == "existing" else [])
    return f"python3 -c {shlex.quote(PROBE_SCRIPT.read_text())} {shlex.join(args)}"


def parse(stdout: str) -> dict:
    lines = [line for line in stdout.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise ValueError("no JSON line in the probe's output")
    return json.loads(lines[-1])


def probe(conn: fabric.Connection, *, timeout: float, backend: str, python_path: str | None,
          log: Path) -> RemoteFacts | Outcome:
    """The host's facts, or why there are none: no python3, nvidia-smi failing or hanging."""
    done = run(conn, command(backend, python_path), timeout=timeout)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ python3 -c <probe_remote.py>\n{done.stdout}{done.stderr}")
    if done.timed_out:
        return Outcome("timed out", f"the facts probe ran past {timeout:g} s (a hung nvidia-smi or python3)",
                       "run `nvidia-smi` on the host: a hang there is a driver or GPU fault; or raise "
                       "fleet.facts_timeout", exit_code=done.exit_code)
    if done.exit_code == 127 and "python3" in done.stderr:
        return Outcome("failed", "python3 is not installed on the host",
                       "install python3 (3.10+ for the toolkit)", exit_code=127)
    try:
        raw = parse(done.stdout)
    except ValueError:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Outcome("failed", f"the facts probe failed with exit code {done.exit_code}: {tail}",
                       f"read {log}", exit_code=done.exit_code)
    smi = raw.get("nvidia_smi")
    if smi and smi.get("rc") != 0:
        tail = ((smi.get("stderr") or "") + (smi.get("stdout") or "")).strip().splitlines() or ["no output"]
        return Outcome("failed", f"nvidia-smi failed with exit code {smi.get('rc')}: {tail[-1]}",
                       "fix the GPU driver on the host (`nvidia-smi` must list the GPUs); the host cannot be "
                       "matched to a kind without them", exit_code=smi.get("rc"))
    return RemoteFacts(gpus=host_probe.parse_gpu_csv(smi["stdout"]) if smi else (),
                       python=raw["python"]["version"], interpreters=dict(raw.get("interpreters") or {}),
                       platform=raw.get("platform") or "", glibc=raw.get("glibc") or "", gcc=raw.get("gcc"),
                       cpu_count=raw.get("cpu_count"), home=raw.get("home") or "", torch=raw.get("torch"),
                       nvidia_smi=smi.get("path") if smi else None, raw=raw)
