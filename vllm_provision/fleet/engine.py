"""`./inv fleet` on Ansible: the selected hosts -> an inventory (or the site's own), a per-run ssh_config that
holds the host-key policy, and one `ansible-playbook` run of ansible/provision.yml, whose callback writes the
report. ansible-playbook runs through core/runner.py like every external command: its output goes to the run's
ansible.log, its `[fleet]` lines to the terminal, and Ctrl-C ends its process group (the hosts' modules then
end their own process groups, see ansible/module_utils/vllmp_group.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vllm_provision.core import runner
from vllm_provision.core.errors import ConfigError, StepFailed
from vllm_provision.core.settings import Fleet as FleetSettings
from vllm_provision.fleet import plays, report
from vllm_provision.fleet.ansible import PLAYBOOK
from vllm_provision.fleet.inventory import Host, ansible_tool

SSH_CONFIG = "ssh_config"


@dataclass
class FleetOptions:
    hosts: list[Host]                      # selected (--limit, --rerun-failed applied)
    overrides: dict                        # settings layer + caches, env, report_dir (plays.settings)
    run_dir: Path
    fleet: FleetSettings                   # resolved fleet.* settings
    facts_only: bool = False
    ansible_inventory: Path | None = None  # the site's inventory, given to Ansible as it is
    echo: Callable[[str], None] | None = None


def write_inventory(hosts: list[Host], path: Path) -> None:
    """A hosts file's entries as an Ansible inventory (JSON, read by Ansible's yaml plugin): aliases and
    addresses are ansible_host (ssh_config applies to them), [group] headers are groups."""
    groups: dict[str, dict] = {}
    ungrouped: dict[str, dict] = {}
    for host in hosts:
        entry = {"ansible_host": host.hostname, "vllmp_name": host.name}
        if host.user:
            entry["ansible_user"] = host.user
        if host.port:
            entry["ansible_port"] = host.port
        target = groups.setdefault(host.groups[0], {"hosts": {}})["hosts"] if host.groups else ungrouped
        target[plays.slug(host.name)] = entry
    path.write_text(json.dumps({"all": {"hosts": ungrouped, "children": groups}}, indent=1))


def write_ssh_config(fleet: FleetSettings, path: Path) -> None:
    """The host-key policy and timeouts for every connection and ProxyJump hop (ssh passes -F on to the jump),
    then the operator's own ssh_config (aliases, User, Port, IdentityFile, ProxyJump)."""
    known_hosts = Path(os.path.expanduser(fleet.known_hosts))
    user_config = Path(os.path.expanduser(fleet.ssh_config))
    strict = "accept-new" if fleet.host_key_policy == "accept-new" else "yes"
    lines = ["# vllm-provision fleet run: host keys and timeouts, then the operator's ssh_config",
             f"StrictHostKeyChecking {strict}", f'UserKnownHostsFile "{known_hosts}"', "BatchMode yes",
             f"ConnectTimeout {int(fleet.connect_timeout)}", "ServerAliveInterval 15", "ServerAliveCountMax 4"]
    if user_config.is_file():
        lines.append(f'Include "{user_config}"')
    path.write_text("\n".join(lines) + "\n")


def environment(options: FleetOptions, control_dir: str) -> dict[str, str]:
    fleet = options.fleet
    return {"ANSIBLE_PIPELINING": "True", "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_SSH_ARGS": f"-F {options.run_dir / SSH_CONFIG} -o ControlMaster=auto -o ControlPersist=60s",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": control_dir, "ANSIBLE_TIMEOUT": str(int(fleet.connect_timeout)),
            "ANSIBLE_PYTHON_INTERPRETER": "python3", "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "True", "ANSIBLE_FORCE_COLOR": "False", "ANSIBLE_DEPRECATION_WARNINGS": "False",
            "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
            "ANSIBLE_LOCAL_TEMP": str(Path(control_dir) / "tmp")}


def run(options: FleetOptions) -> dict:
    """One ansible-playbook run; returns the report it wrote (fleet-report.json)."""
    playbook = ansible_tool("ansible-playbook")
    run_dir = options.run_dir
    write_ssh_config(options.fleet, run_dir / SSH_CONFIG)
    if options.ansible_inventory:
        inventory = options.ansible_inventory
    else:
        inventory = run_dir / "inventory.json"
        write_inventory(options.hosts, inventory)
    (run_dir / "limit").write_text("".join(f"{name}\n" for name in
                                           (plays.slug(h.name) if not options.ansible_inventory else h.name
                                            for h in options.hosts)))
    (run_dir / "vars.json").write_text(json.dumps({
        "vllmp_overrides": options.overrides | {"run_dir": str(run_dir)}, "vllmp_facts_only": options.facts_only}))
    # ssh's control sockets must stay under 108 bytes: a short directory of their own, for this run only
    control_dir = tempfile.mkdtemp(prefix="vllmp-cp-")
    argv = [playbook, "-i", str(inventory), "--limit", f"@{run_dir / 'limit'}", "-f", str(options.fleet.forks),
            "-e", f"@{run_dir / 'vars.json'}", str(PLAYBOOK)]
    echo = options.echo or (lambda line: None)
    try:
        done = runner.run(argv, log=run_dir / "ansible.log", extra_env=environment(options, control_dir), check=False,
                          what="ansible-playbook",
                          echo=lambda line: echo(line[len("[fleet] "):])
                          if line.startswith("[fleet] ") and not line.startswith("[fleet] report:") else None)
    finally:
        close_masters(Path(control_dir))
        shutil.rmtree(control_dir, ignore_errors=True)
    try:
        return json.loads((run_dir / report.JSON_NAME).read_text())
    except (OSError, ValueError):
        tail = "".join(done.output.splitlines(keepends=True)[-5:]).strip()
        raise StepFailed(f"ansible-playbook ended with exit code {done.returncode} before the report was written: "
                          f"{tail.splitlines()[-1] if tail else 'no output'}",
                          hint=f"read {run_dir / 'ansible.log'}") from None


def close_masters(control_dir: Path) -> None:
    """End the run's SSH master connections (ControlPersist would keep them, and a session on each host, for
    another minute)."""
    for socket in sorted(control_dir.glob("*")):
        runner.capture(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "fleet-host"], timeout=10)


def select_hosts(*, hosts_file: str | None, ansible_inventory: str | None, limit: str | None,
                 rerun_failed: bool, root: Path) -> list[Host]:
    """The inventory, narrowed by --limit and --rerun-failed (hosts not ok in the latest report)."""
    from vllm_provision.fleet import inventory
    if bool(hosts_file) == bool(ansible_inventory):
        raise ConfigError("give the hosts with exactly one of --hosts FILE and --ansible-inventory FILE",
                          hint="e.g. ./inv fleet --hosts hosts.txt (one ssh_config alias or user@host:port a line)")
    hosts = (inventory.read_hosts_file(Path(hosts_file)) if hosts_file
             else inventory.read_ansible_inventory(Path(ansible_inventory)))
    hosts = inventory.limit(hosts, limit)
    if rerun_failed:
        failed = set(report.failed_hosts(root))
        hosts = [h for h in hosts if h.name in failed]
    return hosts
