"""Benchmark (issue 4): the same lock installed from a local mirror with pip and with uv.

The lock is the committed `envs/locks/0.2.2/seed-py3.11.txt` minus the huge CUDA wheels (torch, nvidia-*,
triton, xformers; `--exclude`), i.e. the real wheels of transformers, tokenizers, numpy, pydantic, ray,
fastapi, pyarrow... They are downloaded once (hash-checked against the committed lock) into
`~/.cache/vllm-provision/bench-wheelhouse/<lock>/` and served by pypiserver on 127.0.0.1 running on waitress
(a threaded WSGI server). Each installer gets a fresh venv and a cold cache (pip `--no-cache-dir`, uv a fresh
`--cache-dir`), `--require-hashes --no-deps -r lock`; a second uv run (fresh venv, the now-warm uv cache)
measures uv's everyday case. Prints one JSON object.
    .venv/bin/python bench/env.py [--lock PATH] [--exclude 'torch,triton,xformers,nvidia-*'] [--wheelhouse DIR]

Why uv looked slower than pip in the previous version (40 tiny wheels, pip 2.2 s vs uv 7.3 s): pypiserver's
default server (bottle's wsgiref, no threaded server installed) and the stdlib proxy in front of it both
listen with socketserver's backlog of 5. uv opens up to 50 connections at once (UV_CONCURRENT_DOWNLOADS);
the SYNs beyond the backlog are dropped and the kernel retransmits them after 1 s, 3 s, 7 s... `uv pip install
-v` showed the gaps ("Prepared 40 packages in 15.61s" for 40 one-file wheels, 80 plain GETs, no range or
metadata requests), and the same install with UV_CONCURRENT_DOWNLOADS=4 took 0.38 s. pip fetches one file at a
time, so it never overflowed the backlog. Waitress listens with a backlog of 1024, so nothing is dropped here.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import mirrors as fx  # noqa: E402
from packaging.utils import canonicalize_name, parse_wheel_filename  # noqa: E402
from packaging.version import Version  # noqa: E402

from vllm_provision.core import runner  # noqa: E402
from vllm_provision.core.errors import ConfigError  # noqa: E402
from vllm_provision.envs.lock import PIN, read_header, render_header  # noqa: E402

DEFAULT_LOCK = ROOT / "envs" / "locks" / "0.2.2" / "seed-py3.11.txt"
DEFAULT_EXCLUDE = "torch,triton,xformers,nvidia-*"


def lock_entries(path: Path, exclude: list[str]) -> dict[str, tuple[str, str, list[str]]]:
    """canonical name -> (name, version, sha256 hashes) for every pin of `path` not matching `exclude`."""
    entries, current = {}, None
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            name, version = m.group(1), m.group(2)
            current = None
            if not any(fnmatch.fnmatch(canonicalize_name(name), canonicalize_name(p)) for p in exclude):
                current = entries[canonicalize_name(name)] = (name, version, [])
        elif current is not None:
            current[2].extend(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
    return entries


def render_lock(entries) -> str:
    return "\n".join(f"{name}=={version} \\\n" + " \\\n".join(f"    --hash=sha256:{h}" for h in hashes)
                     for name, version, hashes in entries.values()) + "\n"


def clean_env(**extra: str) -> dict[str, str]:
    """pip isolated from /etc/xdg/pip/pip.conf (torch constraint, /opt extra indexes) and PIP_FIND_LINKS."""
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    for key in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "UV_INDEX", "UV_EXTRA_INDEX_URL",
                "UV_FIND_LINKS", "UV_CONSTRAINT"):
        env.pop(key, None)
    return env


def wheelhouse_files(house: Path, entries) -> dict[str, Path]:
    """canonical name -> the cached wheel for its pin whose sha256 is one of the lock's hashes."""
    found = {}
    for whl in house.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(whl.name)
        entry = entries.get(name)
        if entry and version == Version(entry[1]) and hashlib.sha256(whl.read_bytes()).hexdigest() in entry[2]:
            found[name] = whl
    return found


def ensure_wheelhouse(house: Path, entries, python_version: str, log: Path) -> dict[str, Path]:
    house.mkdir(parents=True, exist_ok=True)
    found = wheelhouse_files(house, entries)
    missing = {k: v for k, v in entries.items() if k not in found}
    if missing:
        sub = house / "download-lock.txt"
        sub.write_text(render_lock(missing))
        runner.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", python_version, "--require-hashes", "-r", sub, "-d", house],
                   env=clean_env(), log=log, timeout=1800, what="pip download (bench wheelhouse)")
        found = wheelhouse_files(house, entries)
    if len(found) != len(entries):
        raise ConfigError(f"bench wheelhouse {house} lacks {sorted(set(entries) - set(found))}",
                          "delete the directory and rerun to download again")
    return found


def note(msg: str) -> None:
    print(f"[bench/env.py {time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


T0 = time.monotonic()


def install(kind: str, tmp: Path, lock: Path, url: str, uv_cache: Path, log: Path) -> float:
    from uv import find_uv_bin

    venv = tmp / f"venv-{kind}"
    runner.run([sys.executable, "-m", "venv", venv], log=log, timeout=300)
    py = venv / "bin" / "python"
    argv = ([py, "-m", "pip", "install", "-q", "--no-cache-dir", "--index-url", url] if kind == "pip" else
            [find_uv_bin(), "pip", "install", "-q", "--python", py, "--cache-dir", uv_cache, "--index-url", url])
    note(f"{kind}: installing {lock.name}")
    started = time.monotonic()
    runner.run(argv + ["--require-hashes", "--no-deps", "-r", lock], env=clean_env(), log=log, timeout=1800,
               what=f"{kind} install")
    return round(time.monotonic() - started, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lock", type=Path, default=DEFAULT_LOCK)
    ap.add_argument("--exclude", default=DEFAULT_EXCLUDE, help="comma-separated names or globs left out of the lock")
    ap.add_argument("--wheelhouse", type=Path, help="default: ~/.cache/vllm-provision/bench-wheelhouse/<lock>")
    args = ap.parse_args()
    try:
        import waitress  # noqa: F401  pypiserver's `--server auto` picks it first
    except ImportError:
        raise SystemExit("bench/env.py: waitress is not installed; pypiserver would fall back to wsgiref "
                         "(single-threaded, backlog 5): `pip install -e .[test]` (./inv --list does it)") from None
    python_version = read_header(args.lock).get("python", "3.11")
    entries = lock_entries(args.lock, [p.strip() for p in args.exclude.split(",") if p.strip()])
    house = args.wheelhouse or (Path.home() / ".cache" / "vllm-provision" / "bench-wheelhouse"
                                / f"{args.lock.parent.name}-{args.lock.stem}")
    with tempfile.TemporaryDirectory(prefix="vllmp-bench-env-") as tmp:
        tmp = Path(tmp)
        log = tmp / "bench.log"
        try:
            note(f"wheelhouse {house}")
            wheels = ensure_wheelhouse(house, entries, python_version, log)
        except Exception:
            sys.stderr.write(log.read_text() if log.exists() else "")
            raise
        # serve exactly the lock's wheels (the cache dir also holds the download lock)
        served = tmp / "packages"
        served.mkdir()
        for whl in wheels.values():
            try:
                os.link(whl, served / whl.name)
            except OSError:
                (served / whl.name).symlink_to(whl)
        lock = tmp / "lock.txt"
        meta = dict(read_header(args.lock), profile="bench", pins=f"{args.lock.name} minus {args.exclude}")
        lock.write_text(render_header(meta) + render_lock(entries))
        note("starting pypiserver")
        server = fx.Pypiserver(served)
        try:
            with urllib.request.urlopen(server.url, timeout=10) as resp:
                server_header = resp.headers.get("Server", "")
            times = {"pip": install("pip", tmp, lock, server.url, tmp / "uv-cache-unused", log),
                     "uv_cold": install("uv", tmp, lock, server.url, tmp / "uv-cache", log)}
            times["uv_warm"] = install("uv-warm", tmp, lock, server.url, tmp / "uv-cache", log)
        except Exception:
            sys.stderr.write(log.read_text()[-4000:])
            raise
        finally:
            server.stop()
        note("done")
    print(json.dumps({
        "lock": str(args.lock.relative_to(ROOT) if args.lock.is_relative_to(ROOT) else args.lock),
        "excluded": args.exclude, "packages": len(wheels),
        "wheel_mb": round(sum(w.stat().st_size for w in wheels.values()) / 1e6, 1),
        "server": f"pypiserver on {server_header or '?'}",
        "pip_s": times["pip"], "uv_cold_s": times["uv_cold"], "uv_warm_s": times["uv_warm"],
        "ratio_pip_over_uv_cold": round(times["pip"] / times["uv_cold"], 1),
        "ratio_pip_over_uv_warm": round(times["pip"] / times["uv_warm"], 1)}))


if __name__ == "__main__":
    main()
