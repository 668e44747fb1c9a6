"""Package-index settings as environment variables, so every pip/uv process (and the isolated build
subprocesses pip and uv start) uses the same mirror, trust, timeout, retries and CA bundle.

Credentials stay inside the URL values of these variables (or in ~/.netrc, which pip and uv read
themselves); argv, logs and plans only ever see `redact_url(...)` forms.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from vllm_provision.core.redact import redact_url


def _get(env: Any, name: str, default: Any = None) -> Any:
    if isinstance(env, Mapping):
        return env.get(name, default)
    return getattr(env, name, default)


def index_env(env: Any, *, cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """PIP_* and UV_* variables for the mirror settings of `env` (an EnvPlan or the `pypi` settings mapping).

    Keys read: index_url, extra_index_urls, trusted_hosts, timeout, retries, cert.
    `cache_dir` (optional) becomes UV_CACHE_DIR.
    """
    out: dict[str, str] = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    index_url = _get(env, "index_url")
    extras = [str(u) for u in (_get(env, "extra_index_urls") or ())]
    trusted = [str(h) for h in (_get(env, "trusted_hosts") or ())]
    timeout = _get(env, "timeout")
    retries = _get(env, "retries")
    cert = _get(env, "cert")
    if index_url:
        out["PIP_INDEX_URL"] = out["UV_INDEX_URL"] = str(index_url)
    if extras:
        out["PIP_EXTRA_INDEX_URL"] = out["UV_EXTRA_INDEX_URL"] = " ".join(extras)
    if trusted:
        out["PIP_TRUSTED_HOST"] = out["UV_INSECURE_HOST"] = " ".join(trusted)
    if timeout:
        out["PIP_DEFAULT_TIMEOUT"] = out["UV_HTTP_TIMEOUT"] = str(int(timeout))
    if retries is not None and retries != "":
        out["PIP_RETRIES"] = out["UV_HTTP_RETRIES"] = str(int(retries))
    if cert:
        cert = os.path.expanduser(str(cert))
        out["PIP_CERT"] = out["SSL_CERT_FILE"] = cert
    if cache_dir:
        out["UV_CACHE_DIR"] = str(cache_dir)
    return out


def describe(env: Any) -> str:
    """The mirror for messages: the redacted index URL (+ extras)."""
    urls = [str(_get(env, "index_url") or "https://pypi.org/simple")]
    urls += [str(u) for u in (_get(env, "extra_index_urls") or ())]
    return " + ".join(redact_url(u) for u in urls)


def scrub(text: str, env: Any) -> str:
    """Redact credentials structurally, and the secret values of the env's own index/channel URLs."""
    from vllm_provision.core.redact import redact_text
    urls = [_get(env, "index_url")] + list(_get(env, "extra_index_urls") or ()) + list(_get(env, "channels") or ())
    return redact_text(text, urls=[str(u) for u in urls if u])


def probe_index(index_url: str, package: str, timeout: float = 10) -> str | None:
    """Why `package` cannot be read from the index (auth, not found, unreachable), or None when it can.
    pip reports a 401 as "from versions: none"; this asks the index directly (credentials from the URL
    or ~/.netrc, proxies from the environment, as every toolkit download)."""
    import urllib.error

    from vllm_provision.sources.download import HttpSettings, open_url

    parts = urlsplit(index_url)
    if parts.scheme not in ("http", "https"):
        return None
    url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + f"/{package}/", "", ""))
    try:
        with open_url(url, HttpSettings(timeout=timeout, retries=0)):
            return None
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return f"authentication failed (HTTP {exc.code}; check the credentials in the URL or ~/.netrc)"
        if exc.code == 404:
            return "not available on the mirror (HTTP 404)"
        return f"HTTP {exc.code}"
    except (OSError, urllib.error.URLError) as exc:
        return f"unreachable ({getattr(exc, 'reason', exc)})"
