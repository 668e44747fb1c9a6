"""smoke/nccl_check.py run for real on the CPU: gloo all-reduces across real rank processes, a rank that
never joins, bad input. NCCL itself needs GPUs; gloo drives the same control flow (ranks, rendezvous,
result check, bandwidth, the timeout that ends the whole process group)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import jsonschema
import pytest
import torch.distributed  # noqa: E402,F401 (a test dependency (pyproject's test extra): a broken install fails here, never skips)
from conftest import ROOT
from processes import alive, children_of, group_gone

from vllm_provision.core.outputs import stamped

SCRIPT = ROOT / "smoke" / "nccl_check.py"
# Torch imports take long on a loaded CI machine; the rendezvous must outlast them.
JOIN_TIMEOUT_S = 240
GRACE_S = 60


def check(*args: str, timeout: float = JOIN_TIMEOUT_S + GRACE_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--backend", "gloo", "--device", "cpu", *args],
                          capture_output=True, text=True, timeout=timeout, start_new_session=True)


def test_gloo_all_reduce_across_three_ranks_is_checked_and_measured(tmp_path):
    out = tmp_path / "nccl.json"
    done = check("--world-size", "3", "--sizes", "64KiB,1MiB", "--iters", "3", "--warmup", "1",
                 "--timeout", str(JOIN_TIMEOUT_S), "--out", str(out), "--log-dir", str(tmp_path / "logs"))
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert doc["ok"] and doc["error"] is None and doc["world_size"] == 3
    assert doc["env"]["NCCL_NVLS_ENABLE"] == "0"
    assert [s["bytes"] for s in doc["sizes"]] == [64 << 10, 1 << 20]
    for s in doc["sizes"]:
        assert s["wrong_elements"] == 0 and s["time_us"] > 0
        assert s["busbw_gbps"] == pytest.approx(s["algbw_gbps"] * 4 / 3, abs=0.002)   # 2 (n - 1) / n
    assert [(r["rank"], r["joined"], r["phase"], r["returncode"]) for r in doc["ranks"]] == \
        [(r, True, "done", 0) for r in range(3)]
    assert doc["never_joined"] == [] and group_gone(doc["process_group"])
    schema = json.loads((ROOT / "vllm_provision" / "schemas" / "nccl.schema.json").read_text())
    jsonschema.validate(stamped("nccl", doc), schema)     # what `./inv nccl --json` prints
    assert "1 MiB" in done.stderr and "nccl check: ok" in done.stderr


def test_a_rank_that_never_joins_ends_the_whole_group_at_the_timeout(tmp_path):
    out = tmp_path / "nccl.json"
    timeout = 45
    done = check("--world-size", "3", "--sizes", "64KiB", "--hold-rank", "2", "--timeout", str(timeout),
                 "--out", str(out), "--log-dir", str(tmp_path / "logs"), timeout=timeout + GRACE_S)
    doc = json.loads(out.read_text())
    assert done.returncode == 1 and "Traceback" not in done.stderr
    error = [l for l in done.stderr.splitlines() if l.startswith("error: ")]
    assert len(error) == 1 and f"did not finish within {timeout} s" in error[0]
    assert "rank 2 never joined" in error[0] or "ranks 0, 1, 2 never joined" in error[0]   # 0, 1: still importing
    assert any(l.startswith("hint: ") and "NCCL_DEBUG=INFO" in l for l in done.stderr.splitlines())
    assert not doc["ok"] and 2 in doc["never_joined"] and doc["sizes"] == []
    held = doc["ranks"][2]
    assert not held["joined"] and held["returncode"] < 0          # alive until the group was ended
    for r in doc["ranks"][:2]:
        assert r["phase"] is None or r["phase"].startswith("joined")
    assert doc["stopped"].startswith(("stopped with SIGTERM", "still running"))
    assert group_gone(doc["process_group"])


@pytest.mark.parametrize("args, needle", [
    (["--sizes", "1MiB,3XB"], "'3XB' is not a message size"),
    (["--sizes", "6"], "multiple of 4 bytes"),
    (["--world-size", "1"], "needs at least 2 ranks"),
    (["--hold-rank", "5"], "--hold-rank 5 is not a rank of 2"),
])
def test_bad_input_is_one_error_and_one_hint(args, needle):
    done = check(*args, timeout=JOIN_TIMEOUT_S)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 2 and not done.stdout
    assert lines[0].startswith("error: ") and needle in lines[0] and lines[1].startswith("hint: ")


def test_nccl_without_gpus_is_bad_input():
    import torch
    if torch.cuda.device_count() >= 2:
        pytest.skip("this host has GPUs to all-reduce across")
    done = subprocess.run([sys.executable, str(SCRIPT), "--timeout", "30"], capture_output=True, text=True,
                          timeout=JOIN_TIMEOUT_S)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 2 and "at least 2" in lines[0]


def test_sigterm_to_the_check_ends_every_rank(tmp_path):
    logs = tmp_path / "logs"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--backend", "gloo", "--device", "cpu", "--world-size", "2",
                             "--hold-rank", "1", "--timeout", str(JOIN_TIMEOUT_S), "--log-dir", str(logs),
                             "--out", str(tmp_path / "nccl.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ranks: list[int] = []
        for _ in range(JOIN_TIMEOUT_S * 10):      # until both ranks have been started
            ranks = children_of(proc.pid)
            if len(ranks) == 2 and len(list(logs.glob("rank*.log"))) == 2:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        assert len(ranks) == 2
        proc.terminate()
        _, err = proc.communicate(timeout=GRACE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted; the ranks were ended" in err and "Traceback" not in err
    assert not any(alive(pid) for pid in ranks)
    assert not (tmp_path / "nccl.json").exists()
