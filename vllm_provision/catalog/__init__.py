"""Release recipes as data: one TOML file per vLLM release (Spack-like).

A release in the catalog is supported only with a complete recipe: a build path for its build
system, a patch series, the extensions verify imports, and a lock for the profile (`missing_recipe`).
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from vllm_provision import PROJECT_ROOT, tomllib
from vllm_provision.core.errors import ConfigError

RELEASES_DIR = Path(__file__).parent / "releases"
SOURCE_KINDS = ("pypi-sdist", "github-archive")
# The build systems steps/build.py implements; a release that uses another one cannot be built yet.
BUILT_BY_TOOLKIT = ("setuptools-cpp-extension", "cmake")
RELEASE_FIELDS = {"version", "released", "python_tested", "build_system", "main_cuda", "cuda_archs",
                  "arch_list_separator", "extensions", "slowest_units", "source", "torch", "gcc_min",
                  "cmake_min", "nvcc_min", "job_peak_gib", "compile_cpu_seconds_per_arch", "external", "llm_engine"}
SOURCE_FIELDS = {"kind", "file", "sha256", "tree_sha256", "url"}
EXTERNAL_FIELDS = {"name", "repo", "commit", "tag", "override", "role", "subdir", "include", "tree_sha256",
                   "wheel_path", "wheel_tree", "wheel_rewrite", "submodule"}
SUBMODULE_FIELDS = {"path", "repo", "commit", "include"}
EXTERNAL_ROLES = ("compiled", "copied")
# v0: the engine up to 0.10 (`# GPU blocks`, CPU swap blocks); v1: the only engine from 0.11 (the KV cache in
# tokens and a maximum concurrency; no swap space, no best_of). The smoke judges the figures the engine prints.
ENGINES = ("v0", "v1")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Submodule:
    """A git submodule the external's own build reads, pinned by commit; fetched as a repository of its
    own (never `git submodule update`, which needs the network), placed at `path` inside the external."""
    path: str
    repo: str
    commit: str
    include: tuple[str, ...]


@dataclass(frozen=True)
class External:
    """A source tree the release's CMake build would download at configure time (FetchContent).

    `include` are globs (relative to the external's root, `**` crossing directories) for the files the
    build reads; `tree_sha256` hashes exactly those files (with the submodules' files under their paths),
    so a full upstream archive, a git checkout and a trimmed bundle all verify alike."""
    name: str
    repo: str                       # owner/project on GitHub; mirrors are templates over it
    commit: str                     # full 40-hex commit ("" only where the pin is a tag: tree_sha256 pins the content)
    # the variable the release's CMake reads for a local copy of the tree: an environment variable, or
    # FETCHCONTENT_SOURCE_DIR_<NAME> (CMake's own, passed as a -D cache definition)
    override: str
    role: str                       # compiled | copied (copied into the wheel as files, not compiled)
    include: tuple[str, ...]
    tree_sha256: str
    tag: str = ""
    subdir: str = ""                # the directory inside the repository the override points at
    wheel_path: str = ""            # copied parts: where the release's own wheel ships them
    wheel_tree: str = ""            # where those files lie inside the external's tree ("" = its root)
    # text the release's install replaced in the wheel's copies, as (original, installed) pairs: the wheel
    # origin puts each original back before the tree hash is checked
    wheel_rewrite: tuple[tuple[str, str], ...] = ()
    submodules: tuple[Submodule, ...] = ()

    @property
    def ref(self) -> str:
        """What a fetch asks for: the commit, else the tag (then the content hash is the only pin)."""
        return self.commit or self.tag

    @property
    def short(self) -> str:
        return f"{self.name}-{self.commit[:12] if self.commit else self.tag}"

    @property
    def globs(self) -> re.Pattern[str]:
        """The files the tree hash covers: the external's include globs outside its submodules' paths, and
        each submodule's include globs under its path."""
        from vllm_provision.sources.extract import glob_pattern

        own = glob_pattern(self.include).pattern
        if self.submodules:
            outside = "|".join(re.escape(m.path + "/") for m in self.submodules)
            own = f"(?!(?:{outside}))(?:{own})"
        subs = [f"{re.escape(m.path)}/(?:{glob_pattern(m.include).pattern})" for m in self.submodules]
        return re.compile("|".join(f"(?:{p})" for p in [own, *subs]))


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
    torch: SpecifierSet = field(default_factory=SpecifierSet)   # the torch the build requires ("" = any)
    gcc_min: str = ""               # the release's own floor for the host compiler (CMake refuses below it)
    cmake_min: str = ""
    nvcc_min: str = ""
    job_peak_gib: float = 0.0       # peak memory of one compile job on the release's heaviest units
    compile_cpu_seconds_per_arch: float = 0.0   # the CMake-era compile's work for one arch (plan's estimate)
    externals: tuple[External, ...] = ()
    llm_engine: str = "v0"             # the engine whose figures the smoke reads (ENGINES)
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


def _commit(value: str, where: str) -> str:
    if not _COMMIT.fullmatch(value):
        raise ConfigError(f"{where}: commit {value!r} is not a full 40-hex git commit",
                          hint="pin externals by full commit; tags move")
    return value


def _parse_external(raw: Mapping, where: str) -> External:
    _unknown(raw, EXTERNAL_FIELDS, f"{where}: [[external]] {raw.get('name', '')}")
    name = raw["name"]
    if raw["role"] not in EXTERNAL_ROLES:
        raise ConfigError(f"{where}: external {name} has role {raw['role']!r}",
                          hint=f"use one of {', '.join(EXTERNAL_ROLES)}")
    subs = []
    for sub in raw.get("submodule", ()):
        _unknown(sub, SUBMODULE_FIELDS, f"{where}: external {name} submodule {sub.get('path', '')}")
        subs.append(Submodule(path=sub["path"].strip("/"), repo=sub["repo"],
                              commit=_commit(sub["commit"], f"{where}: {name}/{sub['path']}"),
                              include=tuple(sub["include"])))
    if "commit" not in raw and not raw.get("tag"):
        raise ConfigError(f"{where}: external {name} has neither a commit nor a tag", hint="pin it by full commit")
    wheel_path = raw.get("wheel_path", "").strip("/")
    if wheel_path and raw["role"] != "copied":
        raise ConfigError(f"{where}: external {name} has a wheel_path but is {raw['role']}",
                          hint="only copied externals ship as files in the release's wheel")
    if ("wheel_tree" in raw or "wheel_rewrite" in raw) and not wheel_path:
        raise ConfigError(f"{where}: external {name} has wheel_tree or wheel_rewrite without wheel_path",
                          hint="name the directory the release's wheel ships the files under (wheel_path)")
    rewrite = raw.get("wheel_rewrite", {})
    if not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in rewrite.items()):
        raise ConfigError(f"{where}: external {name}: wheel_rewrite maps non-empty strings to strings",
                          hint='e.g. wheel_rewrite = { "flash_attn.cute" = "vllm.third_party.tml_fa4" }')
    return External(name=name, repo=raw["repo"],
                    commit=_commit(raw["commit"], f"{where}: {name}") if "commit" in raw else "",
                    override=raw["override"], role=raw["role"], include=tuple(raw["include"]),
                    tree_sha256=raw.get("tree_sha256", ""), tag=raw.get("tag", ""),
                    subdir=raw.get("subdir", "").strip("/"), wheel_path=wheel_path,
                    wheel_tree=raw.get("wheel_tree", "").strip("/"), wheel_rewrite=tuple(rewrite.items()),
                    submodules=tuple(subs))


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
        engine = data.get("llm_engine", "v0")
        if engine not in ENGINES:
            raise ConfigError(f"{path.name}: llm_engine {engine!r} is not one of {', '.join(ENGINES)}",
                              hint='llm_engine = "v1" for releases from 0.11 on (the V1 engine), "v0" before')
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
            torch=SpecifierSet(data.get("torch", "")),
            gcc_min=data.get("gcc_min", ""),
            cmake_min=data.get("cmake_min", ""),
            nvcc_min=data.get("nvcc_min", ""),
            job_peak_gib=float(data.get("job_peak_gib", 0.0)),
            compile_cpu_seconds_per_arch=float(data.get("compile_cpu_seconds_per_arch", 0.0)),
            externals=tuple(_parse_external(raw, path.name) for raw in data.get("external", ())),
            llm_engine=engine,
            path=path,
        )
    except (KeyError, InvalidSpecifier, InvalidVersion) as exc:
        raise ConfigError(f"release recipe {path.name} is incomplete or malformed: {exc!r}",
                          hint=f"compare {path} with 0.2.2.toml") from exc


@cache
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
    from vllm_provision.catalog.patches import series_dir

    missing = []
    if release.build_system not in BUILT_BY_TOOLKIT:
        missing.append(f"a build path for its build system {release.build_system} "
                       f"(the build step builds {', '.join(BUILT_BY_TOOLKIT)})")
    if release.build_system == "cmake":
        if not release.externals:
            missing.append(f"the external sources its CMake build fetches ([[external]] in {release.path.name})")
        unhashed = [e.name for e in release.externals if not e.tree_sha256]
        if unhashed:
            missing.append(f"content hashes for the externals {', '.join(unhashed)} (tree_sha256 in "
                           f"{release.path.name}; `./inv catalog-hashes --release {release.version}` prints them)")
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
