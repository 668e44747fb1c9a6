"""Per-release locks: `uv pip compile` of the release's requirements (+ build requirements + pins),
as of the release date, with hashes, for one profile and Python. Written to
envs/locks/<release>/<profile>-py<X.Y>.txt with a header that `check` reads back.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from vllm_provision import PROJECT_ROOT, tomllib
from vllm_provision.core import runner
from vllm_provision.core.errors import ConfigError, NotBuiltYet, StepFailed
from vllm_provision.core.files import atomic_write
from vllm_provision.envs import mirrors

BUILD_REQUIREMENTS = ("ninja", "packaging", "setuptools", "wheel", "torch")
PLATFORM = "x86_64-manylinux_2_28"
HEADER_KEYS = ("release", "profile", "python", "cuda", "exclude-newer", "platform")


@dataclass(frozen=True)
class LockRecipe:
    """What goes into a lock besides the release's requirements.txt: pins (each with its reason),
    the resolution cut-off, requirements dropped or added by the profile."""
    source: Path | None
    pins: dict[str, dict[str, str]]      # name -> {spec, why, override}
    exclude_newer: str                   # resolve as of this date (exclusive); "none": no cut-off
    drop: tuple[str, ...] = ()           # release requirements the profile does not install
    extra: tuple[str, ...] = ()          # requirements the profile adds (e.g. the CUDA compiler wheels)
    # the release's requirement files, relative to its source tree (`-r` includes followed)
    requirements: tuple[str, ...] = ("requirements.txt",)
    platform: str = PLATFORM             # uv's --python-platform: the oldest glibc the lock's wheels serve


def pins_path(release: str, profile: str | None = None, root: Path = PROJECT_ROOT) -> Path:
    """envs/pins/<release>-<profile>.toml when the profile has its own recipe, else envs/pins/<release>.toml."""
    if profile:
        own = root / "envs" / "pins" / f"{release}-{profile}.toml"
        if own.is_file():
            return own
    return root / "envs" / "pins" / f"{release}.toml"


def load_recipe(release: Any, profile: str | None = None, root: Path = PROJECT_ROOT) -> LockRecipe:
    path = pins_path(release.version, profile, root)
    cutoff = exclude_newer(release.released)
    if not path.is_file():
        return LockRecipe(None, {}, cutoff)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", hint=f"fix {path}") from exc
    pins = {}
    for name, entry in (data.get("pins") or {}).items():
        if not isinstance(entry, dict) or "spec" not in entry:
            raise ConfigError(f"{path}: pin {name!r} needs a `spec`", hint='e.g. [pins.torch] spec = "==2.1.0"')
        pins[name] = {"spec": str(entry["spec"]), "why": str(entry.get("why", "")),
                      "override": bool(entry.get("override", False))}
    files = data.get("requirements", LockRecipe.requirements)
    if isinstance(files, str) or not all(isinstance(f, str) and f for f in files):
        raise ConfigError(f"{path}: `requirements` must be a list of files in the release's source tree",
                          hint='e.g. requirements = ["requirements/cuda.txt", "requirements/build/cuda.txt"]')
    if "exclude_newer" in data:
        # "none" for an index without upload dates (pypiserver, some proxies): a cut-off would hide every file
        cutoff = str(data["exclude_newer"])
    return LockRecipe(path, pins, cutoff, tuple(data.get("drop") or ()), tuple(data.get("extra") or ()),
                      tuple(files), str(data.get("platform", PLATFORM)))


def exclude_newer(released: dt.date) -> str:
    """The cut-off: the end of the release day (UTC), as the day after."""
    return (released + dt.timedelta(days=1)).isoformat()


def read_requirements(src: Path, files: tuple[str, ...] = LockRecipe.requirements) -> list[str]:
    """The requirements of `files` (relative to the source tree), in order, `-r` includes followed.
    Option lines (`--extra-index-url`, `-c`) are not followed: the lock resolves from the configured index."""
    out: list[str] = []

    def read(path: Path, seen: tuple[Path, ...]) -> None:
        if not path.is_file():
            raise NotBuiltYet(f"no {path} (the release's requirements)",
                              hint="run `./inv fetch` for this release first")
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            included = re.match(r"^(?:-r|--requirement)[\s=]+(\S+)$", line)
            if included:
                target = (path.parent / included.group(1)).resolve()
                if target not in seen:
                    read(target, seen + (target,))
            elif line and not line.startswith("-"):
                out.append(line)

    for name in files:
        read(src / name, ((src / name).resolve(),))
    return out


def render_header(meta: Mapping[str, str]) -> str:
    lines = ["# vllm-provision lock: generated by `./inv lock`; do not edit by hand."]
    lines += [f"# {k}: {meta[k]}" for k in HEADER_KEYS if k in meta]
    lines += [f"# {k}: {v}" for k, v in meta.items() if k not in HEADER_KEYS]
    return "\n".join(lines) + "\n"


def read_header(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        m = re.match(r"#\s*([a-z][a-z0-9-]*):\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def pinned(path: Path) -> dict[str, str]:
    """name -> exact version of every `name==version` line of a lock."""
    return pinned_text(path.read_text())


# one requirement line `name[extras]==version ...`: (name, version)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def pinned_text(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = PIN.match(line)
        if m:
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def check(path: Path, release: str, profile: str, python: str) -> dict[str, str]:
    """The lock's header, after refusing a lock made for another release, profile or Python."""
    if not path.is_file():
        raise ConfigError(f"no lock {path} for vLLM {release} / {profile} / Python {python}",
                          hint=f"create it with `./inv lock --release {release} --profile {profile} --python {python}`, "
                               "or set env.lock: false")
    meta = read_header(path)
    want = {"release": release, "profile": profile, "python": python}
    wrong = {k: meta.get(k) for k, v in want.items() if meta.get(k) != v}
    if wrong:
        got = ", ".join(f"{k} {v or '(missing)'}" for k, v in wrong.items())
        raise ConfigError(f"refuse to use lock {path}: it was made for {got}, not "
                          + ", ".join(f"{k} {want[k]}" for k in wrong),
                          hint=f"regenerate it with `./inv lock --release {release} --profile {profile} --python {python}`")
    return meta


def compile_lock(*, release: Any, profile: str, python: str, cuda: str | None, src: Path, out: Path,
                 index: Any, log: Path | None = None, root: Path = PROJECT_ROOT,
                 cache_dir: Path | None = None, timeout: float = 900) -> Path:
    """Resolve, check the pins, and only then replace `out` (a committed lock is never left half-checked)."""
    from uv import find_uv_bin

    recipe = load_recipe(release, profile, root)
    dropped = {canonicalize_name(n) for n in recipe.drop}
    requirements = [r for r in read_requirements(src, recipe.requirements) + list(BUILD_REQUIREMENTS)
                    if canonicalize_name(Requirement(r).name) not in dropped] + list(recipe.extra)
    constraints, overrides = [], []
    for name, pin in recipe.pins.items():
        try:
            line = str(Requirement(f"{name}{pin['spec']}"))
        except InvalidRequirement as exc:
            raise ConfigError(f"{recipe.source}: bad pin {name}{pin['spec']}: {exc}",
                              hint="use a PEP 440 specifier") from exc
        (overrides if pin["override"] else constraints).append(line)
    cutoff = recipe.exclude_newer
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vllmp-lock-") as tmp:
        req_in, con_in, ovr_in, raw = (Path(tmp, n) for n in ("requirements.in", "constraints.txt",
                                                               "overrides.txt", "lock.txt"))
        req_in.write_text("\n".join(requirements) + "\n")
        con_in.write_text("\n".join(constraints) + "\n")
        ovr_in.write_text("\n".join(overrides) + "\n")
        argv = [find_uv_bin(), "pip", "compile", str(req_in), "--constraint", str(con_in),
                "--override", str(ovr_in), "-o", str(raw),
                "--python-version", python, "--python-platform", recipe.platform,
                "--generate-hashes", "--no-header", "--quiet"]
        if cutoff != "none":
            argv += ["--exclude-newer", cutoff]
        env = mirrors.index_env(index, cache_dir=cache_dir)
        result = runner.run(argv, log=log, extra_env=env, timeout=timeout, check=False, what="uv pip compile")
        if result.returncode != 0:
            last = [l for l in result.output.strip().splitlines() if l.strip()][-6:]
            where = recipe.source.relative_to(root) if recipe.source else "the release's requirements"
            raise StepFailed(f"could not resolve vLLM {release.version} requirements for Python {python} "
                             f"as of {cutoff} from {mirrors.describe(index)}",
                             hint=f"read the resolver output above; a pin in {where} may conflict, or the index "
                                  "has no upload dates for the cut-off (exclude_newer = \"none\" there)",
                             log_tail=mirrors.scrub("\n".join(last), index))
        # the temp dir in uv's "via -r" notes would change the lock on every run
        body = mirrors.scrub(raw.read_text(), index).replace(f"{tmp}/", "")
        locked = pinned_text(body)
        # The resolver honoured the pins, or the lock is wrong: check before the committed file is touched.
        for name, pin in recipe.pins.items():
            version = locked.get(canonicalize_name(name))
            if version is None or not SpecifierSet(pin["spec"]).contains(version, prereleases=True):
                raise StepFailed(f"the resolved lock has {name} {version}, not {pin['spec']}; {out} is unchanged",
                                 hint=f"check the pins in {recipe.source}: the resolver did not honour one")
        meta = {"release": release.version, "profile": profile, "python": python, "cuda": cuda or "",
                "exclude-newer": cutoff, "platform": recipe.platform,
                "pins": ", ".join(f"{n}{p['spec']}" for n, p in recipe.pins.items()),
                "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        if recipe.drop:
            meta["dropped"] = ", ".join(recipe.drop)
        atomic_write(out, render_header(meta) + body, suffix=".part")
    return out
