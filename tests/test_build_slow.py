"""Slow tier: the C++20 patch and verify on a real vLLM 0.2.2 build, with real compilers, on this GPU-less host.

torch >= 2.13 headers refuse C++17 and vLLM 0.2.2's setup.py hard-codes -std=c++17 for the host compiler and
nvcc: the patch series' 0001 must apply for torch 2.14.1, and it is what makes torch 2.14.1's headers compile.
Proven by the smallest real compiles that show it, with setup.py's own flags before and after the patch step:
vLLM's csrc/cuda_utils.cpp through g++ (CXX_FLAGS), and a CUDA unit that includes <torch/extension.h> as
vLLM's kernels do, through the CUDA 13.0 nvcc of the test extra's wheels (NVCC_FLAGS): each fails with the
sdist's flags and compiles with the patched ones. (A whole vLLM build is the session's one real compile,
tests/conftest.py's real_vllm_wheel; verify's checks on what it built are below, and its warm rebuild from the
compiler cache is the fleet builder's, tests/test_fleet_slow.py.)
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cuda import LINK, NVCC, needs_nvcc
from uv import find_uv_bin

from vllm_provision.checks.install import check_sass
from vllm_provision.core import envinfo
from vllm_provision.core.envinfo import EnvInfo
from vllm_provision.pipeline import StepContext, run_steps
from vllm_provision.plan import build_plan
from vllm_provision.probes import envprobe, host
from vllm_provision.steps import verify

ROOT = Path(__file__).resolve().parent.parent
TORCH = "torch==2.14.1"
PY311 = shutil.which("python3.11") or sys.executable
REFUSAL = "C++20 or later compatible compiler is required to use PyTorch"
# a CUDA unit that includes torch's headers the way every vLLM 0.2.2 kernel file does (its first line)
KERNEL_UNIT = """#include <torch/extension.h>

__global__ void scale_kernel(float* out, const float* in, float s, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i] * s;
}

void scale(torch::Tensor& out, torch::Tensor& in, double s) {
  int n = in.numel();
  scale_kernel<<<(n + 255) / 256, 256>>>(out.data_ptr<float>(), in.data_ptr<float>(), (float)s, n);
}
"""


def _sh(argv, **kw):
    # test setup only (the code under test uses the runner)
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def _no_system_cuda_nor_ccache(monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    path = [p for p in os.environ["PATH"].split(os.pathsep)
            if "cuda" not in p and not (Path(p) / "nvcc").exists() and not (Path(p) / "ccache").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(path))


@pytest.fixture(scope="module")
def torch_2_14(tmp_path_factory) -> EnvInfo:
    """A venv holding torch 2.14.1 itself (its headers; no CUDA libraries: nothing here links or runs it)."""
    prefix = tmp_path_factory.mktemp("env") / "venv"
    _sh([find_uv_bin(), "venv", "-q", "--python", PY311, str(prefix)])
    py = prefix / "bin" / "python"
    _sh([find_uv_bin(), "pip", "install", "-q", "--python", str(py), "--no-deps", TORCH])
    probe = _sh([str(py), "-c", "import json, sys, sysconfig, importlib.metadata as m; print(json.dumps({"
                 "'py': '%d.%d.%d' % sys.version_info[:3], 'site': sysconfig.get_paths()['purelib'], "
                 "'include': sysconfig.get_paths()['include'], "
                 "'packages': {d.metadata['Name'].lower(): d.version for d in m.distributions()}}))"]).stdout
    facts = json.loads(probe.strip().splitlines()[-1])
    torch_dir = Path(facts["site"]) / "torch"
    assert (torch_dir / "include" / "torch" / "extension.h").is_file()
    return EnvInfo(backend="venv", prefix=str(prefix), python=str(py), python_version=facts["py"],
                   packages=facts["packages"], torch=facts["packages"]["torch"], torch_cuda="13.0", cxx11_abi=True,
                   cuda_home=str(NVCC.parent.parent), nvcc=str(NVCC), nvcc_version="13.0",
                   include_dirs=(str(torch_dir / "include"), str(torch_dir / "include" / "torch" / "csrc" / "api" / "include"),
                                 facts["include"]), lock=None, installer="uv")


def _setup_flags(setup_py: Path) -> dict[str, list[str]]:
    """CXX_FLAGS and NVCC_FLAGS as vLLM 0.2.2's setup.py first sets them (literal lists)."""
    flags = {}
    for node in ast.parse(setup_py.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and \
                node.targets[0].id in ("CXX_FLAGS", "NVCC_FLAGS") and node.targets[0].id not in flags:
            flags[node.targets[0].id] = ast.literal_eval(node.value)
    return flags


def _compiles(info: EnvInfo, src: Path, flags: dict[str, list[str]], out: Path) -> dict[str, subprocess.CompletedProcess]:
    """vLLM's csrc/cuda_utils.cpp with g++ and CXX_FLAGS; the kernel unit with nvcc and NVCC_FLAGS (as setup.py
    compiles them: torch's include dirs, the ABI define, the extension's name, sm_90), both at once. The host
    compiler stops at its first error (-Wfatal-errors): a refused standard fails in seconds."""
    out.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{d}" for d in info.include_dirs]
    defines = ["-D_GLIBCXX_USE_CXX11_ABI=1", "-DTORCH_EXTENSION_NAME=cuda_utils", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    unit = out / "scale_kernels.cu"
    unit.write_text(KERNEL_UNIT)
    argv = {
        "g++": ["g++", *flags["CXX_FLAGS"], *includes, *defines, "-fPIC", "-Wfatal-errors", "-c",
                str(src / "csrc" / "cuda_utils.cpp"), "-o", str(out / "cuda_utils.o")],
        "nvcc": [str(NVCC), *flags["NVCC_FLAGS"], *includes, *defines, "--compiler-options", "-fPIC,-Wfatal-errors",
                 "-gencode", "arch=compute_90,code=sm_90", "-c", str(unit), "-o", str(out / "scale_kernels.o"), *LINK],
    }
    env = dict(os.environ, LANG="C.UTF-8", LC_ALL="C.UTF-8")
    running = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
               for name, cmd in argv.items()}
    done = {}
    for name, proc in running.items():
        output, _ = proc.communicate(timeout=1800)
        done[name] = subprocess.CompletedProcess(argv[name], proc.returncode, output, "")
    return done


@pytest.mark.slow
@pytest.mark.network
@needs_nvcc
def test_the_cxx20_patch_is_what_makes_torch_2_14_headers_compile(torch_2_14, tmp_path, monkeypatch):
    _no_system_cuda_nor_ccache(monkeypatch)
    plan = _plan(tmp_path)
    facts = host.probe(str(tmp_path))
    plan.workspace.ensure()
    envinfo.save(plan.workspace, torch_2_14)
    src = plan.workspace.src

    [fetched] = run_steps(plan, facts, ["fetch"])
    assert fetched.status == "ok", (fetched.detail, fetched.hint)
    before = _setup_flags(src / "setup.py")
    assert "-std=c++17" in before["CXX_FLAGS"] and "-std=c++17" in before["NVCC_FLAGS"], before
    refused = _compiles(torch_2_14, src, before, tmp_path / "c++17")
    for compiler, done in refused.items():
        assert done.returncode != 0 and REFUSAL in done.stdout + done.stderr, (compiler, done.stdout[-3000:])

    [patched] = run_steps(plan, facts, ["patch"])
    assert patched.status == "ok", (patched.detail, patched.hint)
    assert "0001-build-with-cxx20.patch" in [p["file"] for p in patched.facts["applied"]]
    after = _setup_flags(src / "setup.py")
    assert "-std=c++20" in after["CXX_FLAGS"] and "-std=c++20" in after["NVCC_FLAGS"], after
    built = _compiles(torch_2_14, src, after, tmp_path / "c++20")
    for compiler, done in built.items():
        assert done.returncode == 0, (compiler, done.stdout[-3000:])
    from vllm_provision.probes.envprobe import find_cuobjdump
    listed = _sh([find_cuobjdump() or "cuobjdump", "--list-elf", str(tmp_path / "c++20" / "scale_kernels.o")]).stdout
    assert "sm_90" in listed, listed


def _plan(tmp_path, **build):
    cli = {"workspace_root": str(tmp_path / "ws"), "profile": "host-torch", "build": {"arch_list": "9.0", **build}}
    return build_plan(cli)


def _elf_archs(so: Path, info: EnvInfo) -> set[str]:
    from vllm_provision.probes.envprobe import find_cuobjdump
    tool = find_cuobjdump(info) or shutil.which("cuobjdump")
    assert tool, "no cuobjdump (the test extra installs nvidia-cuda-cuobjdump)"
    out = subprocess.run([tool, "--list-elf", str(so)], capture_output=True, text=True).stdout
    return set(re.findall(r"sm_\d+", out))


def _verify_the_real_build(plan, facts, info: EnvInfo) -> None:
    """verify's checks on this build: the real editable install, SASS for 9.0 in every library (and
    none for 8.0), vllm imported only where there is a GPU."""
    ctx = StepContext(plan, facts, "verify")
    assert verify.ensure_built(ctx).python == info.python
    checks = {c.name: c for c in verify.collect(ctx, info)}
    assert checks["vllm-version"].status == "pass", checks["vllm-version"]
    assert checks["vllm-editable"].status == "pass", checks["vllm-editable"]
    sass = [c for n, c in checks.items() if n.startswith("sass ")]
    assert len(sass) == 7 and all(c.status == "pass" for c in sass), sass
    assert checks["import-vllm"].status == ("pass" if facts.gpus else "skip"), checks["import-vllm"]
    name, so = next(iter(envprobe.extension_files([plan.workspace.src / "vllm"], plan.release.extensions)[0].items()))
    [wrong] = check_sass({name: envprobe.sass_of(so, envprobe.find_cuobjdump(info))}, {name: so}, ["8.0"])
    assert wrong.status == "fail" and "sm_80" in wrong.detail


@pytest.mark.slow
@pytest.mark.network
def test_verify_on_the_real_build(real_vllm_wheel, monkeypatch):
    """The session's real compile (profile pypi-cu13, arch 9.0, the lock's CUDA 13.0 compiler wheels), read only:
    seven libraries with SASS for 9.0, every unit's compile time from ninja's logs, and verify's checks on it."""
    for name, value in real_vllm_wheel["env"].items():
        if name.startswith("VLLMP_"):
            monkeypatch.setenv(name, value)
    plan = build_plan({"profile": "pypi-cu13", "build": {"arch_list": "9.0"}})
    assert plan.workspace.root.resolve() == real_vllm_wheel["workspace"].resolve()
    facts = host.probe(str(plan.workspace.root))
    info = envinfo.load(plan.workspace)
    built = json.loads((plan.workspace.root / "report.json").read_text())["steps"]["build"]["facts"]
    src = plan.workspace.src
    libs = sorted((src / "vllm").glob("*.so"))
    assert len(libs) == 7 == len(built["extensions"]), libs
    for so in libs:
        assert "sm_90" in _elf_archs(so, info), so
    assert built["parallel"] is True and built["version"].split("+")[0] == "0.2.2"
    assert built["torch"] == info.torch
    assert (plan.workspace.logs / "build.log").stat().st_size > 0
    assert built["ccache"]["misses"] > 0     # a cold cache compiled for real
    # every unit's compile time, from ninja's logs: 15 sources, the attention kernels among the slowest
    assert len(built["units"]) == 15 and all(u["seconds"] > 0 for u in built["units"])
    assert "csrc/attention/attention_kernels.cu" in [u["unit"] for u in built["units"][:3]]
    _verify_the_real_build(plan, facts, info)
    print(json.dumps({"build_seconds": built["seconds"], "per_extension": built["per_extension"],
                      "ccache": built["ccache"]}))
