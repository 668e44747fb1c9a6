"""Named checks on what is installed in the target env (verify's), over facts the env probe gathered
(envprobe): the vllm install, `pip check`, the lock, each extension's import and SASS, `import vllm`; and
doctor's look at a host interpreter's bytecode."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from vllm_provision.checks import Check, CheckStatus
from vllm_provision.core.archs import base_arch
from vllm_provision.core.settings import AllowedPipCheck
from vllm_provision.probes.envprobe import Bytecode, ImportResult, ImportVllm, PipCheck


def _path_of(url: str) -> Path | None:
    parts = urlsplit(url)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


def check_vllm_install(inspected: Mapping[str, dict], release: str, src: Path, dist: str = "vllm",
                       artifact: Mapping[str, str] | None = None) -> list[Check]:
    """vllm at the release's version, installed editable from the workspace's src/ - or, when the build step
    installed a cached artifact (its facts: cache, file, wheel_sha256), installed from that wheel."""
    entry = inspected.get(canonicalize_name(dist))
    if entry is None:
        hint = "run `./inv build` (pip install -e src/ into the env)"
        return [Check(f"{dist}-version", CheckStatus.FAIL, f"{dist} is not installed in the env", hint),
                Check(f"{dist}-editable", CheckStatus.FAIL, f"{dist} is not installed in the env", hint)]
    version = entry.get("metadata", {}).get("version", "")
    try:
        ok = Version(version).public == Version(release).public
    except InvalidVersion:
        ok = False
    checks = [Check(f"{dist}-version", CheckStatus.PASS, f"{dist} {version} installed (release {release})") if ok else
              Check(f"{dist}-version", CheckStatus.FAIL, f"{dist} {version} installed, release is {release}",
                    f"rebuild: `./inv build --force` installs {dist} {release} from {src}")]
    direct = entry.get("direct_url") or {}
    editable = bool((direct.get("dir_info") or {}).get("editable"))
    if artifact:
        if editable:
            checks.append(Check(f"{dist}-artifact", CheckStatus.FAIL, f"{dist} is installed editable from {direct.get('url')}, "
                                f"not from the cached wheel {artifact['file']}",
                                "reinstall from the cache: `./inv build --force`"))
        else:
            checks.append(Check(f"{dist}-artifact", CheckStatus.PASS, f"installed from cache {artifact['cache']}: "
                                f"{artifact['file']} (sha256 {artifact['wheel_sha256']})"))
        return checks
    where = _path_of(direct.get("url", "")) if direct else None
    if not where and entry.get("editable_project_location"):     # legacy `setup.py develop` (egg-link)
        where, editable = Path(entry["editable_project_location"]), True
    if not editable:
        how = f"from {direct.get('url')}" if direct.get("url") else "from a wheel/index"
        checks.append(Check(f"{dist}-editable", CheckStatus.FAIL, f"{dist} is installed non-editable ({how})",
                            f"reinstall editable from the workspace: `./inv build --force` (pip install -e {src})"))
    elif where is None or where.resolve() != src.resolve():
        checks.append(Check(f"{dist}-editable", CheckStatus.FAIL, f"{dist} is editable from {where}, not from {src}",
                            "reinstall from the workspace: `./inv build --force`"))
    else:
        checks.append(Check(f"{dist}-editable", CheckStatus.PASS, f"editable from {src}"))
    return checks


def check_pip(pip: PipCheck, python: str, allowed: Iterable[AllowedPipCheck],
              ours: Iterable[str] | None = None) -> Check:
    """`pip check`, minus the complaints the profile accepts. With `ours` (the existing-env backend: the
    host's packages are not ours to change), complaints about other packages are only a warning."""
    rules = [(canonicalize_name(a.package), canonicalize_name(a.requires), a.reason) for a in allowed]
    mine = {canonicalize_name(n) for n in ours} if ours is not None else None
    bad, accepted, foreign = [], [], []
    for pkg, req, line in pip.complaints:
        rule = next((r for r in rules if r[0] == pkg and r[1] == req), None)
        if rule:
            accepted.append(f"{pkg} → {req} ({rule[2]})")
        elif mine is not None and pkg and pkg not in mine:
            foreign.append(line)
        else:
            bad.append(line)
    if bad:
        return Check("pip-check", CheckStatus.FAIL, "; ".join(bad),
                     "restore the locked versions (`./inv env --force`), or, when the profile drops it on "
                     "purpose, add it to verify.allowed_pip_check with the reason")
    if pip.returncode != 0 and not (accepted or foreign):
        return Check("pip-check", CheckStatus.FAIL, f"pip check exit {pip.returncode}: {pip.output.strip()[-200:]}",
                     f"run `{python} -m pip check`")
    if foreign:
        return Check("pip-check", CheckStatus.WARN, f"{len(foreign)} complaint(s) about the host's own packages, not changed "
                     f"by vllm-provision: " + "; ".join(foreign[:3]) + ("" if not accepted else
                     "; accepted: " + "; ".join(accepted)), "fix them in the host's environment if they matter")
    if accepted:
        return Check("pip-check", CheckStatus.PASS, "clean apart from what the profile drops: " + "; ".join(accepted))
    return Check("pip-check", CheckStatus.PASS, "no broken requirements")


def _matches(wanted: str, have: str) -> bool:
    try:
        return SpecifierSet(f"=={wanted}").contains(have, prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return wanted == have


def check_locked(installed: Mapping[str, str], lock: Mapping[str, str] | None, before: Mapping[str, str],
                 torch_cuda: str | None, before_cuda: str | None, skip: Iterable[str] = ("vllm",),
                 lock_name: str = "lock") -> Check:
    """Installed packages exactly the lock's; torch and its CUDA unchanged since the env step (before)."""
    skip = {canonicalize_name(s) for s in skip}
    problems = []
    for name, want in sorted((lock or {}).items()):
        if name in skip:
            continue
        have = installed.get(name)
        if have is None or not _matches(want, have):
            was = before.get(name)
            problems.append(f"{name}: lock {want}, installed {have or 'nothing'}"
                            + (f" (env step had {was})" if was and was != have else ""))
    if not lock:
        for name in ("torch",):
            was, have = before.get(name), installed.get(name)
            if was and have != was:
                problems.append(f"{name}: before {was}, after {have or 'nothing'}")
    if before_cuda and torch_cuda != before_cuda:
        problems.append(f"torch CUDA: before {before_cuda}, after {torch_cuda}")
    torch_now = f"torch {installed.get('torch', 'absent')} (CUDA {torch_cuda or 'none'})"
    if problems:
        return Check("locked", CheckStatus.FAIL, "changed after the build: " + "; ".join(problems),
                     "something replaced locked packages (a pip install without constraints?): "
                     "`./inv env --force` restores the lock, then `./inv build --force`")
    if lock:
        return Check("locked", CheckStatus.PASS,
                     f"{len([n for n in lock if n not in skip])} packages exactly as in {lock_name}; {torch_now}")
    return Check("locked", CheckStatus.PASS, f"no lock for this profile; {torch_now} unchanged since the env step")


def _cc(arch: str) -> tuple[int, int]:
    major, minor = base_arch(arch).split(".")
    return int(major), int(minor)


def covers(sass: str, cc: str) -> bool:
    """SASS for sm_XY runs on compute capability X.Z with Z >= Y; sm_XYa only on exactly X.Y."""
    m = re.fullmatch(r"sm_(\d+)(\d)([a-z]?)", sass)
    if not m:
        return False
    major, minor = _cc(cc)
    s_major, s_minor, suffix = int(m.group(1)), int(m.group(2)), m.group(3)
    if suffix:
        return (s_major, s_minor) == (major, minor)
    return s_major == major and s_minor <= minor


def check_sass(sass: Mapping[str, tuple[str, ...]] | None, so_files: Mapping[str, Path], required: Iterable[str],
               why: str = "the GPUs") -> list[Check]:
    """Each extension's SASS (name -> archs, from cuobjdump; None: no cuobjdump to read it) covers every
    required compute capability."""
    if sass is None:
        return [Check("sass", CheckStatus.SKIP,
                      "cuobjdump not found (next to nvcc, the toolkit's venv, /usr/local/cuda/bin, PATH)",
                      "the toolkit installs it (the nvidia-cuda-cuobjdump wheel): reinstall its venv with "
                      "`rm -rf .venv; ./inv --list`")]
    required = list(dict.fromkeys(base_arch(a) for a in required))
    out = []
    for name, so in so_files.items():
        have = sass.get(name, ())
        missing = [cc for cc in required if not any(covers(s, cc) for s in have)]
        if missing:
            want = ", ".join("sm_" + cc.replace(".", "") for cc in missing)
            out.append(Check(f"sass {name}", CheckStatus.FAIL,
                             f"{so.name} has SASS {', '.join(have) or 'none'}; missing {want} for {why} "
                             "(`no kernel image is available for execution on the device`)",
                             f"rebuild for these archs: `./inv build --force --arch '{';'.join(required)}'`"))
        else:
            out.append(Check(f"sass {name}", CheckStatus.PASS, f"{', '.join(have)} covers {', '.join(required)} ({why})"))
    return out


_NEEDS_DRIVER = re.compile(r"libcuda\.so|libnvidia-ml|CUDA driver|no CUDA-capable device|NVIDIA driver", re.I)


def check_extension_imports(so_files: Mapping[str, Path], imported: ImportResult, has_gpu: bool,
                            python: str) -> list[Check]:
    """Each extension .so imported in the env's python; a missing driver is a skip off-GPU."""
    if imported.crash:
        return [Check(f"import {n}", CheckStatus.FAIL, imported.crash, f"run `{python} -c 'import torch'` to see why")
                for n in so_files]
    out = []
    for name in so_files:
        err = imported.errors.get(name)
        if err is None:
            out.append(Check(f"import {name}", CheckStatus.PASS, f"{so_files[name].name} imports"))
        elif not has_gpu and _NEEDS_DRIVER.search(err):
            out.append(Check(f"import {name}", CheckStatus.SKIP, f"needs the GPU driver, absent here: {err}",
                             "verify on a GPU host"))
        else:
            why = f"; torch itself failed: {imported.torch_error}" if imported.torch_error else ""
            out.append(Check(f"import {name}", CheckStatus.FAIL, f"{err}{why}",
                             "an undefined symbol means it was built against another torch: "
                             "`./inv build --force`"))
    return out


IMPORT_VLLM_IN_SMOKE = Check("import-vllm", CheckStatus.SKIP, "left to this run's smoke, which imports vLLM "
                             "(`from vllm import LLM, SamplingParams`) and generates with it", "`./inv verify` alone imports it")
NO_GPU_IMPORT_VLLM = Check("import-vllm", CheckStatus.SKIP, "no GPU on this host: `from vllm import LLM, SamplingParams` "
                           "is checked on GPU hosts only", "run `./inv verify` on the GPU host")


def check_import_vllm(result: ImportVllm, log: Path | None = None) -> Check:
    if result.ok:
        return Check("import-vllm", CheckStatus.PASS, f"from vllm import LLM, SamplingParams works ({result.detail})")
    if result.hint:          # the import did not finish (timed out): the runner's own words
        return Check("import-vllm", CheckStatus.FAIL, result.detail, result.hint)
    return Check("import-vllm", CheckStatus.FAIL, f"from vllm import LLM, SamplingParams: {result.detail}",
                 f"full traceback in {log}" if log else "run it in the env to see the traceback")


# Most of a package's modules: a few (tests, templates) are never imported and often left uncompiled.
BYTECODE_SHARE = 0.9


def check_bytecode(found: Bytecode, python: str) -> Check:
    """A host interpreter's torch without bytecode that it may not write: every process that imports torch
    (each vLLM start, verify, the smoke) compiles it from source again."""
    name = "bytecode"
    if found.error:
        return Check(name, CheckStatus.SKIP, f"could not ask {python}: {found.error}")
    if found.dir is None:
        return Check(name, CheckStatus.SKIP, f"no {found.package} in {python}")
    share = f"{found.compiled} of {found.modules} {found.package} modules have bytecode"
    if found.modules == 0 or found.compiled >= BYTECODE_SHARE * found.modules:
        return Check(name, CheckStatus.PASS, share)
    if found.writable and not found.dont_write:
        return Check(name, CheckStatus.PASS, f"{share}; the rest is written on first import")
    why = "PYTHONDONTWRITEBYTECODE is set" if found.dont_write else f"{found.dir} is read-only"
    return Check(name, CheckStatus.WARN, f"{share} and {why}: every process that imports {found.package} (each vLLM start, "
                 "verify, the smoke) compiles it from source, seconds each time",
                 f"compile it once, as the owner of the image: {python} -m compileall -q -j0 {found.dir}")
