"""inv doctor against real loopback mirrors (up / down / slow / incomplete) and recorded host facts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import ROOT, Route
from cuda import NVCC, needs_nvcc, use_wheel_toolkit

from vllm_provision import GIB
from vllm_provision.checks import summarize
from vllm_provision.core import envinfo
from vllm_provision.diagnostics import doctor, preflight
from vllm_provision.plan import build_plan
from vllm_provision.probes import host
from vllm_provision.probes.envprobe import torch_of
from vllm_provision.probes.host import GPU_QUERY, HostFacts, parse_driver_cuda, parse_gpu_csv

FIXTURES = ROOT / "tests" / "fixtures" / "gpu" / "h100"
# Same format as `nvidia-smi --query-gpu=index,name,memory.total,memory.used,compute_cap,driver_version,uuid
# --format=csv,noheader,nounits` on the H100 machine; the recorded file is used once it exists.
H100_CSV = "0, NVIDIA H100 80GB HBM3, 81559, 0, 9.0, 580.82.07, GPU-5b1a3c2e-0000-0000-0000-000000000000\n"
H100_HEADER = "| NVIDIA-SMI 580.82.07    Driver Version: 580.82.07    CUDA Version: 13.0     |\n"


def recorded_h100() -> tuple[str, str]:
    """(query-gpu CSV in host.GPU_QUERY's column order, `nvidia-smi` text) from the real H100 recording
    (tests/fixtures/gpu/h100/probes.json), else the in-file copy of the same format."""
    probes = FIXTURES / "probes.json"
    if not probes.is_file():
        return H100_CSV, H100_HEADER
    data = json.loads(probes.read_text())
    smi = data.get("nvidia-smi", {}).get("stdout", H100_HEADER)
    for cmd, out in data.items():
        if "--query-gpu=" in cmd and "nounits" in cmd and out.get("rc") == 0:
            fields = cmd.split("--query-gpu=")[1].split()[0].split(",")
            rows = []
            for line in out["stdout"].strip().splitlines():
                cells = dict(zip(fields, (c.strip() for c in line.split(",")), strict=False))
                rows.append(", ".join(cells.get(f, "") for f in GPU_QUERY.split(",")))
            return "\n".join(rows) + "\n", smi
    return H100_CSV, smi


def h100_facts() -> HostFacts:
    csv, smi = recorded_h100()
    gpus = parse_gpu_csv(csv)
    return HostFacts(gpus=gpus, driver_cuda=parse_driver_cuda(smi) or "13.0",
                     cpu_count=16, mem_available_bytes=120 * GIB, mem_total_bytes=128 * GIB,
                     disk_free_bytes=500 * GIB)


NO_GPU = HostFacts(gpu_error="nvidia-smi not found", cpu_count=2, mem_available_bytes=20 * GIB,
                   mem_total_bytes=24 * GIB, disk_free_bytes=100 * GIB)
# the host's CUDA toolkit: the test extra's CUDA 13.0 wheels (CUDA_HOME, PATH; cuda.use_wheel_toolkit)
HOST_NVCC = NVCC


def simple_page(*files: str) -> bytes:
    links = "".join(f'<a href="../../files/{f}#sha256=00">{f}</a>\n' for f in files)
    return f"<!DOCTYPE html><html><body>{links}</body></html>".encode()


def serve_index(server, *, vllm_files=("vllm-0.2.2.tar.gz",), xformers=True, delay=0.0):
    html = "text/html"
    server.add("/simple/torch/", Route(simple_page("torch-2.1.0-cp310-cp310-manylinux1_x86_64.whl"), content_type=html,
                                       delay=delay))
    server.add("/simple/vllm/", Route(simple_page(*vllm_files), content_type=html, delay=delay))
    if xformers:
        server.add("/simple/xformers/", Route(simple_page("xformers-0.0.22.post7.tar.gz"), content_type=html,
                                              delay=delay))
    server.add("/files/vllm-0.2.2.tar.gz", Route(b"x" * 100))
    return server.url + "/simple"


def down_index(port: int, userinfo: str = "") -> str:
    """An index URL on a port that refuses connections (the `refused_port` fixture's)."""
    return f"http://{userinfo}127.0.0.1:{port}/simple"


def make_plan(index_url: str, facts: HostFacts, **extra):
    cli = {"pypi": {"index_url": index_url}, "fetch": {"github": False}, **extra}
    return build_plan(cli, facts=facts)


def by_name(checks):
    return {c.name.split(" ")[0] if c.name.startswith(("index", "channel")) else c.name: c for c in checks}




@pytest.fixture
def wheel_toolkit(monkeypatch):
    return use_wheel_toolkit(monkeypatch)


@needs_nvcc
@pytest.mark.usefixtures("wheel_toolkit")
def test_h100_host_with_matching_toolchain_passes(isolated, http_server):
    facts = h100_facts()
    index = serve_index(http_server)
    # torch's CUDA = the host nvcc's (13.0), as on a host-torch / torch 2.14.1 stack
    plan = make_plan(index, facts, env={"cuda": "13.0"})
    checks = doctor.run_doctor(plan, facts, timeout=2)
    c = by_name(checks)
    assert c["gpus"].status == "pass" and "H100" in c["gpus"].detail and "cc 9.0" in c["gpus"].detail
    assert c["driver-vs-cuda"].status == "pass" and "13.0" in c["driver-vs-cuda"].detail
    assert c["nvcc-vs-torch"].status == "pass" and "13.0" in c["nvcc-vs-torch"].detail
    assert c["gcc-vs-nvcc"].status == "pass" and "gcc <=" in c["gcc-vs-nvcc"].detail
    assert c["arch-list"].status == "pass" and "9.0" in c["arch-list"].detail
    assert c["index"].status == "pass" and "vllm" in c["index"].detail
    assert c["source"].status == "pass" and "reachable" in c["source"].detail
    assert summarize(checks) == (True, 0), [x for x in checks if x.status == "fail"]


def test_no_nvidia_smi_warns_the_build_runs_for_the_planned_archs(isolated, http_server):
    """A GPU-less host with the default profile: the build compiles for the archs nvcc 13 can build (the
    plan says how long that takes); doctor warns, it does not fail what provision completes."""
    plan = make_plan(serve_index(http_server), NO_GPU)
    checks = doctor.run_doctor(plan, NO_GPU, timeout=2)
    gpus = by_name(checks)["gpus"]
    assert gpus.status == "warn" and "nvidia-smi not found" in gpus.detail
    assert "building for 7.5;8.0;8.6;8.9;9.0 (about " in gpus.detail and "the smoke is skipped" in gpus.detail
    assert "NVIDIA driver" in gpus.hint and "--arch" in gpus.hint
    assert by_name(checks)["driver-vs-cuda"].status == "skip"


def test_explicit_arch_without_gpu_is_only_a_warning(isolated, http_server):
    plan = make_plan(serve_index(http_server), NO_GPU, build={"arch_list": "9.0"})
    gpus = by_name(doctor.run_doctor(plan, NO_GPU, timeout=2))["gpus"]
    assert gpus.status == "warn" and "9.0" in gpus.detail


def test_driver_older_than_torch_cuda_fails(isolated, http_server):
    facts = h100_facts()
    old = HostFacts(**{**facts.__dict__, "driver_cuda": "12.4"})
    plan = make_plan(serve_index(http_server), old)     # the default profile: torch for CUDA 13.0
    drv = by_name(doctor.run_doctor(plan, old, timeout=2))["driver-vs-cuda"]
    assert drv.status == "fail" and "12.4" in drv.detail and "13.0" in drv.detail
    # the driver floor and the alternative for hosts that keep their driver
    assert "(>= 580)" in drv.hint and "--profile seed" in drv.hint


@needs_nvcc
@pytest.mark.usefixtures("wheel_toolkit")
def test_seed_lock_cuda_12_against_host_nvcc_13_fails_with_the_fix(isolated, http_server):
    plan = make_plan(serve_index(http_server), NO_GPU, profile="seed", build={"arch_list": "9.0"})
    assert plan.env.cuda == "12.1"
    nvcc = by_name(doctor.run_doctor(plan, NO_GPU, timeout=2))["nvcc-vs-torch"]
    assert nvcc.status == "fail"
    assert "12.1" in nvcc.detail and "13.0" in nvcc.detail and "lock torch 2.1.0" in nvcc.detail
    assert "CUDA 12.1" in nvcc.hint
    # with a conda channel configured the env step provisions cuda-nvcc=12.1: only a warning
    chan = make_plan(serve_index(http_server), NO_GPU, profile="seed", build={"arch_list": "9.0"},
                     conda={"channels": [http_server.url + "/chan"]})
    warned = doctor.check_nvcc([host.probe_nvcc(str(HOST_NVCC))], "12.1", "2.1.0", "lock", chan)[0]
    assert warned.status == "warn" and "cuda-nvcc=12.1 from the conda channel" in warned.detail


@needs_nvcc
@pytest.mark.usefixtures("wheel_toolkit")
def test_release_default_archs_include_one_nvcc_13_cannot_build(isolated, http_server):
    # seed plans for CUDA 12.1, whose nvcc builds 7.0; this host's nvcc is 13.0
    plan = make_plan(serve_index(http_server), NO_GPU, profile="seed")     # no GPU, no --arch: 7.0 ... 9.0
    archs = by_name(doctor.run_doctor(plan, NO_GPU, timeout=2))["arch-list"]
    assert archs.status == "fail" and "7.0" in archs.detail and "--arch" in archs.hint
    # the default profile plans only what its CUDA 13.0 compiler can build: no FAIL of the toolkit's own making
    default = make_plan(serve_index(http_server), NO_GPU)
    assert "7.0" not in default.build.arch_list
    assert by_name(doctor.run_doctor(default, NO_GPU, timeout=2))["arch-list"].status == "pass"


def test_mirror_down_fails_fast_and_redacts_credentials(isolated, refused_port):
    url = down_index(refused_port, userinfo="alice:s3cret@")
    plan = make_plan(url, NO_GPU)
    checks = doctor.run_doctor(plan, NO_GPU, timeout=1)
    index = by_name(checks)["index"]
    assert index.status == "fail" and "unreachable" in index.detail
    assert by_name(checks)["source"].status == "fail"
    text = json.dumps([c.to_dict() for c in checks])
    assert "s3cret" not in text and "alice:***@" in text


def test_slow_mirror_times_out_instead_of_hanging(isolated, http_server):
    index = serve_index(http_server, delay=4.0)
    plan = make_plan(index, NO_GPU)
    checks = doctor.run_doctor(plan, NO_GPU, timeout=0.5)
    index_check = by_name(checks)["index"]
    assert index_check.status == "fail" and "timed out" in index_check.detail.lower() + str(index_check.hint)


def test_mirror_without_the_release_or_xformers(isolated, http_server):
    index = serve_index(http_server, vllm_files=("vllm-0.2.7.tar.gz",), xformers=False)
    checks = doctor.run_doctor(make_plan(index, NO_GPU), NO_GPU, timeout=2)
    c = by_name(checks)["index"]
    assert c.status == "fail" and "no 0.2.2 file" in c.detail and "missing: xformers" in c.detail


def test_mirror_missing_only_xformers_is_a_warning(isolated, http_server):
    index = serve_index(http_server, xformers=False)
    c = by_name(doctor.run_doctor(make_plan(index, NO_GPU), NO_GPU, timeout=2))["index"]
    assert c.status == "warn" and "xformers" in c.detail


def test_extra_index_and_conda_channel_each_checked(isolated, http_server, refused_port):
    index = serve_index(http_server)
    repodata = json.dumps({"packages": {"python-3.10.12-h0.tar.bz2": {"name": "python", "version": "3.10.12"}},
                           "packages.conda": {}}).encode()
    http_server.add("/chan/linux-64/repodata.json", Route(repodata, content_type="application/json"))
    http_server.add("/chan/noarch/repodata.json", Route(b'{"packages": {}}', content_type="application/json"))
    http_server.add("/bad/linux-64/repodata.json", Route(b'{"packages": {}}', content_type="application/json"))
    plan = make_plan(index, NO_GPU, conda={"channels": [http_server.url + "/chan", http_server.url + "/bad"]},
                     pypi={"index_url": index, "extra_index_urls": [down_index(refused_port)]})
    checks = doctor.run_doctor(plan, NO_GPU, timeout=1)
    idx = [c for c in checks if c.name.startswith("index ")]
    assert [c.status for c in idx] == ["pass", "fail"]
    chans = {c.name: c for c in checks if c.name.startswith("channel ")}
    assert chans[f"channel {http_server.url}/chan"].status == "pass"
    bad = chans[f"channel {http_server.url}/bad"]
    assert bad.status == "fail"     # no noarch subdir, no python


def test_cached_source_passes_offline(isolated, tmp_path, refused_port):
    plan = make_plan(down_index(refused_port), NO_GPU, offline=True)
    checks = doctor.run_doctor(plan, NO_GPU, timeout=1)
    c = by_name(checks)
    assert c["source"].status == "fail" and "--offline" in c["source"].detail
    assert c["mirrors"].status == "skip"
    assert not any(x.name.startswith("index") for x in checks)


def test_parsers_on_real_tool_output():
    assert host.parse_gcc_limit("#if __GNUC__ > 15\n#error -- unsupported GNU version!") == 15
    assert host.parse_nvcc_version("Cuda compilation tools, release 12.1, V12.1.105") == "12.1"
    assert host.parse_gpu_archs("compute_75 compute_80 compute_90 compute_100 compute_120") == \
        ("7.5", "8.0", "9.0", "10.0", "12.0")
    top, dirs = host.parse_dryrun('#$ TOP=/opt/cuda/bin/..\n#$ INCLUDES="-I/opt/cuda/bin/../targets/x86_64-linux/include"  \n')
    assert top == "/opt/cuda/bin/.." and dirs == ("/opt/cuda/bin/../targets/x86_64-linux/include",)


@needs_nvcc
@pytest.mark.usefixtures("wheel_toolkit")
def test_doctor_and_preflight_give_the_same_answer_on_the_same_facts(isolated, refused_port):
    """One H100 host, one env whose torch is the plan's, CC=gcc CXX=g++-12 (or g++ by another name): every check
    doctor and preflight share comes out the same from both; the host compiler judged is CXX's (the build
    compiles C++ with it)."""
    cxx = shutil.which("g++-12")
    if not cxx:   # CXX is a compiler by another name than gcc's: g++ under a name of its own
        cxx = str(Path(isolated["VLLMP_CACHE_DIR"]).parent / "bin" / "g++-cxx")
        Path(cxx).parent.mkdir(parents=True)
        Path(cxx).symlink_to(shutil.which("g++"))
    environ = {k: v for k, v in os.environ.items() if k != "CUDAHOSTCXX"} | {"CC": "gcc", "CXX": cxx}
    facts = h100_facts()
    plan = make_plan(down_index(refused_port), facts, offline=True, build={"arch_list": "9.0"})
    _, torch_cuda, _ = doctor.torch_cuda_of_plan(plan, 10)
    plan.workspace.ensure()
    envinfo.save(plan.workspace, envinfo.EnvInfo(backend="venv", prefix="/nonexistent", python="/nonexistent/python",
                                                 python_version="3.11", torch_cuda=torch_cuda))
    from_doctor = by_name(doctor.run_doctor(plan, facts, timeout=1, environ=environ))
    from_preflight = by_name(preflight.run(plan, facts, envinfo.load(plan.workspace), environ))
    assert f"({cxx})" in from_doctor["gcc-vs-nvcc"].detail, from_doctor["gcc-vs-nvcc"]
    for name in ("gcc-vs-nvcc", "arch-list", "driver-vs-cuda", "disk", "ram"):
        assert from_doctor[name] == from_preflight[name], name
    # doctor adds where torch's CUDA came from (the lock: no env needed) to the same verdict
    nvcc = from_preflight["nvcc-vs-torch"]
    assert from_doctor["nvcc-vs-torch"].status == nvcc.status and from_doctor["nvcc-vs-torch"].detail.startswith(nvcc.detail)


def _inv(*args, env):
    return subprocess.run([str(ROOT / ".venv" / "bin" / "invoke"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_json_shape_junit_and_exit_codes(isolated, http_server, tmp_path):
    env = {**os.environ, "VLLMP_PYPI__INDEX_URL": serve_index(http_server), "VLLMP_FETCH__GITHUB": "false"}
    junit = tmp_path / "doctor.xml"
    done = _inv("doctor", "--json", "--arch", "9.0", "--junit", str(junit), env=env)
    data = json.loads(done.stdout)
    assert set(data) == {"schema_version", "kind", "ok", "checks"} and data["kind"] == "doctor"
    assert all(set(c) == {"name", "status", "detail", "hint"} for c in data["checks"])
    assert {c["status"] for c in data["checks"]} <= {"pass", "warn", "fail", "skip"}
    assert done.returncode == (0 if data["ok"] else 1), done.stderr
    suite = ET.parse(junit).getroot().find("testsuite")
    assert int(suite.get("tests")) == len(data["checks"])
    assert int(suite.get("failures")) == sum(c["status"] == "fail" for c in data["checks"])
    rep = Path(isolated["VLLMP_WORKSPACE_ROOT"]) / "0.2.2-pypi-cu13" / "report.json"
    saved = json.loads(rep.read_text())
    assert saved["doctor"]["checks"] == data["checks"] and "gpus" in saved["host"]
    assert "## Doctor" in rep.with_suffix(".md").read_text()
    bad = _inv("doctor", "--release", "9.9.9", env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "error:" in bad.stderr


def test_gpu_less_host_with_the_default_profile_has_no_fail(isolated, http_server):
    """`./inv doctor` on a GPU-less host (nvidia-smi kept off PATH): the default profile's own choices fail
    nothing; no GPU is a warning naming what will be built, exit 0, no traceback."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if not os.path.exists(os.path.join(p, "nvidia-smi")))
    env = {**os.environ, "PATH": path, "VLLMP_PYPI__INDEX_URL": serve_index(http_server),
           "VLLMP_FETCH__GITHUB": "false", "CI": "true"}
    done = _inv("doctor", env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr + done.stdout, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert not [l for l in lines if l.startswith("FAIL")], done.stdout
    assert any(l.startswith("WARN  gpus") and "nvidia-smi not found" in l for l in lines)
    assert any(l.startswith("PASS  arch-list") and "7.0 left out" in l for l in lines)


def test_host_torch_profile_reads_the_interpreters_torch_without_importing_it(isolated, http_server):
    import sys
    plan = make_plan(serve_index(http_server), NO_GPU, profile="host-torch",
                     env={"python_path": sys.executable}, build={"arch_list": "9.0"})
    version, cuda, where = doctor.torch_cuda_of_plan(plan, 10)
    import torch  # the toolkit's test venv holds torch 2.13.0+cpu (a test dependency)
    assert version == torch.__version__ and cuda == torch.version.cuda
    checks = by_name(doctor.run_doctor(plan, NO_GPU, timeout=2))
    nvcc = checks["nvcc-vs-torch"]
    # the interpreter's own torch: its bytecode counted (how it is judged: the bytecode test below)
    assert checks["bytecode"].status in ("pass", "warn") and " torch modules have bytecode" in checks["bytecode"].detail
    if cuda is None:
        assert nvcc.status == "fail" and "CPU build" in nvcc.detail and "CUDA build of torch" in nvcc.hint
    missing = torch_of(str(HOST_NVCC), 5)    # not a python at all: a reason, no exception
    assert missing.version is None and missing.error


def test_other_processes_on_the_gpu_are_a_warning(isolated, http_server):
    from vllm_provision.probes.host import parse_compute_apps
    busy = HostFacts(**{**h100_facts().__dict__,
                        "gpu_processes": parse_compute_apps("4242, python3, 30000\n")})
    plan = make_plan(serve_index(http_server), busy, env={"cuda": "13.0"})
    gpus = doctor.check_gpus(busy, plan)
    assert gpus.status == "warn" and "30000 MiB" in gpus.detail and "pid 4242" in gpus.detail


def test_host_torch_without_bytecode_it_may_not_write_is_a_warning_with_the_compile_command(tmp_path, monkeypatch):
    """A real interpreter (a venv) over a package dir named torch (found, never imported): without bytecode and
    with PYTHONDONTWRITEBYTECODE set, a warning naming the compileall command; after that command, a pass."""
    import subprocess
    import sys

    from vllm_provision.checks.install import check_bytecode
    from vllm_provision.probes.envprobe import bytecode_of
    venv = tmp_path / "host"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    [site] = (venv / "lib").glob("python3.*/site-packages")
    for module in ("__init__", "nn", "cuda"):
        (site / "torch" / f"{module}.py").parent.mkdir(exist_ok=True)
        (site / "torch" / f"{module}.py").write_text("X = 1\n")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    cold = check_bytecode(bytecode_of(python), python)
    assert cold.status == "warn", cold
    assert "0 of 3 torch modules have bytecode and PYTHONDONTWRITEBYTECODE is set" in cold.detail
    assert cold.hint == f"compile it once, as the owner of the image: {python} -m compileall -q -j0 {site / 'torch'}"
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE")
    writable = check_bytecode(bytecode_of(python), python)      # written on first import: nothing to do
    assert writable.status == "pass" and "the rest is written on first import" in writable.detail
    subprocess.run(cold.hint.split(": ", 1)[1].split(), check=True)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    warm = check_bytecode(bytecode_of(python), python)
    assert (warm.status, warm.detail) == ("pass", "3 of 3 torch modules have bytecode")
    assert check_bytecode(bytecode_of(python, "no_such_package"), python).status == "skip"
