"""Credentials never reach logs, plans, reports or exception text.

URLs are redacted by their structure: the userinfo's secret (`user:***@`, or `***@` for a bare token),
anaconda-style `/t/<token>/` path segments and sensitive query parameters (`?token=***`). Known secret
values are replaced by value only as a second layer, and only when long enough to mean something.
"""

from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import unquote

MASK = "***"
# a secret shorter than this is not replaced by value: "p" would rewrite every "p" in the text
MIN_VALUE_LENGTH = 6

# a URL ends at whitespace, quotes, brackets and backslashes: in JSON or shell text `\"` closes it, and a
# redacted value must never swallow the backslash of an escaped quote
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`\\]+")
_SCHEME_AND_REST = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<rest>.*)", re.S)
_ANACONDA_TOKEN = re.compile(r"(?<=/t/)[A-Za-z0-9_.-]+(?=/|$)")
# words that make a query parameter sensitive: token, access_token, api_key, apikey, X-Amz-Signature ...
_SENSITIVE_WORDS = {"token", "key", "apikey", "secret", "password", "passwd", "pwd", "pass", "sig", "signature",
                    "credential", "credentials", "auth", "authorization", "session"}


def _sensitive_param(name: str) -> bool:
    words = [w for w in re.split(r"[^a-z0-9]+", unquote(name).lower()) if w]
    return any(w in _SENSITIVE_WORDS or w.endswith("token") for w in words)


def _split(url: str) -> tuple[str, str, str, str, str] | None:
    """(scheme://, userinfo, hostport, path, ?query#fragment) without decoding anything; None if not a URL.
    The userinfo ends at the last '@' of the authority, so a password may contain '@' and ':'."""
    m = _SCHEME_AND_REST.match(url)
    if not m:
        return None
    rest = m.group("rest")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hostport = authority.rpartition("@")
    cut = min((i for i in (tail.find(c) for c in "?#") if i >= 0), default=len(tail))
    return m.group("scheme"), userinfo if at else "", hostport, tail[:cut], tail[cut:]


def _redact_query(query_and_fragment: str) -> str:
    if not query_and_fragment.startswith("?"):
        return query_and_fragment
    query, hash_, fragment = query_and_fragment[1:].partition("#")
    params = []
    for param in query.split("&"):
        name, eq, value = param.partition("=")
        params.append(f"{name}={MASK}" if eq and value and _sensitive_param(name) else param)
    return "?" + "&".join(params) + hash_ + fragment


def redact_url(url: str) -> str:
    """`https://user:p@ss@host/t/TOKEN/x?token=T` -> `https://user:***@host/t/***/x?token=***`;
    a bare token user (`https://TOKEN@host`) becomes `***@`."""
    parts = _split(url)
    if parts is None:
        return url
    scheme, userinfo, hostport, path, query = parts
    if userinfo:
        user, colon, _ = userinfo.partition(":")
        userinfo = (f"{user}:{MASK}" if colon else MASK) + "@"
    return scheme + userinfo + hostport + _ANACONDA_TOKEN.sub(MASK, path) + _redact_query(query)


def url_secrets(url: str) -> list[str]:
    """The secret values a URL carries (password or bare token, /t/ token, sensitive query values), both as
    written and percent-decoded: for text that does not show them inside the URL."""
    parts = _split(url)
    if parts is None:
        return []
    _, userinfo, _, path, query = parts
    found = []
    if userinfo:
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else user)
    found += _ANACONDA_TOKEN.findall(path)
    for param in query[1:].partition("#")[0].split("&") if query.startswith("?") else ():
        name, eq, value = param.partition("=")
        if eq and value and _sensitive_param(name):
            found.append(value)
    return [v for s in found for v in dict.fromkeys((s, unquote(s))) if v]


def redact_text(text: str, urls: Iterable[str] = ()) -> str:
    """Redact every URL inside free text (argv, log lines, tracebacks) by its structure, then the secret
    values of the configured `urls` wherever they still appear (long ones only: see MIN_VALUE_LENGTH)."""
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    secrets = {s for url in urls if url for s in url_secrets(str(url)) if len(s) >= MIN_VALUE_LENGTH}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def has_secret(url: str) -> bool:
    """Whether `url` carries anything that redaction would hide."""
    return redact_url(url) != url
