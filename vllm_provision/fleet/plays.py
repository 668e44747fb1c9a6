"""The toolkit's side of the fleet playbook (ansible/provision.yml), run on the controller inside
ansible-playbook through the playbook's filters: the settings the plays use, a new report directory, the
tarball of the toolkit that each host receives, and the hosts' kinds (from their vllmp_facts).

Everything else (connections, host keys, forks, batches, the failure budget, timeouts of connections) is
Ansible's own; see docs/fleet.md.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import re
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vllm_provision import PROJECT_ROOT
from vllm_provision.core import config
from vllm_provision.core.errors import ConfigError
from vllm_provision.core.redact import redact_text
from vllm_provision.core.settings import Settings
from vllm_provision.fleet import kinds as kinds_mod
from vllm_provision.fleet.facts import RemoteFacts
from vllm_provision.probes import host as host_probe

# not shipped to hosts: envs, workspaces, caches, VCS data
TOOLKIT_EXCLUDES = {".venv", ".provision", ".git", ".carry", "__pycache__", ".pytest_cache", ".mypy_cache",
                    ".ruff_cache", "wheelhouse", "node_modules", ".cache"}
TOP_LEVEL_EXCLUDES = {"tests", "docs", "bench"}      # the toolkit's own development: no host runs them
TOOLKIT_TARBALL = "toolkit.tar.gz"
KINDS_INDEX = "kinds.json"          # kind id -> the key its wheel was built under, across runs
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def slug(name: str) -> str:
    """A host's name as a directory name (hosts/<slug>/ in the report) and as an inventory name."""
    return name if _SAFE_NAME.match(name) else re.sub(r"[^A-Za-z0-9._-]", "_", name)


def remote_environment(settings: Settings, caches: list[str], extra: Mapping[str, str]) -> dict[str, str]:
    """The VLLMP_* variables a host's toolkit runs with. They travel in the module's arguments, which Ansible
    may log (-vvv) or keep in files on the host: a value with a credential is refused here."""
    env = {"VLLMP_RELEASE": settings.release, "VLLMP_PROFILE": settings.profile,
           "VLLMP_EXTRAS": "", "CI": "1"}         # the toolkit's venv without the test extras; plain output
    if caches:
        env["VLLMP_ARTIFACTS__CACHES"] = json.dumps(caches)
    env.update(extra)
    for name, value in env.items():
        if redact_text(value) != value or re.search(r"(PASSWORD|TOKEN|SECRET)", name, re.I):
            raise ConfigError(f"{name}={redact_text(value)} carries a credential, and fleet runs pass settings to "
                              "hosts in the clear", hint="give the hosts the credential themselves "
                              "(~/.netrc or their own VLLMP_* settings), and a URL without it here")
    return env


def report_root(settings: Settings, override: str | None = None) -> Path:
    path = Path(os.path.expanduser(override or settings.fleet.report_dir))
    return path if path.is_absolute() else PROJECT_ROOT / path


def new_run_dir(root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / stamp
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def remote_dir(path: str) -> str:
    """fleet.remote_dir as the modules take it: relative paths are in the remote user's home."""
    return path if path.startswith(("/", "~")) else f"~/{path}"


def settings(overrides: Mapping[str, Any] | None = None, key: str | None = None) -> Any:
    return _settings(json.dumps(overrides or {}, sort_keys=True), key)


@functools.lru_cache(maxsize=16)
def _settings(overrides_json: str, key: str | None) -> Any:
    """What the plays need from the toolkit's settings. `overrides`: a settings layer (what `./inv fleet`'s
    flags set: release, profile, build.arch_list, fleet.*) plus `caches`, `env` (NAME: VALUE for the hosts),
    `report_dir` and `run_dir`. `key`: one dotted value of the result (for play keywords such as serial)."""
    resolved, caches, extra, report_dir, run_dir = _resolve(json.loads(overrides_json))
    view = {"release": resolved.release, "profile": resolved.profile, "fleet": resolved.fleet.model_dump(),
            "caches": caches, "env": remote_environment(resolved, caches, extra), "gpu_query": host_probe.GPU_QUERY,
            "host_torch_python": (resolved.env.python_path or "python3") if resolved.env.backend == "existing" else None,
            "remote_dir": remote_dir(resolved.fleet.remote_dir), "report_root": str(report_root(resolved, report_dir)),
            "run_dir": run_dir}
    if key is None:
        return view
    value: Any = view
    for part in key.split("."):
        value = value[part]
    return value


def _resolve(overrides: Mapping[str, Any] | None) -> tuple[Settings, list[str], dict, str | None, str | None]:
    overrides = dict(overrides or {})
    caches, extra = overrides.pop("caches", None), overrides.pop("env", None) or {}
    report_dir, run_dir = overrides.pop("report_dir", None), overrides.pop("run_dir", None)
    resolved = config.resolve(overrides)
    return resolved, list(caches or resolved.artifacts.caches), extra, report_dir, run_dir


def known_keys(view: Mapping[str, Any]) -> dict:
    """Kind id -> {key, sha256, built_on} built by an earlier run into the same caches."""
    try:
        index = json.loads((Path(view["report_root"]) / KINDS_INDEX).read_text())
    except (OSError, ValueError):
        return {}
    return {kid: entry for kid, entry in index.items() if entry.get("caches") == view["caches"]}


def remember(report_root_dir: Path, kinds: list[dict], caches: list[str]) -> None:
    """Record the keys built in this run (kinds.json beside the runs), for the next run over the same caches."""
    path = report_root_dir / KINDS_INDEX
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        index = {}
    for kind in kinds:
        if kind.get("key") and kind.get("built_on"):
            index[kind["id"]] = {"key": kind["key"], "sha256": kind.get("sha256"), "wheel": kind.get("wheel"),
                                 "built_on": kind["built_on"], "label": kind["label"], "caches": caches,
                                 "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path.write_text(json.dumps(index, indent=2) + "\n")


def kinds(hosts: list[str], hostvars: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict:
    """The kinds of `hosts` (those whose facts came back, in inventory order) from their vllmp_host facts:
    {kinds: {id: {id, label, fields, archs, hosts, canary, known}}, of: {host: id}, errors: {host: outcome}}."""
    resolved = _resolve(overrides)[0]
    view = settings(overrides)
    facts: dict[str, RemoteFacts] = {}
    fields: dict[str, dict] = {}
    errors: dict[str, dict] = {}
    for name in hosts:
        found = RemoteFacts.from_raw(hostvars[name]["vllmp_host"])
        result = kinds_mod.kind_fields(found, resolved)
        if isinstance(result, kinds_mod.Outcome):
            # the bare word: Ansible stores no str subclass in its variables (it warns and converts)
            errors[name] = {"status": result.status.value, "detail": result.detail, "hint": result.hint}
            continue
        facts[name], fields[name] = found, result
    known = known_keys(view)
    grouped = kinds_mod.group(list(hosts), facts, fields)
    return {"kinds": {k.id: {"id": k.id, "label": k.label, "fields": k.fields, "archs": ";".join(k.archs),
                             "hosts": k.hosts, "canary": k.hosts[0], "known": known.get(k.id)} for k in grouped},
            "of": {name: k.id for k in grouped for name in k.hosts}, "errors": errors}


def prepare(overrides: Mapping[str, Any] | None, facts_only: bool = False) -> dict:
    """The settings the plays use (settings()), with the run's report directory (the one `./inv fleet` made, or
    a new one under the report root) and, unless facts_only, the toolkit's tarball in it."""
    view = dict(settings(overrides))
    view["run_dir"] = str(view.get("run_dir") or new_run_dir(Path(view["report_root"])))
    view["tarball"] = None if facts_only else toolkit_tarball(view["run_dir"])
    return view


@functools.lru_cache(maxsize=4)
def base64_file(path: str) -> str:
    """A file's bytes as base64 (the toolkit's tarball, sent in the vllmp_toolkit module's arguments)."""
    return base64.b64encode(Path(path).read_bytes()).decode()


def toolkit_tarball(directory: str, root: Path = PROJECT_ROOT) -> str:
    """Write the toolkit's own files (what `./inv` needs on a host), without envs, workspaces and caches, to
    DIRECTORY/toolkit.tar.gz; returns its path."""
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if any(p in TOOLKIT_EXCLUDES or p.endswith(".egg-info") for p in parts) or info.name.endswith(".pyc"):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for entry in sorted(root.iterdir()):
            if entry.name not in TOP_LEVEL_EXCLUDES:
                tar.add(entry, arcname=entry.name, filter=keep)
    path = Path(directory) / TOOLKIT_TARBALL
    path.write_bytes(buf.getvalue())
    return str(path)
