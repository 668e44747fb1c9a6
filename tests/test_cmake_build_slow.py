"""Slow tier: vLLM 0.26.0, a CMake-era release, on a GPU-less host with nothing but Python and the package index.

Through the toolkit's own commands, in this order (each step's stamp chains on the one before):
`./inv fetch --bundle` (the sdist from PyPI, the eight external sources only from the shipped bundle: GitHub is
switched off, so none can be fetched), `./inv env` (the committed lock from PyPI: torch 2.11.0+cu130 and the CUDA
13.0 compiler wheels, no host toolkit on PATH), then `./inv build --offline --targets ...` twice: configure in a
network namespace with every external from its override directory, and a real subset of the compile for sm_90
(vLLM's own CUDA code, CUTLASS's headers through vLLM's C++ and FA3's scheduler from vllm-flash-attn); the second
time in a fresh build tree, every unit from ccache.

The uv cache is shared with later runs (VLLMP_TEST_UV_CACHE, default the toolkit's own cache on this host): the
lock's 3.3 GiB are downloaded once. The figures land in the output (`-s`) and in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import without_host_cuda

from vllm_provision.probes import envprobe

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "tests" / "fixtures" / "bundles" / "vllm-0.26.0-externals.tar.xz"
RELEASE = ["--release", "0.26.0", "--profile", "pypi-cu13"]
# ninja outputs of the build tree: a vLLM CUDA unit (torch's headers), a vLLM C++ unit over the main CUTLASS's
# headers, and FA3's scheduler (sm_90a) from vllm-flash-attn with its own CUTLASS: 3 of the 417 edges, about
# 45 CPU-seconds cold on this kind of host
TARGETS = ("CMakeFiles/_C_stable_libtorch.dir/csrc/libtorch_stable/cuda_view.cu.o",
           "CMakeFiles/_C_stable_libtorch.dir/csrc/libtorch_stable/cutlass_extensions/common.cpp.o",
           "vllm-flash-attn/CMakeFiles/_vllm_fa3_C.dir/hopper/flash_prepare_scheduler.cu.o")
UV_CACHE = Path(os.environ.get("VLLMP_TEST_UV_CACHE") or Path.home() / ".cache" / "vllm-provision" / "uv")


def inv(env: dict, *args: str, timeout: int = 1800) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(["nice", "-n", "10", str(ROOT / "inv"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    took = time.monotonic() - started
    assert done.returncode == 0, f"./inv {' '.join(args)}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done, took


def step(workspace: Path, name: str) -> dict:
    return json.loads((workspace / "report.json").read_text())["steps"][name]


@pytest.mark.slow
@pytest.mark.network
def test_0_26_0_configures_offline_from_the_cache_and_compiles_a_real_sm90_subset_with_ccache(tmp_path):
    for tool in ("cc", "c++", "unshare"):     # the host's compiler and util-linux; everything else is the lock's
        assert shutil.which(tool), f"{tool} is needed (a CI host without it fails here, it does not skip)"
    cache = tmp_path / "cache"
    UV_CACHE.mkdir(parents=True, exist_ok=True)
    cache.mkdir()
    (cache / "uv").symlink_to(UV_CACHE)
    env = without_host_cuda(dict(os.environ))
    env.update(VLLMP_WORKSPACE_ROOT=str(tmp_path / "ws"), VLLMP_CACHE_DIR=str(cache), CI="true",
               CCACHE_DIR=str(tmp_path / "ccache"), VLLMP_FETCH__GITHUB="false", VLLMP_HEARTBEAT_S="10")
    workspace = tmp_path / "ws" / "0.26.0-pypi-cu13"
    figures: dict[str, float] = {}

    # fetch: the externals come from the bundle (GitHub is off, no external mirror: nothing else could serve them)
    done, figures["fetch_s"] = inv(env, "fetch", *RELEASE, "--bundle", str(BUNDLE))
    output = done.stdout + done.stderr
    assert re.search(r"bundle .*vllm-0\.26\.0-externals\.tar\.xz: 8 file\(s\) imported", output), output[-3000:]
    assert output.count("from the bundle (verified)") == 8 and "8 external sources verified in the cache" in output
    assert step(workspace, "fetch")["status"] == "ok"

    # env: the committed lock; the compiler is the lock's nvcc wheel inside the env, no host toolkit
    done, figures["env_s"] = inv(env, "env", *RELEASE)
    info = json.loads((workspace / "env.json").read_text())
    assert info["torch"] == "2.11.0+cu130" and info["nvcc_version"] == "13.0"
    assert info["lock"].startswith("envs/locks/0.26.0/pypi-cu13-py3.")
    assert info["nvcc"].startswith(str(workspace)) and info["cuda_home"].startswith(str(workspace))

    build_dir = workspace / "src" / "build" / "cmake"
    build = ["build", *RELEASE, "--arch", "9.0", "--offline", "--targets", ",".join(TARGETS)]
    done, figures["build_cold_s"] = inv(env, *build)
    cold = step(workspace, "build")
    facts = cold["facts"]
    output = done.stdout + done.stderr
    log = (workspace / "logs" / "build.log").read_text(errors="replace")
    # a subset is measured, not recorded as a build
    assert cold["status"] == "skipped" and cold["detail"].startswith(f"built {', '.join(TARGETS)} only: 3/3 units")
    # configure: offline in a network namespace, every external from its override directory, nothing downloaded
    assert facts["network_isolated"] is True, facts["notes"]
    assert "--offline: configure and build run without a network" in output
    assert re.search(r"^-- Configuring done", log, re.M) and re.search(r"^-- Generating done", log, re.M)
    assert not re.search(r"Performing download step|Cloning into|git clone|Downloading|Could not resolve", log)
    cmake_cache = (build_dir / "CMakeCache.txt").read_text()
    assert "FETCHCONTENT_FULLY_DISCONNECTED:BOOL=ON" in cmake_cache
    externals = workspace / "externals"
    assert f"FETCHCONTENT_SOURCE_DIR_VLLM-FLASH-ATTN:PATH={externals / 'vllm-flash-attn'}" in cmake_cache
    overrides = re.search(r"^# overrides: (.*)$", log, re.M).group(1).split()
    assert len(overrides) == 8 and all(o.split("=", 1)[1].startswith(str(externals)) for o in overrides), overrides
    populated = [p.name for p in (build_dir / "_deps").iterdir() if p.name.endswith("-src") and any(p.iterdir())]
    assert populated == [], f"FetchContent populated {populated}: something was fetched"
    # the compiler and the CUDA libraries are the env's wheels: nothing of a host toolkit
    assert f"CMAKE_CUDA_COMPILER:STRING={info['cuda_home']}/bin/nvcc" in cmake_cache
    assert "/usr/local/cuda" not in cmake_cache
    for library in ("CUDA_CUDART", "CUDA_nvrtc_LIBRARY", "CUDA_cuda_driver_LIBRARY"):
        found = re.search(rf"^{library}:FILEPATH=(.*)$", cmake_cache, re.M).group(1)
        assert Path(found).exists() and "NOTFOUND" not in found, (library, found)
    # the real compile: ninja's [N/M] lines in the log, the driver's progress lines on the console, sm_90 code
    assert [int(m) for m in re.findall(r"^\[(\d+)/3\] Building", log, re.M)] == [1, 2, 3]
    assert re.search(r"^\[build\] compiling: [12]/3 units, .* elapsed, about .* left \(\d+\.\d units/min\)$",
                     output, re.M), output[-3000:]
    assert re.search(r"^\[build\] compiled 3/3 units in .* \(\d+\.\d units/min\)$", output, re.M), output[-3000:]
    assert facts["units_done"] == facts["edges_total"] == 3 and facts["seconds"] > 5
    assert facts["ccache"] == {"hits": 0, "misses": 3, "uncacheable": 0}
    cuobjdump = envprobe.find_cuobjdump(None, environ={"PATH": ""})      # the toolkit's own wheel
    assert cuobjdump and not cuobjdump.startswith("/usr/local/cuda"), cuobjdump
    for target, arch in ((TARGETS[0], "sm_90"), (TARGETS[2], "sm_90a")):
        elf = subprocess.run([cuobjdump, "--list-elf", str(build_dir / target)], capture_output=True, text=True)
        assert envprobe.parse_list_elf(elf.stdout) == (arch,), (target, elf.stdout, elf.stderr)
    # the compile on a timeline, as for a full build
    assert facts["timings"] == "timings.html" and "flash_prepare_scheduler" in (workspace / "timings.html").read_text()
    figures["configure_cold_s"], figures["compile_cold_s"] = facts["configure_seconds"], facts["seconds"]

    # again from a clean build tree: configure again, every unit from the compiler cache
    shutil.rmtree(build_dir)
    done, figures["build_warm_s"] = inv(env, *build)
    warm = step(workspace, "build")["facts"]
    assert warm["ccache"] == {"hits": 3, "misses": 0, "uncacheable": 0}, warm["ccache"]
    assert warm["units_done"] == 3 and warm["network_isolated"] is True
    assert warm["seconds"] < facts["seconds"]
    figures["configure_warm_s"], figures["compile_warm_s"] = warm["configure_seconds"], warm["seconds"]
    print(json.dumps({k: round(v, 1) for k, v in figures.items()}))
    shutil.rmtree(tmp_path / "ws")      # the env is 4.8 GB: passed, nothing in it is needed any more
