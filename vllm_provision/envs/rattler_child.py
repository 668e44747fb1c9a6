"""Run in a child process (`python -m vllm_provision.envs.rattler_child SPEC.json`): solve and install a
conda env with py-rattler. A child, because rattler can crash the interpreter at exit after a timeout.

SPEC: {"channels": [...], "specs": [...], "prefix": str, "timeout": int, "cache_dir": str|null}
Prints one line `VLLMP-RATTLER {json}`; exit 0 ok, 3 solve failed, 4 other error.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from urllib.parse import urlsplit, urlunsplit


def _auth(channels: list[str]) -> list[str]:
    """Move URL credentials into a RATTLER_AUTH_FILE (keyed by host) and return the bare URLs."""
    bare, auth = [], {}
    for url in channels:
        parts = urlsplit(url)
        if parts.username:
            host = parts.hostname or ""
            auth[host] = {"BasicHTTP": {"username": parts.username, "password": parts.password or ""}}
            netloc = host + (f":{parts.port}" if parts.port else "")
            url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        bare.append(url)
    if auth:
        fd, path = tempfile.mkstemp(prefix="vllmp-rattler-auth-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(auth, fh)
        os.environ["RATTLER_AUTH_FILE"] = path
    return bare


def _emit(data: dict, code: int) -> None:
    print("VLLMP-RATTLER " + json.dumps(data), flush=True)
    sys.stdout.flush()
    os._exit(code)  # skip interpreter teardown, where rattler has been seen to crash


async def _main(spec: dict) -> dict:
    import rattler
    from rattler import Client, Gateway, VirtualPackage

    channels = _auth(spec["channels"])
    client = Client(timeout=int(spec.get("timeout") or 60))
    gateway = Gateway(client=client, cache_dir=spec.get("cache_dir"))
    records = await rattler.solve(channels, spec["specs"], gateway=gateway,
                                  virtual_packages=VirtualPackage.detect(),
                                  channel_priority=rattler.ChannelPriority.Strict)
    await rattler.install(records, target_prefix=spec["prefix"], show_progress=False, client=client,
                          cache_dir=spec.get("cache_dir") and os.path.join(spec["cache_dir"], "pkgs"))
    return {"ok": True, "packages": {str(r.name.normalized): str(r.version) for r in records}}


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    try:
        result = asyncio.run(_main(spec))
    except Exception as exc:  # report every failure as data; the parent words it
        kind = type(exc).__name__
        _emit({"ok": False, "kind": kind, "error": str(exc).replace("\n", " | ")[:2000]},
              3 if "Solver" in kind or "solve" in str(exc).lower() else 4)
    _emit(result, 0)


if __name__ == "__main__":
    main()
