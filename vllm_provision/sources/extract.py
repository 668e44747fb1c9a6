"""Safe tarball extraction (nothing may land outside the target) and tree hashing."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from vllm_provision.core.errors import StepFailed

MAX_LINK_HOPS = 40  # what Linux allows before ELOOP

Parts = tuple[str, ...]


class _Refused(Exception):
    """Why one member cannot be extracted safely."""


class _Tree:
    """The tree an archive builds, simulated in memory member by member, so that every path is resolved
    through the links made before it, as the filesystem would resolve it during extraction."""

    def __init__(self) -> None:
        self.kinds: dict[Parts, str] = {}      # real path -> "dir" | "file" | "symlink"
        self.targets: dict[Parts, str] = {}    # symlink -> its target, as written in the archive

    def resolve(self, start: Parts, path: str, *, follow_last: bool = True) -> Parts:
        """The real path of `path` taken from directory `start`; _Refused when it leaves the tree."""
        if PurePosixPath(path).is_absolute():
            raise _Refused(f"a link to the absolute path {path}")
        where, todo, hops = start, list(PurePosixPath(path).parts), 0
        while todo:
            part = todo.pop(0)
            if part == "..":
                if not where:
                    raise _Refused("a path escaping the tree")
                where = where[:-1]
                continue
            step = where + (part,)
            kind = self.kinds.get(step)
            if kind == "symlink" and (todo or follow_last):
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise _Refused("a link loop")
                target = self.targets[step]
                if PurePosixPath(target).is_absolute():
                    raise _Refused(f"a link to the absolute path {target}")
                todo = list(PurePosixPath(target).parts) + todo
                continue
            if kind == "file" and todo:
                raise _Refused("a path through a regular file")
            where = step
        return where

    def add(self, member: tarfile.TarInfo) -> None:
        name = PurePosixPath(member.name)
        if name.is_absolute() or member.name.startswith(("/", "\\")):
            raise _Refused("an absolute path")
        if ".." in name.parts:
            raise _Refused("a '..' component")
        if not name.parts:
            if member.isdir():
                return  # the archive's root itself
            raise _Refused("not a directory at the archive's root")
        # parents are created (and links in them followed) by the extraction, so resolve them first
        try:
            parent = self.resolve((), str(name.parent))
        except _Refused as exc:
            raise _Refused(f"written through {exc}") from None
        path = parent + (name.name,)
        old = self.kinds.get(path)
        if member.isdir():
            kind = "dir"
        elif member.isreg():
            kind = "file"
        elif member.issym():
            kind = "symlink"
            try:
                self.resolve(parent, member.linkname)
            except _Refused as exc:
                raise _Refused(f"a link escaping the tree ({member.linkname}): {exc}") from None
        elif member.islnk():
            kind = "file"
            try:
                source = self.resolve((), member.linkname)
            except _Refused as exc:
                raise _Refused(f"a hard link escaping the tree ({member.linkname}): {exc}") from None
            if self.kinds.get(source) != "file":
                raise _Refused(f"a hard link to {member.linkname}, which is not a regular file earlier in the archive")
        else:
            raise _Refused("a device, fifo or other special file")
        if old is not None and not (old == kind and kind in ("dir", "file")):
            raise _Refused(f"a {kind} replacing a {old} of the same name")
        self.kinds[path] = kind
        if kind == "symlink":
            self.targets[path] = member.linkname

    def check_links(self) -> None:
        """Every link left in the finished tree still resolves inside it (later links can move earlier ones)."""
        for path, target in self.targets.items():
            try:
                self.resolve(path[:-1], target)
            except _Refused as exc:
                raise _Refused(f"a link escaping the tree ({target}) once the archive is complete: {exc}") from None


def _check_members(members: list[tarfile.TarInfo], archive: Path) -> None:
    tree = _Tree()
    name = None
    try:
        for member in members:
            name = member.name
            tree.add(member)
        name = None
        tree.check_links()
    except _Refused as reason:
        where = f"member {name!r} is" if name is not None else "it has"
        raise StepFailed(f"refusing to extract {archive.name}: {where} {reason}",
                         hint=f"the archive is not the release's: delete {archive} and fetch again; "
                              "if a trusted source serves it, report that source") from None


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract a tar archive into `target` (created atomically); return the single top-level dir.

    Every member is checked against the tree built so far (links resolved as the filesystem would)
    before anything is written: an absolute or '..' path, a link or hard link leaving the tree, a
    device or fifo refuses the whole archive. tarfile's `data` filter, where this Python has it, is
    a second layer, never the only one.
    """
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError) as exc:
        raise StepFailed(f"{archive.name} is not a readable tarball: {exc}",
                         hint=f"delete {archive} and fetch again") from exc
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise StepFailed(f"{archive.name} is not a readable tarball: {exc}",
                             hint=f"delete {archive} and fetch again") from exc
        _check_members(members, archive)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, members=members, **kwargs)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except (tarfile.TarError, OSError, EOFError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise StepFailed(f"could not extract {archive.name}: {exc}",
                             hint=f"delete {archive} and fetch again; check free space in {target.parent}") from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    tops = [p for p in target.iterdir()]
    return tops[0] if len(tops) == 1 and tops[0].is_dir() else target


def glob_pattern(globs: Iterable[str]) -> re.Pattern[str]:
    """One regex for path globs relative to a tree's root: `**` crosses directories, `*` and `?` do not;
    a glob without a slash also matches at the root only (`*.cmake` is the root's cmake files)."""
    def one(glob: str) -> str:
        out, i = [], 0
        while i < len(glob):
            if glob.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            elif glob.startswith("**", i):
                out.append(".*")
                i += 2
            elif glob[i] == "*":
                out.append("[^/]*")
                i += 1
            elif glob[i] == "?":
                out.append("[^/]")
                i += 1
            else:
                out.append(re.escape(glob[i]))
                i += 1
        return "".join(out)
    return re.compile("|".join(f"(?:{one(g)})" for g in globs) or "(?!)")


def tree_files(root: Path, include: Iterable[str] | re.Pattern[str] | None = None) -> list[Path]:
    """The tree's files and symlinks (never followed), sorted by path; only those `include` (globs, or a
    pattern over the whole relative path) matches."""
    pattern = include if isinstance(include, re.Pattern) or include is None else glob_pattern(include)
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):  # never follows links
        base = Path(dirpath)
        entries += [base / n for n in filenames] + [base / n for n in dirnames if (base / n).is_symlink()]
    if pattern is not None:
        entries = [p for p in entries if pattern.fullmatch(p.relative_to(root).as_posix())]
    return sorted(entries, key=lambda p: p.relative_to(root).parts)


def tree_sha256(root: Path, include: Iterable[str] | re.Pattern[str] | None = None) -> str:
    """Hash of a source tree independent of archive bytes: sorted (path, executable bit, content hash),
    and (path, link target) for each symlink, so that a tree differing only in a link differs.
    With `include` globs, only the files they match: a full tree and one trimmed to them hash alike."""
    h = hashlib.sha256()
    for path in tree_files(root, include):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            h.update(f"{rel}\0link\0{os.readlink(path)}\n".encode())
        elif path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            executable = "x" if os.access(path, os.X_OK) else "-"
            h.update(f"{rel}\0{executable}\0{digest}\n".encode())
    return h.hexdigest()
