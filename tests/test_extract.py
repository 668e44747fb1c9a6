"""Hostile tarballs are refused before anything is written, whether or not tarfile has its `data` filter."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from conftest import Route, sha256, with_sources

from vllm_provision import pipeline
from vllm_provision.core.errors import StepFailed
from vllm_provision.plan import SourcePlan, build_plan
from vllm_provision.probes.host import HostFacts
from vllm_provision.sources.extract import safe_extract, tree_sha256


def entry(name: str, kind: str = "file", target: str = "", data: bytes = b"x") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    if kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, target
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, target
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    elif kind == "chardev":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    else:
        info.size, info.mode = len(data), 0o644
    return info


def tarball(*entries: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(data[:info.size]) if info.isreg() else None)
    return buf.getvalue()


def extract(tmp_path: Path, data: bytes) -> Path:
    """Extract into tmp_path/work/out; the archive itself sits beside the work dir."""
    archive = tmp_path / "archive.tar.gz"
    archive.write_bytes(data)
    (tmp_path / "work").mkdir(exist_ok=True)
    return safe_extract(archive, tmp_path / "work" / "out")


@pytest.fixture(params=["with-data-filter", "without-data-filter"])
def filter_mode(request, monkeypatch):
    """The check must hold on Pythons whose tarfile has no `data` filter (3.10 < 3.10.12, 3.11 < 3.11.4)."""
    if request.param == "without-data-filter":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no data filter")
    return request.param


def pkg(*entries):
    return (entry("pkg", "dir"), entry("pkg/setup.py"), *entries)


CHAIN = (entry("pkg/d", "dir"), entry("pkg/d/b", "symlink", ".."), entry("pkg/a", "symlink", "d/b/.."))

HOSTILE = {
    # each link looks harmless read alone; together they make pkg/c the parent of the extraction root
    "symlink-chain": pkg(*CHAIN, entry("pkg/c", "symlink", "a/.."), entry("pkg/c/ESCAPED")),
    # a link made harmless-looking first, then turned outward by a link created after it
    "link-redirected-later": pkg(entry("pkg/sub", "dir"), entry("pkg/sub/x", "symlink", "d/../.."),
                                 entry("pkg/sub/d", "symlink", ".."), entry("pkg/sub/x/ESCAPED")),
    "link-left-pointing-out": pkg(entry("pkg/sub", "dir"), entry("pkg/sub/x", "symlink", "d/../.."),
                                  entry("pkg/sub/d", "symlink", "..")),
    "absolute-symlink": pkg(entry("pkg/evil", "symlink", "/tmp"), entry("pkg/evil/ESCAPED")),
    "dotdot-name": pkg(entry("pkg/../../ESCAPED")),
    "absolute-name": pkg(entry("/tmp/ESCAPED-vllmp-test")),
    "hardlink-outside": pkg(*CHAIN, entry("pkg/h", "hardlink", "pkg/a/../outside.txt"), entry("pkg/h")),
    "hardlink-to-later-member": pkg(entry("pkg/h", "hardlink", "pkg/later"), entry("pkg/later")),
    "hardlink-to-directory": pkg(entry("pkg/dir", "dir"), entry("pkg/h", "hardlink", "pkg/dir")),
    "symlink-replaced-by-file": pkg(entry("pkg/inner", "symlink", "setup.py"), entry("pkg/inner")),
    "fifo": pkg(entry("pkg/pipe", "fifo")),
    "device": pkg(entry("pkg/null", "chardev")),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_before_any_write(tmp_path, filter_mode, case):
    outside = tmp_path / "work" / "outside.txt"
    outside.parent.mkdir()
    outside.write_text("untouched\n")
    with pytest.raises(StepFailed) as err:
        extract(tmp_path, tarball(*HOSTILE[case]))
    assert err.value.message.startswith("refusing to extract archive.tar.gz: ") and "\n" not in err.value.message
    assert "not the release's" in err.value.hint
    # nothing written: no target, no staging dir, nothing beside them, the outside file intact
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["outside.txt"]
    assert outside.read_text() == "untouched\n" and outside.stat().st_nlink == 1
    assert not list(tmp_path.rglob("ESCAPED*")) and not os.path.lexists("/tmp/ESCAPED-vllmp-test")


def test_chain_message_names_the_member_that_leaves(tmp_path, filter_mode):
    with pytest.raises(StepFailed) as err:
        extract(tmp_path, tarball(*HOSTILE["symlink-chain"]))
    assert "member 'pkg/c' is a link escaping the tree (a/..)" in err.value.message


def test_benign_archive_with_internal_links_extracts(tmp_path, filter_mode):
    top = extract(tmp_path, tarball(*pkg(
        entry("pkg/include", "dir"), entry("pkg/include/x.h"),
        entry("pkg/inc", "symlink", "include"),                   # a directory link, then a file through it
        entry("pkg/inc/y.h"),
        entry("pkg/include/alias.h", "symlink", "x.h"),
        entry("pkg/docs", "dir"), entry("pkg/docs/up", "symlink", "../include/x.h"),
        entry("pkg/root", "symlink", ".."),                        # the extraction root is still inside
        entry("pkg/early", "symlink", "late.txt"), entry("pkg/late.txt"),   # a link made before its target
        entry("pkg/copy.h", "hardlink", "pkg/include/x.h"))))
    assert top == tmp_path / "work" / "out" / "pkg"
    assert (top / "include" / "y.h").read_bytes() == b"x" and (top / "inc").is_symlink()
    assert os.readlink(top / "include" / "alias.h") == "x.h" and (top / "docs" / "up").read_bytes() == b"x"
    assert (top / "copy.h").stat().st_ino == (top / "include" / "x.h").stat().st_ino
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["out"]


def test_tree_sha256_covers_link_targets(tmp_path):
    def tree(name: str, target: str | None) -> Path:
        root = tmp_path / name
        (root / "sub").mkdir(parents=True)
        (root / "a.txt").write_text("a")
        (root / "b.txt").write_text("b")
        if target:
            (root / "sub" / "link").symlink_to(target)
        return root

    to_a, to_b, none = tree("to-a", "../a.txt"), tree("to-b", "../b.txt"), tree("none", None)
    assert len({tree_sha256(to_a), tree_sha256(to_b), tree_sha256(none)}) == 3
    assert tree_sha256(to_a) == tree_sha256(tree("to-a-again", "../a.txt"))


def test_fetch_step_refuses_a_hostile_release_archive_in_one_line(http_server, isolated, tmp_path, monkeypatch):
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    data = tarball(*HOSTILE["symlink-chain"])
    http_server.add("/m/vllm-0.0.1.tar.gz", Route(data))
    plan = with_sources(build_plan({}, facts=HostFacts()),
                        [SourcePlan("mirror", http_server.url + "/m/vllm-0.0.1.tar.gz", "vllm-0.0.1.tar.gz", sha256(data))])
    [result] = pipeline.run_steps(plan, HostFacts(), ["fetch"])
    assert result.status == "failed" and "refusing to extract vllm-0.0.1.tar.gz" in result.detail
    assert not plan.workspace.src.exists() and not list(tmp_path.rglob("ESCAPED"))
