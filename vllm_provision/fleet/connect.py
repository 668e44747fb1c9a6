"""SSH to one host through Fabric, with strict host keys, and remote commands that cannot outlive their timeout.

Fabric fixes paramiko's AutoAddPolicy and never loads known_hosts (fabric#2071): each Connection (and each
ProxyJump hop Fabric makes from ssh_config) gets the known_hosts file and RejectPolicy, or AcceptNew. Each host
gets its own Config: Connections sharing one accumulate duplicate key_filename entries.
"""

from __future__ import annotations

import os
import shlex
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import fabric
import paramiko
from invoke.exceptions import CommandTimedOut
from paramiko.ssh_exception import NoValidConnectionsError

from .inventory import Host

# seconds GNU timeout waits after SIGTERM before SIGKILL; the toolkit's own runner stops its children in 5 s
KILL_AFTER_S = 10
# Fabric's own command timeout is only a backstop for a dead link: the remote `timeout` decides
BACKSTOP_S = 60
TIMED_OUT_CODES = (124, 137)    # GNU timeout: 124 after SIGTERM, 128+9 when it had to SIGKILL


class AcceptNew(paramiko.MissingHostKeyPolicy):
    """OpenSSH's StrictHostKeyChecking=accept-new: an unknown host's key is learned and written to known_hosts;
    a changed key still fails (paramiko raises BadHostKeyException before asking any policy)."""

    def __init__(self, path: Path, lock: threading.Lock):
        self.path = path
        self.lock = lock

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self.path.open("a") as fh:
                fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


@dataclass(frozen=True)
class SshOptions:
    known_hosts: Path
    ssh_config: Path | None
    host_key_policy: str           # strict | accept-new
    connect_timeout: float
    lock: threading.Lock

    @classmethod
    def from_settings(cls, fleet: Mapping) -> "SshOptions":
        ssh_config = Path(os.path.expanduser(fleet["ssh_config"]))
        return cls(known_hosts=Path(os.path.expanduser(fleet["known_hosts"])),
                   ssh_config=ssh_config if ssh_config.is_file() else None,
                   host_key_policy=fleet["host_key_policy"], connect_timeout=float(fleet["connect_timeout"]),
                   lock=threading.Lock())


def _hops(connection: fabric.Connection):
    while isinstance(connection, fabric.Connection):
        yield connection
        connection = connection.gateway


def connection(host: Host, options: SshOptions) -> fabric.Connection:
    """A Connection to `host` (ssh_config applies: alias, User, Port, IdentityFile, ProxyJump) whose client, and
    every hop's, checks host keys against options.known_hosts. Nothing is opened yet."""
    overrides = {"timeouts": {"connect": options.connect_timeout}}
    config = fabric.Config(overrides=overrides, runtime_ssh_path=str(options.ssh_config) if options.ssh_config
                           else None)
    conn = fabric.Connection(host.hostname, user=host.user, port=host.port, config=config,
                             connect_timeout=options.connect_timeout)
    for hop in _hops(conn):
        if options.known_hosts.is_file():
            hop.client.load_host_keys(str(options.known_hosts))
        hop.client.set_missing_host_key_policy(AcceptNew(options.known_hosts, options.lock)
                                               if options.host_key_policy == "accept-new"
                                               else paramiko.RejectPolicy())
    return conn


@dataclass
class Outcome:
    """How a host ended, when it did not end well."""
    status: str                    # failed | unreachable | timed out | refused
    detail: str
    hint: str | None = None
    exit_code: int | None = None


def connection_failure(exc: BaseException, host: Host, options: SshOptions) -> Outcome | None:
    """The status of a connection error (None: not one; let it rise)."""
    where = options.known_hosts
    if isinstance(exc, paramiko.BadHostKeyException):
        return Outcome("refused", f"the host key of {exc.hostname} changed ({exc.key.get_name()} "
                       f"{exc.key.get_fingerprint().hex()[:16]}... is not the key in {where})",
                       f"if the host was reinstalled, check the new key out of band, then `ssh-keygen -R "
                       f"{exc.hostname} -f {where}` and `ssh-keyscan {exc.hostname} >> {where}`; "
                       "otherwise this may be another machine answering for it")
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        return Outcome("refused", f"the host key of {host.hostname} is not in {where}",
                       f"add it after checking it: `ssh-keyscan -H {host.hostname} >> {where}`, or run with "
                       "--host-key-policy accept-new to learn keys of new hosts")
    if isinstance(exc, paramiko.AuthenticationException):
        return Outcome("unreachable", f"authentication failed for {host.name}: {exc}",
                       "check the user and IdentityFile in ssh_config (or the ssh agent); "
                       f"`ssh {host.name} true` must work without a password")
    if isinstance(exc, (NoValidConnectionsError, socket.timeout, TimeoutError, socket.gaierror,
                        ConnectionError, EOFError, paramiko.SSHException, OSError)):
        text = str(exc) or type(exc).__name__
        return Outcome("unreachable", f"cannot connect to {host.name}: {text}",
                       f"check that {host.name} is up and sshd listens (`ssh -v {host.name} true`); "
                       "raise fleet.connect_timeout for slow links")
    return None


@dataclass(frozen=True)
class Remote:
    """A remote command's result; `timed_out` when its `timeout` ended it (its process group is gone)."""
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool


def run(conn: fabric.Connection, command: str, *, timeout: float, cwd: str | None = None,
        env: Mapping[str, str] | None = None) -> Remote:
    """`command` (a shell line made by the toolkit) under `timeout -k`: GNU timeout signals the whole process
    group it leads, so nothing of it runs after the timeout (Fabric's own timeout only closes the channel)."""
    line = f"timeout -k {KILL_AFTER_S} {max(1, round(timeout))} {command}"
    if cwd:
        line = f"cd {shlex.quote(cwd)} && {line}"
    # Fabric writes env inline as `export K=V && ...` without quoting; the values are quoted here
    quoted = {k: shlex.quote(v) for k, v in (env or {}).items()}
    try:
        result = conn.run(line, hide=True, warn=True, env=quoted, in_stream=False,
                          timeout=timeout + KILL_AFTER_S + BACKSTOP_S)
    except CommandTimedOut as exc:
        return Remote(124, exc.result.stdout, exc.result.stderr, True)
    return Remote(result.exited, result.stdout, result.stderr, result.exited in TIMED_OUT_CODES)
