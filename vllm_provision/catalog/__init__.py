"""Release recipes as data: one TOML file per vLLM release (Spack-like).

A release in the catalog is supported only with a complete recipe: a build path for its build
system, a patch series, the extensions verify imports, and a lock for the profile (`missing_recipe`).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from .. import PROJECT_ROOT, tomllib
from ..errors import ConfigError

RELEASES_DIR = Path(__file__).parent / "releases"
SOURCE_KINDS = ("pypi-sdist", "github-archive")
# The build systems steps/build.py implements; a release that uses another one cannot be built yet.
BUILT_BY_TOOLKIT = ("setuptools-cpp-extension",)
RELEASE_FIELDS = {"version", "released", "python_tested", "build_system", "main_cuda", "cuda_archs",
                  "arch_list_separator", "extensions", "slowest_units", "source"}
SOURCE_FIELDS = {"kind", "file", "sha256", "tree_sha256", "url"}


@dataclass(frozen=True)
class Source:
    kind: str
    file: str
    sha256: str = ""
    tree_sha256: str = ""
    url: str = ""


@dataclass(frozen=True)
class Release:
    version: str
    released: _dt.date
    python_tested: SpecifierSet     # the Pythons wheels were published for: the env's Python is picked from it
    build_system: str
    main_cuda: str
    cuda_archs: tuple[str, ...]
    arch_list_separator: str
    extensions: tuple[str, ...]     # compiled modules verify imports
    sources: tuple[Source, ...]
    # translation unit -> seconds it compiles alone on the reference host: the build's critical path
    slowest_units: Mapping[str, float] = field(default_factory=dict)
    path: Path = field(default=Path(), compare=False)

    @property
    def sdist(self) -> Source:
        return next(s for s in self.sources if s.kind == "pypi-sdist")

    @property
    def parsed_version(self) -> Version:
        return Version(self.version)


def lock_path(release: str, profile: str, python_minor: str, root: Path = PROJECT_ROOT) -> Path:
    """envs/locks/<release>/<profile>-py<X.Y>.txt (the minor may be a glob)."""
    return root / "envs" / "locks" / release / f"{profile}-py{python_minor}.txt"


def _unknown(data: Mapping, known: set[str], where: str) -> None:
    """A field nothing reads is refused: the recipe says only what the toolkit acts on."""
    extra = sorted(set(data) - known)
    if extra:
        raise ConfigError(f"{where}: unknown field{'s' if len(extra) > 1 else ''} {', '.join(extra)}",
                          hint=f"the fields are: {', '.join(sorted(known))}; keep other facts as comments")


def parse_release(path: Path) -> Release:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"release recipe {path.name} is not valid TOML: {exc}",
                          hint=f"fix {path}") from exc
    _unknown(data, RELEASE_FIELDS, path.name)
    try:
        sources = []
        for raw in data["source"]:
            _unknown(raw, SOURCE_FIELDS, f"{path.name}: [[source]] {raw.get('file', '')}")
            if raw["kind"] not in SOURCE_KINDS:
                raise ConfigError(f"{path.name}: unknown source kind {raw['kind']!r}",
                                  hint=f"use one of {', '.join(SOURCE_KINDS)}")
            sources.append(Source(kind=raw["kind"], file=raw["file"], sha256=raw.get("sha256", ""),
                                  tree_sha256=raw.get("tree_sha256", ""), url=raw.get("url", "")))
        version = data["version"]
        Version(version)
        if path.stem != version:
            raise ConfigError(f"{path.name} declares version {version}", hint="name the file <version>.toml")
        return Release(
            version=version,
            released=data["released"],
            python_tested=SpecifierSet(data["python_tested"]),
            build_system=data["build_system"],
            main_cuda=data["main_cuda"],
            cuda_archs=tuple(data["cuda_archs"]),
            arch_list_separator=data["arch_list_separator"],
            extensions=tuple(data.get("extensions", ())),
            sources=tuple(sources),
            slowest_units={str(k): float(v) for k, v in data.get("slowest_units", {}).items()},
            path=path,
        )
    except (KeyError, InvalidSpecifier, InvalidVersion) as exc:
        raise ConfigError(f"release recipe {path.name} is incomplete or malformed: {exc!r}",
                          hint=f"compare {path} with 0.2.2.toml") from exc


@lru_cache(maxsize=None)
def all_releases() -> tuple[Release, ...]:
    releases = [parse_release(p) for p in RELEASES_DIR.glob("*.toml")]
    return tuple(sorted(releases, key=lambda r: r.parsed_version))


def known_versions() -> list[str]:
    return [r.version for r in all_releases()]


def get_release(version: str) -> Release:
    wanted = version.lstrip("v")
    for release in all_releases():
        if release.version == wanted:
            return release
    raise ConfigError(f"unknown vLLM release {version!r}; known releases: {', '.join(known_versions())}",
                      hint=f"pick one of those with --release, or add vllm_provision/catalog/releases/{wanted}.toml")


def missing_recipe(release: Release, profile: str, *, needs_lock: bool, root: Path = PROJECT_ROOT) -> list[str]:
    """What the toolkit lacks to provision `release` with `profile` (empty: the recipe is complete)."""
    from ..patches import series_dir

    missing = []
    if release.build_system not in BUILT_BY_TOOLKIT:
        missing.append(f"a build path for its build system {release.build_system} "
                       f"(the build step builds {', '.join(BUILT_BY_TOOLKIT)})")
    series = series_dir(release.version, root) / "series.toml"
    if not series.is_file():
        missing.append(f"a patch series {series.relative_to(root)}")
    if not release.extensions:
        missing.append(f"the extensions verify imports (extensions in {release.path.name})")
    lock = lock_path(release.version, profile, "*", root)
    if needs_lock and not any(lock.parent.glob(lock.name)):
        missing.append(f"a lock {lock.relative_to(root)} for profile {profile}")
    return missing


def complete_releases(profile: str, *, needs_lock: bool, root: Path = PROJECT_ROOT) -> list[str]:
    return [r.version for r in all_releases() if not missing_recipe(r, profile, needs_lock=needs_lock, root=root)]


def require_recipe(release: Release, profile: str, *, needs_lock: bool, root: Path = PROJECT_ROOT) -> None:
    """Refuse, at plan time, a release the catalog knows but the toolkit cannot provision."""
    missing = missing_recipe(release, profile, needs_lock=needs_lock, root=root)
    if missing:
        supported = complete_releases(profile, needs_lock=needs_lock, root=root)
        raise ConfigError(f"vLLM {release.version} is in the catalog but the toolkit has no complete recipe for it "
                          f"(missing: {'; '.join(missing)})",
                          hint=f"supported releases: {', '.join(supported) or 'none for profile ' + profile}")
