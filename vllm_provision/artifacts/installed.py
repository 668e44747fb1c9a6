"""Checks for a vllm installed from an artifact (verify adds them to its own: the .so imports, pip check):
its manifest is there and its key is the one the build step installed (and its fields still hash to it),
and the archs read back from the installed libraries are the manifest's."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from vllm_provision.artifacts import manifest as mf
from vllm_provision.artifacts.sass import read_archs
from vllm_provision.checks import Check, CheckStatus
from vllm_provision.core.envinfo import EnvInfo
from vllm_provision.core.errors import StepFailed

REINSTALL = "reinstall from the cache: `./inv build --force` (or `./inv provision --force build`)"


def find_manifest(vllm_dirs: Iterable[str | Path]) -> Path | None:
    name = Path(mf.IN_WHEEL).name
    return next((Path(d) / name for d in vllm_dirs if (Path(d) / name).is_file()), None)


def artifact_checks(vllm_dirs: Iterable[str | Path], info: EnvInfo | None, expected_key: str | None) -> list[Check]:
    """`vllm_dirs`: where the env imports vllm from; `expected_key`: the key the build step installed (its
    facts' `key` when its `source` is `cache`), None for an editable build. Editable builds without a
    manifest get no checks."""
    vllm_dirs = [Path(d) for d in vllm_dirs]
    path = find_manifest(vllm_dirs)
    if path is None:
        if not expected_key:
            return []
        return [Check("artifact-manifest", CheckStatus.FAIL, f"no {Path(mf.IN_WHEEL).name} in {', '.join(map(str, vllm_dirs))}: "
                      f"the installed vllm is not the artifact of key {expected_key}", REINSTALL)]
    try:
        manifest = json.loads(path.read_text())
        mf.check_key(manifest, expected_key or str(manifest.get("key")), str(path))
    except (OSError, ValueError) as exc:
        return [Check("artifact-manifest", CheckStatus.FAIL, f"{path} cannot be read: {exc}", REINSTALL)]
    except StepFailed as exc:
        return [Check("artifact-manifest", CheckStatus.FAIL, exc.message, REINSTALL)]
    checks = [Check("artifact-manifest", CheckStatus.PASS, f"{path.name}: key {manifest['key']}, vllm {manifest['version']}, "
                    f"built with torch {manifest['torch']} for {', '.join(manifest['archs'])}")]
    libraries = sorted(path.parent.glob("*.so"))
    try:
        found = read_archs(libraries, info)
    except StepFailed as exc:
        return checks + [Check("artifact-archs", CheckStatus.SKIP, exc.message, exc.hint)]
    wanted = tuple(manifest["archs"])
    wrong = {name: archs for name, archs in found.items() if archs != wanted}
    if not libraries or wrong:
        held = "; ".join(f"{name} holds {', '.join(archs) or 'no SASS'}" for name, archs in wrong.items())
        detail = f"{held}; the manifest says {', '.join(wanted)}" if wrong else f"no libraries next to {path}"
        return checks + [Check("artifact-archs", CheckStatus.FAIL, detail, REINSTALL)]
    return checks + [Check("artifact-archs", CheckStatus.PASS,
                            f"{len(found)} libraries hold {', '.join(wanted)}, as the manifest says")]
