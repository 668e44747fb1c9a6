"""Benchmark: the same lock installed from a local pypiserver mirror with pip and with uv.

A wheelhouse of N tiny wheels (built here) plus a lock of all of them; each installer gets a fresh
venv and a cold cache. Prints JSON: seconds for pip, for uv, and pip/uv.
    .venv/bin/python bench/env.py [--packages 40]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import mirrors as fx  # noqa: E402
from vllm_provision.lock import render_header  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packages", type=int, default=40)
    args = ap.parse_args()
    fx.TINY.clear()
    fx.TINY.update({f"benchpkg{i}": ("1.0", []) for i in range(args.packages)})
    with tempfile.TemporaryDirectory(prefix="vllmp-bench-env-") as tmp:
        tmp = Path(tmp)
        wheels = fx.build_wheelhouse(tmp / "packages")
        lock = tmp / "lock.txt"
        lines = [f"{n}==1.0 \\\n    --hash=sha256:{hashlib.sha256(w.read_bytes()).hexdigest()}" for n, w in sorted(wheels.items())]
        lock.write_text(render_header({"release": "bench", "profile": "bench", "python": "x"}) + "\n".join(lines) + "\n")
        server = fx.Pypiserver(tmp / "packages")
        # pypiserver's default wsgiref server is single-threaded and stalls uv's parallel requests: a
        # threaded proxy in front (as a Nexus/Artifactory would be) measures the installers, not the server
        proxy = fx.Proxy(f"http://127.0.0.1:{server.port}")
        from uv import find_uv_bin
        env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=proxy.url(), UV_INDEX_URL=proxy.url(),
                   PIP_DISABLE_PIP_VERSION_CHECK="1")
        env.pop("PIP_FIND_LINKS", None)
        times = {}
        try:
            for kind in ("pip", "uv"):
                venv = tmp / f"venv-{kind}"
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
                py = str(venv / "bin" / "python")
                argv = ([py, "-m", "pip", "install", "-q", "--no-cache-dir"] if kind == "pip" else
                        [find_uv_bin(), "pip", "install", "-q", "--python", py, "--cache-dir", str(tmp / "uvcache")])
                started = time.monotonic()
                subprocess.run(argv + ["--require-hashes", "--no-deps", "-r", str(lock)], check=True, env=env)
                times[kind] = round(time.monotonic() - started, 3)
        finally:
            proxy.stop()
            server.stop()
    print(json.dumps({"packages": args.packages, "pip_s": times["pip"], "uv_s": times["uv"],
                      "ratio_pip_over_uv": round(times["pip"] / times["uv"], 1)}))


if __name__ == "__main__":
    main()
