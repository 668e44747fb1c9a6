"""External sources of CMake-era releases: the trees vLLM's configure would download (CUTLASS, flash-attention,
FlashMLA, ...), fetched by commit through the configured mirrors, trimmed to the files the build reads, verified
by their tree hash, cached as normalised archives, bundled for hosts with no route out, and handed to the build
through the release's override variables.

Cache layout (`<cache>/externals/`): `<name>-<commit12>.tar.gz` (the trimmed tree under one top directory,
byte-reproducible) and `<name>-<commit12>.json` (its tree hash and the archive's sha256, written only after
the tree was verified): a cached archive is trusted when its bytes still match that record.

A copied external (role "copied": files the install copies into vLLM's wheel, never compiled) may also come
from the release's own wheel (`vllm-<version>-*.whl` in the download cache, or `fetch.release_wheels`): only
the entries under its `wheel_path` are read, placed at `wheel_tree`, any text the install rewrote put back,
and the result verified by the same tree hash as every other origin.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vllm_provision.catalog import External, Release
from vllm_provision.core import runner, ui
from vllm_provision.core.errors import ConfigError, StepFailed
from vllm_provision.core.files import atomic_write
from vllm_provision.core.redact import redact_url
from vllm_provision.core.settings import Fetch as FetchSettings
from vllm_provision.sources.download import HttpSettings, cache_lock, download, sha256_file
from vllm_provision.sources.extract import safe_extract, tree_files, tree_sha256

GITHUB_ARCHIVE = "https://github.com/{repo}/archive/{commit}.tar.gz"
MARKER = ".vllmp-external.json"
BUNDLE_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Origin:
    """One place a repository's tree at a commit may come from."""
    kind: str        # tarball | git | wheel (the release's wheel: a path in the download cache or a URL)
    url: str


def origins(repo: str, commit: str, name: str, mirrors: Iterable[str], github: bool,
            wheels: Iterable[str] = ()) -> list[Origin]:
    """The configured mirrors in order, then the release's wheels (copied externals only: `release_wheels`),
    then GitHub's archive of the commit (or tag: `commit` is the ref)."""
    owner, _, project = repo.partition("/")
    out = []
    for template in mirrors:
        url = template.format(repo=repo, owner=owner, project=project, commit=commit, name=name)
        out.append(Origin("git", url[4:]) if url.startswith("git+") else Origin("tarball", url))
    out += [Origin("wheel", w) for w in wheels]
    if github:
        out.append(Origin("tarball", GITHUB_ARCHIVE.format(repo=repo, commit=commit)))
    return out


@dataclass(frozen=True)
class ExternalPlan:
    """What the plan says of one external: where the build gets it and whether the cache has it."""
    name: str
    repo: str
    commit: str
    override: str
    role: str
    tree_sha256: str
    archive: str                  # cached archive file name
    cached: bool
    origins: tuple[str, ...]      # redacted, in the order they are tried


def archive_name(external: External) -> str:
    return f"{external.short}.tar.gz"


def cache_dir(cache: Path) -> Path:
    return cache / "externals"


def wheel_name_pattern(version: str) -> str:
    return f"vllm-{version}-*.whl"


def release_wheels(version: str, external: External, fetch: FetchSettings, cache: Path) -> list[str]:
    """Where a copied external's files may be read from the release's own wheel: each `vllm-<version>-*.whl`
    already in the download cache (`<cache>/sources`), then each `fetch.release_wheels` URL (its `{version}`
    filled in) whose file the cache does not hold yet. None for a compiled external or one without wheel_path."""
    if external.role != "copied" or not external.wheel_path:
        return []
    cached = sorted(p for p in (cache / "sources").glob(wheel_name_pattern(version)) if p.is_file())
    urls = [t.format(version=version) for t in fetch.release_wheels]
    names = {p.name for p in cached}
    return [str(p) for p in cached] + [u for u in urls if _url_file(u) not in names]


def plan_externals(release: Release, fetch: FetchSettings, cache: Path) -> tuple[ExternalPlan, ...]:
    out = []
    for ext in release.externals:
        shown = [f"{o.kind} {redact_url(o.url)}" for o in _external_origins(release.version, ext, fetch, cache)]
        out.append(ExternalPlan(ext.name, ext.repo, ext.ref, ext.override, ext.role, ext.tree_sha256,
                                archive_name(ext), cached_archive(cache, ext) is not None, tuple(shown)))
    return tuple(out)


# --- the cache ------------------------------------------------------------------------------------------------

def _record_path(archive: Path) -> Path:
    return archive.with_name(archive.name[: -len(".tar.gz")] + ".json")


def cached_archive(cache: Path, external: External) -> Path | None:
    """The cached archive of `external` when its bytes are those recorded after its tree was verified."""
    archive = cache_dir(cache) / archive_name(external)
    try:
        record = json.loads(_record_path(archive).read_text(encoding="utf-8"))
        if record.get("tree_sha256") == external.tree_sha256 and archive.is_file() \
                and sha256_file(archive) == record.get("sha256"):
            return archive
    except (OSError, ValueError):
        pass
    return None


def _add_tree(tar: tarfile.TarFile, tree: Path, top: str) -> None:
    """`tree` under `top/`, reproducibly: sorted, no owners, fixed times, only the executable bit kept."""
    for path in tree_files(tree):
        info = tar.gettarinfo(str(path), arcname=f"{top}/{path.relative_to(tree).as_posix()}")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755 if info.mode & 0o111 else 0o644
        if info.isfile():
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
        else:
            tar.addfile(info)


def _normalised_tar(tree: Path, top: str, dest: Path) -> None:
    """A byte-reproducible .tar.gz of `tree` under `top/`."""
    part = dest.with_name(dest.name + ".part")
    with open(part, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_tree(tar, tree, top)
    os.replace(part, dest)


def _store(cache: Path, external: External, tree: Path) -> Path:
    """Verify `tree` (already trimmed or not) against the catalog and store it trimmed in the cache."""
    got = tree_sha256(tree, external.globs)
    if got != external.tree_sha256:
        raise StepFailed(f"{external.short}: the tree's content hash is {got}, the catalog pins {external.tree_sha256}",
                         hint="the source serves other files for this commit: fix or remove that mirror")
    archive = cache_dir(cache) / archive_name(external)
    with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
        trimmed = Path(tmp) / external.short
        for path in tree_files(tree, external.globs):
            target = trimmed / path.relative_to(tree)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                target.symlink_to(os.readlink(path))
            else:
                shutil.copy2(path, target)
        _normalised_tar(trimmed, external.short, archive)
    record = {"name": external.name, "ref": external.ref, "tree_sha256": got, "sha256": sha256_file(archive)}
    atomic_write(_record_path(archive), json.dumps(record, indent=1), suffix=".part", encoding="utf-8")
    return archive


# --- fetching -------------------------------------------------------------------------------------------------

def _git_tree(url: str, commit: str, dest: Path, log: Path | None) -> Path:
    """The repository's tree at `commit`, fetched by commit alone (no history, no submodules)."""
    repo = dest / "git"
    repo.mkdir(parents=True)
    git = shutil.which("git")
    if git is None:
        raise StepFailed("git is not installed, and a git mirror is configured",
                         hint="install git (apt install git), or use a tarball mirror in fetch.external_mirrors")
    quiet = ["-c", "protocol.file.allow=always", "-c", "advice.detachedHead=false"]
    runner.run([git, "init", "-q", str(repo)], log=log, what="git init")
    runner.run([git, *quiet, "-C", str(repo), "fetch", "-q", "--depth", "1", url, commit], log=log,
               what=f"git fetch {redact_url(url)}")
    tar = dest / "tree.tar"
    runner.run([git, "-C", str(repo), "archive", "--format=tar", "-o", str(tar), "FETCH_HEAD"], log=log, what="git archive")
    top = safe_extract(tar, dest / "tree")
    shutil.rmtree(repo, ignore_errors=True)
    tar.unlink()
    return top


def _tarball_tree(url: str, dest: Path, http: HttpSettings) -> Path:
    archive = dest / "archive.tar.gz"
    download(url, archive, http, log=ui.info)
    try:
        return safe_extract(archive, dest / "tree")
    finally:
        archive.unlink(missing_ok=True)


def _origins_of(repo: str, commit: str, name: str, fetch: FetchSettings) -> list[Origin]:
    return origins(repo, commit, name, fetch.external_mirrors, fetch.github)


def _external_origins(version: str, external: External, fetch: FetchSettings, cache: Path) -> list[Origin]:
    return origins(external.repo, external.ref, external.name, fetch.external_mirrors, fetch.github,
                   release_wheels(version, external, fetch, cache))


def _url_file(url: str) -> str:
    return url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def _release_wheel(where: str, version: str, cache: Path, http: HttpSettings) -> Path:
    """The wheel at `where`: a file in the download cache, or a URL downloaded into it once (the three copied
    externals share one download)."""
    if "://" not in where:
        return Path(where)
    name = _url_file(where)
    if not Path(name).match(wheel_name_pattern(version)):
        raise StepFailed(f"{redact_url(where)} does not name a vLLM {version} wheel ({wheel_name_pattern(version)})",
                         hint="fetch.release_wheels lists URLs of the release's own wheel, e.g. "
                              "https://files.corp/vllm/vllm-{version}-cp38-abi3-manylinux_2_28_x86_64.whl")
    dest = cache / "sources" / name
    with cache_lock(dest):
        if not dest.is_file():
            download(where, dest, http, log=ui.info)
    return dest


# an installed file that the wheel origin reads whole to undo a rewrite; larger ones are refused
REWRITE_MAX_BYTES = 64 << 20


def _copy_member(src: IO[bytes], dst: IO[bytes], size: int, rewrite: tuple[tuple[str, str], ...], name: str) -> None:
    if not rewrite:
        shutil.copyfileobj(src, dst, 1 << 20)
        return
    if size > REWRITE_MAX_BYTES:
        raise StepFailed(f"{name} is {size} bytes: too large to undo the install's rewrite in")
    data = src.read(REWRITE_MAX_BYTES + 1)
    for original, installed in rewrite:
        data = data.replace(installed.encode(), original.encode())
    dst.write(data)


def _wheel_tree(external: External, wheel: Path, dest: Path) -> Path:
    """The external's tree from the wheel's entries under `wheel_path/` (no other entry is read), each placed at
    `wheel_tree/` and streamed to disk, with the install's rewrites undone. An entry that would leave that
    directory (`..`, an absolute path, a backslash), a link, or a name given twice is refused."""
    prefix = external.wheel_path.strip("/") + "/"
    root = dest / "tree"
    base = root.joinpath(*external.wheel_tree.split("/")) if external.wheel_tree else root
    base.mkdir(parents=True)
    count = 0
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if not info.filename.startswith(prefix) or info.is_dir():
                    continue
                rel = info.filename[len(prefix):]
                parts = rel.split("/")
                if "\\" in rel or any(part in ("", ".", "..") for part in parts):
                    raise StepFailed(f"{wheel.name}: the entry {info.filename!r} escapes {prefix}",
                                     hint="the file is not a wheel the release's build wrote: remove it")
                mode = info.external_attr >> 16
                if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                    raise StepFailed(f"{wheel.name}: the entry {info.filename!r} is not a plain file",
                                     hint="the file is not a wheel the release's build wrote: remove it")
                target = base.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as dst:
                    _copy_member(src, dst, info.file_size, external.wheel_rewrite, info.filename)
                target.chmod(0o755 if mode & 0o111 else 0o644)
                count += 1
    except FileExistsError as exc:
        raise StepFailed(f"{wheel.name}: an entry under {prefix} is given twice ({exc.filename})") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise StepFailed(f"{wheel.name} cannot be read as a wheel: {exc}",
                         hint="the file is damaged or not a wheel: remove it from the download cache") from None
    if not count:
        raise StepFailed(f"{wheel.name} has no files under {prefix}",
                         hint=f"a vLLM wheel without {external.name} (another release, or a build without it)")
    return root


def _tree_from(origin: Origin, commit: str, dest: Path, http: HttpSettings, log: Path | None) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    return _git_tree(origin.url, commit, dest, log) if origin.kind == "git" else _tarball_tree(origin.url, dest, http)


def _no_source(repo: str, commit: str, failures: list[str]) -> StepFailed:
    return StepFailed(f"could not get {repo}@{commit[:12]} from any source: " + "; ".join(failures) if failures
                      else f"no source is configured for {repo}@{commit[:12]}",
                      hint="configure a reachable mirror (fetch.external_mirrors), or import a bundle made on a "
                           "networked host (`./inv bundle`, then `./inv fetch --bundle PATH`)")


def _repository_tree(repo: str, commit: str, name: str, work: Path, fetch: FetchSettings, http: HttpSettings,
                     log: Path | None) -> Path:
    """`repo` at `commit` from the first origin that serves it."""
    failures = []
    for n, origin in enumerate(_origins_of(repo, commit, name, fetch)):
        try:
            return _tree_from(origin, commit, work / f"{name}-{n}", http, log)
        except StepFailed as exc:
            failures.append(f"{origin.kind} {redact_url(origin.url)}: {exc.message}")
            ui.info(f"{name}: {failures[-1]}; trying the next source")
    raise _no_source(repo, commit, failures)


def _with_submodules(external: External, tree: Path, work: Path, fetch: FetchSettings, http: HttpSettings,
                     log: Path | None) -> Path:
    root = tree / external.subdir if external.subdir else tree
    for sub in external.submodules:
        sub_tree = _repository_tree(sub.repo, sub.commit, f"{external.name}-{Path(sub.path).name}", work,
                                    fetch, http, log)
        target = root / sub.path
        shutil.rmtree(target, ignore_errors=True)   # an archive holds an empty directory for a submodule
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(sub_tree), str(target))
    return root


def assemble(external: External, work: Path, fetch: FetchSettings, http: HttpSettings, log: Path | None) -> Path:
    """The external's tree as its build sees it: the repository at the commit (its `subdir`), with each
    submodule fetched by its own commit and placed at its path."""
    tree = _repository_tree(external.repo, external.ref, external.name, work, fetch, http, log)
    return _with_submodules(external, tree, work, fetch, http, log)


def _fetch_one(version: str, external: External, cache: Path, fetch: FetchSettings, http: HttpSettings,
               log: Path | None) -> Path:
    """Each origin in turn until one serves a tree whose content is the catalog's (a mirror serving other
    files for the commit, or a wheel with other copies, is reported and passed over)."""
    failures = []
    for n, origin in enumerate(_external_origins(version, external, fetch, cache)):
        with tempfile.TemporaryDirectory(dir=cache_dir(cache)) as tmp:
            try:
                if origin.kind == "wheel":
                    wheel = _release_wheel(origin.url, version, cache, http)
                    return _store(cache, external, _wheel_tree(external, wheel, Path(tmp) / f"{external.name}-{n}"))
                tree = _tree_from(origin, external.ref, Path(tmp) / f"{external.name}-{n}", http, log)
                return _store(cache, external, _with_submodules(external, tree, Path(tmp), fetch, http, log))
            except StepFailed as exc:
                failures.append(f"{origin.kind} {redact_url(origin.url)}: {exc.message}")
                ui.info(f"{external.name}: {failures[-1]}; trying the next source")
    raise _no_source(external.repo, external.ref, failures)


def record(release: Release, fetch: FetchSettings, http: HttpSettings, work: Path) -> list[tuple[str, str, int, int]]:
    """For whoever adds a release to the catalog: each external fetched through the configured sources and
    hashed over its include globs, unverified: (name, tree_sha256, files, bytes). Compare with a second source."""
    out = []
    for external in release.externals:
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            root = assemble(external, Path(tmp), fetch, http, None)
            files = tree_files(root, external.globs)
            out.append((external.name, tree_sha256(root, external.globs), len(files),
                        sum(f.lstat().st_size for f in files)))
    return out


def obtain(release: Release, cache: Path, fetch: FetchSettings, http: HttpSettings, *, offline: bool,
           log: Path | None = None, say: Callable[[str], None] = ui.info) -> dict[str, Path]:
    """Every external of `release` verified in the cache (fetched when missing unless offline): name -> archive."""
    cache_dir(cache).mkdir(parents=True, exist_ok=True)
    missing = [e for e in release.externals if cached_archive(cache, e) is None]
    if offline and missing:
        raise ConfigError(f"--offline: {len(missing)} of the build's {len(release.externals)} external sources are "
                          f"not in the cache ({', '.join(e.short for e in missing)})",
                          hint="import a source bundle made on a networked host (`./inv bundle --out DIR` there, "
                               "then `./inv fetch --bundle DIR` here), or run `./inv fetch` once with network")
    out = {}
    for n, external in enumerate(release.externals, 1):
        archive = cache_dir(cache) / archive_name(external)
        with cache_lock(archive):
            if cached_archive(cache, external) is None:
                say(f"external {n}/{len(release.externals)}: {external.short}")
                _fetch_one(release.version, external, cache, fetch, http, log)
        out[external.name] = archive
    return out


# --- the build's view: extracted trees and override variables -------------------------------------------------

def prepare(release: Release, cache: Path, target_root: Path) -> dict[str, Path]:
    """Each external extracted (once) under `target_root/<name>`, verified; override variable -> directory."""
    out = {}
    target_root.mkdir(parents=True, exist_ok=True)
    for external in release.externals:
        archive = cached_archive(cache, external)
        if archive is None:
            raise ConfigError(f"the external source {external.short} is not in the cache",
                              hint="run `./inv fetch` (or `./inv fetch --bundle PATH` on a host with no route out)")
        target = target_root / external.name
        marker = target / MARKER
        try:
            current = json.loads(marker.read_text(encoding="utf-8")).get("tree_sha256") == external.tree_sha256
        except (OSError, ValueError):
            current = False
        if not current or tree_sha256(target, external.globs) != external.tree_sha256:
            staging = target.with_name(target.name + ".extract")
            shutil.rmtree(staging, ignore_errors=True)
            top = safe_extract(archive, staging)
            shutil.rmtree(target, ignore_errors=True)
            top.rename(target)
            shutil.rmtree(staging, ignore_errors=True)
            (target / MARKER).write_text(json.dumps({"tree_sha256": external.tree_sha256}), encoding="utf-8")
        out[external.override] = target.resolve()
    return out


def prepared_externals(plan) -> dict[str, Path]:
    """The build's view of a plan's externals: each override variable -> its verified tree in the workspace."""
    return prepare(plan.release, plan.workspace.cache, plan.workspace.root / "externals")


# --- bundles: the sdist and every external for a host with no route out ---------------------------------------

BUNDLE_SUFFIXES = (".tar", ".tar.gz", ".tar.xz")


def bundle_suffix(path: Path) -> str | None:
    return next((sfx for sfx in BUNDLE_SUFFIXES if path.name.endswith(sfx)), None)


def write_bundle(release: Release, sdist: Path | None, cache: Path, out: Path) -> Path:
    """Write `out/` (a directory) or one archive (`.tar`, `.tar.gz`, `.tar.xz`: xz shares the many near-identical
    CUTLASS copies across externals): the sdist, each cached external as a trimmed tree, and bundle.json."""
    suffix = bundle_suffix(out)
    directory = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.")) if suffix else out
    try:
        (directory / "externals").mkdir(parents=True, exist_ok=True)
        if sdist is not None:
            shutil.copy2(sdist, directory / sdist.name)
        entries = []
        for external in release.externals:
            archive = cached_archive(cache, external)
            if archive is None:
                raise ConfigError(f"the external source {external.short} is not in the cache",
                                  hint="run `./inv fetch` first")
            safe_extract(archive, directory / "externals" / f".{external.short}")
            (directory / "externals" / f".{external.short}" / external.short).rename(
                directory / "externals" / external.short)
            shutil.rmtree(directory / "externals" / f".{external.short}")
            entries.append({"name": external.name, "ref": external.ref, "dir": f"externals/{external.short}",
                            "tree_sha256": external.tree_sha256})
        manifest = {"schema_version": BUNDLE_SCHEMA_VERSION, "release": release.version,
                    "sdist": {"file": sdist.name, "sha256": sha256_file(sdist)} if sdist else None,
                    "externals": entries}
        (directory / "bundle.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if not suffix:
            return out
        part = out.with_name(out.name + ".part")
        mode = {".tar": "w", ".tar.gz": "w:gz", ".tar.xz": "w:xz"}[suffix]
        options = {"preset": 9} if suffix == ".tar.xz" else {}
        with tarfile.open(part, mode, format=tarfile.PAX_FORMAT, **options) as tar:
            _add_tree(tar, directory, f"{release.version}-bundle")
        os.replace(part, out)
        return out
    finally:
        if suffix:
            shutil.rmtree(directory, ignore_errors=True)


def _bundle_manifest(root: Path, release: Release) -> dict:
    try:
        manifest = json.loads((root / "bundle.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{root} is not a source bundle (bundle.json: {exc})",
                          hint="make one with `./inv bundle --release X --out DIR` on a networked host") from None
    if manifest.get("schema_version") != BUNDLE_SCHEMA_VERSION:
        raise ConfigError(f"the bundle {root} has schema version {manifest.get('schema_version')!r}; this toolkit "
                          f"reads {BUNDLE_SCHEMA_VERSION}", hint="make the bundle with this toolkit's version")
    if manifest.get("release") != release.version:
        raise ConfigError(f"the bundle {root} is for vLLM {manifest.get('release')}, not {release.version}",
                          hint=f"make one with `./inv bundle --release {release.version}`")
    return manifest


def import_bundle(release: Release, bundle: Path, downloads: Path, cache: Path,
                  say: Callable[[str], None] = ui.info) -> int:
    """Verify the bundle's sdist and externals against the catalog (never against the bundle's own claims) and
    put them in the cache; returns how many files were imported. Nothing unverified reaches the cache."""
    if not bundle.exists():
        raise ConfigError(f"the source bundle {bundle} does not exist",
                          hint="give the directory or archive that `./inv bundle` wrote")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        root = safe_extract(bundle, Path(tmp) / "bundle") if bundle.is_file() else bundle
        manifest = _bundle_manifest(root, release)
        imported = 0
        sdist = release.sdist
        src = root / sdist.file
        if src.is_file():
            if sha256_file(src) != sdist.sha256:
                raise StepFailed(f"the bundle's {sdist.file} does not match the catalog's sha256 {sdist.sha256}",
                                 hint="the bundle is damaged or altered: make it again")
            downloads.mkdir(parents=True, exist_ok=True)
            with cache_lock(downloads / sdist.file):
                if not (downloads / sdist.file).is_file() or sha256_file(downloads / sdist.file) != sdist.sha256:
                    shutil.copy2(src, downloads / (sdist.file + ".part"))
                    os.replace(downloads / (sdist.file + ".part"), downloads / sdist.file)
                    imported += 1
        dirs = {e.get("name"): e.get("dir", "") for e in manifest.get("externals", [])}
        absent = [e.short for e in release.externals if not dirs.get(e.name) or not (root / dirs[e.name]).is_dir()]
        if absent:
            raise ConfigError(f"the bundle {bundle} lacks the external sources {', '.join(absent)}",
                              hint=f"make it again with `./inv bundle --release {release.version}`")
        cache_dir(cache).mkdir(parents=True, exist_ok=True)
        for external in release.externals:
            with cache_lock(cache_dir(cache) / archive_name(external)):
                if cached_archive(cache, external) is None:
                    _store(cache, external, root / dirs[external.name])
                    imported += 1
                    say(f"imported {external.short} from the bundle (verified)")
    return imported


def bundle_size(path: Path) -> int:
    return sum(p.stat().st_size for p in tree_files(path)) if path.is_dir() else path.stat().st_size


def summary(obtained: Mapping[str, Path]) -> str:
    size = sum(p.stat().st_size for p in obtained.values())
    return f"{len(obtained)} external sources verified in the cache ({size / 1e6:.1f} MB)"


__all__ = ["ExternalPlan", "Origin", "origins", "release_wheels", "plan_externals", "cached_archive", "obtain", "prepare",
           "prepared_externals",
           "write_bundle", "import_bundle", "bundle_size", "summary", "assemble", "record"]
