"""Safe tarball extraction (nothing may land outside the target) and tree hashing."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from .errors import StepFailed


def _unsafe_reason(member: tarfile.TarInfo, archive: Path) -> str | None:
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")):
        return "an absolute path"
    if ".." in path.parts:
        return "a '..' component"
    if member.isdev() or member.isfifo() or member.ischr() or member.isblk():
        return "a device or fifo"
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        if target.is_absolute():
            return f"a link to the absolute path {member.linkname}"
        base = path.parent if member.issym() else PurePosixPath()
        depth = 0
        for part in (base / target).parts:
            depth = depth - 1 if part == ".." else depth + (part not in ("", "."))
            if depth < 0:
                return f"a link escaping the tree ({member.linkname})"
    return None


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract a tar archive into `target` (created atomically); return the single top-level dir.

    Any member with an absolute path, '..', a device, or a link escaping the tree refuses the
    whole archive before anything is written.
    """
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as exc:
        raise StepFailed(f"{archive.name} is not a readable tarball: {exc}",
                         hint=f"delete {archive} and fetch again") from exc
    with tar:
        members = tar.getmembers()
        for member in members:
            reason = _unsafe_reason(member, archive)
            if reason:
                raise StepFailed(f"refusing to extract {archive.name}: member {member.name!r} is {reason}",
                                 hint="the archive is malformed or malicious; use the PyPI sdist or a trusted mirror")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, members=members, **kwargs)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    tops = [p for p in target.iterdir()]
    return tops[0] if len(tops) == 1 and tops[0].is_dir() else target


def tree_sha256(root: Path) -> str:
    """Hash of a source tree independent of archive bytes: sorted (path, executable bit, content hash)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(root).as_posix()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        executable = "x" if os.access(path, os.X_OK) else "-"
        h.update(f"{rel}\0{executable}\0{digest}\n".encode())
    return h.hexdigest()
