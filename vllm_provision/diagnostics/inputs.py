"""Bad input found at plan time, before the first download or compile: the directories a run writes, the
artifact cache flags, the smoke's model. Each refusal is a ConfigError (exit 2) that names the setting.

The schema (settings.py) checks each value's form; what needs the file system or several settings at once
is checked here, once, by every command that writes into a workspace.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from vllm_provision.artifacts.cache import Entry
from vllm_provision.core.errors import ConfigError
from vllm_provision.plan import Plan


def unwritable(path: Path) -> str | None:
    """Why the directory `path` cannot be created or written (None: it can). Nothing is left behind."""
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        kind = "a regular file" if existing.is_file() else "not a directory"
        return f"{existing} is {kind}" if existing == path else f"{existing} (on the way to {path}) is {kind}"
    try:   # permission bits do not bind root, but a read-only file system (or /sys) does: try it
        shutil.rmtree(tempfile.mkdtemp(prefix=".vllmp-write-test-", dir=existing))
    except OSError as exc:
        return f"{existing} is not writable ({exc.strerror or exc})"
    return None


def _directory(path: Path, setting: str, what: str) -> None:
    problem = unwritable(path)
    if problem:
        variable = "VLLMP_" + setting.upper().replace(".", "__")
        raise ConfigError(f"{what} {path} cannot be made: {problem}",
                          hint=f"set {setting} ({variable}) to a directory you can write")


def model_refusal(model: str | os.PathLike) -> ConfigError | None:
    """A smoke model is a checkpoint directory whose config.json is JSON (the smoke step asks again)."""
    path = Path(str(model)).expanduser()
    fix = "pass --model /path/to/checkpoint (a dir with config.json), or omit it to use a tiny ChatGLM"
    if not path.exists():
        return ConfigError(f"model directory {path} does not exist", hint=fix)
    if not path.is_dir():
        return ConfigError(f"--model {path} is a file, not a checkpoint directory", hint=fix)
    config = path / "config.json"
    if not config.is_file():
        return ConfigError(f"{path} has no config.json", hint="point --model at a Hugging Face checkpoint directory")
    try:
        json.loads(config.read_bytes())
    except (OSError, ValueError) as exc:
        return ConfigError(f"{config} is not JSON ({str(exc)[:120]})",
                           hint="point --model at a complete Hugging Face checkpoint (its config.json is JSON)")
    return None


def writable_caches(caches: Iterable[str]) -> list[Entry]:
    return [e for e in map(Entry.parse, caches) if e.writable]


def check_push(plan: Plan) -> None:
    """--push needs a cache the wheel can go to."""
    caches = plan.settings.artifacts.caches
    if not writable_caches(caches):
        shown = ", ".join(Entry.parse(c).shown for c in caches)
        raise ConfigError("--push needs a writable cache in artifacts.caches, and "
                          + (f"none of {shown} is (static+http(s) caches are read-only)" if caches else "none is set"),
                          hint="add one, e.g. VLLMP_ARTIFACTS__CACHES=dir:/srv/vllm-wheels, or drop --push")


def check(plan: Plan, steps: Iterable[str]) -> None:
    """Everything about the input that can be known before `steps` start (ConfigError on the first problem)."""
    steps = set(steps)
    _directory(plan.workspace.root, "workspace_root", "the workspace")
    _directory(plan.workspace.cache, "cache_dir", "the cache")
    artifacts = plan.settings.artifacts
    caches = artifacts.caches
    if "build" in steps:
        for flag, wanted in (("--require-cache", artifacts.require_cache), ("--artifact-key", artifacts.key)):
            if wanted and not caches:
                raise ConfigError(f"{flag} installs from artifacts.caches, and no cache is set",
                                  hint="set one, e.g. VLLMP_ARTIFACTS__CACHES=dir:/srv/vllm-wheels, "
                                       f"or drop {flag} to compile here")
        if artifacts.push:
            check_push(plan)
        for entry in map(Entry.parse, caches):
            if entry.kind in ("dir", "static") and entry.writable and artifacts.push:
                _directory(Path(entry.location), "artifacts.caches", f"the cache {entry.shown}")
    model = plan.smoke.model
    if model and "smoke" in steps:
        refusal = model_refusal(model)
        if refusal:
            raise refusal
