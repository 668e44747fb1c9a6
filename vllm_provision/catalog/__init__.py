"""Release recipes as data: one TOML file per vLLM release (Spack-like)."""

from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 hosts
    import tomli as tomllib

RELEASES_DIR = Path(__file__).parent / "releases"
SOURCE_KINDS = ("pypi-sdist", "github-archive")


@dataclass(frozen=True)
class Source:
    kind: str
    file: str
    sha256: str = ""
    tree_sha256: str = ""
    size: int | None = None
    url: str = ""

    @property
    def verifiable(self) -> bool:
        return bool(self.sha256 or self.tree_sha256)


@dataclass(frozen=True)
class Release:
    version: str
    released: _dt.date
    requires_python: SpecifierSet
    python_tested: SpecifierSet
    build_system: str
    main_cuda: str
    min_nvcc: str
    cuda_archs: tuple[str, ...]
    arch_list_separator: str
    reads_build_env: tuple[str, ...]
    fetches_during_build: bool
    extensions: tuple[str, ...]
    pins: dict[str, str]
    sources: tuple[Source, ...]
    max_jobs_divided_by_nvcc_threads: bool = False
    min_gcc_cuda: str | None = None
    # translation unit -> seconds it compiles alone on the reference host: the build's critical path
    slowest_units: Mapping[str, float] = field(default_factory=dict)
    path: Path = field(default=Path(), compare=False)

    @property
    def sdist(self) -> Source:
        return next(s for s in self.sources if s.kind == "pypi-sdist")

    @property
    def parsed_version(self) -> Version:
        return Version(self.version)


def _parse(path: Path) -> Release:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"release recipe {path.name} is not valid TOML: {exc}",
                          hint=f"fix {path}") from exc
    try:
        sources = []
        for raw in data["source"]:
            if raw["kind"] not in SOURCE_KINDS:
                raise ConfigError(f"{path.name}: unknown source kind {raw['kind']!r}",
                                  hint=f"use one of {', '.join(SOURCE_KINDS)}")
            sources.append(Source(kind=raw["kind"], file=raw["file"], sha256=raw.get("sha256", ""),
                                  tree_sha256=raw.get("tree_sha256", ""), size=raw.get("size"),
                                  url=raw.get("url", "")))
        version = data["version"]
        Version(version)
        if path.stem != version:
            raise ConfigError(f"{path.name} declares version {version}", hint="name the file <version>.toml")
        return Release(
            version=version,
            released=data["released"],
            requires_python=SpecifierSet(data["requires_python"]),
            python_tested=SpecifierSet(data.get("python_tested", data["requires_python"])),
            build_system=data["build_system"],
            main_cuda=data["main_cuda"],
            min_nvcc=data["min_nvcc"],
            cuda_archs=tuple(data["cuda_archs"]),
            arch_list_separator=data["arch_list_separator"],
            reads_build_env=tuple(data.get("reads_build_env", ())),
            fetches_during_build=bool(data.get("fetches_during_build", False)),
            extensions=tuple(data.get("extensions", ())),
            pins=dict(data.get("pins", {})),
            sources=tuple(sources),
            max_jobs_divided_by_nvcc_threads=bool(data.get("max_jobs_divided_by_nvcc_threads", False)),
            min_gcc_cuda=data.get("min_gcc_cuda"),
            slowest_units={str(k): float(v) for k, v in data.get("slowest_units", {}).items()},
            path=path,
        )
    except (KeyError, InvalidSpecifier, InvalidVersion) as exc:
        raise ConfigError(f"release recipe {path.name} is incomplete or malformed: {exc!r}",
                          hint=f"compare {path} with 0.2.2.toml") from exc


@lru_cache(maxsize=None)
def all_releases() -> tuple[Release, ...]:
    releases = [_parse(p) for p in RELEASES_DIR.glob("*.toml")]
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
