"""The hosts of a fleet run: a hosts file (ssh_config aliases or user@host:port, `[group]` headers, `# comments`)
or an Ansible inventory read through `ansible-inventory --list` (JSON), so a site keeps one host list."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from vllm_provision.core import runner
from vllm_provision.core.errors import ConfigError

_HOST = re.compile(r"^(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?(?P<host>[A-Za-z0-9._-]+)(?::(?P<port>\d+))?$")
_GROUP = re.compile(r"^\[(?P<group>[A-Za-z0-9._-]+)\]$")


@dataclass(frozen=True)
class Host:
    name: str                      # as the inventory writes it; the key of reports and --limit
    hostname: str                  # an ssh_config alias or an address
    user: str | None = None
    port: int | None = None
    groups: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        """The name as a directory name (hosts/<slug>/ in the report)."""
        return re.sub(r"[^A-Za-z0-9._-]", "_", self.name)


def parse_host(spec: str, where: str, groups: tuple[str, ...] = ()) -> Host:
    m = _HOST.match(spec)
    port = int(m.group("port")) if m and m.group("port") else None
    if not m or (port is not None and not 0 < port < 65536):
        raise ConfigError(f"{where}: {spec!r} is not a host",
                          hint="write one host a line: an ssh_config alias, host, user@host or user@host:port")
    return Host(name=spec, hostname=m.group("host"), user=m.group("user"), port=port, groups=groups)


def _check(hosts: list[Host], source: str) -> list[Host]:
    if not hosts:
        raise ConfigError(f"{source} lists no hosts", hint="write one host a line (an ssh_config alias or "
                          "user@host:port); lines starting with # are comments")
    seen: dict[tuple, str] = {}
    for host in hosts:
        target = (host.user, host.hostname, host.port)
        if target in seen:
            raise ConfigError(f"{source} lists {host.name} twice"
                              + (f" (as {seen[target]} and {host.name})" if seen[target] != host.name else ""),
                              hint=f"keep one line for {host.name} (a host belongs to the group it is "
                                   "listed under)")
        seen[target] = host.name
    return hosts


def read_hosts_file(path: Path) -> list[Host]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the hosts file {path}: {exc.strerror}",
                          hint="give --hosts a file with one host a line") from exc
    hosts: list[Host] = []
    group: tuple[str, ...] = ()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        header = _GROUP.match(line)
        if header:
            group = (header.group("group"),)
            continue
        hosts.append(parse_host(line, f"{path}:{number}", group))
    return _check(hosts, str(path))


def ansible_tool(name: str) -> str:
    """An Ansible command beside the toolkit's Python (the `fleet` extra installs it there), else on PATH."""
    found = shutil.which(name, path=os.pathsep.join([sysconfig.get_path("scripts"), os.path.dirname(sys.executable),
                                                     os.environ.get("PATH", "")]))
    if not found:
        raise ConfigError(f"fleet runs need Ansible ({name}), which is neither beside the toolkit's Python nor on PATH",
                          hint="install the toolkit's fleet extra: VLLMP_EXTRAS=fleet ./inv fleet ... "
                               "(or pip install 'vllm-provision[fleet]')")
    return found


def read_ansible_inventory(path: Path) -> list[Host]:
    """Hosts of an Ansible inventory (any format Ansible reads) through `ansible-inventory -i FILE --list`."""
    tool = ansible_tool("ansible-inventory")
    done = runner.run([tool, "-i", str(path), "--list"], check=False, timeout=120, what="ansible-inventory")
    try:
        data = json.loads(done.output[done.output.index("{"):]) if done.returncode == 0 else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ConfigError(f"ansible-inventory could not read {path} (exit code {done.returncode})",
                          hint=f"run `ansible-inventory -i {path} --list` to see why")
    hostvars = data.get("_meta", {}).get("hostvars", {})
    groups: dict[str, list[str]] = {}
    for group, body in data.items():
        if group != "_meta" and isinstance(body, dict):
            for name in body.get("hosts", []):
                groups.setdefault(name, []).append(group)
    hosts = []
    for name in sorted(set(hostvars) | set(groups)):
        var = hostvars.get(name, {})
        port = var.get("ansible_port") or var.get("ansible_ssh_port")
        if port and not str(port).isdigit():
            raise ConfigError(f"{path}: host {name} has ansible_port={port!r}, not a port number",
                              hint=f"set ansible_port for {name} to a number such as 22")
        hosts.append(Host(name=name, hostname=str(var.get("ansible_host") or name),
                          user=var.get("ansible_user") or var.get("ansible_ssh_user"),
                          port=int(port) if port else None,
                          groups=tuple(g for g in groups.get(name, []) if g not in ("all", "ungrouped"))))
    return _check(hosts, str(path))


def limit(hosts: list[Host], pattern: str | None) -> list[Host]:
    """`--limit a,b,gpu-*`: hosts whose name or group matches one of the comma-separated globs."""
    if not pattern:
        return hosts
    globs = [p.strip() for p in pattern.split(",") if p.strip()]
    picked = [h for h in hosts if any(fnmatch.fnmatchcase(n, g) for g in globs for n in (h.name, *h.groups))]
    if not picked:
        raise ConfigError(f"--limit {pattern} matches no host of the inventory",
                          hint=f"hosts: {', '.join(h.name for h in hosts[:8])}{' ...' if len(hosts) > 8 else ''}")
    return picked
