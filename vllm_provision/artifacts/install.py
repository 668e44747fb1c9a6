"""Install vLLM from a cache, verified: look the key up in each cache in order; download the wheel into the
workspace; check its sha256 (index link / sidecar), its manifest's key (the full key, not only the label's
12 digits) and the manifest against the target env and host; only then install it with hash checking and
no index (`uv pip install --no-index --require-hashes --no-deps`). Any refusal leaves the env unchanged.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import parse_wheel_filename

from vllm_provision.artifacts import cache
from vllm_provision.artifacts import manifest as mf
from vllm_provision.artifacts.wheel import Wheel, sidecar_of
from vllm_provision.core import runner
from vllm_provision.core.errors import ConfigError, StepFailed
from vllm_provision.core.files import atomic_write
from vllm_provision.envs.common import Installer
from vllm_provision.sources.download import sha256_file

INSTALL_TIMEOUT = 1800


@dataclass(frozen=True)
class Installed:
    found: cache.Found
    sha256: str
    manifest: dict
    fit: str               # what was checked against the env and host

    def facts(self) -> dict:
        return {"source": "cache", "cache": self.found.entry.shown, "file": self.found.filename,
                "key": self.manifest["key"], "version": self.manifest["version"], "wheel_sha256": self.sha256,
                "archs": self.manifest["archs"], "glibc_floor": self.manifest.get("glibc_floor"), "fit": self.fit}


def look_up(entries: Iterable[cache.Entry], key: str) -> cache.Found | None:
    for entry in entries:
        found = cache.find(entry, key)
        if found:
            return found
    return None


def requirement_line(version: str, sha256: str) -> str:
    return f"vllm=={version} --hash=sha256:{sha256}\n"


def install_found(found: cache.Found, key: str, target: mf.Target, *, python: str, work_dir: Path,
                  installer: Installer, log: Path | None) -> Installed:
    """Download, check and install one cache hit with the env's installer (uv, else pip)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="artifact-", dir=work_dir))
    try:
        wheel = cache.fetch(found, tmp)
        digest = sha256_file(wheel)
        manifest = mf.read_from_wheel(wheel)
        mf.check_key(manifest, key, found.shown)
        fit = mf.check_fits(manifest, target, found.shown)
        requirements = tmp / "requirements.txt"
        requirements.write_text(requirement_line(manifest["version"], digest))
        # replaces an editable vllm of an earlier build, whatever its version
        reinstall = "--reinstall-package" if installer.kind == "uv" else "--force-reinstall"
        argv = installer.argv(Path(python), "--no-index", "--require-hashes", "--no-deps", "-r", str(requirements),
                              "--find-links", str(tmp), *([reinstall, "vllm"] if installer.kind == "uv" else [reinstall]))
        runner.run(argv, log=log, extra_env=installer.env, timeout=INSTALL_TIMEOUT, what=f"install {found.filename}")
        return Installed(found, digest, manifest, fit)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def missing_error(key: str, entries: list[cache.Entry]) -> StepFailed:
    searched = ", ".join(e.shown for e in entries) or "none (artifacts.caches is empty)"
    return StepFailed(f"no cached build for key {key} (searched: {searched}) and the cache is required "
                      "(--require-cache / artifacts.require_cache): nothing is compiled",
                      hint="build one with `./inv wheel --push` on a host of this kind, or drop --require-cache")


def copy_out(entries: Iterable[cache.Entry], key: str, sha256: str, out_dir: Path) -> Wheel:
    """The cached wheel of `key` (the one this workspace installed, `sha256`) copied into out_dir with its
    sidecar manifest, checked as for an install: the sha256 and the manifest's full key."""
    entries = list(entries)
    found = look_up(entries, key)
    if not found:
        raise missing_error(key, entries)
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = cache.fetch(found, out_dir)
    digest = sha256_file(wheel)
    if digest != sha256:
        wheel.unlink()
        raise StepFailed(f"{found.shown} has sha256 {digest}, not {sha256} as installed here (replaced in the cache)",
                         hint="install again from the cache (`./inv build --force`), then rerun `./inv wheel`")
    manifest = mf.read_from_wheel(wheel)
    mf.check_key(manifest, key, found.shown)
    # the cache's own sidecar keeps auditwheel's result; a cache that serves no sidecar gets the manifest's
    side = {**manifest, "sha256": digest, "file": wheel.name}
    if found.entry.kind in ("dir", "static") and sidecar_of(Path(found.where)).is_file():
        side = json.loads(sidecar_of(Path(found.where)).read_text()) | side
    atomic_write(sidecar_of(wheel), json.dumps(side, indent=2, sort_keys=True) + "\n", suffix=".part")
    return Wheel(wheel, digest, manifest)


def python_refusal(entries: Iterable[cache.Entry], key: str, python: str) -> ConfigError | None:
    """Before any download: the refusal of a pinned artifact (`--artifact-key`) made for another Python than
    the env's (`python`, e.g. "3.11"); its wheel's tag says so. None when it fits or is not found yet."""
    found = look_up(entries, key)
    if not found:
        return None
    wanted = mf.python_tag(python)
    tags = {t.interpreter for t in parse_wheel_filename(found.filename)[3]}
    if wanted in tags:
        return None
    return ConfigError(f"{found.shown} is for {', '.join(sorted(tags))}, but this env's Python is {python} ({wanted}): "
                       "it cannot be installed here",
                       hint=f"build the wheel with Python {python} (`./inv wheel` there), or install on a host or base "
                            f"image whose Python matches the wheel's")
