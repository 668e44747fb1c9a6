"""Shared fixtures: a real HTTP server on 127.0.0.1 with fault injection, and isolated settings."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import socket
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# ------------------------------------------------------------------------------------------ how the suite runs
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# the slow tier's time limit per test, fixture setup included: above real_vllm_wheel's own limit on its compile
# (which then fails that test with the compile's output), so a slow compile on a busy host is not a dead worker
SLOW_TIMEOUT_S = 7200
# tests that must share one pytest-xdist worker (`--dist loadgroup`): the session compile is made once per
# worker, so all its users run on one; the sshd farms' simulated hosts are Unix users and loopback addresses
GROUPS = (("real-vllm", lambda item: "real_vllm_wheel" in getattr(item, "fixturenames", ())),
          ("sshd", lambda item: item.path.name == "test_fleet.py"))


@pytest.hookimpl(tryfirst=True)     # before pytest-xdist reads the groups (loadgroup)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
        group = next((name for name, belongs in GROUPS if belongs(item)), None)
        if group and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """A pytest-xdist worker under --dist loadgroup: each grouped test's id must carry its group (`@name`), else
    the groups are split across workers (two real compiles, colliding sshd farms): stop before any test runs."""
    if getattr(session.config.option, "loadgroup", False) and hasattr(session.config, "workerinput"):
        lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
        if lost:
            raise pytest.UsageError(f"--dist loadgroup is not in effect with pytest {pytest.__version__} (e.g. "
                                    f"{lost[0]} has no @group): install the test extra's pytest")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skip is a failure: a missing tool, wheel or service fails the run, naming what is missing,
    instead of leaving a test quietly unrun."""
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (every test must run in CI): {reason}"


class Route:
    """What the server does for one path. `faults` is consumed one per request, then `body` is served."""

    def __init__(self, body: bytes = b"", status: int = 200, content_type: str = "application/octet-stream",
                 faults: list | None = None, delay: float = 0.0):
        self.body = body
        self.status = status
        self.content_type = content_type
        self.faults = list(faults or [])   # items: ("status", code) | ("drop", nbytes) | ("sleep", s)
        self.delay = delay


class FaultServer:
    def __init__(self):
        self.routes: dict[str, Route] = {}
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                server.requests.append({"path": self.path, "range": self.headers.get("Range"),
                                        "auth": self.headers.get("Authorization")})
                route = server.routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                fault = route.faults.pop(0) if route.faults else None
                if fault and fault[0] == "status":
                    self.send_response(fault[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault and fault[0] == "sleep":
                    time.sleep(fault[1])
                body, status = route.body, route.status
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and status == 200:
                    start = int(rng[6:].split("-")[0])
                    status = 206
                self.send_response(status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if fault and fault[0] == "drop":
                    self.wfile.write(body[start:start + fault[1]])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if route.delay:
                    time.sleep(route.delay)
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, path: str, route: Route) -> str:
        self.routes[path] = route
        return self.url + path

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]


@pytest.fixture
def http_server():
    server = FaultServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@contextlib.contextmanager
def holding_a_refused_port() -> Iterator[int]:
    """A loopback port that refuses connections while the block runs: bound and never listening, so no other
    server (another xdist worker's) can take it between choosing it and using it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture
def refused_port() -> Iterator[int]:
    with holding_a_refused_port() as port:
        yield port


def make_tarball(members: dict[str, bytes], top: str = "vllm-0.0.1", extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Settings that point the cache and workspaces into tmp_path, with no VLLMP_* leaking in."""
    for name in list(__import__("os").environ):
        if name.startswith("VLLMP_"):
            monkeypatch.delenv(name)
    env = {"VLLMP_CACHE_DIR": str(tmp_path / "cache"), "VLLMP_WORKSPACE_ROOT": str(tmp_path / "ws"),
           "VLLMP_FETCH__BACKOFF": "0.01", "VLLMP_FETCH__TIMEOUT": "2", "VLLMP_FETCH__RETRIES": "3"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def with_sources(plan, sources):
    return dataclasses.replace(plan, sources=tuple(sources))


def without_host_cuda(environ: dict) -> dict:
    """The environment of a host with nothing but Python: no VLLMP_* settings, no CUDA toolkit on PATH."""
    import os
    env = {k: v for k, v in environ.items() if not k.startswith("VLLMP_") and k not in ("CUDA_HOME", "CUDA_PATH")}
    env["PATH"] = os.pathsep.join(p for p in environ["PATH"].split(os.pathsep)
                                  if "cuda" not in p and not (Path(p) / "nvcc").exists())
    return env


@pytest.fixture(scope="session")
def real_vllm_wheel(tmp_path_factory) -> dict:
    """The slow tier's one real compile: `./inv provision --profile pypi-cu13 --arch 9.0 --push` from an empty
    workspace into a directory cache (the env from the committed lock, from PyPI). Later tests reuse it:
    {workspace, cache (the dir cache), wheel, key, ccache, ccache_debug (CCACHE_DEBUG's record of each
    compile's inputs), env (the environment it ran with), output}; a builder that compiles again with the same
    CCACHE_DIR is served from the compiler cache."""
    import json
    import os
    import subprocess
    root = tmp_path_factory.mktemp("real-vllm")
    env = without_host_cuda(dict(os.environ))
    env.update(VLLMP_WORKSPACE_ROOT=str(root / "ws"), VLLMP_CACHE_DIR=str(root / "cache"),
               CCACHE_DIR=str(root / "ccache"), CI="true", VLLMP_ARTIFACTS__CACHES=f"[dir:{root / 'wheels'}]",
               # what ccache hashed for each object (a few MB each): a later compile that misses is compared
               CCACHE_DEBUG="1", CCACHE_DEBUGDIR=str(root / "ccache-debug"),
               # GPU host images export lists vLLM 0.2.2's setup.py refuses ("9.0a"): the build and the wheel
               # must use the plan's list
               TORCH_CUDA_ARCH_LIST="9.0a",
               # the Python minor every simulated fleet host has (its system python3): the fleet's builder
               # reaches the same artifact key
               VLLMP_ENV__PYTHON="3.11")
    # ... and the same python3.11 they find (sshd's PATH has no pyenv): a build against other Python headers
    # misses the compiler cache the fleet's builder starts from
    env["PATH"] = os.pathsep.join(["/usr/bin", env["PATH"]])
    done = subprocess.run([str(ROOT / "inv"), "provision", "--profile", "pypi-cu13", "--arch", "9.0", "--push"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=5400)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    workspace = root / "ws" / "0.2.2-pypi-cu13"
    artifact = json.loads((workspace / "report.json").read_text())["steps"]["build"]["facts"]["artifact"]
    return {"workspace": workspace, "cache": root / "wheels", "wheel": root / "wheels" / Path(artifact["wheel"]).name,
            "key": artifact["key"], "ccache": root / "ccache", "ccache_debug": root / "ccache-debug", "env": env,
            "output": done.stdout + done.stderr}
