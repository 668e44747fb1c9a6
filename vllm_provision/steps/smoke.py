"""smoke: generate with the notes' sampling parameters in the target env, then judge and explain
the KV-cache block allocation (and, with smoke.parity, prove the compiled kernels right)."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from pathlib import Path

from vllm_provision import PROJECT_ROOT, report
from vllm_provision.checks import CheckStatus
from vllm_provision.core import envinfo, runner
from vllm_provision.core.errors import ConfigError, StepFailed
from vllm_provision.core.progress import progress
from vllm_provision.core.workspace import Workspace
from vllm_provision.diagnostics import inputs
from vllm_provision.kvcache import judge as kvjudge
from vllm_provision.kvcache.parse import kv_facts
from vllm_provision.kvcache.units import group_digits
from vllm_provision.pipeline import StepContext, StepOutcome
from vllm_provision.plan import Plan
from vllm_provision.probes.host import Gpu
from vllm_provision.steps.build import built_digest
from vllm_provision.steps.facts import SmokeFacts, StepStatus

SMOKE_DIR = PROJECT_ROOT / "smoke"
SCRIPTS = ("generate.py", "model_checks.py", "logcapture.py", "engine_facts.py", "kv_facts.py", "parity.py",
           "chatglm_reference.py", "make_tiny_chatglm.py", "per_gpu.py", "nccl_check.py", "procgroup.py",
           "engine_compat.py")
GENERATE_TIMEOUT_S = 1800
NCCL_TIMEOUT_S = 180
RAY_PROBE_TIMEOUT_S = 120
# over a script's own --timeout: time to end its children and write its JSON before the runner stops it
SCRIPT_TIMEOUT_MARGIN_S = 60


def _scripts_hash() -> str:
    h = hashlib.sha256()
    for name in SCRIPTS:
        path = SMOKE_DIR / name
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def stamp_inputs(ctx: StepContext) -> dict:
    # all_gpus off leaves the stamp as it was before the setting existed: no smoke reruns for it
    smoke = {k: v for k, v in ctx.plan.smoke.model_dump().items() if k != "all_gpus" or v}
    return {"smoke": smoke, "scripts": _scripts_hash(),
            "gpus": [g.uuid or g.name for g in ctx.facts.gpus], "built": built_digest(ctx.workspace)}


def make_tiny_model(python: str, out: Path, log: Path | None = None) -> Path:
    """The deterministic tiny ChatGLM (real THUDM layout), made with the target env's python."""
    runner.run([python, SMOKE_DIR / "make_tiny_chatglm.py", "--out", out], log=log, what="make_tiny_chatglm",
               timeout=600)
    return out


def resolve_model(ctx: StepContext, python: str) -> Path:
    model = ctx.plan.smoke.model
    if model:
        refusal = inputs.model_refusal(model)   # checked before the first step too; the directory may have changed
        if refusal:
            raise refusal
        return Path(model).expanduser()
    ctx.say("no --model given: making the tiny ChatGLM checkpoint")
    return make_tiny_model(python, ctx.workspace.root / "models" / "tiny-chatglm", ctx.log)


def generate_argv(plan: Plan, python: str, model: Path, out: Path | str) -> list:
    """smoke/generate.py's command line for the plan's smoke settings."""
    argv = [python, SMOKE_DIR / "generate.py", "--model", model, "--out", out,
            "--gpu-memory-utilization", str(plan.smoke.gpu_memory_utilization),
            "--engine", plan.release.llm_engine]
    if plan.smoke.max_model_len:
        argv += ["--max-model-len", str(plan.smoke.max_model_len)]
    return argv


def bad_input(output: str, default: str) -> ConfigError:
    """A smoke script's exit 2: its `error:` and `hint:` lines as the toolkit's own bad-input error."""
    lines = [l for l in output.splitlines() if l.startswith(("error:", "hint:"))]
    message = next((l[6:].strip() for l in lines if l.startswith("error:")), default)
    hint = next((l[5:].strip() for l in lines if l.startswith("hint:")), None)
    return ConfigError(message, hint=hint)


def read_result(script: str, result: runner.Completed, out: Path, log: Path) -> dict:
    """The JSON a smoke script wrote, or the error that says why there is none."""
    if result.returncode == 2:
        raise bad_input(result.output, f"bad {script} input")
    if not out.is_file():
        raise StepFailed(f"{script} exited {result.returncode} without writing {out}",
                         hint=f"read {log}", log_tail="\n".join(result.output.splitlines()[-30:]))
    return json.loads(out.read_text())


def run(ctx: StepContext) -> StepOutcome:
    if not ctx.facts.gpus:
        return StepOutcome(status=StepStatus.SKIPPED, detail=f"no GPU on this host ({ctx.facts.gpu_error or 'none visible'}); "
                                                   "the smoke needs one: run `./inv smoke` on the GPU host")
    env = envinfo.load(ctx.workspace)
    model = resolve_model(ctx, env.python)
    if ctx.plan.smoke.all_gpus:
        if ctx.plan.smoke.parity:
            ctx.say("kernel parity runs with the single-GPU smoke (smoke.all_gpus off), not on every GPU")
        return run_all_gpus(ctx, env.python, model)
    out = ctx.workspace.root / "smoke.json"
    out.unlink(missing_ok=True)
    ctx.say(f"generating with the notes' sampling parameters on {model.name}")
    with progress("loading the model and generating", step=ctx.name):     # a heartbeat while vLLM starts
        result = runner.run(generate_argv(ctx.plan, env.python, model, out), log=ctx.log, what="smoke/generate.py",
                            timeout=GENERATE_TIMEOUT_S, check=False)
    smoke = read_result("smoke/generate.py", result, out, ctx.log)
    for line in (smoke.get("sampling") or {}).get("changes") or []:
        ctx.say(f"sampling: {line}")
    verdict = kvjudge.judge(smoke)
    for line in verdict.explanation:
        ctx.say(line)
    for line in kvjudge.summarize(verdict):
        ctx.say(line)
    facts = {"verdict": verdict.to_dict(), "smoke_json": str(out), "model": str(model),
             "num_gpu_blocks": (smoke.get("cache") or {}).get("num_gpu_blocks"),
             "num_cpu_blocks": (smoke.get("cache") or {}).get("num_cpu_blocks"),
             "kv_cache_tokens": kv_facts(smoke).capacity_tokens if smoke.get("engine") == "v1" else None,
             "timings": smoke.get("timings")}
    if ctx.plan.smoke.parity:
        facts["parity"] = run_parity(ctx, env.python, model)
    failed = verdict.failed()
    if failed:
        first = failed[0]
        raise StepFailed(f"smoke check {first.name} failed: {first.detail}", hint=first.hint)
    if facts.get("parity") and not facts["parity"].get("ok"):
        raise StepFailed("kernel parity failed: " + "; ".join(facts["parity"].get("failures", [])[:3]),
                         hint=f"see {ctx.workspace.root / 'parity.json'}; a wrong-arch or miscompiled kernel "
                              "shows here: rebuild with the GPU's arch (`./inv build --force`)")
    blocks = facts["num_gpu_blocks"]
    size = (f"{facts['kv_cache_tokens']} KV-cache tokens in {blocks} blocks" if facts["kv_cache_tokens"] is not None
            else f"{blocks} GPU blocks")
    return StepOutcome(detail=f"{size}, all checks passed"
                       + (", kernel parity ok" if facts.get("parity") else ""), facts=SmokeFacts.from_dict(facts))


def run_parity(ctx: StepContext, python: str, model: Path) -> dict:
    out = ctx.workspace.root / "parity.json"
    out.unlink(missing_ok=True)
    ctx.say("kernel parity: vLLM's greedy tokens and compiled ops against plain-PyTorch references")
    result = runner.run([python, SMOKE_DIR / "parity.py", "--model", model, "--out", out], log=ctx.log,
                        what="smoke/parity.py", timeout=1800, check=False)
    data = read_result("smoke/parity.py", result, out, ctx.log)
    failures = [f"{o['name']} {o.get('shape', '')}: max err {o.get('max_abs_err')} > {o.get('tol')}"
                for o in data.get("ops", []) if not o.get("ok")]
    m = data.get("model") or {}
    if m.get("mismatches"):
        failures.append(f"greedy tokens: {m['mismatches']} of {m.get('tokens_compared')} differ from the reference")
    failures += [str(e) for e in data.get("errors", [])]
    return {"ok": bool(data.get("ok")) and not failures, "failures": failures, "model": m,
            "ops": data.get("ops", []), "json": str(out)}


# ------------------------------------------------------------------------------------------ every GPU
def run_all_gpus(ctx: StepContext, python: str, model: Path) -> StepOutcome:
    """smoke.all_gpus: the same smoke on each GPU at once (each judged against its own prediction),
    then on hosts with more than one GPU the NCCL all-reduce check and the tensor-parallel smoke."""
    gpus = ctx.facts.gpus
    folder = ctx.workspace.root / "gpus"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rows = per_gpu_smoke(ctx, python, model, folder)
    for line in gpu_table(rows):
        ctx.say(line)
    if len(gpus) > 1:
        nccl = nccl_check(python, ctx.workspace, ctx.log, len(gpus))
        for line in nccl_lines(nccl):
            ctx.say(line)
        tp = tensor_parallel_smoke(ctx, python, model, len(gpus), folder)
    else:
        nccl = None
        tp = {"status": StepStatus.SKIPPED, "reason": "one GPU: nothing to split the model over"}
    ctx.say(f"tensor parallel: {tp['status']}: {tp.get('reason') or tp.get('detail')}")
    section = {"count": len(gpus), "per_gpu": rows, "tensor_parallel": tp,
               "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    report.merge_section(ctx.workspace.report, "gpus", section)
    if nccl is not None:
        report.merge_section(ctx.workspace.report, "nccl", nccl)
    facts = {"gpus": [{k: r.get(k) for k in ("gpu", "status", "num_gpu_blocks", "predicted_blocks", "shortfall")}
                      for r in rows],
             "nccl": None if nccl is None else {"ok": nccl.get("ok"), "error": nccl.get("error"),
                                                 "busbw_gbps": {s["label"]: s["busbw_gbps"] for s in nccl["sizes"]}},
             "tensor_parallel": {k: tp.get(k) for k in ("status", "reason", "num_gpu_blocks", "predicted_blocks")}}
    failed = [r for r in rows if r["status"] == CheckStatus.FAIL]
    if failed:
        first = failed[0]
        raise StepFailed(f"smoke failed on GPU {', '.join(str(r['gpu']) for r in failed)} of {len(rows)}: "
                         f"GPU {first['gpu']}: {first['detail']}"
                         + (f" ({first['shortfall']})" if first.get("shortfall") else ""), hint=first.get("hint"))
    if nccl is not None and nccl.get("error"):
        raise StepFailed(f"NCCL check: {nccl['error']['message']}", hint=nccl["error"].get("hint"))
    if tp["status"] == CheckStatus.FAIL:
        raise StepFailed(f"tensor-parallel smoke ({tp['tensor_parallel_size']} GPUs): {tp['detail']}",
                         hint=tp.get("hint"))
    verdicts = ", ".join(f"{sum(r['status'] == v for r in rows)} {v}" for v in (CheckStatus.PASS, CheckStatus.WARN)
                         if any(r["status"] == v for r in rows))
    busbw = f"; NCCL busbw up to {max(s['busbw_gbps'] for s in nccl['sizes']):.1f} GB/s" if nccl else ""
    return StepOutcome(detail=f"{len(rows)} GPU{'s' if len(rows) > 1 else ''}: {verdicts}; "
                              f"{' / '.join(_blocks(r['num_gpu_blocks']) for r in rows)} GPU blocks{busbw}; "
                              f"tensor parallel {tp['status']}", facts=SmokeFacts.from_dict(facts))


def per_gpu_smoke(ctx: StepContext, python: str, model: Path, folder: Path) -> list[dict]:
    """smoke/generate.py once per GPU, all at once through smoke/per_gpu.py (one process group: a timeout
    or Ctrl-C ends them all); one judged row per GPU."""
    gpus = ctx.facts.gpus
    launch = folder / "per-gpu.json"
    argv = [python, SMOKE_DIR / "per_gpu.py", "--gpus", ",".join(str(g.index) for g in gpus),
            "--timeout", str(GENERATE_TIMEOUT_S), "--log-dir", folder, "--result", launch, "--",
            *generate_argv(ctx.plan, python, model, folder / "smoke-gpu{gpu}.json")]
    ctx.say(f"generating on {len(gpus)} GPU(s) at once with {model.name}, one process each (CUDA_VISIBLE_DEVICES=i)")
    result = runner.run(argv, log=ctx.log, what="smoke/per_gpu.py", timeout=GENERATE_TIMEOUT_S + SCRIPT_TIMEOUT_MARGIN_S,
                        check=False)
    entries = {e["gpu"]: e for e in read_result("smoke/per_gpu.py", result, launch, ctx.log)["gpus"]}
    for e in entries.values():     # the same bad input (a model dir, a missing GPU) stops every GPU's smoke
        if e.get("returncode") == 2:
            raise bad_input(Path(e["log"]).read_text(errors="replace"), "bad smoke input")
    return [gpu_row(g, entries.get(g.index, {}), folder / f"smoke-gpu{g.index}.json") for g in gpus]


def gpu_row(gpu: Gpu, launched: dict, smoke_json: Path) -> dict:
    """One GPU's line of the table: its smoke judged against its own prediction."""
    row = {"gpu": gpu.index, "name": gpu.name, "uuid": gpu.uuid, "memory_total_mib": gpu.memory_total_mib,
           "returncode": launched.get("returncode"), "timed_out": bool(launched.get("timed_out")),
           "log": launched.get("log"), "smoke_json": str(smoke_json) if smoke_json.is_file() else None}
    if not smoke_json.is_file():
        why = (f"timed out after {GENERATE_TIMEOUT_S} s" if row["timed_out"]
               else f"exited {row['returncode']} without writing its JSON")
        last = (_read_lines(row["log"])[-1:] or ["no output"])[0]
        return row | {"status": CheckStatus.FAIL, "detail": f"smoke/generate.py {why}: {last}",
                      "hint": f"read {row['log']}" if row["log"] else None}
    return row | judged(json.loads(smoke_json.read_text()))


def _read_lines(path: str | None) -> list[str]:
    try:
        return Path(path).read_text(errors="replace").strip().splitlines() if path else []
    except OSError:
        return []


def judged(smoke: dict) -> dict:
    """A smoke JSON judged: status, measured vs predicted blocks, the other processes on the GPU and,
    when the GPU has fewer blocks than it should, why."""
    verdict = kvjudge.judge(smoke)
    measured = kv_facts(smoke).num_gpu_blocks
    predicted = (verdict.prediction or {}).get("num_gpu_blocks")
    others_bytes, others = kvjudge.other_processes(smoke)
    failed = verdict.failed()
    warned = [c for c in verdict.checks if c.status == kvjudge.WARN]
    first = (failed or warned or [None])[0]
    return {"status": CheckStatus.FAIL if failed else CheckStatus.WARN if warned else CheckStatus.PASS,
            "num_gpu_blocks": measured, "predicted_blocks": predicted,
            "off_pct": round((measured - predicted) / predicted * 100, 1) if measured is not None and predicted else None,
            "other_processes": others, "used_by_others_bytes": others_bytes,
            "shortfall": shortfall(verdict, measured, predicted, others_bytes, others),
            "detail": f"{first.name}: {first.detail}" if first else "all checks passed",
            "hint": first.hint if first else None, "verdict": verdict.to_dict()}


def shortfall(verdict: kvjudge.Verdict, measured: int | None, predicted: int | None, others_bytes: int | None,
              others: list[str]) -> str | None:
    """Why a GPU has fewer KV-cache blocks than it should (None when it has not): the processes that
    hold its memory, by name, when there are any."""
    memory_error = verdict.get("engine-ran")
    short = (any(c is not None and c.status == kvjudge.FAIL for c in (verdict.get("gpu-blocks"), verdict.get("kv-capacity")))
             or (memory_error is not None and memory_error.status == kvjudge.FAIL
                 and "memory" in memory_error.detail.lower())
             or (measured is not None and bool(predicted)
                 and measured < predicted * (1 - kvjudge.TOLERANCE_PREDICTION)))
    if not short:
        return None
    if others:
        return f"other processes hold {(others_bytes or 0) / 1e9:.1f} GB of this GPU: {', '.join(others)}"
    return "no other process holds this GPU's memory: the engine's own peak was higher than predicted"


def gpu_table(rows: list[dict]) -> list[str]:
    """One line a GPU, aligned (a plain table reads the same on a terminal and in a CI log)."""
    head = ("GPU", "name", "blocks", "predicted", "off", "verdict", "other processes / detail")
    cells = [head]
    for r in rows:
        off = r.get("off_pct")
        # why a GPU is short says it all; a failure without that shows its first failed check
        note = r.get("shortfall") or (r["detail"] if r["status"] == CheckStatus.FAIL else
                                      ", ".join(r.get("other_processes") or []) or "none")
        cells.append((str(r["gpu"]), r.get("name") or "?", _blocks(r.get("num_gpu_blocks")),
                      _blocks(r.get("predicted_blocks")), "—" if off is None else f"{off:+.1f} %",
                      r["status"], note))
    widths = [max(len(c[i]) for c in cells) for i in range(len(head) - 1)]
    return ["  ".join(c[i].ljust(widths[i]) for i in range(len(widths))) + "  " + c[-1] for c in cells]


def _blocks(n: int | None) -> str:
    return "—" if n is None else group_digits(n)


def tensor_parallel_smoke(ctx: StepContext, python: str, model: Path, n: int, folder: Path) -> dict:
    """The smoke with --tensor-parallel-size n, judged for one GPU's share. vLLM 0.2.2 runs its workers on Ray
    for n > 1: without an importable Ray it is skipped, with the reason. The V1 engine starts its own worker
    processes and needs no Ray."""
    ray = None
    if ctx.plan.release.llm_engine == "v0":
        probe = runner.capture([python, "-c", "import ray; print(ray.__version__)"], timeout=RAY_PROBE_TIMEOUT_S)
        if probe is None or probe.returncode != 0:
            why = (probe.output.strip().splitlines() or ["no output"])[-1] if probe else "the env's python did not run"
            return {"status": StepStatus.SKIPPED, "tensor_parallel_size": n,
                    "reason": f"ray is not importable in the target env ({why}); vLLM 0.2.2 needs Ray for "
                              "tensor_parallel_size > 1"}
        ray = probe.output.strip()
    out = folder / "smoke-tp.json"
    workers = f"ray {ray}" if ray else "the V1 engine's own worker processes"
    ctx.say(f"tensor parallel: {workers}; generating with --tensor-parallel-size {n}")
    result = runner.run(generate_argv(ctx.plan, python, model, out) + ["--tensor-parallel-size", str(n)], log=ctx.log,
                        what=f"smoke/generate.py --tensor-parallel-size {n}", timeout=GENERATE_TIMEOUT_S, check=False)
    smoke = read_result("smoke/generate.py", result, out, ctx.log)
    return {"tensor_parallel_size": n, "ray": ray, "smoke_json": str(out)} | judged(one_gpu_share(smoke, n))


def one_gpu_share(smoke: dict, n: int) -> dict:
    """A tensor-parallel smoke as one GPU sees it. vLLM 0.2.2 splits the weights (embedding and LM head
    included) over the n GPUs; the engine's KV heads are already per GPU; each GPU holds the same number
    of blocks. Weights the driver could not read off a loaded model (Ray workers hold it) are counted
    from the checkpoint, so they are divided here."""
    share = copy.deepcopy(smoke)
    model = share.setdefault("model", {})
    if isinstance(model.get("parameter_bytes"), int) and model.get("parameter_bytes_source") != "loaded model":
        model["parameter_bytes"] //= n
        model["parameter_bytes_source"] = f"{model.get('parameter_bytes_source')} / {n} GPUs"
    return share


# ------------------------------------------------------------------------------------------ NCCL
def nccl_check(python: str, workspace: Workspace, log: Path, world_size: int, sizes: str | None = None,
               timeout: float = NCCL_TIMEOUT_S) -> dict:
    """smoke/nccl_check.py across `world_size` GPUs; its JSON (ok, sizes with busbw, error). NVLink multicast
    stays off (NCCL_NVLS_ENABLE=0); a hang ends as the script's own timeout error."""
    out = workspace.root / "nccl.json"
    out.unlink(missing_ok=True)
    argv = [python, SMOKE_DIR / "nccl_check.py", "--world-size", str(world_size), "--timeout", f"{timeout:g}",
            "--out", out, "--log-dir", workspace.logs / "nccl"]
    if sizes:
        argv += ["--sizes", sizes]
    result = runner.run(argv, log=log, what="smoke/nccl_check.py", timeout=timeout + SCRIPT_TIMEOUT_MARGIN_S,
                        check=False, extra_env={"NCCL_NVLS_ENABLE": "0"})
    return read_result("smoke/nccl_check.py", result, out, log)


def nccl_lines(data: dict) -> list[str]:
    """The all-reduce table (nccl-tests' columns) and the verdict."""
    backend = data.get("backend", "nccl")
    lines = [f"NCCL all-reduce across {data.get('world_size')} GPUs ({backend} "
             f"{(data.get('versions') or {}).get(backend, '')}".rstrip() + ", NCCL_NVLS_ENABLE="
             f"{(data.get('env') or {}).get('NCCL_NVLS_ENABLE', '?')}):",
             f"  {'size':>9}  {'time':>12}  {'algbw':>12}  {'busbw':>12}  wrong"]
    lines += [f"  {s['label']:>9}  {s['time_us']:>9.1f} us  {s['algbw_gbps']:>7.1f} GB/s  {s['busbw_gbps']:>7.1f} GB/s  "
              f"{s['wrong_elements']}" for s in data.get("sizes") or []]
    error = data.get("error")
    lines.append(f"NCCL check failed: {error['message']}" if error else f"NCCL check ok ({data.get('seconds')} s)")
    return lines
