"""inv fetch against a real HTTP server on 127.0.0.1 with injected faults."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tarfile

import pytest
from conftest import ROOT, Route, make_tarball, sha256, with_sources

from vllm_provision import pipeline
from vllm_provision.core.errors import ConfigError, StepFailed
from vllm_provision.plan import SourcePlan, build_plan
from vllm_provision.probes.host import HostFacts
from vllm_provision.sources.download import HttpSettings, download
from vllm_provision.sources.extract import safe_extract, tree_sha256
from vllm_provision.sources.release import obtain

TARBALL = make_tarball({"setup.py": b"print('hi')\n", "vllm/blob.bin": random.Random(0).randbytes(200_000)})
SHA = sha256(TARBALL)
FAST = HttpSettings(timeout=1, retries=3, backoff=0.01)


def local_plan(sources, **cli):
    return with_sources(build_plan(cli, facts=HostFacts()), sources)


def test_resume_continues_from_the_byte_it_had(http_server, tmp_path):
    url = http_server.add("/f.tar.gz", Route(TARBALL, faults=[("drop", 1000)]))
    dest = download(url, tmp_path / "f.tar.gz", FAST, sha256=SHA)
    assert dest.read_bytes() == TARBALL
    assert [r["range"] for r in http_server.requests] == [None, "bytes=1000-"]
    assert not (tmp_path / "f.tar.gz.part").exists()


def test_retries_503_twice_then_succeeds(http_server, tmp_path):
    url = http_server.add("/f.tar.gz", Route(TARBALL, faults=[("status", 503), ("status", 503)]))
    download(url, tmp_path / "f.tar.gz", FAST, sha256=SHA)
    assert len(http_server.requests) == 3


def test_server_slower_than_timeout_gives_up_with_hint(http_server, tmp_path):
    url = http_server.add("/slow.tar.gz", Route(TARBALL, faults=[("sleep", 3)] * 3))
    with pytest.raises(StepFailed) as err:
        download(url, tmp_path / "slow.tar.gz", HttpSettings(timeout=0.5, retries=1, backoff=0.01), sha256=SHA)
    assert "giving up after 2 attempts" in err.value.message
    assert "timeout" in err.value.hint
    assert not (tmp_path / "slow.tar.gz").exists()


def test_wrong_checksum_names_both_hashes_and_url_and_deletes(http_server, tmp_path):
    url = http_server.add("/bad.tar.gz", Route(b"not the release"))
    with pytest.raises(StepFailed) as err:
        download(url, tmp_path / "bad.tar.gz", FAST, sha256=SHA)
    msg = err.value.message
    assert SHA in msg and sha256(b"not the release") in msg and url in msg
    assert not (tmp_path / "bad.tar.gz").exists() and not (tmp_path / "bad.tar.gz.part").exists()


def test_404_on_first_source_then_next_source(http_server, isolated):
    http_server.add("/simple/vllm/", Route(b'<a href="../../files/vllm-0.0.1.tar.gz#sha256=x">vllm-0.0.1.tar.gz</a>',
                                           content_type="text/html"))
    http_server.add("/files/vllm-0.0.1.tar.gz", Route(TARBALL))
    plan = local_plan([SourcePlan("mirror", http_server.url + "/mirror/vllm-0.0.1.tar.gz", "vllm-0.0.1.tar.gz", SHA),
                       SourcePlan("pypi-sdist", http_server.url + "/simple/vllm/", "vllm-0.0.1.tar.gz", SHA)])
    path, source = obtain(plan)
    assert source.kind == "pypi-sdist" and path.read_bytes() == TARBALL
    assert http_server.paths() == ["/mirror/vllm-0.0.1.tar.gz", "/simple/vllm/", "/files/vllm-0.0.1.tar.gz"]


def test_credentials_are_sent_but_never_shown(http_server, isolated, capsys):
    http_server.add("/m/vllm-0.0.1.tar.gz", Route(TARBALL))
    secret_url = http_server.url.replace("http://", "http://alice:s3cret@") + "/m/vllm-0.0.1.tar.gz"
    plan = local_plan([SourcePlan("mirror", secret_url, "vllm-0.0.1.tar.gz", SHA)])
    obtain(plan)
    assert http_server.requests[0]["auth"].startswith("Basic ")
    assert "s3cret" not in capsys.readouterr().err
    assert "s3cret" not in str(plan.to_dict())


def test_cached_refetch_makes_no_request_and_offline_uses_cache(http_server, isolated):
    http_server.add("/m/vllm-0.0.1.tar.gz", Route(TARBALL))
    src = SourcePlan("mirror", http_server.url + "/m/vllm-0.0.1.tar.gz", "vllm-0.0.1.tar.gz", SHA)
    obtain(local_plan([src]))
    obtain(local_plan([src]))
    obtain(local_plan([src], offline=True))
    assert len(http_server.requests) == 1


def test_offline_without_cache_is_bad_input(isolated):
    plan = local_plan([SourcePlan("mirror", "http://127.0.0.1:9/x.tar.gz", "x.tar.gz", SHA)], offline=True)
    with pytest.raises(ConfigError) as err:
        obtain(plan)
    assert "not in the cache" in err.value.message and "--offline" in err.value.message


def test_github_archive_verified_by_extracted_tree(http_server, isolated, tmp_path):
    tree = tree_sha256(safe_extract_bytes(TARBALL, tmp_path / "t"))
    http_server.add("/gh.tar.gz", Route(TARBALL))
    plan = local_plan([SourcePlan("github-archive", http_server.url + "/gh.tar.gz", "gh.tar.gz", "", tree)])
    path, source = obtain(plan)
    assert source.kind == "github-archive"
    bad = local_plan([SourcePlan("github-archive", http_server.url + "/gh.tar.gz", "gh2.tar.gz", "", "0" * 64)])
    with pytest.raises(StepFailed) as err:
        obtain(bad)
    assert err.value.message == (f"could not download {bad.release.sdist.file} from any source: github-archive: "
                                 f"tree checksum mismatch for gh2.tar.gz: expected tree sha256 {'0' * 64}, got {tree}; "
                                 "the bad file was deleted")
    assert not (bad.workspace.downloads / "gh2.tar.gz").exists()


def test_wrong_bytes_from_one_source_then_the_next_source(http_server, isolated, capsys):
    wrong = http_server.add("/wrong/vllm-0.0.1.tar.gz", Route(b"a different file"))
    right = http_server.add("/right/vllm-0.0.1.tar.gz", Route(TARBALL))
    plan = local_plan([SourcePlan("mirror", wrong, "vllm-0.0.1.tar.gz", SHA),
                       SourcePlan("mirror", right, "vllm-0.0.1.tar.gz", SHA)])
    path, source = obtain(plan)
    assert source.url == right and path.read_bytes() == TARBALL
    assert http_server.paths() == ["/wrong/vllm-0.0.1.tar.gz", "/right/vllm-0.0.1.tar.gz"]
    assert (f"mirror: checksum mismatch for {wrong}: expected sha256 {SHA}, got {sha256(b'a different file')}; "
            "the bad file was deleted; trying the next source") in capsys.readouterr().err


def test_source_without_any_checksum_is_never_used(http_server, isolated):
    http_server.add("/gh.tar.gz", Route(TARBALL))
    with pytest.raises(StepFailed) as err:
        obtain(local_plan([SourcePlan("github-archive", http_server.url + "/gh.tar.gz", "gh.tar.gz")]))
    assert "no checksum recorded" in err.value.message and http_server.requests == []


def safe_extract_bytes(data: bytes, where):
    where.mkdir(parents=True, exist_ok=True)
    archive = where / "a.tar.gz"
    archive.write_bytes(data)
    return safe_extract(archive, where / "out")


@pytest.mark.parametrize("name,info", [
    ("dotdot", tarfile.TarInfo("pkg/../../escape.txt")),
    ("absolute", tarfile.TarInfo("/tmp/vllmp-absolute-escape.txt")),
])
def test_traversal_members_are_refused_and_nothing_written(tmp_path, name, info):
    info.size = 3
    data = make_tarball({"ok.txt": b"ok"}, top="pkg", extra=[info])
    with pytest.raises(StepFailed) as err:
        safe_extract_bytes(data, tmp_path / "x")
    assert "refusing to extract" in err.value.message
    assert not (tmp_path / "x" / "out").exists()
    assert not (tmp_path / "escape.txt").exists() and not os.path.exists("/tmp/vllmp-absolute-escape.txt")


def test_absolute_symlink_is_refused(tmp_path):
    link = tarfile.TarInfo("pkg/evil")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(StepFailed) as err:
        safe_extract_bytes(make_tarball({"a": b"a"}, top="pkg", extra=[link]), tmp_path / "y")
    assert "absolute path /etc/passwd" in err.value.message
    assert not (tmp_path / "y" / "out").exists()


def test_relative_symlink_escaping_the_tree_is_refused(tmp_path):
    link = tarfile.TarInfo("pkg/sub/evil")
    link.type = tarfile.SYMTYPE
    link.linkname = "../../../outside"
    with pytest.raises(StepFailed) as err:
        safe_extract_bytes(make_tarball({"a": b"a"}, top="pkg", extra=[link]), tmp_path / "z")
    assert "escaping the tree" in err.value.message


def test_fetch_step_twice_second_is_up_to_date(http_server, isolated):
    http_server.add("/m/vllm-0.0.1.tar.gz", Route(TARBALL))
    plan = local_plan([SourcePlan("mirror", http_server.url + "/m/vllm-0.0.1.tar.gz", "vllm-0.0.1.tar.gz", SHA)])
    first = pipeline.run_steps(plan, HostFacts(), ["fetch"])
    second = pipeline.run_steps(plan, HostFacts(), ["fetch"])
    assert [r.status for r in first] == ["ok"] and [r.status for r in second] == ["up-to-date"]
    assert "last run took" in second[0].detail and first[0].detail in second[0].detail   # kept for the report
    assert (plan.workspace.src / "setup.py").read_bytes() == b"print('hi')\n"
    forced = pipeline.run_steps(plan, HostFacts(), ["fetch"], force=["fetch"])
    assert [r.status for r in forced] == ["ok"]
    assert len(http_server.requests) == 1  # the forced run re-extracts from the cache


def test_cli_unknown_release_exits_2_and_lists_known(isolated):
    proc = subprocess.run([sys.executable, "-m", "invoke", "fetch", "--release", "9.9.9"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown vLLM release '9.9.9'" in proc.stderr and "0.2.2" in proc.stderr and "hint:" in proc.stderr


@pytest.mark.network
def test_real_pypi_sdist_of_0_2_2(isolated):
    plan = build_plan({}, facts=HostFacts())
    path, source = obtain(with_sources(plan, [s for s in plan.sources if s.kind == "pypi-sdist"]))
    assert source.kind == "pypi-sdist"
    assert sha256(path.read_bytes()) == "d047bec3c28a93325e8c7f3bc4db01aff20e64c77d56fbb53a1542cde34c6fdc"
