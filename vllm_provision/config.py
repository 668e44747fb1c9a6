"""Configuration: invoke.yaml defaults < envs/<profile>.yaml < VLLMP_* env vars < CLI flags."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from . import PROJECT_ROOT
from .errors import ConfigError

ENV_PREFIX = "VLLMP_"
# Read by the ./inv wrapper, not by the toolkit.
WRAPPER_ONLY = {"WHEELHOUSE", "EXTRAS", "BOOTSTRAP_PYTHON"}
PROFILE_META = {"description"}


def _read_yaml(path: Path, what: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}".splitlines()[0], hint=f"fix {path}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping", hint=f"fix {path}")
    return data


def defaults(root: Path = PROJECT_ROOT) -> dict:
    data = _read_yaml(root / "invoke.yaml", "config file")
    return copy.deepcopy(data.get("vllmp", {}))


def profile_names(root: Path = PROJECT_ROOT) -> list[str]:
    return sorted(p.stem for p in (root / "envs").glob("*.yaml"))


def load_profile(name: str, root: Path = PROJECT_ROOT) -> dict:
    path = root / "envs" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {name!r}; profiles: {', '.join(profile_names(root))}",
                          hint=f"pick one with --profile, or create envs/{name}.yaml")
    return _read_yaml(path, "profile")


def merge(base: dict, overlay: Mapping[str, Any], known: Mapping[str, Any] | None = None, where: str = "") -> dict:
    """Deep-merge overlay into a copy of base; keys unknown to `known` are an error naming the file."""
    known = base if known is None else known
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if key not in known:
            raise ConfigError(f"unknown setting {where}{key!r}",
                              hint=f"known settings here: {', '.join(sorted(known))}")
        if isinstance(known[key], dict) and isinstance(value, Mapping):
            out[key] = merge(out.get(key) or {}, value, known[key], where=f"{where}{key}.")
        else:
            out[key] = value
    return out


def env_overrides(environ: Mapping[str, str]) -> dict:
    """VLLMP_FETCH__TIMEOUT=5 -> {"fetch": {"timeout": 5}}; values parsed as YAML scalars/lists."""
    out: dict = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name[len(ENV_PREFIX):] in WRAPPER_ONLY:
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        if path[-1] in ("release", "python") and value is not None:
            value = str(raw)  # "3.10" must stay a string, not the float 3.1
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def resolve(cli: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
            root: Path = PROJECT_ROOT) -> dict:
    """The effective settings, with `profile_data` kept for the plan's provenance."""
    environ = os.environ if environ is None else environ
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    base = defaults(root)
    from_env = env_overrides(environ)
    profile = cli.get("profile") or from_env.get("profile") or base.get("profile")
    profile_data = {k: v for k, v in load_profile(profile, root).items() if k not in PROFILE_META}
    settings = merge(base, profile_data, where=f"envs/{profile}.yaml: ")
    settings = merge(settings, from_env, known=base, where="environment VLLMP_")
    settings = merge(settings, cli, known=base, where="flag ")
    settings["profile"] = profile
    settings["release"] = str(settings["release"])
    return settings
