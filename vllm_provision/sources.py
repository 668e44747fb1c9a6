"""Obtain a release archive into the shared cache: try each planned source in order, verify, reuse."""

from __future__ import annotations

import html.parser
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable
from urllib.parse import urldefrag, urljoin

from . import ui
from .download import HttpSettings, NotFound, download, fetch_text, sha256_file
from .errors import ConfigError, StepFailed
from .extract import safe_extract, tree_sha256
from .plan import Plan, SourcePlan
from .redact import redact_url


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


def http_settings(plan: Plan) -> HttpSettings:
    fetch = plan.settings["fetch"]
    return HttpSettings(timeout=float(fetch["timeout"]), retries=int(fetch["retries"]),
                        backoff=float(fetch["backoff"]), cert=plan.settings["pypi"].get("cert"))


def _progress_printer(name: str) -> Callable[[int, int | None], None]:
    """Plain lines at every 25 % (CI logs); the TTY bar is set up by the caller."""
    shown = {"next": 25}

    def show(done: int, total: int | None) -> None:
        if total and done * 100 >= shown["next"] * total:
            ui.info(f"  {name}: {done * 100 // total}% of {total / 1e6:.1f} MB")
            while shown["next"] * total <= done * 100:
                shown["next"] += 25
    return show


def _download_with_progress(url: str, dest: Path, settings: HttpSettings, sha256: str | None) -> Path:
    if ui.interactive():
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), console=ui.console, transient=True) as bar:
            task = bar.add_task(dest.name, total=None)
            return download(url, dest, settings, sha256=sha256,
                            progress=lambda d, t: bar.update(task, completed=d, total=t), log=ui.info)
    return download(url, dest, settings, sha256=sha256, progress=_progress_printer(dest.name), log=ui.info)


def _verify_tree(archive: Path, expected: str) -> None:
    with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
        top = safe_extract(archive, Path(tmp) / "tree")
        got = tree_sha256(top)
    if got != expected:
        archive.unlink(missing_ok=True)
        raise StepFailed(f"tree checksum mismatch for {archive.name}: expected {expected}, got {got}; "
                         "the bad file was deleted", hint="the archive's contents differ from the release's")


def cached_archive(plan: Plan) -> tuple[Path, SourcePlan] | None:
    """A verified archive already in the cache, if any (no network)."""
    for source in plan.sources:
        path = plan.workspace.downloads / source.file
        if not path.is_file():
            continue
        if source.sha256 and sha256_file(path) == source.sha256:
            return path, source
        if not source.sha256 and source.tree_sha256:
            try:
                _verify_tree(path, source.tree_sha256)
                return path, source
            except StepFailed:
                continue
    return None


def obtain(plan: Plan) -> tuple[Path, SourcePlan]:
    """Return a verified archive for the plan's release, downloading it if needed."""
    hit = cached_archive(plan)
    if hit:
        return hit
    if plan.offline:
        raise ConfigError(f"--offline: {plan.release.sdist.file} is not in the cache {plan.workspace.downloads}",
                          hint=f"run `inv fetch` once with network, or copy {plan.release.sdist.file} "
                               f"(sha256 {plan.release.sdist.sha256[:12]}…) into {plan.workspace.downloads}/")
    settings = http_settings(plan)
    failures: list[str] = []
    for source in plan.sources:
        if not (source.sha256 or source.tree_sha256):
            failures.append(f"{source.kind}: no checksum recorded for {redact_url(source.url)}, not used")
            continue
        dest = plan.workspace.downloads / source.file
        try:
            url = source.url
            if source.kind == "pypi-sdist":
                url = sdist_url_from_index(source.url, source.file, settings)
            ui.info(f"downloading {source.file} from {redact_url(url)}")
            _download_with_progress(url, dest, settings, source.sha256 or None)
            if not source.sha256:
                _verify_tree(dest, source.tree_sha256)
            return dest, source
        except NotFound as exc:
            failures.append(f"{source.kind}: {exc.message}")
            ui.info(f"{source.kind}: {exc.message}; trying the next source")
        except StepFailed as exc:
            if "checksum mismatch" in exc.message:
                raise
            failures.append(f"{source.kind}: {exc.message}")
            ui.info(f"{source.kind}: {exc.message}; trying the next source")
    raise StepFailed(f"could not download {plan.release.sdist.file} from any source: " + "; ".join(failures),
                     hint="configure a reachable mirror (fetch.mirrors / pypi.index_url), or copy the file "
                          f"into {plan.workspace.downloads}/ and use --offline")


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
