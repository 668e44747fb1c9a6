"""Build diagnosis hints and the compile environment (real files, no compile)."""

from __future__ import annotations

import os
from pathlib import Path

from vllm_provision.build import diagnose, make_build_env, parse_ccache_stats, cache_summary, wheel_for_header


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
    assert b.env["CPATH"].split(os.pathsep)[0] == str(cuda / "include")
    assert b.env["TORCH_CUDA_ARCH_LIST"] == "9.0" and b.env["MAX_JOBS"] == "2"
    assert "/usr/local/cuda" not in b.env["LD_LIBRARY_PATH"]
    link = tmp_path / "tools" / "lib" / "libcudart.so"
    assert link.is_symlink() and os.readlink(link).endswith("libcudart.so.13")
    if b.ccache:
        assert Path(b.env["PYTORCH_NVCC"]).read_text().count(str(cuda / "bin" / "nvcc")) == 1
        assert b.env["CCACHE_NOHASHDIR"] == "1" and b.env["CCACHE_BASEDIR"] == str(tmp_path / "src")


def test_ccache_stats():
    s = parse_ccache_stats("cache_miss\t3\ndirect_cache_hit\t5\npreprocessed_cache_hit\t1\ncalled_for_link\t7\n")
    c = cache_summary(s)
    assert c["hits"] == 6 and c["misses"] == 3
