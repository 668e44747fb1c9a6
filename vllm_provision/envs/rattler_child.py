"""Run in a child process (`python -m vllm_provision.envs.rattler_child`): solve and install a conda env
with py-rattler. A child, because rattler can crash the interpreter at exit after a timeout.

The spec comes in the environment variable VLLMP_RATTLER_SPEC, never in argv or a file, because channel
URLs may carry credentials; it is removed from the environment before anything else runs, so no process
this one starts inherits it. Credentials become Authorization headers held in memory.
SPEC: {"channels": [...], "specs": [...], "prefix": str, "timeout": int, "cache_dir": str|null}
Prints one line `VLLMP-RATTLER {json}`; exit 0 ok, 3 solve failed, 4 other error.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from vllm_provision.core.redact import redact_url

SPEC_VARIABLE = "VLLMP_RATTLER_SPEC"


def split_credentials(channels: list[str]) -> tuple[list[str], dict[tuple[str, str], str]]:
    """The channel URLs without userinfo, and {(host, path prefix): Authorization header value}."""
    bare, headers = [], {}
    for url in channels:
        parts = urlsplit(url)
        if parts.username is not None:
            user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            prefix = parts.path.rstrip("/") + "/"
            headers[(parts.hostname or "", prefix)] = "Basic " + base64.b64encode(user_pass.encode()).decode()
            netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
            url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        bare.append(url)
    return bare, headers


def auth_headers(headers: dict[tuple[str, str], str]):
    """The AddHeadersMiddleware callback: the credentials of the channel whose host and path the request is for."""

    def callback(host: str, path: str) -> dict[str, str] | None:
        for (h, prefix), value in headers.items():
            if host == h and (path.rstrip("/") + "/").startswith(prefix):
                return {"Authorization": value}
        return None
    return callback


def redact_prefix_records(prefix: Path) -> None:
    """The env's package records keep each package's URL: a channel token in it would stay in the env."""
    for path in (prefix / "conda-meta").glob("*.json"):
        record = json.loads(path.read_text())
        clean = {k: redact_url(v) if k in ("url", "channel") and isinstance(v, str) else v for k, v in record.items()}
        if clean != record:
            path.write_text(json.dumps(clean, indent=2))


def _emit(data: dict, code: int) -> None:
    print("VLLMP-RATTLER " + json.dumps(data), flush=True)
    sys.stdout.flush()
    os._exit(code)  # skip interpreter teardown, where rattler has been seen to crash


async def _main(spec: dict) -> dict:
    import rattler
    from rattler import Client, Gateway, VirtualPackage
    from rattler.networking import AddHeadersMiddleware

    channels, headers = split_credentials(spec["channels"])
    timeout = int(spec.get("timeout") or 60)
    client = Client([AddHeadersMiddleware(auth_headers(headers))], timeout=timeout) if headers else Client(timeout=timeout)
    gateway = Gateway(client=client, cache_dir=spec.get("cache_dir"))
    records = await rattler.solve(channels, spec["specs"], gateway=gateway,
                                  virtual_packages=VirtualPackage.detect(),
                                  channel_priority=rattler.ChannelPriority.Strict)
    await rattler.install(records, target_prefix=spec["prefix"], show_progress=False, client=client,
                          cache_dir=spec.get("cache_dir") and os.path.join(spec["cache_dir"], "pkgs"))
    redact_prefix_records(Path(spec["prefix"]))
    return {"ok": True, "packages": {str(r.name.normalized): str(r.version) for r in records}}


def main() -> None:
    spec = json.loads(os.environ.pop(SPEC_VARIABLE))
    try:
        result = asyncio.run(_main(spec))
    except Exception as exc:  # report every failure as data; the parent words it
        kind = type(exc).__name__
        _emit({"ok": False, "kind": kind, "error": str(exc).replace("\n", " | ")[:2000]},
              3 if "Solver" in kind or "solve" in str(exc).lower() else 4)
    _emit(result, 0)


if __name__ == "__main__":
    main()
