"""Per-release patch series: patches/<release>/series.toml, each patch with a Spack-like `when`."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from vllm_provision import PROJECT_ROOT, tomllib
from vllm_provision.core.errors import ConfigError

ABSENT = "absent"


@dataclass(frozen=True)
class Patch:
    file: str
    path: Path
    why: str
    upstream: str
    when: Mapping[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def applies(self, versions: Mapping[str, str | None]) -> tuple[bool, str]:
        """Whether every `when` condition holds for these versions; with the reason."""
        for key, spec in self.when.items():
            have = versions.get(key)
            if spec == ABSENT:
                if have is not None:
                    return False, f"{key} {have} is installed"
                continue
            if have is None:
                return False, f"{key} not installed (needs {spec})"
            try:
                if not SpecifierSet(spec).contains(Version(have).base_version if key != "release" else have,
                                                   prereleases=True):
                    return False, f"{key} {have} not {spec}"
            except InvalidVersion:
                return False, f"{key} version {have!r} unparsable"
        return True, ", ".join(f"{k} {versions.get(k) or 'absent'} ({v})" for k, v in self.when.items()) or "always"


def series_dir(release: str, root: Path = PROJECT_ROOT) -> Path:
    return root / "patches" / release


def load_series(release: str, root: Path = PROJECT_ROOT) -> tuple[Patch, ...]:
    path = series_dir(release, root) / "series.toml"
    if not path.is_file():
        return ()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", hint=f"fix {path}") from exc
    patches = []
    for entry in data.get("patch", []):
        file = entry.get("file", "")
        patch_path = path.parent / file
        if not file or not patch_path.is_file():
            raise ConfigError(f"{path}: patch file {file!r} does not exist", hint="add it or remove its entry")
        when = {str(k): str(v) for k, v in (entry.get("when") or {}).items()}
        for key, spec in when.items():
            if spec != ABSENT:
                try:
                    SpecifierSet(spec)
                except InvalidSpecifier as exc:
                    raise ConfigError(f"{path}: {file}: condition {key} = {spec!r} is not a version specifier",
                                      hint='use e.g. ">=2.13" or "absent"') from exc
        patches.append(Patch(file=file, path=patch_path, why=entry.get("why", ""),
                             upstream=entry.get("upstream", ""), when=when))
    return tuple(patches)
