"""Credentials never reach logs, plans, reports or exception text."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# scheme://user:password@host  or  scheme://token@host
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/\s:@]+)(?::(?P<pw>[^/\s@]*))?@")


def redact_url(url: str) -> str:
    """`https://user:secret@host/x` -> `https://user:***@host/x`; a bare token user becomes `***`."""
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    userinfo = f"{parts.username}:***" if parts.password is not None else "***"
    return urlunsplit((parts.scheme, f"{userinfo}@{host}", parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """Redact every URL userinfo inside free text (argv, log lines, tracebacks)."""

    def repl(m: re.Match) -> str:
        if m.group("pw") is not None:
            return f"{m.group('scheme')}{m.group('user')}:***@"
        return f"{m.group('scheme')}***@"

    return _USERINFO.sub(repl, text)
