"""The build manifest (vllm/_build_manifest.json inside the wheel, <wheel>.manifest.json beside it), its key,
the wheel's local version label, and the comparison of a manifest with the env and host it is installed on.

The key is the sha256 of the canonical JSON of every field that shapes the binary (Spack's DAG hash and
conda's build string are the models): release, sdist, patches, torch (full version with its local tag),
torch's CUDA, the C++ ABI, nvcc, the host compiler, the SASS archs, the Python and platform tags, and for a
CMake-era release each external source's content hash (absent for releases without any, so their keys are
unchanged). The glibc floor is an output of the build, checked at install but not part of the lookup.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from vllm_provision.artifacts import sass
from vllm_provision.core.errors import StepFailed

FORMAT = 1
KEY_FIELDS = ("format", "release", "sdist_sha256", "patches", "torch", "torch_cuda", "cxx11_abi", "nvcc",
              "host_compiler", "archs", "python_tag", "platform_tag")
# In the key only where a release has them: {external name: tree_sha256} for CMake-era releases.
OPTIONAL_KEY_FIELDS = ("externals",)
IN_WHEEL = "vllm/_build_manifest.json"
SIDECAR_SUFFIX = ".manifest.json"
REBUILD_HINT = ("rebuild for this kind of host: `./inv wheel --push` on one of them; "
                "or pick the cache entry built for it (artifacts.caches / --artifact-key)")


def compute_key(fields: Mapping[str, Any]) -> str:
    missing = [k for k in KEY_FIELDS if fields.get(k) in (None, "")]
    if missing:
        raise StepFailed(f"the artifact key cannot be computed: {', '.join(missing)} unknown",
                         hint="pass the builder's key with --artifact-key KEY (`./inv wheel` prints it)")
    canonical = json.dumps(keyed(fields), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def keyed(fields: Mapping[str, Any]) -> dict:
    """The fields the key covers: every KEY_FIELDS one, and each optional one the build has."""
    return {k: fields[k] for k in KEY_FIELDS} | {k: fields[k] for k in OPTIONAL_KEY_FIELDS if fields.get(k)}


def key_marker(key: str) -> str:
    """The part of the local label that names the key: `k` + its first 12 hex digits."""
    return "k" + key[:12]


def local_label(fields: Mapping[str, Any], key: str) -> str:
    """`cu130.torch2.11.0.k3f2a…` (PEP 440-normalised): a public specifier ignores it, so installs pin it."""
    cuda = "cu" + str(fields["torch_cuda"]).replace(".", "")
    label = f"{cuda}.torch{Version(str(fields['torch'])).public}.{key_marker(key)}"
    return Version(f"0+{label}").local or label


def wheel_version(fields: Mapping[str, Any], key: str) -> str:
    return f"{Version(str(fields['release'])).public}+{local_label(fields, key)}"


def label_names_key(filename: str, key: str) -> bool:
    """Whether a vllm wheel's file name carries `key`'s marker in its local label."""
    try:
        name, version, _, _ = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion):
        return False
    return name == "vllm" and key_marker(key) in (version.local or "").split(".")


def make(fields: Mapping[str, Any], glibc_floor: str | None, libraries: Mapping[str, tuple[str, ...]]) -> dict:
    key = compute_key(fields)
    return {**keyed(fields), "key": key, "version": wheel_version(fields, key),
            "glibc_floor": glibc_floor, "libraries": {n: list(a) for n, a in sorted(libraries.items())}}


def read_from_wheel(path: Path) -> dict:
    try:
        with zipfile.ZipFile(path) as whl:
            return json.loads(whl.read(IN_WHEEL))
    except KeyError:
        raise StepFailed(f"{path.name} holds no {IN_WHEEL}: it was not made by `./inv wheel`",
                         hint=REBUILD_HINT) from None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise StepFailed(f"{path.name} is not a readable wheel ({exc})",
                         hint="remove the broken file from the cache and publish it again (`./inv wheel --push`)") from None


def check_key(manifest: Mapping[str, Any], wanted: str, where: str) -> None:
    """The manifest's key is the one looked up, and its fields still hash to it (nothing edited)."""
    got = manifest.get("key")
    if got != wanted:
        raise StepFailed(f"{where}: its label names key {key_marker(wanted)} but its manifest holds key {got}, "
                         f"not {wanted} (two builds share the first 12 hex digits, or the file was renamed)",
                         hint="remove that file from the cache; publish the right build with `./inv wheel --push`")
    try:
        recomputed = compute_key(manifest)
    except StepFailed:
        recomputed = None
    if recomputed != got:
        raise StepFailed(f"{where}: its manifest's fields hash to {recomputed}, not to its key {got} (edited manifest)",
                         hint="remove that file from the cache; publish the build again with `./inv wheel --push`")


def host_glibc() -> str | None:
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""     # "glibc 2.36"
    except (ValueError, OSError):
        return None
    return text.split()[-1] if text.startswith("glibc") else None


@dataclass(frozen=True)
class Target:
    """What an artifact must fit: the target env's torch and Python, this host's GPUs and glibc."""
    torch: str | None
    torch_cuda: str | None
    cxx11_abi: bool | None
    python_tag: str
    compute_caps: tuple[str, ...]
    glibc: str | None
    caps_of: str = "GPU compute capability"     # or, on a GPU-less host, "planned arch (no GPU here)"


def python_tag(python_version: str) -> str:
    major, minor = python_version.split(".")[:2]
    return f"cp{major}{minor}"


def misfit(manifest: Mapping[str, Any], target: Target) -> tuple[str, str, str] | None:
    """The first field in which the artifact does not fit the target: (field, artifact's, target's)."""
    for name, have in (("torch", target.torch), ("torch_cuda", target.torch_cuda), ("cxx11_abi", target.cxx11_abi),
                       ("python_tag", target.python_tag)):
        if manifest.get(name) != have:
            return name, str(manifest.get(name)), str(have)
    missing = sass.uncovered(manifest.get("archs") or (), target.compute_caps)
    if missing:
        return "archs", ", ".join(manifest.get("archs") or ()) or "none", f"{target.caps_of} " + ", ".join(missing)
    floor = manifest.get("glibc_floor")
    if floor and target.glibc and Version(target.glibc) < Version(floor):
        return "glibc_floor", floor, f"host glibc {target.glibc}"
    return None


def check_fits(manifest: Mapping[str, Any], target: Target, where: str) -> str:
    """Refuse an artifact that does not fit; returns what was checked, for the step's facts."""
    bad = misfit(manifest, target)
    if bad:
        name, have, want = bad
        raise StepFailed(f"{where} does not fit this env/host: {name} is {have} in the artifact, {want} here",
                         hint=REBUILD_HINT)
    gpus = (f"archs {', '.join(manifest['archs'])} cover {target.caps_of} {', '.join(dict.fromkeys(target.compute_caps))}"
            if target.compute_caps else "no GPU and no planned arch: nothing for the archs to cover")
    return (f"torch {target.torch} (CUDA {target.torch_cuda}), C++ ABI {target.cxx11_abi}, {target.python_tag}, "
            f"{gpus}, glibc {target.glibc or '?'} >= {manifest.get('glibc_floor') or '?'}")
