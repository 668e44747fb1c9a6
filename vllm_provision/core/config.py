"""Configuration: vllm-provision.yaml defaults < envs/<profile>.yaml < VLLMP_* env vars < CLI flags.

The layers are merged here and checked once against the schema (settings.py); a bad value is a
ConfigError naming the key, the layer it came from and the form it takes.
"""

from __future__ import annotations

import copy
import itertools
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from vllm_provision import PROJECT_ROOT
from vllm_provision.core.errors import ConfigError
from vllm_provision.core.settings import ENV_PREFIX, Settings, field_of, from_environment

DEFAULTS_FILE = "vllm-provision.yaml"
# Read by the ./inv wrapper, not by the toolkit.
WRAPPER_ONLY = {"WHEELHOUSE", "EXTRAS", "BOOTSTRAP_PYTHON", "HEARTBEAT_S", "VERBOSE"}   # read by ./inv or the console
PROFILE_META = {"description"}
# Task flag -> the setting it sets.
FLAGS = {"release": "release", "profile": "profile", "offline": "offline", "arch": "build.arch_list",
         "max_jobs": "build.max_jobs", "backend": "env.backend", "python": "env.python", "model": "smoke.model",
         "parity": "smoke.parity", "all_gpus": "smoke.all_gpus", "bundle": "fetch.bundle",
         "time_limit": "build.time_limit", "targets": "build.targets"}


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _read_yaml(path: Path, root: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", hint=f"restore {_shown(path, root)}") from exc
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{_shown(path, root)} is not valid UTF-8 at line {line} (byte 0x{exc.object[exc.start]:02x})",
                          hint=f"save {path} as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{_shown(path, root)} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}",
                          hint=f"fix the YAML of {path}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{_shown(path, root)} must be a mapping of settings, not {type(data).__name__}",
                          hint=f"write {path} as `key: value` lines")
    return data


def defaults(root: Path = PROJECT_ROOT) -> dict:
    return _read_yaml(root / DEFAULTS_FILE, root)


def profile_names(root: Path = PROJECT_ROOT) -> list[str]:
    return sorted(p.stem for p in (root / "envs").glob("*.yaml"))


def profile_help(root: Path = PROJECT_ROOT) -> str:
    """--profile's help: the profiles in envs/ and the default (read when the tasks load: never an error)."""
    try:
        default = defaults(root).get("profile")
    except ConfigError:     # a broken defaults file is reported by the command, not by --help
        default = None
    return f"profile in envs/: {', '.join(profile_names(root))}" + (f" (default {default})" if default else "")


def load_profile(name: str, root: Path = PROJECT_ROOT, where: str = "") -> dict:
    """A profile is a name of envs/, never a path: `../envs/host-torch` would name a workspace after it."""
    known = profile_names(root)
    if name not in known:
        pathlike = any(c in name for c in "/\\") or name.startswith(".") or name.endswith(".yaml")
        raise ConfigError(f"unknown profile {name!r}{f' (from {where})' if where else ''}; profiles: {', '.join(known)}",
                          hint=f"a profile is the name of a file in envs/ without .yaml, e.g. --profile {known[0]}"
                          if pathlike else f"pick one with --profile, or create envs/{name}.yaml")
    return {k: v for k, v in _read_yaml(root / "envs" / f"{name}.yaml", root).items() if k not in PROFILE_META}


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict:
    """Deep-merge overlay into a copy of base (mappings merge, anything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(out.get(key), Mapping) and isinstance(value, Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _nested(flat: Mapping[str, Any]) -> dict:
    """{"build.max_jobs": 4} -> {"build": {"max_jobs": 4}}."""
    out: dict = {}
    for dotted, value in flat.items():
        *parents, last = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def flag_settings(flags: Mapping[str, Any]) -> dict:
    """Task flags -> the settings they set; None/False is a flag not given."""
    return _nested({FLAGS[k]: v for k, v in flags.items() if k in FLAGS and v is not None and v is not False})


def _has(data: Any, path: tuple[str, ...]) -> bool:
    for part in path:
        if not isinstance(data, Mapping) or part not in data:
            return False
        data = data[part]
    return True


class _Layers:
    """The settings layers, highest precedence first, each able to say where a key came from."""

    def __init__(self, cli: dict, environ: Mapping[str, str], from_env: dict, profile_path: Path, profile: dict,
                 base: dict, root: Path):
        self.environ = environ
        self.items = [("cli", cli), ("env", from_env),
                      (_shown(profile_path, root), profile), (DEFAULTS_FILE, base)]

    def source(self, path: tuple[str, ...]) -> tuple[str, str]:
        """(kind, where) of the layer that gave `path`: kind cli | env | file."""
        name = next((name for name, data in self.items if _has(data, path)), DEFAULTS_FILE)   # else: missing there
        return self.describe(name, path)

    def describe(self, name: str, path: tuple[str, ...]) -> tuple[str, str]:
        if name == "cli":
            flag = next((f for f, key in FLAGS.items() if key == ".".join(path)), None)
            return "cli", f"flag --{flag.replace('_', '-')}" if flag else "the command-line settings"
        if name == "env":
            return "env", f"environment variable {self.variable(path)}"
        return "file", name

    def scalar_section(self) -> tuple[dict, tuple[str, str]] | None:
        """A section given as a scalar (`fetch: nope`), which a merge with a higher layer would hide."""
        for name, data in self.items:
            for key, value in data.items():
                info = field_of((key,))
                if info is not None and hasattr(info.annotation, "model_fields") and not isinstance(value, Mapping):
                    return {"loc": (key,), "type": "dict_type", "input": value}, self.describe(name, (key,))
        return None

    def variable(self, path: tuple[str, ...]) -> str:
        wanted = (ENV_PREFIX + "__".join(path)).upper()
        names = [n for n in self.environ if n.upper() == wanted or n.upper().startswith(wanted + "__")]
        return names[0] if names else wanted


def _unknown_variables(environ: Mapping[str, str]) -> None:
    """VLLMP_NAME whose first part is no setting (pydantic-settings skips those silently)."""
    for name in environ:
        rest = name[len(ENV_PREFIX):]
        if name.upper().startswith(ENV_PREFIX) and rest.upper() not in WRAPPER_ONLY and \
                rest.lower().split("__")[0] not in Settings.model_fields:
            raise ConfigError(f"unknown setting {rest.lower().replace('__', '.')} (from environment variable {name})",
                              hint=f"unset {name}; top-level settings: {', '.join(Settings.model_fields)}")


def undecodable(text: str) -> bool:
    """Bytes that were not UTF-8 reach Python as lone surrogates (os.environ's and argv's surrogateescape);
    printed or written, they raise UnicodeEncodeError, so they are refused as input."""
    return any("\ud800" <= c <= "\udfff" for c in text)


def _not_utf8_variables(environ: Mapping[str, str]) -> None:
    for name, value in environ.items():
        if name.upper().startswith(ENV_PREFIX) and (undecodable(name) or undecodable(value)):
            shown = name.encode("utf-8", "backslashreplace").decode()
            raise ConfigError(f"environment variable {shown} holds bytes that are not valid UTF-8",
                              hint=f"set {shown} to UTF-8 text, or unset it")


def _not_utf8(data: Any, path: tuple[str, ...] = ()) -> None:
    """The flags' settings (argv): the first value holding bytes that are not UTF-8 is refused."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            _not_utf8(value, path + (str(key),))
    elif isinstance(data, (list, tuple)):
        for item in data:
            _not_utf8(item, path)
    elif isinstance(data, str) and undecodable(data):
        flag = next((f for f, key in FLAGS.items() if key == ".".join(path)), ".".join(path))
        raise ConfigError(f"flag --{flag.replace('_', '-')} holds bytes that are not valid UTF-8",
                          hint=f"give --{flag.replace('_', '-')} as UTF-8 text")


def _setting(loc: tuple) -> tuple[str, ...]:
    """The setting an error is in: (verify, allowed_pip_check, 0, reason) -> (verify, allowed_pip_check)."""
    return tuple(itertools.takewhile(lambda p: isinstance(p, str), loc))


def _invalid(err: Mapping[str, Any], source: tuple[str, str]) -> ConfigError:
    """A schema error as one `error:` line (key, source, form) and a `hint:` with the fix."""
    loc = err["loc"]
    shown = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    key = _setting(loc)
    kind, where = source
    if err["type"] == "extra_forbidden":
        parent = field_of(key[:-1]).annotation if len(key) > 1 else Settings
        known = getattr(parent, "model_fields", None)
        return ConfigError(f"unknown setting {shown} (from {where})",
                           hint=f"remove it; known settings{' in ' + '.'.join(key[:-1]) if len(key) > 1 else ''}: "
                                f"{', '.join(known)}" if known else f"remove {shown}")
    info = field_of(key)
    section = getattr(info.annotation, "model_fields", None) if info is not None else None
    form = (f"a mapping of {', '.join(section)}" if section else
            info.description if info is not None and info.description else err["msg"].lower())
    if err["type"] == "missing":
        problem = f"{shown} is missing (in {where})"
    elif err["type"] == "value_error":
        problem = f"{shown} from {where}: {err['msg'].removeprefix('Value error, ')}"
    else:
        problem = f"{shown} is {_short(err['input'])} (from {where}); it takes {form}"
    fix = {"cli": f"give {where.removeprefix('flag ')} {form}",
           "env": f"set {where.removeprefix('environment variable ')} to {form}, or unset it",
           "file": f"set {'.'.join(key)} in {where} to {form}"}[kind]
    return ConfigError(problem, hint=fix)


def flag_value(flag: str, value: Any, kind: Any) -> Any:
    """A task flag that is no setting (doctor --timeout), checked with one of the schema's types."""
    try:
        return TypeAdapter(kind).validate_python(value)
    except ValidationError:
        form = next(m.description for m in typing.get_args(kind)[1:] if getattr(m, "description", None))
        raise ConfigError(f"--{flag} is {_short(value)}; it takes {form}", hint=f"give --{flag} {form}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def resolve(cli: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
            root: Path = PROJECT_ROOT) -> Settings:
    """The effective settings, checked against the schema: the frozen model every reader takes as it is."""
    environ = os.environ if environ is None else environ
    cli = copy.deepcopy({k: v for k, v in (cli or {}).items() if v is not None})
    _not_utf8_variables(environ)
    _unknown_variables(environ)
    base = defaults(root)
    from_env = from_environment(environ)
    profile = cli.get("profile") or from_env.get("profile") or base.get("profile")
    where = ("flag --profile" if cli.get("profile") else f"environment variable {ENV_PREFIX}PROFILE"
             if from_env.get("profile") else DEFAULTS_FILE)
    _not_utf8(cli)
    profile_data = load_profile(profile, root, where) if isinstance(profile, str) else {}   # else: the schema says why
    layers = _Layers(cli, environ, from_env, root / "envs" / f"{profile}.yaml", profile_data, base, root)
    scalar = layers.scalar_section()
    if scalar:
        raise _invalid(*scalar)
    merged = merge(merge(merge(base, profile_data), from_env), cli)
    merged["profile"] = profile
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise _invalid(err, layers.source(_setting(err["loc"]))) from None
