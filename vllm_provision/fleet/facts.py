"""Facts of one fleet host, as the playbook's vllmp_facts module reports them (ansible_facts.vllmp_host)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from vllm_provision.probes import host as host_probe


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

    @classmethod
    def from_raw(cls, raw: dict) -> RemoteFacts:
        smi = raw.get("nvidia_smi")
        return cls(gpus=host_probe.parse_gpu_csv(smi["stdout"]) if smi else (),
                   python=raw["python"]["version"], interpreters=dict(raw.get("interpreters") or {}),
                   platform=raw.get("platform") or "", glibc=raw.get("glibc") or "", gcc=raw.get("gcc"),
                   cpu_count=raw.get("cpu_count"), home=raw.get("home") or "", torch=raw.get("torch"),
                   nvidia_smi=smi.get("path") if smi else None, raw=raw)

    @property
    def compute_caps(self) -> tuple[str, ...]:
        return tuple(sorted({g.compute_cap for g in self.gpus}, key=lambda c: tuple(int(x) for x in c.split("."))))

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("raw")
        data["gpus"] = [{"name": g.name, "compute_cap": g.compute_cap, "memory_total_mib": g.memory_total_mib,
                         "driver_version": g.driver_version} for g in self.gpus]
        return data
