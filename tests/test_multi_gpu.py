"""Every GPU of a host: the per-GPU smoke fan-out, its judging and report, tensor parallelism's skip, and
doctor's GPU section.

The only stand-ins are the GPUs: the GPU query comes from recorded nvidia-smi output, and a stand-in for
the target env's python writes a recorded smoke JSON (tests/fixtures/gpu/) for the CUDA_VISIBLE_DEVICES
it was given, instead of running vLLM. Everything else is real: smoke/per_gpu.py starts one process a
GPU, the toolkit judges what they wrote, and the all-reduce runs through torch.distributed (gloo on the
CPU standing in for NCCL on the GPUs).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from processes import group_gone

from vllm_provision import GIB
from vllm_provision.cli import cli_settings
from vllm_provision.core import config, envinfo
from vllm_provision.core.errors import ConfigError
from vllm_provision.diagnostics import doctor
from vllm_provision.kvcache.parse import kv_facts
from vllm_provision.pipeline import StepContext
from vllm_provision.plan import build_plan
from vllm_provision.probes.host import GPU_QUERY, HostFacts, parse_gpu_csv
from vllm_provision.steps import smoke

FIXTURES = ROOT / "tests" / "fixtures" / "gpu"
H100_SMOKE = FIXTURES / "h100" / "provision" / "smoke.json"
# Written by gpu/multi-gpu-check.sh on the 2 x H200 host; each test falls back to the H100 recordings.
H200X2 = FIXTURES / "h200x2"
OTHER_PID, OTHER_BYTES = 4242, 30 * 10 ** 9


def recorded_probe(name: str) -> str | None:
    """stdout of a recorded nvidia-smi command on the 2 x H200 host (probes.json), when recorded."""
    path = H200X2 / "probes.json"
    if not path.is_file():
        return None
    for cmd, out in json.loads(path.read_text()).items():
        if name in cmd and out.get("rc") == 0:
            return out["stdout"]
    return None


def two_gpu_facts() -> HostFacts:
    """Two GPUs from the recorded query: the H200 pair when recorded, else the H100's row twice (a second
    index and uuid), in host.GPU_QUERY's column order."""
    csv = recorded_probe(f"--query-gpu={GPU_QUERY} ")
    if csv is None:
        h100 = json.loads((FIXTURES / "h100" / "probes.json").read_text())
        cmd = next(c for c in h100 if "--query-gpu=" in c and "nounits" in c)
        fields = cmd.split("--query-gpu=")[1].split()[0].split(",")
        cells = dict(zip(fields, (c.strip() for c in h100[cmd]["stdout"].strip().split(",")), strict=False))
        row = [cells[f] for f in GPU_QUERY.split(",")]
        second = [("1" if f == "index" else cells[f][:-1] + "9" if f == "uuid" else cells[f]) for f in GPU_QUERY.split(",")]
        csv = ", ".join(row) + "\n" + ", ".join(second) + "\n"
    gpus = parse_gpu_csv(csv)
    assert len(gpus) >= 2
    return HostFacts(gpus=gpus[:2], driver_cuda="13.0", cpu_count=32, mem_available_bytes=200 * GIB,
                     mem_total_bytes=256 * GIB, disk_free_bytes=100 * GIB)


def recorded_smoke(gpu: int) -> dict:
    path = H200X2 / f"smoke-gpu{gpu}.json"
    return json.loads((path if path.is_file() else H100_SMOKE).read_text())


def held_by_another_process(smoke_json: dict, used_bytes: int = OTHER_BYTES) -> dict:
    """The same GPU with another process holding `used_bytes` before vLLM loaded, and the KV cache
    short by that much (what a cache sized from the GPU's free memory gets)."""
    s = copy.deepcopy(smoke_json)
    s["gpu"]["other_processes"] = [{"pid": OTHER_PID, "name": "python3", "used_bytes": used_bytes}]
    s["gpu"]["used_by_others_bytes"] = used_bytes
    s["cache"]["num_gpu_blocks"] -= used_bytes // kv_facts(s).bytes_per_block
    return s


STAND_IN = """#!{python}
# The target env's python on a host without GPUs: smoke/generate.py writes the recorded JSON of the GPU
# it was given (CUDA_VISIBLE_DEVICES), after every GPU's process has started (so they ran at once);
# the all-reduce runs on the CPU through gloo; everything else runs for real.
import os, shutil, sys, time
real, folder, count = {python!r}, {folder!r}, {count}
args = sys.argv[1:]
script = os.path.basename(args[0]) if args else ""
if script == "generate.py":
    gpu = os.environ["CUDA_VISIBLE_DEVICES"]
    open(os.path.join(folder, "started-" + gpu), "w").close()
    deadline = time.monotonic() + 120
    while len([n for n in os.listdir(folder) if n.startswith("started-")]) < count:
        if time.monotonic() > deadline:
            sys.exit("generate.py on GPU " + gpu + ": the other GPUs' smokes never started")
        time.sleep(0.05)
    source = os.path.join(folder, "gpu" + gpu + ".json")
    if not os.path.exists(source):
        print("RuntimeError: CUDA error: uncorrectable ECC error encountered", file=sys.stderr)
        sys.exit(1)
    shutil.copy(source, args[args.index("--out") + 1])
    sys.exit(0)
if script == "nccl_check.py":
    args += ["--backend", "gloo", "--device", "cpu", "--sizes", "64KiB,1MiB", "--iters", "3", "--warmup", "1"]
os.execv(real, [real] + args)
"""


def stand_in_python(tmp_path: Path, smokes: dict[int, dict]) -> str:
    folder = tmp_path / "recorded"
    folder.mkdir()
    for gpu, data in smokes.items():
        (folder / f"gpu{gpu}.json").write_text(json.dumps(data))
    path = tmp_path / "python"
    path.write_text(STAND_IN.format(python=sys.executable, folder=str(folder), count=2))
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def ctx(isolated, tmp_path):
    facts = two_gpu_facts()
    plan = build_plan(config.merge(cli_settings(), {"smoke": {"all_gpus": True}}), facts=facts)
    plan.workspace.ensure()
    return StepContext(plan, facts, "smoke")


def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "tiny-chatglm"
    model.mkdir()
    return model


NVIDIA_SMI = """#!/bin/sh
# nvidia-smi on the recorded host: the GPU query from the recording, no compute apps, the header text.
case "$*" in
  *--query-gpu=*) cat {csv} ;;
  *--query-compute-apps=*) ;;
  *) cat {header} ;;
esac
"""


def recorded_nvidia_smi(tmp_path: Path, facts: HostFacts) -> str:
    """A PATH whose nvidia-smi answers with the recorded GPU query of `facts`' GPUs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    csv = "".join(", ".join(str(getattr(g, f)) for f in ("index", "name", "memory_total_mib", "memory_used_mib",
                                                           "compute_cap", "driver_version", "uuid")) + "\n"
                  for g in facts.gpus)
    (tmp_path / "query-gpu.csv").write_text(csv)
    h100 = json.loads((FIXTURES / "h100" / "probes.json").read_text())
    (tmp_path / "nvidia-smi.txt").write_text(recorded_probe("nvidia-smi") or h100["nvidia-smi"]["stdout"])
    smi = bin_dir / "nvidia-smi"
    smi.write_text(NVIDIA_SMI.format(csv=tmp_path / "query-gpu.csv", header=tmp_path / "nvidia-smi.txt"))
    smi.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


# ------------------------------------------------------------------------------------------ the fan-out
def test_inv_smoke_all_gpus_smokes_every_gpu_at_once_judges_each_and_reports(isolated, tmp_path):
    facts = two_gpu_facts()
    ws = build_plan({}, facts=facts).workspace
    ws.ensure()
    idle, busy = recorded_smoke(0), held_by_another_process(recorded_smoke(1))
    python = stand_in_python(tmp_path, {0: idle, 1: busy})
    envinfo.save(ws, envinfo.EnvInfo(backend="existing", prefix=str(tmp_path), python=python, python_version="3.12.3"))
    model = model_dir(tmp_path)
    (model / "config.json").write_text("{}")
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "invoke"), "smoke", "--all-gpus", "--model", str(model)],
                          cwd=ROOT, env={**os.environ, "PATH": recorded_nvidia_smi(tmp_path, facts)},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stderr
    table = [l.split("] ", 1)[1] for l in out.splitlines() if l.startswith("[smoke] ")]
    head = next(i for i, l in enumerate(table) if l.startswith("GPU  name"))
    assert table[head + 1].startswith("0 ") and " pass " in table[head + 1]
    assert table[head + 2].startswith("1 ") and " warn " in table[head + 2] and f"pid {OTHER_PID}" in table[head + 2]
    assert any(l.startswith("NCCL all-reduce across 2 GPUs") for l in table)
    assert any(l.startswith("tensor parallel: skipped: ray is not importable") for l in table)

    data = json.loads(ws.report.read_text())
    rows = {r["gpu"]: r for r in data["gpus"]["per_gpu"]}
    assert set(rows) == {0, 1}
    assert rows[0]["status"] == "pass" and rows[0]["num_gpu_blocks"] == idle["cache"]["num_gpu_blocks"]
    assert rows[0]["shortfall"] is None and rows[0]["other_processes"] == []
    # GPU 1: its own prediction, short by the other process's memory, and that process named
    assert rows[1]["num_gpu_blocks"] == busy["cache"]["num_gpu_blocks"] < rows[1]["predicted_blocks"]
    assert rows[1]["status"] == "warn" and rows[1]["off_pct"] < -10
    assert f"python3 (pid {OTHER_PID}, 30.0 GB)" in rows[1]["shortfall"]
    assert rows[1]["name"] == facts.gpus[1].name and rows[1]["uuid"] == facts.gpus[1].uuid

    nccl = data["nccl"]
    assert nccl["ok"] and nccl["world_size"] == 2 and nccl["env"]["NCCL_NVLS_ENABLE"] == "0"
    assert [s["label"] for s in nccl["sizes"]] == ["64 KiB", "1 MiB"]
    assert all(s["wrong_elements"] == 0 and s["busbw_gbps"] > 0 for s in nccl["sizes"])
    tp = data["gpus"]["tensor_parallel"]
    assert tp["status"] == "skipped" and "ray is not importable" in tp["reason"]

    step = data["steps"]["smoke"]
    blocks = f"{idle['cache']['num_gpu_blocks']:,}".replace(",", " ")
    assert step["status"] == "ok" and step["detail"].startswith(f"2 GPUs: 1 pass, 1 warn; {blocks} / ")
    assert [g["status"] for g in step["facts"]["gpus"]] == ["pass", "warn"]
    md = ws.report.with_suffix(".md").read_text()
    assert "## Smoke on every GPU (2 GPUs" in md and f"pid {OTHER_PID}" in md
    assert "## NCCL all-reduce: ok (2 GPUs" in md and "| 1 MiB |" in md
    assert "Tensor parallel (2 GPUs): skipped: ray is not importable" in md


def test_a_gpu_whose_smoke_dies_fails_with_its_own_log(ctx, tmp_path):
    python = stand_in_python(tmp_path, {0: recorded_smoke(0)})      # GPU 1's process exits 1, no JSON
    folder = ctx.workspace.root / "gpus"
    folder.mkdir()
    rows = smoke.per_gpu_smoke(ctx, python, model_dir(tmp_path), folder)
    assert [r["status"] for r in rows] == ["pass", "fail"]
    assert rows[1]["returncode"] == 1 and rows[1]["smoke_json"] is None
    assert "uncorrectable ECC error" in rows[1]["detail"] and rows[1]["log"] in rows[1]["hint"]
    table = smoke.gpu_table(rows)
    assert table[0].split()[:3] == ["GPU", "name", "blocks"] and len(table) == 3
    assert table[2].startswith("1 ") and "fail" in table[2] and "ECC" in table[2]


def test_bad_smoke_input_is_the_scripts_own_error_not_a_failed_gpu(ctx, tmp_path):
    """The real smoke/generate.py on every GPU, given a model dir without config.json."""
    folder = ctx.workspace.root / "gpus"
    folder.mkdir()
    with pytest.raises(ConfigError) as err:
        smoke.per_gpu_smoke(ctx, sys.executable, model_dir(tmp_path), folder)
    assert "has no config.json" in err.value.message and "snapshot directory" in err.value.hint


def test_all_gpus_setting_defaults_off_and_comes_from_the_flag_or_the_environment(isolated, monkeypatch):
    facts = two_gpu_facts()
    assert build_plan({}, facts=facts).smoke.all_gpus is False
    assert build_plan(config.merge(cli_settings(), {"smoke": {"all_gpus": True}}), facts=facts).smoke.all_gpus is True
    monkeypatch.setenv("VLLMP_SMOKE__ALL_GPUS", "true")
    assert build_plan({}, facts=facts).smoke.all_gpus is True
    monkeypatch.setenv("VLLMP_SMOKE__ALL_GPUS", "sometimes")
    with pytest.raises(ConfigError) as err:
        build_plan({}, facts=facts)
    assert "smoke.all_gpus" in err.value.message and "VLLMP_SMOKE__ALL_GPUS" in err.value.message


def test_stamp_unchanged_by_the_setting_when_off(ctx):
    on = smoke.stamp_inputs(ctx)["smoke"]
    off = smoke.stamp_inputs(StepContext(build_plan({}, facts=ctx.facts), ctx.facts, "smoke"))["smoke"]
    assert on["all_gpus"] is True and "all_gpus" not in off


# ------------------------------------------------------------------------------------------ judging
def test_shortfall_names_nobody_when_no_other_process_holds_the_gpu():
    s = copy.deepcopy(recorded_smoke(0))
    s["cache"]["num_gpu_blocks"] //= 2
    row = smoke.judged(s)
    assert row["status"] == "warn" and "no other process" in row["shortfall"]


def test_cache_allocation_out_of_memory_names_the_processes_holding_the_gpu():
    s = held_by_another_process(recorded_smoke(0))
    s["error"] = {"type": "OutOfMemoryError", "message": "CUDA out of memory. Tried to allocate 70.00 GiB"}
    s["outputs"] = []
    row = smoke.judged(s)
    assert row["status"] == "fail" and row["detail"].startswith("engine-ran: OutOfMemoryError")
    assert f"pid {OTHER_PID}" in row["shortfall"]


def test_tensor_parallel_share_divides_checkpoint_weights_only():
    s = recorded_smoke(0)
    assert s["model"]["parameter_bytes_source"] == "loaded model"
    assert smoke.one_gpu_share(s, 2)["model"]["parameter_bytes"] == s["model"]["parameter_bytes"]
    s["model"]["parameter_bytes_source"] = "safetensors headers x dtype bytes"
    share = smoke.one_gpu_share(s, 2)
    assert share["model"]["parameter_bytes"] == s["model"]["parameter_bytes"] // 2
    assert share["model"]["parameter_bytes_source"].endswith("/ 2 GPUs")
    assert smoke.judged(share)["predicted_blocks"] > smoke.judged(s)["predicted_blocks"]


# ------------------------------------------------------------------------------------------ per_gpu.py
def test_per_gpu_launcher_ends_a_hung_gpu_and_everything_it_started(tmp_path):
    result = tmp_path / "per-gpu.json"
    hang = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); " \
           "time.sleep(600) if '{gpu}' == '1' else None"
    done = subprocess.run([sys.executable, ROOT / "smoke" / "per_gpu.py", "--gpus", "0,1", "--timeout", "5",
                           "--log-dir", tmp_path, "--result", result, "--", sys.executable, "-c", hang],
                          capture_output=True, text=True, timeout=120)
    doc = json.loads(result.read_text())
    assert done.returncode == 1 and "GPU 1 timed out after 5 s" in done.stderr
    assert [(g["gpu"], g["returncode"], g["timed_out"]) for g in doc["gpus"]][0] == (0, 0, False)
    assert doc["gpus"][1]["timed_out"] and doc["gpus"][1]["returncode"] < 0
    assert group_gone(doc["process_group"])      # GPU 0's sleeper and GPU 1 with its child


@pytest.mark.parametrize("args, needle", [(["--gpus", "0,x"], "--gpus '0,x'"), (["--gpus", "0"], "no command")])
def test_per_gpu_launcher_bad_input(tmp_path, args, needle):
    done = subprocess.run([sys.executable, ROOT / "smoke" / "per_gpu.py", *args, "--log-dir", tmp_path,
                           "--result", tmp_path / "r.json"], capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 2 and needle in lines[0]
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: ")


# ------------------------------------------------------------------------------------------ inv nccl
def test_inv_nccl_without_two_gpus_is_bad_input(isolated):
    if os.path.exists("/usr/bin/nvidia-smi"):
        pytest.skip("this host has nvidia-smi")
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "invoke"), "nccl"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: the NCCL check needs at least 2 GPUs and 0 is visible" in done.stderr
    assert "hint: run `./inv nccl` on a multi-GPU host" in done.stderr


# ------------------------------------------------------------------------------------------ doctor
# `nvidia-smi topo -m` on a 2-GPU NVLink host with one NIC (driver 5xx: an underlined header, padded
# affinity columns); the recording in tests/fixtures/gpu/h200x2/probes.json replaces it once made.
TOPO_2GPU = ("\t\x1b[4mGPU0\tGPU1\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
             "GPU0\t X \tNV18\tSYS\t0-15\t0\t\tN/A\n"
             "GPU1\tNV18\t X \tSYS\t16-31\t1\t\tN/A\n"
             "NIC0\tSYS\tSYS\t X \t\t\t\t\n\n"
             "Legend:\n\n  X    = Self\n"
             "  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)\n"
             "  NV#  = Connection traversing a bonded set of # NVLinks\n\n"
             "NIC Legend:\n\n  NIC0: mlx5_0\n")


def test_topology_matrix_parsed():
    topo = doctor.parse_topology(recorded_probe("topo -m") or TOPO_2GPU)
    assert topo["devices"][:2] == ["GPU0", "GPU1"]
    link = topo["matrix"]["GPU0"]["GPU1"]
    assert topo["matrix"]["GPU0"]["GPU0"] == "X" and topo["matrix"]["GPU1"]["GPU0"] == link
    assert topo["links"] == [f"GPU0-GPU1 {link}"]
    assert set(topo["affinity"]["GPU0"]) >= {"CPU Affinity", "NUMA Affinity"}
    assert topo["legend"]["X"] == "Self" and "NVLinks" in topo["legend"]["NV#"]
    assert doctor.parse_topology("No devices were found") is None


def test_doctor_gpu_section_names_what_holds_each_gpu(isolated):
    facts = two_gpu_facts()
    uuid1 = facts.gpus[1].uuid
    apps = f"{uuid1}, {OTHER_PID}, python3, 30000\n{uuid1}, 977, /usr/bin/python, 500\n"
    section = doctor.gpu_section(facts, apps, TOPO_2GPU)
    assert section["count"] == 2 and section["topology"]["links"] == ["GPU0-GPU1 NV18"]
    used = [(d["index"], d["used_by_other_processes_mib"], [p["pid"] for p in d["processes"]]) for d in section["devices"]]
    assert used == [(0, 0, []), (1, 30500, [OTHER_PID, 977])]
    plan = build_plan({}, facts=facts)
    check = doctor.check_gpus(facts, plan, section)
    assert check.status == "warn" and "GPU 0 0 MiB" in check.detail
    assert f"GPU 1 30500 MiB (python3 pid {OTHER_PID}" in check.detail and "links GPU0-GPU1 NV18" in check.detail
    idle = doctor.check_gpus(facts, plan, doctor.gpu_section(facts, "", TOPO_2GPU))
    assert idle.status == "pass" and "GPU 1 0 MiB" in idle.detail
    unknown = doctor.gpu_section(facts, "", None, "nvidia-smi topo -m: not supported")
    assert unknown["topology"] is None and "not supported" in doctor.check_gpus(facts, plan, unknown).detail


def test_the_smoke_counts_only_processes_on_its_own_gpu(tmp_path, monkeypatch):
    """smoke/generate.py on a two-GPU host: the other GPU's smoke process takes nothing from this GPU."""
    import importlib.util
    facts = two_gpu_facts()
    mine, other = facts.gpus[1].uuid, facts.gpus[0].uuid
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '{OTHER_PID}, python3, 30000, {mine}\\n"
                                        f"977, python3, 2000, {other}\\n'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spec = importlib.util.spec_from_file_location("engine_facts", ROOT / "smoke" / "engine_facts.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)

    class Props:        # torch's device properties print the uuid without nvidia-smi's GPU- prefix
        uuid = mine.removeprefix("GPU-")

    assert generate.gpu_uuid(Props()) == mine
    assert generate.other_gpu_processes(mine) == [{"pid": OTHER_PID, "name": "python3", "used_bytes": 30000 << 20}]
    assert [p["pid"] for p in generate.other_gpu_processes(None)] == [OTHER_PID, 977]
