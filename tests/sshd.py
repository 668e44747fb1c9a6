"""Simulated GPU hosts for fleet tests: one real OpenSSH sshd per host, each on its own loopback address.

Host N listens on 127.0.0.<10+N>:22 (own host key, PID file, log) and admits one Unix user, sim_N, with its
own home. The user's PATH (through ~/.ssh/environment) starts with ~/bin, where an `nvidia-smi` stand-in
prints a recorded query (tests/fixtures/gpu/..., tests/fixtures/fleet/...): the one fake of these tests.
Its behaviour is set per host with `behave(...)` (exit with a code, or hang). Needs root (useradd, port 22
on 127.0.0.x); `SshFarm.stop()` ends the daemons by PID file and removes the users and their files.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vllm_provision.core import procs

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
GPU_RECORDINGS = {"h200": FIXTURES / "gpu" / "h200x2" / "probes.json",
                  "a100": FIXTURES / "fleet" / "a100" / "probes.json"}
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"

# prints the recorded output of the exact command line; ~/.nvidia-smi-behaviour may say "exit N" or "hang"
NVIDIA_SMI_STANDIN = r'''#!/usr/bin/env python3
"""nvidia-smi stand-in for a simulated host: replays a recording made on a real GPU host."""
import json, os, sys, time
home = os.path.expanduser("~")
try:
    behaviour = open(os.path.join(home, ".nvidia-smi-behaviour")).read().split()
except OSError:
    behaviour = []
if behaviour[:1] == ["hang"]:
    time.sleep(3600)
if behaviour[:1] == ["exit"]:
    sys.stderr.write("Unable to determine the device handle for GPU0000:00:06.0: Unknown Error\n")
    sys.exit(int(behaviour[1]))
recorded = json.load(open(os.path.join(home, ".gpu-recording.json")))
entry = recorded.get(" ".join(["nvidia-smi"] + sys.argv[1:]))
if entry is None:
    sys.stderr.write("nvidia-smi stand-in: no recording of %r\n" % sys.argv[1:])
    sys.exit(2)
sys.stdout.write(entry["stdout"])
sys.stderr.write(entry.get("stderr", ""))
sys.exit(entry["rc"])
'''


def _running(pid: int) -> bool:
    """Alive and not a zombie (a daemon's parent here may be an init that does not reap)."""
    proc = procs.read(pid)
    return proc is not None and proc.alive


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=check, capture_output=True, text=True)


@dataclass
class SimHost:
    index: int
    gpu: str | None                 # key of GPU_RECORDINGS, None: no nvidia-smi at all
    base: Path

    @property
    def user(self) -> str:
        return f"sim_{self.index}"

    @property
    def alias(self) -> str:
        return f"sim{self.index}"

    @property
    def address(self) -> str:
        return f"127.0.0.{10 + self.index}"

    @property
    def home(self) -> Path:
        return self.base / "home" / self.user

    @property
    def etc(self) -> Path:
        return self.base / "sshd" / self.alias

    @property
    def pidfile(self) -> Path:
        return self.etc / "sshd.pid"

    @property
    def log(self) -> Path:
        return self.etc / "sshd.log"

    @property
    def host_key(self) -> Path:
        return self.etc / "host_ed25519"

    def known_hosts_line(self) -> str:
        kind, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"{self.address} {kind} {key}\n"

    def behave(self, behaviour: str | None) -> None:
        """The nvidia-smi stand-in's behaviour: None (replay), "exit 3", "hang"."""
        path = self.home / ".nvidia-smi-behaviour"
        if behaviour is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(behaviour + "\n")

    def processes(self) -> list[str]:
        done = _run("pgrep", "-u", self.user, "-a", check=False)
        return [line for line in done.stdout.splitlines() if "sshd" not in line]


@dataclass
class SshFarm:
    """N simulated hosts and the client side: a key pair, an ssh_config with an alias per host, known_hosts."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vllmp-sim-")))
    hosts: list[SimHost] = field(default_factory=list)

    def __post_init__(self):
        os.chmod(self.base, 0o755)      # the sim users reach their homes through it
        self.client_dir = self.base / "client"
        self.client_dir.mkdir(mode=0o700)
        self.client_key = self.client_dir / "id_ed25519"
        _run(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "fleet-tests", "-f", self.client_key)
        self.ssh_config = self.client_dir / "ssh_config"
        self.known_hosts = self.client_dir / "known_hosts"
        self.ssh_config.write_text("")
        self.known_hosts.write_text("")
        # one bootstrap cache for every host, so each one's toolkit venv takes seconds
        self.shared_cache = self.base / "shared-cache"
        self.shared_cache.mkdir(mode=0o777)
        os.chmod(self.shared_cache, 0o1777)
        # the quick tests' toolkit command (tests/fixtures/fleet/inv-standin), where every sim user can run it
        self.standin = self.base / "inv-standin"
        shutil.copy(FIXTURES / "fleet" / "inv-standin", self.standin)
        os.chmod(self.standin, 0o755)

    # ----------------------------------------------------------------------------------------- hosts
    def add(self, gpu: str | None, *, start_index: int = 1, known: bool = True) -> SimHost:
        index = max([h.index for h in self.hosts] + [start_index - 1]) + 1
        host = SimHost(index, gpu, self.base)
        self._make_user(host)
        self._start_sshd(host)
        with self.ssh_config.open("a") as fh:
            fh.write(f"Host {host.alias}\n  HostName {host.address}\n  User {host.user}\n"
                     f"  IdentityFile {self.client_key}\n\n")
        if known:
            self.trust(host)
        self.hosts.append(host)
        return host

    def trust(self, host: SimHost) -> None:
        with self.known_hosts.open("a") as fh:
            fh.write(host.known_hosts_line())

    def _make_user(self, host: SimHost) -> None:
        if _run("id", host.user, check=False).returncode == 0:      # left by an interrupted run
            _run("userdel", "-r", "-f", host.user, check=False)
        host.home.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(host.home.parent, 0o755)
        _run("useradd", "-M", "-d", host.home, "-s", "/bin/bash", host.user)
        _run("usermod", "-p", "*", host.user)      # locked with "!" would be refused under UsePAM no
        (host.home / ".ssh").mkdir(parents=True)
        (host.home / "bin").mkdir()
        shutil.copy(self.client_key.with_suffix(".pub"), host.home / ".ssh" / "authorized_keys")
        (host.home / ".ssh" / "environment").write_text(
            f"PATH={host.home / 'bin'}:/usr/local/bin:/usr/bin:/bin\n"
            f"UV_CACHE_DIR={self.shared_cache / 'uv'}\nPIP_CACHE_DIR={self.shared_cache / 'pip'}\n")
        if host.gpu:
            shutil.copy(GPU_RECORDINGS[host.gpu], host.home / ".gpu-recording.json")
            smi = host.home / "bin" / "nvidia-smi"
            smi.write_text(NVIDIA_SMI_STANDIN)
            smi.chmod(0o755)
        _run("chown", "-R", f"{host.user}:{host.user}", host.home)
        os.chmod(host.home, 0o755)

    def _start_sshd(self, host: SimHost) -> None:
        host.etc.mkdir(parents=True)
        Path("/run/sshd").mkdir(exist_ok=True)
        _run(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", host.host_key)
        config = host.etc / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {host.address}", "Port 22", f"HostKey {host.host_key}", f"PidFile {host.pidfile}",
            "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", f"AllowUsers {host.user}", "StrictModes no",
            "PermitUserEnvironment yes", "Subsystem sftp internal-sftp", "MaxStartups 10:30:100",
            "AllowTcpForwarding yes", "LogLevel DEBUG1", ""]))
        _run(SSHD, "-f", config, "-E", host.log)
        deadline = time.monotonic() + 10
        while not host.pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not host.pidfile.exists():
            raise RuntimeError(f"sshd for {host.alias} did not start: {host.log.read_text() if host.log.exists() else ''}")

    def replace_host_key(self, host: SimHost) -> None:
        """The host gets a new key (a reinstalled or impostor host); known_hosts keeps the old one."""
        self._stop_sshd(host)
        shutil.rmtree(host.etc)
        self._start_sshd(host)

    # ----------------------------------------------------------------------------------------- stop
    def _stop_sshd(self, host: SimHost) -> None:
        try:
            pid = int(host.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.02)

    def stop(self) -> None:
        for host in self.hosts:
            self._stop_sshd(host)
            left = _run("pgrep", "-u", host.user, check=False).stdout.split()
            for pid in left:        # only this user's processes: the test's own leftovers
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _run("userdel", "-f", host.user, check=False)
        shutil.rmtree(self.base, ignore_errors=True)


def sshd_usable() -> str | None:
    """Why these tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (useradd, sshd on 127.0.0.x:22)"
    if not Path(SSHD).exists():
        return "needs OpenSSH's sshd (apt-get install openssh-server)"
    return None
