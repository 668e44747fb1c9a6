"""Fixtures for the env tests: a real pypiserver over a wheelhouse built here, a proxy in front of it
(slow / auth-checking / counting), and a real conda channel served over HTTP. All on 127.0.0.1.

Import them explicitly: `from mirrors import pypi_mirror, ...` (tests/ is on sys.path via conftest).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from vllm_provision.envs.lock import render_header

TINY = {  # name -> (version, install_requires)
    "tinya": ("1.0", ["tinyb>=1.0"]),
    "tinyb": ("1.0", []),
    "tinyc": ("2.0", []),
}


def wait_for(url: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def build_wheelhouse(out: Path) -> dict[str, Path]:
    """Tiny pure-Python wheels built with `pip wheel` from generated setup.py projects."""
    out.mkdir(parents=True, exist_ok=True)
    projects = []
    for name, (version, requires) in TINY.items():
        proj = out.parent / "projects" / name
        (proj / name).mkdir(parents=True, exist_ok=True)
        (proj / name / "__init__.py").write_text(f"VERSION = {version!r}\n")
        (proj / "setup.py").write_text(
            "from setuptools import setup\n"
            f"setup(name={name!r}, version={version!r}, packages=[{name!r}], install_requires={requires!r})\n")
        projects.append(str(proj))
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull)
    env.pop("PIP_FIND_LINKS", None)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    *projects], check=True, env=env)
    return {p.name.split("-")[0]: p for p in out.glob("*.whl")}


def write_lock(path: Path, wheels: dict[str, Path], names=("tinya", "tinyb", "tinyc"), release="0.2.2",
               profile="seed", python="3.11") -> Path:
    lines = []
    for name in names:
        whl = wheels[name]
        version = TINY[name][0]
        digest = hashlib.sha256(whl.read_bytes()).hexdigest()
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{digest}")
    meta = {"release": release, "profile": profile, "python": python, "cuda": "", "exclude-newer": "2023-11-20",
            "platform": "x86_64-manylinux_2_28"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_header(meta) + "\n".join(lines) + "\n")
    return path


_SERVE_PYPISERVER = """
import os, pathlib, socket, sys
import pypiserver, waitress
listening = socket.socket(fileno=int(sys.argv[1]))
password = os.environ.get("PYPISERVER_TEST_PASSWORD")
if password:
    auth = dict(authenticate=["update", "download", "list"], password_file=None,
                auther=lambda user, given: (user, given) == ("ci", password))
else:
    auth = dict(authenticate=[], password_file=".")
waitress.serve(pypiserver.app(roots=[pathlib.Path(sys.argv[2])], **auth), sockets=[listening], _quiet=True)
"""


class Pypiserver:
    """A real pypiserver (its WSGI app, served by waitress) in a child process. The port is bound and listening
    here before the child starts and handed to it, so two servers (two xdist workers) never race for one port.
    With `password`, it asks for ci/password to list, download and upload."""

    def __init__(self, root: Path, password: str | None = None):
        with socket.socket() as listening:
            listening.bind(("127.0.0.1", 0))
            listening.listen(128)
            self.port = listening.getsockname()[1]
            env = dict(os.environ, PYPISERVER_TEST_PASSWORD=password or "")
            self.proc = subprocess.Popen([sys.executable, "-c", _SERVE_PYPISERVER, str(listening.fileno()), str(root)],
                                         pass_fds=[listening.fileno()], env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}/simple/"
        wait_for(f"http://127.0.0.1:{self.port}/health")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> dict[str, Path]:
    return build_wheelhouse(tmp_path_factory.mktemp("mirror") / "packages")


@pytest.fixture(scope="session")
def pypi_mirror(wheelhouse):
    root = next(iter(wheelhouse.values())).parent
    server = Pypiserver(root)
    yield server
    server.stop()


class Proxy:
    """An HTTP proxy in front of an upstream index: optional Basic auth, delay, request counting."""

    def __init__(self, upstream: str, *, delay: float = 0.0, auth: tuple[str, str] | None = None):
        self.upstream = upstream.rstrip("/")
        self.delay, self.auth, self.requests, self.denied = delay, auth, [], 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                if outer.auth:
                    want = "Basic " + base64.b64encode(":".join(outer.auth).encode()).decode()
                    if self.headers.get("Authorization") != want:
                        outer.denied += 1
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="mirror"')
                        self.end_headers()
                        return
                if outer.delay:
                    time.sleep(outer.delay)
                try:
                    with urllib.request.urlopen(outer.upstream + self.path, timeout=30) as resp:
                        body, ctype, status = resp.read(), resp.headers.get("Content-Type", ""), resp.status
                except urllib.error.HTTPError as exc:
                    body, ctype, status = exc.read(), exc.headers.get("Content-Type", ""), exc.code
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/simple/", userinfo: str | None = None) -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy_factory(pypi_mirror):
    made = []

    def make(**kw) -> Proxy:
        p = Proxy(f"http://127.0.0.1:{pypi_mirror.port}", **kw)
        made.append(p)
        return p
    yield make
    for p in made:
        p.stop()


# ---- conda channel ---------------------------------------------------------------------------------

def build_conda_package(channel: Path, name: str, version: str, depends=(), files: dict[str, str] | None = None) -> Path:
    """A noarch: generic .conda package made with conda_package_handling."""
    from conda_package_handling import api

    work = channel.parent / f"build-{name}-{version}"
    files = files or {f"share/{name}/README": f"{name} {version}\n"}
    for rel, text in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    info = work / "info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "index.json").write_text(json.dumps({
        "name": name, "version": version, "build": "0", "build_number": 0, "depends": list(depends),
        "noarch": "generic", "subdir": "noarch", "license": "MIT", "timestamp": 1700000000000}))
    (info / "files").write_text("\n".join(files) + "\n")
    paths = [{"_path": rel, "path_type": "hardlink",
              "sha256": hashlib.sha256((work / rel).read_bytes()).hexdigest(),
              "size_in_bytes": (work / rel).stat().st_size} for rel in files]
    (info / "paths.json").write_text(json.dumps({"paths": paths, "paths_version": 1}))
    out = channel / "noarch"
    out.mkdir(parents=True, exist_ok=True)
    fn = f"{name}-{version}-0.conda"
    api.create(str(work), list(files) + ["info/index.json", "info/files", "info/paths.json"], fn, out_folder=str(out))
    return out / fn


def index_channel(channel: Path) -> None:
    import asyncio

    from rattler.index import index_fs
    (channel / "linux-64").mkdir(parents=True, exist_ok=True)
    result = index_fs(channel)
    if asyncio.iscoroutine(result):
        asyncio.run(result)


class StaticServer:
    """Serves a directory on 127.0.0.1 and counts requests."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def conda_channels(tmp_path):
    """(main, other): `main` has tinyconda 1.0 (-> tinydep); `other` has the same names and must stay unused."""
    servers = []
    for label in ("main", "other"):
        ch = tmp_path / f"channel-{label}"
        build_conda_package(ch, "tinydep", "1.0")
        build_conda_package(ch, "tinyconda", "1.0", depends=["tinydep"])
        index_channel(ch)
        servers.append(StaticServer(ch))
    yield tuple(servers)
    for s in servers:
        s.stop()
