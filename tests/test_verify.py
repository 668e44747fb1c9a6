"""verify's checks on real artifacts: .so files compiled with nvcc (the test extra's CUDA 13.0 wheels), a real venv (built
without a package index) with real editable/non-editable installs, a lock that no longer matches,
`pip check` complaints. verify on a real vLLM build runs in tests/test_build_slow.py, on the build
it makes."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import types
from pathlib import Path

import pytest
from conftest import ROOT
from cuda import LINK, NVCC, needs_nvcc
from test_doctor import h100_facts

from vllm_provision import pipeline
from vllm_provision.checks import install
from vllm_provision.core import envinfo, runner
from vllm_provision.core.errors import NotBuiltYet
from vllm_provision.core.settings import AllowedPipCheck
from vllm_provision.pipeline import StepContext, StepOutcome, run_steps, stamp_of, step_module
from vllm_provision.plan import build_plan
from vllm_provision.probes import envprobe
from vllm_provision.probes.host import HostFacts
from vllm_provision.steps import verify
from vllm_provision.steps.facts import FactsUnreadable

KERNEL = """
__global__ void twice(float* x) { x[threadIdx.x] *= 2.0f; }
extern "C" void launch(float* x) { twice<<<1, 32>>>(x); }
"""
# A real CPython extension module with a CUDA kernel in it, like vLLM's cache_ops.
EXTENSION = KERNEL + """
#include <Python.h>
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "cache_ops", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_cache_ops(void) { return PyModule_Create(&mod); }
"""


def sass_check(so_files: dict, required: list[str], cuobjdump: str, why: str = "the GPUs"):
    """check_sass on what cuobjdump reads from each .so."""
    return install.check_sass({n: envprobe.sass_of(so, cuobjdump) for n, so in so_files.items()}, so_files,
                              required, why)


def nvcc_so(tmp: Path, name: str, arch: str, source: str = KERNEL, python_ext: bool = False) -> Path:
    cu = tmp / f"{name}.cu"
    cu.write_text(source)
    out = tmp / (f"{name}{sysconfig.get_config_var('EXT_SUFFIX')}" if python_ext else f"{name}.so")
    argv = [NVCC, f"-arch={arch}", "-shared", "-Xcompiler", "-fPIC", cu, "-o", out, *LINK]
    if python_ext:
        argv[1:1] = [f"-I{sysconfig.get_paths()['include']}"]
    runner.run(argv, timeout=300)
    return out


@pytest.fixture(scope="module")
def cuobjdump():
    # the test extra's nvidia-cuda-cuobjdump wheel, found before any system CUDA
    found = envprobe.find_cuobjdump()
    assert found and Path(found).is_relative_to(sys.prefix), found
    return found


@needs_nvcc
def test_so_built_for_sm80_fails_on_a_9_0_gpu_naming_sm90(tmp_path, cuobjdump):
    so = nvcc_so(tmp_path, "cache_ops", "sm_80")
    [check] = sass_check({"cache_ops": so}, ["9.0"], cuobjdump, "this host's GPUs")
    assert check.status == "fail"
    assert "sm_80" in check.detail and "missing sm_90" in check.detail and "--arch '9.0'" in check.hint
    # the same SASS runs on an 8.6 GPU (same major, newer minor)
    [ok86] = sass_check({"cache_ops": so}, ["8.6"], cuobjdump)
    assert ok86.status == "pass"


@needs_nvcc
def test_so_built_for_sm90_passes(tmp_path, cuobjdump):
    so = nvcc_so(tmp_path, "attention_ops", "sm_90")
    [check] = sass_check({"attention_ops": so}, ["9.0"], cuobjdump)
    assert check.status == "pass" and "sm_90" in check.detail


def test_sass_compatibility_rule():
    assert install.covers("sm_80", "8.9") and not install.covers("sm_86", "8.0")
    assert not install.covers("sm_80", "9.0") and install.covers("sm_90a", "9.0")
    assert not install.covers("sm_90a", "9.1")
    assert envprobe.parse_list_elf("ELF file    1: k.1.sm_90a.cubin\nELF file    2: k.2.sm_80.cubin\n") == ("sm_90a", "sm_80")


def test_no_cuobjdump_is_a_skip_with_the_fix(tmp_path):
    [check] = install.check_sass(None, {"x": tmp_path / "x.so"}, ["9.0"])
    assert check.status == "skip" and "nvidia-cuda-cuobjdump" in check.hint


# ------------------------------------------------------------------------------ a real venv
def make_project(root: Path, name: str, version: str, deps: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{name}"
        version = "{version}"
        dependencies = {json.dumps(list(deps))}
        [tool.setuptools]
        packages = ["{name}"]
    """))
    (root / name).mkdir(exist_ok=True)
    (root / name / "__init__.py").write_text(f"__version__ = '{version}'\n")
    return root


def pip(python: Path, *args: str) -> None:
    runner.run([python, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--no-index", *args],
               timeout=300, extra_env={"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONSTRAINT": ""})


def link_installed(dists: tuple[str, ...], site: Path) -> None:
    """This interpreter's installs of `dists`, linked into another venv's site-packages: no package index."""
    for name in dists:
        dist = importlib.metadata.distribution(name)
        for top in sorted({f.parts[0] for f in dist.files if f.parts[0] != ".."}):
            (site / top).symlink_to(dist.locate_file(top))


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A real venv holding pip and setuptools (the toolkit venv's own, to build the tiny projects
    offline) and tinydep 1.0."""
    base = tmp_path_factory.mktemp("verify-venv")
    runner.run([sys.executable, "-m", "venv", "--without-pip", base / "env"], timeout=300)
    [site] = (base / "env").glob("lib/python3*/site-packages")
    link_installed(("pip", "setuptools"), site)
    python = base / "env" / "bin" / "python"
    pip(python, str(make_project(base / "tinydep-1", "tinydep", "1.0")))
    return base, python


def test_editable_install_from_src_passes_and_reinstall_non_editable_fails(venv, tmp_path):
    base, python = venv
    src = make_project(tmp_path / "src", "vllm", "0.2.2", deps=("tinydep>=1", "xformers"))
    pip(python, "-e", str(src))
    checks = install.check_vllm_install(envprobe.pip_inspect(python), "0.2.2", src)
    assert [c.status for c in checks] == ["pass", "pass"], checks
    assert str(src) in checks[1].detail
    # editable, but from another tree than the workspace's src/
    other = install.check_vllm_install(envprobe.pip_inspect(python), "0.2.2", tmp_path / "elsewhere")
    assert other[1].status == "fail" and "not from" in other[1].detail
    # another version than the release
    assert install.check_vllm_install(envprobe.pip_inspect(python), "0.2.7", src)[0].status == "fail"
    pip(python, "--force-reinstall", str(src))
    checks = install.check_vllm_install(envprobe.pip_inspect(python), "0.2.2", src)
    assert checks[0].status == "pass"
    assert checks[1].status == "fail" and "non-editable" in checks[1].detail and "inv build" in checks[1].hint


def test_pip_check_allows_only_what_the_profile_declares(venv, tmp_path):
    base, python = venv
    src = make_project(tmp_path / "src", "vllm", "0.2.2", deps=("tinydep>=1", "xformers"))
    pip(python, "-e", str(src))
    reason = "patch 0002 replaces xformers"
    complaints = envprobe.pip_check(str(python))
    allowed = install.check_pip(complaints, str(python),
                                [AllowedPipCheck(package="vllm", requires="xformers", reason=reason)])
    assert allowed.status == "pass" and reason in allowed.detail
    strict = install.check_pip(complaints, str(python), [])
    assert strict.status == "fail" and "xformers" in strict.detail and "allowed_pip_check" in strict.hint
    # existing-env backend: a complaint about vllm is still ours and fails ...
    assert install.check_pip(complaints, str(python), [], ours=["vllm"]).status == "fail"
    # ... one about a package of the host's own is only a warning
    host_own = install.check_pip(complaints, str(python), [], ours=["tinydep"])
    assert host_own.status == "warn" and "host's own" in host_own.detail


def test_package_changed_after_the_build_fails_naming_before_and_after(venv, tmp_path):
    base, python = venv
    lock = tmp_path / "lock.txt"
    lock.write_text("# release: 0.2.2\ntinydep==1.0 \\\n    --hash=sha256:00\npip==99.0 ; python_version < '3'\n")
    before = {"tinydep": "1.0"}
    from vllm_provision.envs.lock import pinned
    installed = envprobe.installed_versions(envprobe.pip_inspect(python))
    ok = install.check_locked(installed, {"tinydep": "1.0"}, before, None, None)
    assert ok.status == "pass", ok
    pip(python, str(make_project(tmp_path / "tinydep-2", "tinydep", "2.0")))
    installed = envprobe.installed_versions(envprobe.pip_inspect(python))
    bad = install.check_locked(installed, {"tinydep": pinned(lock)["tinydep"]}, before, None, None)
    assert bad.status == "fail"
    assert "tinydep: lock 1.0, installed 2.0" in bad.detail
    # without a lock (host-torch): compared with what the env step recorded
    torch_swap = install.check_locked({"torch": "2.1.2"}, None, {"torch": "2.1.0"}, "12.1", "12.1")
    assert torch_swap.status == "fail" and "torch: before 2.1.0, after 2.1.2" in torch_swap.detail
    cuda_swap = install.check_locked({"torch": "2.1.0"}, None, {"torch": "2.1.0"}, "11.8", "12.1")
    assert cuda_swap.status == "fail" and "torch CUDA: before 12.1, after 11.8" in cuda_swap.detail
    pip(python, str(make_project(tmp_path / "tinydep-1", "tinydep", "1.0")))   # leave the venv as it was


@needs_nvcc
def test_compiled_extension_imports_and_a_broken_one_fails(venv, tmp_path, cuobjdump):
    base, python = venv
    good = nvcc_so(tmp_path, "cache_ops", "sm_90", EXTENSION, python_ext=True)
    broken = nvcc_so(tmp_path, "layernorm_ops", "sm_90")          # a shared library, not a module
    so_files = {"cache_ops": good, "layernorm_ops": broken}
    checks = install.check_extension_imports(so_files, envprobe.import_extensions(str(python), so_files),
                                             has_gpu=False, python=str(python))
    status = {c.name: c for c in checks}
    assert status["import cache_ops"].status == "pass"
    assert status["import layernorm_ops"].status == "fail" and "PyInit_layernorm_ops" in status["import layernorm_ops"].detail
    [sass] = sass_check({"cache_ops": good}, ["9.0"], cuobjdump)
    assert sass.status == "pass"


def test_import_vllm_is_skipped_without_a_gpu(isolated):
    plan = build_plan({}, facts=HostFacts())
    info = envinfo.EnvInfo(backend="venv", prefix=sys.prefix, python=sys.executable, python_version="3.11")
    facts = verify.Verifying(StepContext(plan, HostFacts(), "verify"), info, {}, envprobe.TorchInfo(), (), {}, (),
                             None, None)
    [check] = verify.vllm_imports(facts)
    assert check.status == "skip" and "GPU" in check.detail


def test_import_vllm_is_proven_once_a_run_by_verify_or_by_the_smoke_that_follows(isolated, monkeypatch):
    """On a GPU host (the H100's recorded nvidia-smi) verify imports vllm itself, unless this run goes on to the
    smoke, which imports it and generates; the pipeline tells each step which steps follow it."""
    gpu = h100_facts()
    plan = build_plan({}, facts=gpu)
    info = envinfo.EnvInfo(backend="venv", prefix=sys.prefix, python=sys.executable, python_version="3.11")

    def import_check(then):
        facts = verify.Verifying(StepContext(plan, gpu, "verify", then), info, {}, envprobe.TorchInfo(), (), {}, (),
                                 None, None)
        [check] = verify.collect(facts.ctx, info, checks=[verify.vllm_imports])
        return check
    alone = import_check(())                                  # this interpreter has no vllm: the import ran
    assert alone.status == "fail" and "No module named 'vllm'" in alone.detail
    assert import_check(("smoke",)) == install.IMPORT_VLLM_IN_SMOKE

    seen = {}

    def module(name):
        def run(ctx):
            seen[name] = ctx.then
            return StepOutcome(detail="done")
        return types.SimpleNamespace(run=run, stamp_inputs=lambda ctx: {"step": name})
    monkeypatch.setattr(pipeline, "step_module", module)
    run_steps(plan, gpu, ["verify", "smoke"])
    assert seen == {"verify": ("smoke",), "smoke": ()}
    seen.clear()
    run_steps(plan, gpu, ["verify"], force=["verify"])
    assert seen == {"verify": ()}


def test_import_vllm_failure_names_the_error(tmp_path):
    """A real interpreter without vllm: the import fails with its last line, the log named in the fix."""
    result = envprobe.import_vllm(sys.executable, tmp_path / "verify.log", timeout=60)
    check = install.check_import_vllm(result, tmp_path / "verify.log")
    assert not result.ok and check.status == "fail" and "No module named 'vllm'" in check.detail
    assert str(tmp_path / "verify.log") in check.hint


# ------------------------------------------------------------------------------ the step / task
def test_verify_before_a_build_says_run_inv_build(isolated):
    plan = build_plan({}, facts=HostFacts())
    with pytest.raises(NotBuiltYet) as err:
        verify.ensure_built(StepContext(plan, HostFacts(), "verify"))
    assert err.value.message == f"nothing built for 0.2.2/{plan.profile} yet; run `./inv build`"
    assert err.value.exit_code == 2


def test_cli_verify_before_a_build_exits_2(isolated):
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "invoke"), "verify", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 2, done.stderr
    profile = build_plan({}, facts=HostFacts()).profile   # the checkout's default profile
    assert f"nothing built for 0.2.2/{profile} yet; run `./inv build`" in done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads(done.stdout) == {"schema_version": 1, "kind": "error", "ok": False,
                                       "error": f"nothing built for 0.2.2/{profile} yet; run `./inv build`",
                                       "hint": "run `./inv build` (or `./inv provision`) first, then `./inv verify`",
                                       "exit_code": 2}


@needs_nvcc
def test_cli_verify_end_to_end_on_a_real_workspace(venv, isolated, tmp_path, cuobjdump):
    """`inv verify --json --junit` through the pipeline on a workspace holding a real editable install
    and one real compiled extension (the other six missing): JSON shape, exit 1, report sections."""
    import xml.etree.ElementTree as ET
    base, python = venv
    plan = build_plan({"profile": "host-torch", "build": {"arch_list": "9.0"}}, facts=HostFacts())
    ws = plan.workspace
    ws.ensure()
    src = make_project(ws.src, "vllm", "0.2.2")
    pip(python, "-e", str(src))
    nvcc_so(src / "vllm", "cache_ops", "sm_90", EXTENSION, python_ext=True)
    envinfo.save(ws, envinfo.EnvInfo(backend="venv", prefix=str(base / "env"), python=str(python),
                                     python_version="3.11", packages={"tinydep": "1.0"}))
    # the stamp a build on this env leaves (no earlier step ran in this workspace): verify's upstream is current
    build_stamp = stamp_of(step_module("build"), StepContext(plan, HostFacts(), "build"), "")
    (ws.stamps / "build.json").write_text(json.dumps({"stamp": build_stamp, "facts": {"source": "compiled", "arch_list": "9.0"}}))
    junit = tmp_path / "verify.xml"
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "invoke"), "verify", "--profile", "host-torch", "--arch", "9.0",
                           "--json", "--junit", str(junit)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))
    data = json.loads(done.stdout)
    checks = {c["name"]: c for c in data["checks"]}
    assert done.returncode == 1 and data["ok"] is False, done.stderr
    assert checks["vllm-version"]["status"] == "pass" and checks["vllm-editable"]["status"] == "pass"
    assert checks["import cache_ops"]["status"] == "pass" and checks["sass cache_ops"]["status"] == "pass"
    assert checks["import attention_ops"]["status"] == "fail" and "not found" in checks["import attention_ops"]["detail"]
    assert checks["import-vllm"]["status"] == "skip"
    saved = json.loads(ws.report.read_text())
    assert saved["verify"]["checks"] == data["checks"] and saved["steps"]["verify"]["status"] == "failed"
    assert "## Verify: FAILED" in ws.report.with_suffix(".md").read_text()
    suite = ET.parse(junit).getroot().find("testsuite")
    assert int(suite.get("failures")) == sum(c["status"] == "fail" for c in data["checks"])


def test_allowed_pip_check_entries_apply_to_their_profiles(isolated):
    seed = build_plan({}, facts=HostFacts())
    host_torch = build_plan({"profile": "host-torch"}, facts=HostFacts())
    assert [r.requires for r in verify.allowed_pip_check(seed.settings.verify, "seed")] == ["xformers"]
    names = {r.requires for r in verify.allowed_pip_check(host_torch.settings.verify, "host-torch")}
    assert {"xformers", "ray", "pydantic"} <= names
    assert all(r.reason for r in verify.allowed_pip_check(host_torch.settings.verify, "host-torch"))
    parsed = envprobe.parse_pip_check("vllm 0.2.2+cu130 requires uvicorn[standard], which is not installed.\n"
                                    "vllm 0.2.2 has requirement pydantic==1.10.13, but you have pydantic 2.5.0.\n")
    assert [(p, r) for p, r, _ in parsed] == [("vllm", "uvicorn"), ("vllm", "pydantic")]


def test_without_gpu_the_build_stamps_arch_list_is_required(isolated):
    plan = build_plan({}, facts=HostFacts())            # no --arch: the plan defaults to 7.0 ... 9.0
    ctx = StepContext(plan, HostFacts(), "verify")
    plan.workspace.ensure()
    stamp = plan.workspace.stamps / "build.json"
    stamp.write_text(json.dumps({"stamp": "s", "facts": {"source": "compiled", "arch_list": "9.0+PTX"}}))
    assert verify.required_archs(ctx) == (("9.0",), "the arch list the build used (no GPU here)")
    # a record of another shape stops verify with the rerun hint, never checks against the plan's default
    stamp.write_text(json.dumps({"stamp": "s", "facts": {"source": "compiled", "archs": "9.0"}}))
    with pytest.raises(FactsUnreadable) as refused:
        verify.required_archs(ctx)
    assert "./inv build --force" in refused.value.hint
    stamp.write_text(json.dumps({"stamp": "s", "facts": {"source": "compiled", "arch_list": "9.0"}}))
    explicit = build_plan({"build": {"arch_list": "8.0;9.0"}}, facts=HostFacts())
    assert verify.required_archs(StepContext(explicit, HostFacts(), "verify"))[0] == ("8.0", "9.0")
    from test_doctor import h100_facts
    gpu = h100_facts()
    assert verify.required_archs(StepContext(build_plan({}, facts=gpu), gpu, "verify"))[0] == ("9.0",)
