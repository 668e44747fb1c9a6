"""Obtain a release archive into the shared cache: try each planned source in order, verify, reuse."""

from __future__ import annotations

import html.parser
import json
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urldefrag, urljoin

from vllm_provision.core import ui
from vllm_provision.core.errors import ConfigError, StepFailed
from vllm_provision.core.progress import progress
from vllm_provision.core.redact import redact_url
from vllm_provision.core.settings import Settings
from vllm_provision.plan import Plan, SourcePlan
from vllm_provision.sources.download import HttpSettings, NotFound, cache_lock, download, fetch_text, sha256_file
from vllm_provision.sources.extract import safe_extract, tree_sha256


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href is not None:
            self.links.append((data.strip(), self._href))
            self._href = None


def sdist_url_from_index(project_url: str, filename: str, settings: HttpSettings) -> str:
    """Find `filename` on a PEP 503/691 simple-index project page (PyPI, Nexus, Artifactory, pypiserver)."""
    text, ctype = fetch_text(project_url, settings, {
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    if "json" in ctype:
        for f in json.loads(text).get("files", []):
            if f.get("filename") == filename:
                return urljoin(project_url, f["url"])
    else:
        parser = _Links()
        parser.feed(text)
        for name, href in parser.links:
            if name == filename or urldefrag(href)[0].rsplit("/", 1)[-1] == filename:
                return urljoin(project_url, urldefrag(href)[0])
    raise NotFound(f"{redact_url(project_url)} does not list {filename}",
                   hint="the index/mirror does not carry this release; the next source is tried")


def http_settings_of(settings: Settings) -> HttpSettings:
    return HttpSettings(timeout=settings.fetch.timeout, retries=settings.fetch.retries,
                        backoff=settings.fetch.backoff, cert=settings.pypi.cert)


def http_settings(plan: Plan) -> HttpSettings:
    return http_settings_of(plan.settings)


def _download_with_progress(url: str, dest: Path, settings: HttpSettings, sha256: str | None) -> Path:
    with progress(f"downloading {dest.name}", unit="bytes", step="fetch") as p:
        return download(url, dest, settings, sha256=sha256, progress=p.update, log=ui.info)


def _mismatch(path: Path, source: SourcePlan) -> str | None:
    """Why the file at `path` is not the release's archive (None when it is): its sha256, else its extracted tree."""
    if source.sha256:
        try:
            got = sha256_file(path)
        except OSError as exc:  # a read error, or another run removed it meanwhile
            return f"unreadable: {exc}"
        return None if got == source.sha256 else f"expected sha256 {source.sha256}, got {got}"
    try:
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            got = tree_sha256(safe_extract(path, Path(tmp) / "tree"))
    except (StepFailed, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        return f"not a readable tarball: {exc}"
    return None if got == source.tree_sha256 else f"expected tree sha256 {source.tree_sha256}, got {got}"


def _cached_copies(plan: Plan) -> Iterator[tuple[Path, SourcePlan]]:
    """(path, source) for each checksummed source whose file is in the cache."""
    for source in plan.sources:
        path = plan.workspace.downloads / source.file
        if (source.sha256 or source.tree_sha256) and path.is_file():
            yield path, source


def cached_archive(plan: Plan) -> tuple[Path, SourcePlan] | None:
    """A verified archive already in the cache, if any (no network; changes nothing)."""
    return next(((path, source) for path, source in _cached_copies(plan) if _mismatch(path, source) is None), None)


def cache_is_sound(plan: Plan) -> bool:
    """No cached copy of the release's archive is corrupt (a missing one is fetched when it is needed)."""
    return all(_mismatch(path, source) is None for path, source in _cached_copies(plan))


def _verified_in_cache(path: Path, source: SourcePlan, corrupt: list[str]) -> bool:
    """Whether the cache holds the release's file at `path`; a corrupt copy is reported, removed and
    noted in `corrupt`. Call it holding the file's cache_lock."""
    if not path.is_file():
        return False
    problem = _mismatch(path, source)
    if problem is None:
        return True
    path.unlink(missing_ok=True)
    ui.warn(f"the cached {path} is corrupt ({problem}): removed")
    corrupt.append(f"the cached {path.name} was corrupt ({problem}) and has been removed")
    return False


def _locked(path: Path):
    def waiting() -> None:
        ui.info(f"another run is fetching {path.name} into the cache; waiting for it")
    return cache_lock(path, on_wait=waiting)


def obtain(plan: Plan) -> tuple[Path, SourcePlan]:
    """Return a verified archive for the plan's release, downloading it if needed."""
    downloads = plan.workspace.downloads
    corrupt: list[str] = []
    for source in plan.sources:  # a verified copy from any source beats a download from the first
        path = downloads / source.file
        if source.sha256 or source.tree_sha256:
            with _locked(path):
                if _verified_in_cache(path, source, corrupt):
                    return path, source
    if plan.offline and corrupt:
        raise StepFailed(f"--offline: {corrupt[0]}", hint="rerun without --offline to download it again, "
                                                          f"or copy a verified copy into {downloads}/")
    if plan.offline:
        raise ConfigError(f"--offline: {plan.release.sdist.file} is not in the cache {downloads}",
                          hint=f"run `./inv fetch` once with network, or copy {plan.release.sdist.file} "
                               f"(sha256 {plan.release.sdist.sha256}) into {downloads}/")
    settings = http_settings(plan)
    failures: list[str] = []
    for source in plan.sources:
        if not (source.sha256 or source.tree_sha256):
            failures.append(f"{source.kind}: no checksum recorded for {redact_url(source.url)}, not used")
            continue
        dest = downloads / source.file
        with _locked(dest):
            if _verified_in_cache(dest, source, corrupt):  # another run fetched it while this one waited
                return dest, source
            try:
                url = source.url
                if source.kind == "pypi-sdist":
                    url = sdist_url_from_index(source.url, source.file, settings)
                ui.info(f"downloading {source.file} from {redact_url(url)}")
                _download_with_progress(url, dest, settings, source.sha256 or None)
                problem = None if source.sha256 else _mismatch(dest, source)
                if problem:
                    dest.unlink()
                    raise StepFailed(f"tree checksum mismatch for {dest.name}: {problem}; the bad file was deleted")
                return dest, source
            except StepFailed as exc:  # not found, unreachable, or the wrong bytes: the next source may serve it
                failures.append(f"{source.kind}: {exc.message}")
                ui.info(f"{source.kind}: {exc.message}; trying the next source")
    raise StepFailed(f"could not download {plan.release.sdist.file} from any source: " + "; ".join(failures),
                     hint="configure a reachable mirror (fetch.mirrors / pypi.index_url), or copy the file "
                          f"into {downloads}/ and use --offline")


def extract_to(archive: Path, target: Path) -> Path:
    """Extract atomically to `target` with the archive's single top dir flattened into it."""
    staging = target.with_name(target.name + ".extract")
    shutil.rmtree(staging, ignore_errors=True)
    top = safe_extract(archive, staging)
    if target.exists():
        shutil.rmtree(target)
    top.rename(target) if top != staging else staging.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target
