"""The shared download cache: every use re-checks the cached archive, and one file is written by one run at a time.

Real cache directories, real HTTP servers on 127.0.0.1, real processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, Route, make_tarball, sha256, with_sources

from vllm_provision import pipeline
from vllm_provision.plan import SourcePlan, build_plan
from vllm_provision.probes.host import HostFacts

TARBALL = make_tarball({"setup.py": b"print('hi')\n", "vllm/blob.bin": bytes(range(256)) * 400})
SHA = sha256(TARBALL)
FILE = "vllm-0.0.1.tar.gz"


def mirror_plan(server, **cli):
    source = SourcePlan("mirror", server.url + f"/m/{FILE}", FILE, SHA)
    return with_sources(build_plan(cli, facts=HostFacts()), [source])


def flip_one_byte(path) -> bytes:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


def fetch(plan, **kw):
    [result] = pipeline.run_steps(plan, HostFacts(), ["fetch"], **kw)
    return result


def test_corrupt_cached_archive_is_reported_removed_and_fetched_again(http_server, isolated, capsys):
    http_server.add(f"/m/{FILE}", Route(TARBALL))
    plan = mirror_plan(http_server)
    assert fetch(plan).status == "ok"
    cached = plan.workspace.downloads / FILE
    bad = flip_one_byte(cached)
    capsys.readouterr()

    again = fetch(plan)   # the stamp is unchanged: only the cache check notices

    assert again.status == "ok"
    assert f"warning: the cached {cached} is corrupt (expected sha256 {SHA}, got {sha256(bad)}): removed" \
        in capsys.readouterr().err
    assert cached.read_bytes() == TARBALL
    assert http_server.paths() == [f"/m/{FILE}", f"/m/{FILE}"]
    assert fetch(plan).status == "up-to-date"


@pytest.mark.parametrize("force", [[], ["fetch"]], ids=["up-to-date-stamp", "forced"])
def test_corrupt_cached_archive_offline_names_the_file_its_checksum_and_the_fix(http_server, isolated, force):
    http_server.add(f"/m/{FILE}", Route(TARBALL))
    assert fetch(mirror_plan(http_server)).status == "ok"
    offline = mirror_plan(http_server, offline=True)
    cached = offline.workspace.downloads / FILE
    bad = flip_one_byte(cached)

    result = fetch(offline, force=force)

    assert result.status == "failed" and result.exit_code == 1
    assert result.detail == (f"--offline: the cached {FILE} was corrupt (expected sha256 {SHA}, got {sha256(bad)}) "
                             "and has been removed")
    assert result.hint == ("rerun without --offline to download it again, or copy a verified copy into "
                           f"{offline.workspace.downloads}/")
    assert not cached.exists() and len(http_server.requests) == 1


class HeldRoute(Route):
    """Sends the headers at once and the body only when the test sets `go`: a download in flight."""

    def __init__(self, body: bytes):
        super().__init__(body)
        self.go = threading.Event()

    @property
    def delay(self) -> float:   # read by the server between the headers and the body
        self.go.wait(60)
        return 0

    @delay.setter
    def delay(self, _value: float) -> None:
        pass


FETCH_ONE = """
import dataclasses, sys
from vllm_provision import pipeline
from vllm_provision.probes.host import HostFacts
from vllm_provision.plan import SourcePlan, build_plan
url, file, sha, profile = sys.argv[1:]
plan = build_plan({"profile": profile}, facts=HostFacts())
plan = dataclasses.replace(plan, sources=(SourcePlan("mirror", url, file, sha),))
[result] = pipeline.run_steps(plan, HostFacts(), ["fetch"])
print(result.status, result.detail)
sys.exit(0 if result.status == "ok" else 1)
"""


def until(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_two_workspaces_fetching_one_file_download_it_once(http_server, isolated, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLMP_FETCH__TIMEOUT", "120")   # the held body must not look like a stalled server
    route = HeldRoute(TARBALL)
    url = http_server.add(f"/m/{FILE}", route)

    def start(profile: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", FETCH_ONE, url, FILE, SHA, profile], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = start("seed")
    until(lambda: len(http_server.requests) == 1, "the first download to start")
    second = start("host-torch")
    said: list[str] = []

    def read_second() -> None:
        for line in second.stdout:
            said.append(line)
    reader = threading.Thread(target=read_second, daemon=True)
    reader.start()
    # The second run either waits for the file's lock or (unlocked) starts a download of its own.
    until(lambda: any("waiting for it" in line for line in said) or len(http_server.requests) > 1
          or second.poll() is not None, "the second run to reach the cache")
    route.go.set()
    first_out = first.communicate(timeout=120)[0]
    second.wait(timeout=120)
    reader.join(timeout=10)

    assert first.returncode == 0, first_out
    assert second.returncode == 0, "".join(said)
    assert f"another run is fetching {FILE} into the cache; waiting for it\n" in said
    assert http_server.paths() == [f"/m/{FILE}"]
    ws_root = tmp_path / "ws"
    for workspace in ("0.2.2-seed", "0.2.2-host-torch"):
        assert (ws_root / workspace / "src" / "setup.py").read_bytes() == b"print('hi')\n"
