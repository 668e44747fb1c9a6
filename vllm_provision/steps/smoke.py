"""smoke: generate with the blog's sampling parameters in the target env, then judge and explain
the KV-cache block allocation (and, with smoke.parity, prove the compiled kernels right)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import PROJECT_ROOT, envinfo, kvcache, runner
from ..errors import ConfigError, StepFailed
from ..pipeline import StepContext, StepOutcome
from .build import built_digest

SMOKE_DIR = PROJECT_ROOT / "smoke"
SCRIPTS = ("generate.py", "parity.py", "chatglm_reference.py", "make_tiny_chatglm.py")


def _scripts_hash() -> str:
    h = hashlib.sha256()
    for name in SCRIPTS:
        path = SMOKE_DIR / name
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def stamp_inputs(ctx: StepContext) -> dict:
    return {"smoke": dict(ctx.plan.smoke), "scripts": _scripts_hash(),
            "gpus": [g.uuid or g.name for g in ctx.facts.gpus], "built": built_digest(ctx)}


def make_tiny_model(python: str, out: Path, log: Path | None = None) -> Path:
    """The deterministic tiny ChatGLM (real THUDM layout), made with the target env's python."""
    runner.run([python, SMOKE_DIR / "make_tiny_chatglm.py", "--out", out], log=log, what="make_tiny_chatglm",
               timeout=600)
    return out


def resolve_model(ctx: StepContext, python: str) -> Path:
    model = ctx.plan.smoke.get("model")
    if model:
        path = Path(str(model)).expanduser()
        if not path.is_dir():
            raise ConfigError(f"model directory {path} does not exist",
                              hint="pass --model /path/to/checkpoint (a dir with config.json), or omit it to use a tiny ChatGLM")
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} has no config.json", hint="point --model at a Hugging Face checkpoint directory")
        return path
    ctx.say("no --model given: making the tiny ChatGLM checkpoint")
    return make_tiny_model(python, ctx.workspace.root / "models" / "tiny-chatglm", ctx.log)


def run(ctx: StepContext) -> StepOutcome:
    if not ctx.facts.gpus:
        return StepOutcome(status="skipped", detail=f"no GPU on this host ({ctx.facts.gpu_error or 'none visible'}); "
                                                   "the smoke needs one: run `inv smoke` on the GPU host")
    env = envinfo.load(ctx.workspace)
    model = resolve_model(ctx, env.python)
    out = ctx.workspace.root / "smoke.json"
    out.unlink(missing_ok=True)
    argv = [env.python, SMOKE_DIR / "generate.py", "--model", model, "--out", out,
            "--gpu-memory-utilization", str(ctx.plan.smoke.get("gpu_memory_utilization") or 0.9)]
    if ctx.plan.smoke.get("max_model_len"):
        argv += ["--max-model-len", str(ctx.plan.smoke["max_model_len"])]
    ctx.say(f"generating with the blog's sampling parameters on {model.name}")
    result = runner.run(argv, log=ctx.log, what="smoke/generate.py", timeout=1800, check=False)
    if result.returncode == 2:
        lines = [l for l in result.output.splitlines() if l.startswith(("error:", "hint:"))]
        message = next((l[6:].strip() for l in lines if l.startswith("error:")), "bad smoke input")
        hint = next((l[5:].strip() for l in lines if l.startswith("hint:")), None)
        raise ConfigError(message, hint=hint)
    if not out.is_file():
        raise StepFailed(f"smoke/generate.py exited {result.returncode} without writing {out}",
                         hint=f"read {ctx.log}", log_tail="\n".join(result.output.splitlines()[-30:]))
    smoke = json.loads(out.read_text())
    verdict = kvcache.judge(smoke)
    for line in verdict.explanation:
        ctx.say(line)
    for line in kvcache.summarize(verdict):
        ctx.say(line)
    facts = {"verdict": verdict.to_dict(), "smoke_json": str(out), "model": str(model),
             "num_gpu_blocks": (smoke.get("cache") or {}).get("num_gpu_blocks"),
             "num_cpu_blocks": (smoke.get("cache") or {}).get("num_cpu_blocks"),
             "timings": smoke.get("timings")}
    if ctx.plan.smoke.get("parity"):
        facts["parity"] = run_parity(ctx, env.python, model)
    failed = verdict.failed()
    if failed:
        first = failed[0]
        raise StepFailed(f"smoke check {first.name} failed: {first.detail}", hint=first.hint)
    if facts.get("parity") and not facts["parity"].get("ok"):
        raise StepFailed("kernel parity failed: " + "; ".join(facts["parity"].get("failures", [])[:3]),
                         hint=f"see {ctx.workspace.root / 'parity.json'}; a wrong-arch or miscompiled kernel "
                              "shows here: rebuild with the GPU's arch (`inv build --force`)")
    blocks = facts["num_gpu_blocks"]
    return StepOutcome(detail=f"{blocks} GPU blocks, all checks passed"
                       + (", kernel parity ok" if facts.get("parity") else ""), facts=facts)


def run_parity(ctx: StepContext, python: str, model: Path) -> dict:
    out = ctx.workspace.root / "parity.json"
    out.unlink(missing_ok=True)
    ctx.say("kernel parity: vLLM's greedy tokens and compiled ops against plain-PyTorch references")
    result = runner.run([python, SMOKE_DIR / "parity.py", "--model", model, "--out", out], log=ctx.log,
                        what="smoke/parity.py", timeout=1800, check=False)
    if not out.is_file():
        raise StepFailed(f"smoke/parity.py exited {result.returncode} without writing {out}", hint=f"read {ctx.log}",
                         log_tail="\n".join(result.output.splitlines()[-30:]))
    data = json.loads(out.read_text())
    failures = [f"{o['name']} {o.get('shape', '')}: max err {o.get('max_abs_err')} > {o.get('tol')}"
                for o in data.get("ops", []) if not o.get("ok")]
    m = data.get("model") or {}
    if m.get("mismatches"):
        failures.append(f"greedy tokens: {m['mismatches']} of {m.get('tokens_compared')} differ from the reference")
    failures += [str(e) for e in data.get("errors", [])]
    return {"ok": bool(data.get("ok")) and not failures, "failures": failures, "model": m,
            "ops": data.get("ops", []), "json": str(out)}
