"""The caches that hold built wheels, tried in the order of `artifacts.caches`; each entry is `kind:location`:

  dir:/srv/vllm-wheels          a directory: the wheels and their <wheel>.manifest.json sidecars
  static:/srv/www/vllm          a static PEP 503 tree written by simple503 (PEP 658 .metadata files,
                                #sha256= links) that any web server or object store can serve
  static+https://host/vllm/     that tree as served (read only)
  pypi:https://user@host/       a PyPI-compatible server (pypiserver, Nexus; devpi at its index URL):
                                upload with twine, read through <url>/simple/

Lookup is by exact key: a vllm wheel whose local label holds k<first 12 hex of the key>; the caller then
checks the file's sha256 (the index link's, else the sidecar's) and the full key in its manifest.
Credentials of a pypi entry come from its URL or ~/.netrc, as for the package mirrors; they reach twine
through TWINE_USERNAME/TWINE_PASSWORD in its environment, never argv, and are redacted everywhere.
"""

from __future__ import annotations

import json
import netrc
import os
import shutil
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from vllm_provision.artifacts import manifest as mf
from vllm_provision.artifacts.wheel import sidecar_of
from vllm_provision.core import runner
from vllm_provision.core.errors import StepFailed
from vllm_provision.core.redact import redact_text, redact_url
from vllm_provision.sources import download

PROJECT = "vllm"
UPLOAD_TIMEOUT = 1800


@dataclass(frozen=True)
class Entry:
    kind: str            # dir | static | static-url | pypi
    location: str        # a path (dir, static) or a URL (static-url, pypi)

    @classmethod
    def parse(cls, text: str) -> Entry:
        """The forms settings.cache_entry admits (checked there, with an error naming the setting)."""
        scheme, _, rest = text.partition(":")
        if scheme in ("static+http", "static+https"):
            return cls("static-url", text.removeprefix("static+"))
        return cls(scheme, os.path.expanduser(rest) if scheme in ("dir", "static") else rest)

    @property
    def shown(self) -> str:
        kind = "static" if self.kind == "static-url" else self.kind
        return f"{kind}:{redact_url(self.location)}"

    @property
    def writable(self) -> bool:
        return self.kind != "static-url"

    def index_page(self) -> str:
        """Where this entry's PEP 503 project page for vllm lives (a URL or a path)."""
        if self.kind == "pypi":
            return self.location.rstrip("/") + f"/simple/{PROJECT}/"
        if self.kind == "static-url":
            return self.location.rstrip("/") + f"/{PROJECT}/"
        return str(Path(self.location) / PROJECT / "index.html")


@dataclass(frozen=True)
class Found:
    entry: Entry
    filename: str
    where: str               # path or URL of the wheel
    sha256: str | None       # what the index link or the sidecar says the file's sha256 is

    @property
    def shown(self) -> str:
        return f"{self.filename} in {self.entry.shown}"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def page_links(html: str, base: str) -> list[tuple[str, str, str | None]]:
    """(file name, absolute URL/path, sha256 from the #sha256= fragment) of a PEP 503 project page."""
    parser = _Links()
    parser.feed(html)
    out = []
    for href in parser.hrefs:
        url, _, fragment = urljoin(base, href).partition("#")
        algo, _, digest = fragment.partition("=")
        out.append((unquote(url.rsplit("/", 1)[-1]), url, digest if algo == "sha256" and digest else None))
    return out


def _http(timeout: float = 60) -> download.HttpSettings:
    return download.HttpSettings(timeout=timeout, retries=2, backoff=1.0, cert=os.environ.get("SSL_CERT_FILE"))


def _read_page(entry: Entry) -> str | None:
    where = entry.index_page()
    if entry.kind in ("dir", "static"):
        path = Path(where)
        return path.read_text(errors="replace") if path.is_file() else None
    try:
        return download.fetch_text(where, _http())[0]
    except download.NotFound:
        return None
    except StepFailed as exc:
        raise StepFailed(f"cache {entry.shown} cannot be read: {redact_text(exc.message)}",
                         hint="check the cache's URL and credentials (in the URL or ~/.netrc), or drop the entry "
                              "from artifacts.caches") from None


def find(entry: Entry, key: str) -> Found | None:
    """The wheel of `key` in this cache, by the key marker in its local label; None when it has none."""
    if entry.kind == "dir":
        root = Path(entry.location)
        for whl in sorted(root.glob(f"{PROJECT}-*.whl")) if root.is_dir() else ():
            if mf.label_names_key(whl.name, key):
                try:
                    recorded = json.loads(sidecar_of(whl).read_text()).get("sha256")
                except (OSError, ValueError):
                    recorded = None
                return Found(entry, whl.name, str(whl), recorded)
        return None
    html = _read_page(entry)
    if html is None:
        return None
    base = entry.index_page() if entry.kind not in ("dir", "static") else Path(entry.index_page()).as_uri()
    for name, url, digest in page_links(html, base):
        if name.endswith(".whl") and mf.label_names_key(name, key):
            where = unquote(urlsplit(url).path) if url.startswith("file:") else _with_credentials(url, entry)
            return Found(entry, name, where, digest)
    return None


def _with_credentials(url: str, entry: Entry) -> str:
    """A link on an authenticated index carries no credentials: give it the entry's (same host only)."""
    link, own = urlsplit(url), urlsplit(entry.location)
    if own.username and link.hostname == own.hostname and not link.username:
        return urlunsplit((link.scheme, own.netloc, link.path, link.query, ""))
    return url


def fetch(found: Found, dest_dir: Path) -> Path:
    """The wheel copied or downloaded into dest_dir, its sha256 checked against the index link / sidecar."""
    dest = dest_dir / found.filename
    if found.entry.kind in ("dir", "static"):
        part = dest.with_name(dest.name + ".part")
        shutil.copyfile(found.where, part)
        got = download.sha256_file(part)
        if found.sha256 and got != found.sha256:
            part.unlink()
            raise StepFailed(f"checksum mismatch for {found.shown}: the index/sidecar says sha256 {found.sha256}, "
                             f"the file is {got} (corrupted or replaced)",
                             hint="remove that file from the cache and publish it again (`./inv wheel --push`)")
        os.replace(part, dest)
        return dest
    try:
        return download.download(found.where, dest, _http(300), sha256=found.sha256)
    except StepFailed as exc:
        raise StepFailed(f"{found.shown}: {redact_text(exc.message)}",
                         hint="remove that file from the cache and publish it again (`./inv wheel --push`)") from None


def credentials(url: str) -> tuple[str, str | None, str | None]:
    """(URL without userinfo, user, password): from the URL, else ~/.netrc, as for the package mirrors."""
    parts = urlsplit(url)
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    user, password = (unquote(parts.username) if parts.username else None,
                      unquote(parts.password) if parts.password else None)
    if user is None or password is None:
        try:
            found = netrc.netrc().authenticators(parts.hostname or "")
        except (OSError, netrc.NetrcParseError):
            found = None
        if found and (user is None or user == found[0]):
            user, password = found[0], found[2]
    return clean, user, password


def publish(entry: Entry, wheel: Path, log: Path | None) -> str:
    """Put the wheel (and its sidecar, where files are kept) into the cache; says what it did."""
    sidecar = sidecar_of(wheel)
    if entry.kind in ("dir", "static"):
        root = Path(entry.location)
        root.mkdir(parents=True, exist_ok=True)
        for path in (wheel, sidecar):
            part = root / (path.name + ".part")
            shutil.copyfile(path, part)
            os.replace(part, root / path.name)
        if entry.kind == "static":
            # simple503 rewrites the PEP 503 pages (relative links: the tree can be served under any path)
            runner.run([sys.executable, "-m", "simple503", "--extract-metadata", "--base-url", "../", str(root),
                        str(root)], log=log, timeout=600, what="simple503 (static index)")
        return f"copied to {entry.shown}"
    if entry.kind == "pypi":
        url, user, password = credentials(entry.location)
        env = dict(os.environ)
        if user:
            env["TWINE_USERNAME"] = user
        if password:
            env["TWINE_PASSWORD"] = password
        what = f"twine upload to {redact_url(url)}"
        # twine's --skip-existing knows only some servers, and pypiserver answers a second upload with a bare
        # 400: ask the index first
        page = _read_page(entry)
        if page and any(name == wheel.name for name, _, _ in page_links(page, entry.index_page())):
            return f"already in {entry.shown}"
        done = runner.run([sys.executable, "-m", "twine", "upload", "--non-interactive", "--disable-progress-bar",
                           "--repository-url", url, str(wheel)], log=log, env=env, timeout=UPLOAD_TIMEOUT, what=what,
                          check=False)
        if done.returncode == 0:
            return f"uploaded to {entry.shown}"
        denied = "403" in done.output or "401" in done.output
        raise StepFailed(f"{what} failed with exit code {done.returncode}" + (" (access denied)" if denied else ""),
                         hint="check the credentials (in the URL or ~/.netrc) and that the account may upload"
                         if denied else f"read {log}", log_tail=done.output[-2000:])
    raise StepFailed(f"cache {entry.shown} is read only (a served static tree)",
                     hint="publish to the tree on disk (static:/path) and serve that")
