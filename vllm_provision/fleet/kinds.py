"""Kinds of host: hosts that can share one wheel. Grouped by exactly the fields of the wheel's cache key that a
host shows before anything is built: release and profile (one per run), the env's Python minor, the arch list
(the GPUs' compute capabilities, or build.arch_list), platform, glibc, the host compiler, and for host-torch
the host torch's full version, CUDA and C++ ABI. What only the build shows (nvcc, torch of a new env) follows
from these: the same lock and profile give the same env."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vllm_provision import catalog, plan
from vllm_provision.core.settings import Settings
from vllm_provision.fleet.facts import RemoteFacts
from vllm_provision.fleet.report import HostStatus


@dataclass
class Outcome:
    """How a host ended, when it did not end well."""
    status: HostStatus
    detail: str
    hint: str | None = None
    exit_code: int | None = None


@dataclass
class Kind:
    id: str                            # sha256 prefix of `fields`
    label: str                         # readable: "2x NVIDIA H200 | arch 9.0 | py3.11 | glibc 2.36 | gcc 12.2.0"
    fields: dict[str, Any]
    hosts: list[str] = field(default_factory=list)    # inventory names; the first is the canary

    @property
    def archs(self) -> list[str]:
        return list(self.fields["archs"])


def kind_fields(facts: RemoteFacts, settings: Settings) -> dict[str, Any] | Outcome:
    """The kind of a host, or why it has none (no GPU and no arch list, no usable Python, no host torch)."""
    release = catalog.get_release(settings.release)
    archs = list(settings.build.arch_list or facts.compute_caps)
    if not archs:
        return Outcome(HostStatus.FAILED, "the host has no GPU (nvidia-smi is not installed) and no arch list is set",
                       "give --arch 9.0 (the archs to build for), or run the fleet on GPU hosts")
    bad = plan.unsupported_archs(release, archs)
    if bad:
        refusal = plan.arch_refusal(release, bad, "gpus")
        return Outcome(HostStatus.FAILED, refusal.message, refusal.hint)
    env = plan.plan_env(release, settings.profile, settings, interpreters=facts.interpreters)
    fields: dict[str, Any] = {"release": release.version, "profile": settings.profile, "archs": archs,
                              "platform": facts.platform, "glibc": facts.glibc, "gcc": facts.gcc}
    if env.backend == "existing":
        torch = facts.torch or {}
        if not torch.get("version"):
            return Outcome(HostStatus.FAILED, f"profile {settings.profile} reuses the host's torch and there is none "
                           f"({torch.get('error') or 'not probed'})",
                           "install torch with CUDA on the host's python3, or pick another profile")
        fields |= {"python": ".".join(facts.python.split(".")[:2]), "torch": torch["version"],
                   "torch_cuda": torch.get("cuda"), "cxx11_abi": torch.get("cxx11_abi")}
    elif not env.python_path:
        return Outcome(HostStatus.FAILED, f"no Python interpreter for the env: {env.note}",
                       "install python3.10, 3.11 or 3.12 with the venv module on the host")
    else:
        fields["python"] = env.python
    return fields


def kind_id(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def label(fields: Mapping[str, Any], facts: RemoteFacts) -> str:
    gpus = Counter(g.name for g in facts.gpus)
    parts = [", ".join(f"{n}x {name}" for name, n in gpus.items()) or "no GPU",
             f"arch {';'.join(fields['archs'])}", f"py{fields['python']}", f"glibc {fields['glibc']}",
             f"gcc {fields['gcc']}"]
    if "torch" in fields:
        parts.append(f"torch {fields['torch']}")
    return " | ".join(parts)


def group(hosts: list[str], facts: Mapping[str, RemoteFacts], fields: Mapping[str, dict]) -> list[Kind]:
    """Kinds in inventory order (a kind's first host is its canary)."""
    kinds: dict[str, Kind] = {}
    for name in hosts:
        if name not in fields:
            continue
        kid = kind_id(fields[name])
        kind = kinds.setdefault(kid, Kind(kid, label(fields[name], facts[name]), dict(fields[name])))
        kind.hosts.append(name)
    return list(kinds.values())
