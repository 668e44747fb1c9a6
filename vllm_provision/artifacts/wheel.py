"""`./inv wheel`: a binary wheel of the built workspace, without compiling again.

The release's prebuilt patch (patches/<release>/*reuse-prebuilt*) makes setup.py package the in-place
vllm/*.so and vllm/_build_manifest.json as a platform wheel when VLLM_PROVISION_PREBUILT=1, versioned
<release>+<label> from VLLM_PROVISION_LOCAL_VERSION; `pip wheel --no-build-isolation --no-deps` packages it.
The archs are read back from the libraries first: a build that holds other archs than planned is refused
(the key must follow from the plan). Torch and CUDA libraries are not vendored (the wheel must load
against the target env's torch); `auditwheel show` (auditwheel, the PyPA wheel auditor) checks the wheel
and its result goes into the sidecar, and auditwheel's ELF reader gives the glibc floor.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import parse_wheel_filename
from packaging.version import Version

from vllm_provision.artifacts import manifest as mf
from vllm_provision.artifacts import sass
from vllm_provision.core import runner
from vllm_provision.core.envinfo import EnvInfo
from vllm_provision.core.errors import StepFailed
from vllm_provision.core.files import atomic_write
from vllm_provision.sources.download import sha256_file

PREBUILT_FLAG = "VLLM_PROVISION_PREBUILT"
LABEL_VARIABLE = "VLLM_PROVISION_LOCAL_VERSION"
PIP_TIMEOUT = 1800
# the wheel's zip timestamps (bdist_wheel reads it): the same tree gives the same bytes, so the same sha256
SOURCE_DATE_EPOCH = "315532800"     # 1980-01-01, the earliest time a zip can hold


@dataclass(frozen=True)
class Wheel:
    path: Path
    sha256: str
    manifest: dict

    @property
    def sidecar(self) -> Path:
        return sidecar_of(self.path)

    def summary(self) -> dict:
        return {"wheel": str(self.path), "sha256": self.sha256, "key": self.manifest["key"],
                "version": self.manifest["version"], "archs": self.manifest["archs"]}


def sidecar_of(wheel: Path) -> Path:
    return wheel.with_name(wheel.name + mf.SIDECAR_SUFFIX)


def glibc_floor(libraries) -> str | None:
    """The newest GLIBC_x.y symbol version the libraries need (auditwheel's ELF reader)."""
    from auditwheel.elfutils import elf_find_versioned_symbols
    from elftools.elf.elffile import ELFFile

    versions = []
    for so in libraries:
        with open(so, "rb") as fh:
            versions += [Version(v.removeprefix("GLIBC_")) for _, v in elf_find_versioned_symbols(ELFFile(fh))
                         if v.startswith("GLIBC_") and v.removeprefix("GLIBC_")[:1].isdigit()]
    return str(max(versions)) if versions else None


def read_back(libraries: list[Path], planned: tuple[str, ...], info: EnvInfo | None) -> dict:
    """Each library's SASS archs; refuses when any differs from the plan's."""
    found = sass.read_archs(libraries, info)
    wrong = {name: archs for name, archs in found.items() if archs != planned}
    if wrong:
        name, archs = next(iter(wrong.items()))
        raise StepFailed(f"{name} holds SASS {', '.join(archs) or 'none'}, the plan asks for {', '.join(planned)} "
                         f"({len(wrong)} of {len(found)} libraries differ): the key would not follow from the plan",
                         hint="rebuild for the planned archs: `./inv build --force` (with the same --arch)")
    return found


def auditwheel_show(wheel: Path, log: Path | None) -> dict:
    """`auditwheel show --json` of the wheel, summed up: the platform tag its symbols allow (glibc and
    libstdc++ together) and the external libraries it needs (torch's and CUDA's: loaded from the target
    env, never vendored; None where this host does not have one)."""
    done = runner.run([sys.executable, "-m", "auditwheel", "show", "--json", str(wheel)], log=log, timeout=300,
                      check=False, what="auditwheel show")
    try:
        data = json.loads(done.output[done.output.index("{"):])
    except ValueError:
        return {"ok": False, "exit_code": done.returncode, "output": done.output.strip()[-2000:]}
    return {"ok": done.returncode == 0, "overall_tag": data.get("overall_tag"), "sym_tag": data.get("sym_tag"),
            "external_libs": data.get("external_libs")}


def make_wheel(*, python: str, src: Path, out_dir: Path, fields: Mapping[str, Any], env: Mapping[str, str],
               info: EnvInfo | None, log: Path | None) -> Wheel:
    """Package the built tree `src` as <out_dir>/vllm-<release>+<label>-cpXY-cpXY-<platform>.whl plus its
    sidecar manifest; `fields` are the key's fields (manifest.KEY_FIELDS) for this build."""
    libraries = sorted((src / "vllm").glob("*.so"))
    if not libraries:
        raise StepFailed(f"no compiled libraries in {src / 'vllm'}: nothing to package",
                         hint="build first: `./inv build` (a workspace installed from a cache has no compiled tree)")
    per_library = read_back(libraries, tuple(fields["archs"]), info)
    manifest = mf.make(fields, glibc_floor(libraries), per_library)
    label = mf.local_label(fields, manifest["key"])
    inside = src / mf.IN_WHEEL
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    # setuptools keeps what an earlier packaging copied into build/lib*: start from none of it
    for old in [*(src / "build").glob("lib.*"), *(src / "build").glob("bdist.*"), src / "build" / "lib"]:
        shutil.rmtree(old, ignore_errors=True)
    try:
        inside.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        runner.run([python, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-w",
                    str(staging), str(src)], log=log, cwd=src,
                   env={**env, PREBUILT_FLAG: "1", LABEL_VARIABLE: label, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH},
                   timeout=PIP_TIMEOUT, what="pip wheel (packaging the built vLLM)")
        made = list(staging.glob("*.whl"))
        if len(made) != 1:
            raise StepFailed(f"pip wheel made {len(made)} wheels in {staging}, expected one", hint=f"read {log}")
        built = made[0]
        _, version, _, tags = parse_wheel_filename(built.name)
        if str(version) != manifest["version"] or not any(t.platform != "any" for t in tags):
            raise StepFailed(f"pip wheel made {built.name}, expected vllm {manifest['version']} for "
                             f"{fields['python_tag']}-{fields['platform_tag']}",
                             hint=f"the prebuilt patch is not applied to {src}: `./inv patch --force`, then `./inv wheel`")
        if mf.read_from_wheel(built) != manifest:
            raise StepFailed(f"{built.name} does not carry the manifest just written", hint=f"read {log}")
        audit = auditwheel_show(built, log)
        final = out_dir / built.name
        os.replace(built, final)
        digest = sha256_file(final)
        atomic_write(sidecar_of(final), json.dumps({**manifest, "sha256": digest, "file": final.name,
                                                    "auditwheel": audit}, indent=2, sort_keys=True) + "\n", suffix=".part")
    finally:
        inside.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return Wheel(final, digest, manifest)
