"""Real container images on a registry-less host, for the image test and bench/image.py.

A base root filesystem from Debian's registry (`mmdebstrap --variant=minbase`, the apt mirror this host
uses), imported with `podman import`; the repository's Dockerfile built by buildah (`--isolation chroot
--network host`) and run by podman (`--network host`), all in private storage (vfs) and settings under one
directory, so cleanup is one `rm -rf` and the host's own containers are never touched. The three container
settings are what a root CI host without a systemd cgroup manager needs: hard limits it cannot raise,
hybrid cgroups crun refuses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("buildah", "podman", "mmdebstrap", "runc")
SUITE = "bookworm"
# what the Dockerfile asks of a base: Python >= 3.10 with venv; `patch` for the patch step (else apt)
BASE_PACKAGES = ("ca-certificates", "python3", "python3-venv", "patch")
# ... and for WHEEL_FROM=build, the compile's: Python's headers and a host compiler
COMPILE_PACKAGES = ("python3-dev", "g++")
FALLBACK_MIRROR = "http://deb.debian.org/debian"
# the Dockerfile's copy of the toolkit's download and uv caches (its `./inv` runs as root)
TOOLKIT_CACHE_IN_BUILD = "/root/.cache/vllm-provision"


def missing_tools() -> list[str]:
    return [t for t in TOOLS if not shutil.which(t)]


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this host's apt uses (deb822 `URIs:` or a one-line `deb URL suite ...`)."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for m in re.finditer(r"^\s*(?:URIs:\s*(\S+)|deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+))", text, re.M):
            url = m.group(1) or m.group(2)
            if url and "security" not in url and url.startswith(("http://", "https://")):
                return url
    return FALLBACK_MIRROR


def host_ca_bundle() -> Path | None:
    """The CA bundle this host trusts (it holds an intercepting proxy's CA where there is one)."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@dataclass
class ContainerHost:
    """buildah and podman with their own storage and settings below `root`."""
    root: Path

    def __post_init__(self):
        for sub in ("graph", "run", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{self.root / "graph"}"\nrunroot = "{self.root / "run"}"\n')
        (self.root / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')

    @property
    def env(self) -> dict:
        # TMPDIR: buildah keeps RUN cache mounts below it (else /var/tmp/buildah-cache, never cleaned)
        return dict(os.environ, CONTAINERS_STORAGE_CONF=str(self.root / "storage.conf"),
                    CONTAINERS_CONF=str(self.root / "containers.conf"), TMPDIR=str(self.root / "tmp"))

    def run(self, argv: list[str], timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert done.returncode == 0, f"{argv[:3]} exit {done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-4000:]}"
        return done

    def import_base(self, tarball: Path, tag: str) -> float:
        started = time.monotonic()
        self.run(["podman", "import", str(tarball), tag])
        return time.monotonic() - started

    def build(self, context: Path, tag: str, build_args: dict, volumes: dict | None = None,
              check: bool = True) -> tuple[subprocess.CompletedProcess, float]:
        argv = ["buildah", "build", "--isolation", "chroot", "--network", "host", "--pull=never", "-f",
                str(context / "Dockerfile"), "-t", tag]
        for name, value in build_args.items():
            argv += ["--build-arg", f"{name}={value}"]
        ca = host_ca_bundle()
        if ca:      # an intercepted egress needs it; a normal host's bundle changes nothing
            argv += ["--secret", f"id=ca_bundle,src={ca}"]
        for host_dir, in_build in (volumes or {}).items():
            argv += ["-v", f"{host_dir}:{in_build}"]
        started = time.monotonic()
        done = self.run(argv + [str(context)], timeout=3600, check=check)
        return done, time.monotonic() - started

    def size_bytes(self, tag: str) -> int:
        return int(self.run(["podman", "image", "inspect", "--format", "{{.Size}}", tag]).stdout.strip())

    def run_in(self, tag: str, *argv: str, volumes: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
        mounts = [a for host_dir, inside in (volumes or {}).items() for a in ("-v", f"{host_dir}:{inside}")]
        started = time.monotonic()
        done = self.run(["podman", "run", "--rm", "--network", "host", *mounts, tag, *argv], timeout=900, check=False)
        return done, time.monotonic() - started


def make_base_tarball(out: Path, mirror: str | None = None, packages: tuple[str, ...] = BASE_PACKAGES) -> float:
    """bookworm minbase with `packages`, from Debian's registry; returns the seconds it took."""
    started = time.monotonic()
    part = out.with_name("part-" + out.name)
    done = subprocess.run(["mmdebstrap", "--variant=minbase", "--format=tar", "--include=" + ",".join(packages), SUITE,
                           str(part), mirror or apt_mirror()], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    os.replace(part, out)
    return time.monotonic() - started


def cached_base_tarball(cache_dir: Path) -> tuple[Path, float]:
    """The base tarball, made once per package list and mirror and kept in cache_dir; (path, seconds spent)."""
    mirror = apt_mirror()
    name = re.sub(r"[^\w.-]", "_", f"{SUITE}-minbase-{'-'.join(BASE_PACKAGES)}-{mirror}")[:150] + ".tar"
    tarball = cache_dir / name
    if tarball.is_file():
        return tarball, 0.0
    cache_dir.mkdir(parents=True, exist_ok=True)
    return tarball, make_base_tarball(tarball, mirror)


def build_context(dest: Path, wheel: Path | None = None) -> Path:
    """The repository as a build context (the Dockerfile's .dockerignore drops the rest of a checkout's state),
    with `wheel` and its sidecar manifest in wheels/ for WHEEL_FROM=context."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", ".venv", ".provision", "__pycache__",
                                                              ".pytest_cache", "wheels"))
    if wheel is not None:
        (dest / "wheels").mkdir()
        for path in (wheel, wheel.with_name(wheel.name + ".manifest.json")):
            shutil.copy2(path, dest / "wheels" / path.name)
    return dest


def json_object(done: subprocess.CompletedProcess, *keys: str) -> dict:
    """The first JSON object printed on stdout (pretty or on one line) that has all of `keys` (a command line
    may run several `./inv ... --json`: verify's checks, then wheel's summary)."""
    decoder, text, at = json.JSONDecoder(), done.stdout, 0
    while (at := text.find("{", at)) >= 0:
        try:
            found = decoder.raw_decode(text[at:])[0]
        except ValueError:
            found = None
        if isinstance(found, dict) and all(k in found for k in keys):
            return found
        at += 1
    raise AssertionError(f"no JSON with {keys} (exit {done.returncode}):\n{text[-4000:]}\n{done.stderr[-4000:]}")
