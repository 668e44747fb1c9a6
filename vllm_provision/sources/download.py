"""HTTP downloads: resumable (Range), retried with backoff, checksummed, atomic (*.part -> rename), locked per cached file.

Proxies come from HTTPS_PROXY/HTTP_PROXY/NO_PROXY (urllib's ProxyHandler); credentials from the
URL's userinfo or ~/.netrc, sent as Basic auth and never logged.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.client
import netrc
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from vllm_provision.core.errors import StepFailed
from vllm_provision.core.redact import redact_url

CHUNK = 1 << 16
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


class NotFound(StepFailed):
    """The server answered that the file is not there (404/410/403): try the next source."""


@dataclass(frozen=True)
class HttpSettings:
    timeout: float = 30.0
    retries: int = 4
    backoff: float = 1.0
    cert: str | None = None
    user_agent: str = "vllm-provision"


def _split_credentials(url: str) -> tuple[str, str | None]:
    """Return the URL without userinfo and a Basic auth header value (URL userinfo, else netrc)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    user, password = parts.username, parts.password
    if user is None:
        try:
            found = netrc.netrc().authenticators(host)
        except (FileNotFoundError, netrc.NetrcParseError, OSError):
            found = None
        if found:
            user, _, password = found
    if user is None:
        return clean, None
    token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
    return clean, f"Basic {token}"


def _opener(settings: HttpSettings) -> urllib.request.OpenerDirector:
    handlers: list = [urllib.request.ProxyHandler()]  # reads *_PROXY / NO_PROXY from the environment
    if settings.cert:
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=settings.cert)))
    return urllib.request.build_opener(*handlers)


def open_url(url: str, settings: HttpSettings, headers: dict[str, str] | None = None):
    clean, auth = _split_credentials(url)
    request = urllib.request.Request(clean, headers={"User-Agent": settings.user_agent, **(headers or {})})
    if auth:
        request.add_unredirected_header("Authorization", auth)
    return _opener(settings).open(request, timeout=settings.timeout)


def fetch_text(url: str, settings: HttpSettings, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """GET a small document with retries; returns (text, content_type)."""
    def attempt():
        with open_url(url, settings, headers) as resp:
            return resp.read().decode("utf-8", "replace"), resp.headers.get("Content-Type", "")
    return _with_retries(url, settings, attempt)


def _with_retries(url: str, settings: HttpSettings, attempt: Callable, on_retry: Callable | None = None):
    shown = redact_url(url)
    last: Exception | None = None
    for n in range(settings.retries + 1):
        try:
            return attempt()
        except urllib.error.HTTPError as exc:
            if exc.code in (403, 404, 410):
                raise NotFound(f"{shown}: HTTP {exc.code}", hint="the next source is tried") from None
            if exc.code == 401:
                raise StepFailed(f"{shown}: HTTP 401 unauthorized",
                                 hint="put credentials in the URL (https://user:token@host/...) or ~/.netrc") from None
            if exc.code not in TRANSIENT_STATUS:
                raise StepFailed(f"{shown}: HTTP {exc.code} {exc.reason}") from None
            last = exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.IncompleteRead,
                http.client.RemoteDisconnected) as exc:
            last = exc
        if n < settings.retries:
            delay = settings.backoff * (2 ** n)
            if on_retry:
                on_retry(n + 1, last, delay)
            time.sleep(delay)
    reason = getattr(last, "reason", None) or last
    raise StepFailed(f"{shown}: giving up after {settings.retries + 1} attempts ({type(last).__name__}: {reason})",
                     hint="check the network/proxy (HTTPS_PROXY, NO_PROXY), raise fetch.timeout/fetch.retries, "
                          "or use --offline with a filled cache")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)


@contextlib.contextmanager
def cache_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `<path>.lock`: the cache is shared by every workspace, so two runs
    must not write the same `.part`, and a waiter finds the file the other one fetched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:  # never removed: a removed lock file races
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def download(url: str, dest: Path, settings: HttpSettings, *, sha256: str | None = None,
             progress: Progress | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Download url to dest atomically, resuming a previous `dest.part`; verify sha256 when given."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    shown = redact_url(url)

    def attempt() -> None:
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            resp = open_url(url, settings, headers)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # .part is already complete (or bogus): verify decides
                return
            raise
        with resp:
            status = resp.status
            if have and status == 200:  # server ignored Range: start over
                have = 0
            length = resp.headers.get("Content-Length")
            total = (int(length) + have) if length is not None else None
            if log and have and status == 206:
                log(f"resuming {shown} at byte {have}")
            with open(part, "ab" if have else "wb") as fh:
                done = have
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        break
                    fh.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
            if total is not None and done < total:
                raise http.client.IncompleteRead(b"", total - done)

    def on_retry(n: int, exc: Exception, delay: float) -> None:
        if log:
            log(f"retry {n}/{settings.retries} for {shown} in {delay:.1f} s ({type(exc).__name__})")

    _with_retries(url, settings, attempt, on_retry)
    if sha256:
        got = sha256_file(part)
        if got != sha256:
            part.unlink(missing_ok=True)
            raise StepFailed(f"checksum mismatch for {shown}: expected sha256 {sha256}, got {got}; the bad file was deleted",
                             hint="the mirror serves a different file: fix or remove that mirror, then fetch again")
    os.replace(part, dest)
    return dest
