"""Credentials never reach logs, plans, reports or exception text.

URLs are redacted by their structure: the userinfo's secret (`user:***@`, or `***@` for a bare token),
anaconda-style `/t/<token>/` path segments and sensitive query parameters (`?token=***`). Known secret
values are replaced by value only as a second layer, and only when long enough to mean something.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"
# a secret shorter than this is not replaced by value: "p" would rewrite every "p" in the text
MIN_VALUE_LENGTH = 6

# a URL ends at whitespace, double quotes, angle brackets, backticks and backslashes: in JSON or shell text `\"`
# closes it, and a redacted value must never swallow the backslash of an escaped quote. A single quote is a
# sub-delimiter a password may hold, so it stays inside; one that ends the match is the shell's (kept as is).
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"<>`\\]+")
_SCHEME_AND_REST = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<rest>.*)", re.S)
# the whole /t/<token>/ segment, whatever it holds (~ + : ! $ ' ( ) * , ; = @ and percent-escapes are all
# legal in a path segment)
_ANACONDA_TOKEN = re.compile(r"(?<=/t/)[^/]+(?=/|$)")
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
    head = rest.partition("/")[0]
    if "@" in head[end:]:
        # an '@' after a '?' or '#' but before the first '/': a password holding '?' or '#' unescaped (not
        # legal, but pasted so); the userinfo still ends at that '@', so it is masked rather than shown
        at = head.rindex("@")
        end = at + 1 + min((i for i in (rest[at + 1:].find(c) for c in "/?#") if i >= 0),
                           default=len(rest) - at - 1)
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
    text = _URL.sub(lambda m: _redact_match(m.group(0)), text)
    secrets = {s for url in urls if url for s in url_secrets(str(url)) if len(s) >= MIN_VALUE_LENGTH}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    # bytes that were not UTF-8 (lone surrogates from argv, the environment or a tool) become visible escapes:
    # what is redacted is printed or written next, and must never fail to encode
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _redact_match(url: str) -> str:
    """A URL found in text; quotes that end it are the text's (`'https://...'`), kept outside the redaction."""
    body = url.rstrip("'")
    return redact_url(body) + url[len(body):]


def has_secret(url: str) -> bool:
    """Whether `url` carries anything that redaction would hide."""
    return redact_url(url) != url
