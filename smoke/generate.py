#!/usr/bin/env python3
"""Smoke test: load a model with vLLM, generate, and record the KV-cache sizing as JSON.

Runs INSIDE the target environment: stdlib + torch + vllm only (never imports the toolkit).

    python smoke/generate.py --model /models/chatglm3-6b-32k --out smoke.json

Exit codes: 0 generation ran (the toolkit judges the JSON: ``vllm_provision.kvcache.judge``),
1 vLLM raised (the JSON is still written, with ``error`` and the traceback tail),
2 bad input (no model dir, no config.json, an architecture this vLLM does not know, no GPU):
one ``error: ...`` and one ``hint: ...`` line on stderr, no traceback, no JSON.

The JSON (schema ``vllm-provision/smoke-generate/1``) carries versions, the engine (``v0`` or ``v1``),
GPU facts, model facts, ``cache`` (num_gpu_blocks, num_cpu_blocks, block_size, gpu_memory_utilization,
swap_space_bytes, source: ``cache_config`` | ``log:v0.2`` | ``log:v0`` | ``log:v1``; for V1 also
kv_cache_tokens, max_concurrency, available_kv_cache_gib), the sampling parameters used with a line for each
one the engine no longer takes (engine_compat.py), the outputs, timings, the stop tokens used, and the tail
of vLLM's log (for V1 everything its engine-core process printed too).

Split by job, the siblings imported from this script's own directory: model_checks.py (before vLLM is
imported), logcapture.py (vLLM's log), engine_facts.py (versions, GPU, model), kv_facts.py (the block
counts); procgroup.py's BadInput and error lines are shared with the other smoke scripts.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import traceback

from engine_compat import (
    accepted_names,
    best_completions,
    detect_engine,
    engine_core_root_cause,
    map_llm_args,
    map_sampling,
)
from engine_facts import gpu_facts, model_facts, versions
from kv_facts import cache_facts
from logcapture import FdCapture, ListHandler, Tee, attach_handler
from model_checks import check_architecture, check_gpu, check_weights, load_model_config, model_warnings
from procgroup import BadInput, fail_bad_input

SCHEMA = "vllm-provision/smoke-generate/1"
NOTES_PROMPTS = ["你是谁？", "你在做什么？", "请用中文，为我讲一个关于医生的笑话"]
# The notes' SamplingParams (chatglm3-6b-32k on vLLM 0.2.2).
NOTES_SAMPLING = dict(top_p=0.9, top_k=3, best_of=6, repetition_penalty=1.2, temperature=0.7, max_tokens=500)
LOG_TAIL_CHARS = 20000


# --------------------------------------------------------------------------- CLI

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="local model directory (config.json + weights + tokenizer)")
    p.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true", default=None,
                   help="default: on when config.json's model_type is chatglm")
    p.add_argument("--no-trust-remote-code", dest="trust_remote_code", action="store_false")
    p.add_argument("--dtype", default="auto", help="auto (the config's torch_dtype; fp32 configs become fp16), "
                                                   "float16, bfloat16, float32")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--swap-space", type=int, default=4, help="CPU swap space per GPU in GiB (vLLM's default 4; "
                                                               "the V1 engine has none)")
    p.add_argument("--engine", choices=("auto", "v0", "v1"), default="auto",
                   help="the engine whose figures to read: v0 (up to 0.10: # GPU blocks), v1 (the KV cache in "
                        "tokens); auto: v1 for a vLLM from 0.11 on")
    p.add_argument("--prompt", action="append", dest="prompts", default=None,
                   help="repeatable; default: the notes' three Chinese prompts")
    p.add_argument("--top-p", type=float, default=NOTES_SAMPLING["top_p"])
    p.add_argument("--top-k", type=int, default=NOTES_SAMPLING["top_k"])
    p.add_argument("--best-of", type=int, default=NOTES_SAMPLING["best_of"])
    p.add_argument("--n", type=int, default=1, help="completions returned per prompt")
    p.add_argument("--repetition-penalty", type=float, default=NOTES_SAMPLING["repetition_penalty"])
    p.add_argument("--temperature", type=float, default=NOTES_SAMPLING["temperature"])
    p.add_argument("--max-tokens", type=int, default=NOTES_SAMPLING["max_tokens"])
    p.add_argument("--no-stop-token-ids", action="store_true",
                   help="do not pass the model's eos ids as stop_token_ids")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the JSON here (default: stdout)")
    p.add_argument("--log", default=None, help="also write the full captured vLLM log here")
    return p.parse_args(argv)


def resolve_stop_ids(model_dir: str, cfg: dict, tokenizer) -> tuple[list[int], list[str]]:
    ids: list[int] = []
    sources = []

    def add(v, src):
        vals = v if isinstance(v, list) else [v]
        new = [int(x) for x in vals if isinstance(x, int) and not isinstance(x, bool) and int(x) not in ids]
        if new:
            ids.extend(new)
            sources.append(f"{src}: {new}")

    gpath = os.path.join(model_dir, "generation_config.json")
    if os.path.isfile(gpath):
        try:
            with open(gpath, encoding="utf-8") as fh:
                add(json.load(fh).get("eos_token_id"), "generation_config.json eos_token_id")
        except Exception:
            pass
    add(cfg.get("eos_token_id"), "config.json eos_token_id")
    if tokenizer is not None:
        add(getattr(tokenizer, "eos_token_id", None), "tokenizer.eos_token_id")
        if cfg.get("model_type") == "chatglm":
            # ChatGLM3 ends a turn on <|user|> / <|observation|> (64795, 64797 for the real model).
            for tok in ("<|user|>", "<|observation|>"):
                tid = None
                get_command = getattr(tokenizer, "get_command", None)
                if get_command is not None:
                    try:
                        tid = get_command(tok)
                    except Exception:
                        tid = None
                if tid is None:
                    try:
                        tid = tokenizer.convert_tokens_to_ids(tok)
                        if tid == getattr(tokenizer, "unk_token_id", None):
                            tid = None
                    except Exception:
                        tid = None
                add(tid, f"tokenizer {tok}")
    return ids, sources


# --------------------------------------------------------------------------- run

def engine_arg_names() -> set[str] | None:
    """What LLM() passes on to EngineArgs (None: unknown, pass everything)."""
    try:
        from vllm import LLM
        from vllm.engine.arg_utils import EngineArgs
    except Exception:
        return None
    names = accepted_names(EngineArgs)
    own = accepted_names(LLM)
    if names is None:
        return None
    return names | (own or set())


def run(args, cfg: dict, arch_info: dict, notes: list[str]) -> tuple[dict, int]:
    import torch

    doc: dict = {"schema": SCHEMA, "ok": False, "error": None, "argv": sys.argv[1:], "notes": notes,
                 "architecture_check": arch_info, "versions": versions(), "engine": args.engine,
                 "engine_source": args.engine_source}
    doc["gpu"] = gpu_facts()
    prompts = args.prompts or list(NOTES_PROMPTS)
    buf = io.StringIO()
    real_out, real_err = sys.stdout, sys.stderr
    handler = ListHandler()
    llm = None
    exit_code = 0
    capture = None
    if args.engine == "v1":
        # The V1 engine core logs from a child process: capture descriptors 1 and 2 (they pass on to stderr).
        capture = FdCapture().start()
        sys.stdout = real_err
    else:
        # vLLM 0.2.x logs to sys.stdout (bound at import); send that to stderr (+ a copy) so our
        # stdout carries only the JSON.
        sys.stdout = Tee(real_err, buf)
        sys.stderr = Tee(real_err, buf)
    try:
        try:
            import vllm
            from vllm import LLM, SamplingParams
            attach_handler(handler)
            doc["versions"]["vllm"] = getattr(vllm, "__version__", doc["versions"].get("vllm"))
            llm_args, llm_changes = map_llm_args(
                dict(model=args.model, trust_remote_code=args.trust_remote_code, dtype=args.dtype,
                     max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
                     tensor_parallel_size=args.tensor_parallel_size, swap_space=args.swap_space, seed=args.seed),
                engine_arg_names())
            t0 = time.perf_counter()
            llm = LLM(**llm_args)
            doc["load_seconds"] = round(time.perf_counter() - t0, 3)
            attach_handler(handler)
            tokenizer = None
            try:
                tokenizer = llm.get_tokenizer()
            except Exception:
                pass
            sp_params = accepted_names(SamplingParams)
            notes_sampling = dict(n=args.n, best_of=args.best_of, top_p=args.top_p, top_k=args.top_k,
                                  repetition_penalty=args.repetition_penalty, temperature=args.temperature,
                                  max_tokens=args.max_tokens)
            stop_ids, stop_sources = ([], []) if args.no_stop_token_ids else resolve_stop_ids(args.model, cfg, tokenizer)
            sampling, sampling_changes, keep = map_sampling(notes_sampling, sp_params)
            dropped = [k for k in notes_sampling if sp_params is not None and k not in sp_params]
            stop_supported = sp_params is None or "stop_token_ids" in sp_params
            stop_info = {"stop_token_ids": None, "resolved": stop_ids, "sources": stop_sources,
                         "supported": stop_supported, "stop_strings": None}
            if stop_ids and stop_supported:
                sampling["stop_token_ids"] = stop_ids
                stop_info["stop_token_ids"] = stop_ids
            # Never an empty stop string: ChatGLM's id 2 decodes to "" and stop=[""] ends every
            # completion at once (anchors item 9). We pass no stop strings at all.
            doc["sampling"] = dict(sampling, dropped_unsupported=dropped)
            if llm_changes or sampling_changes:
                doc["sampling"]["changes"] = llm_changes + sampling_changes
                doc["sampling"]["notes"] = notes_sampling
            if keep is not None:
                doc["sampling"]["keep_best"] = keep
            doc["stop"] = stop_info
            try:
                doc["model"] = model_facts(llm, cfg, args.model, args)
            except Exception as e:  # facts are best effort; generation still runs
                doc["model"] = {"path": os.path.abspath(args.model), "model_type": cfg.get("model_type"),
                                "facts_error": f"{type(e).__name__}: {e}"}
            params = SamplingParams(**sampling)
            t1 = time.perf_counter()
            results = llm.generate(prompts, params, use_tqdm=False)
            gen_s = time.perf_counter() - t1
            outs, ntok = [], 0
            for r in results:
                comps = []
                for c in r.outputs:
                    n = len(getattr(c, "token_ids", []) or [])
                    ntok += n
                for c in best_completions(r.outputs, keep):
                    n = len(getattr(c, "token_ids", []) or [])
                    comps.append({"text": c.text, "num_tokens": n, "finish_reason": c.finish_reason,
                                  "token_ids_head": list(c.token_ids[:16]) if getattr(c, "token_ids", None) else []})
                    if keep is not None:
                        comps[-1]["cumulative_logprob"] = getattr(c, "cumulative_logprob", None)
                outs.append({"prompt": r.prompt, "prompt_tokens": len(r.prompt_token_ids or []),
                             "completions": comps})
            doc["outputs"] = outs
            doc["generation_seconds"] = round(gen_s, 3)
            doc["generated_tokens"] = ntok
            doc["tokens_per_second"] = round(ntok / gen_s, 2) if gen_s > 0 else None
            doc["ok"] = True
        except BaseException as e:  # noqa: BLE001 - everything vLLM raises is reported
            if isinstance(e, KeyboardInterrupt):
                raise
            tb = traceback.format_exc()
            doc["error"] = {"type": type(e).__name__, "message": (" ".join(str(e).split())[:2000] or type(e).__name__),
                            "traceback_tail": tb[-6000:], "hint": error_hint(str(e) + tb)}
            exit_code = 1
    finally:
        sys.stdout, sys.stderr = real_out, real_err
        captured = capture.stop() if capture is not None else None
    log_text = captured if captured is not None else buf.getvalue() + "\n" + "\n".join(handler.records)
    if doc["error"] and captured is not None:
        cause = engine_core_root_cause(captured)
        if cause and cause not in doc["error"]["message"]:
            doc["error"]["root_cause"] = cause[:2000]
            doc["error"]["message"] = f"{doc['error']['message']} (engine core: {cause})"[:2000]
            doc["error"]["hint"] = error_hint(cause)
    doc["cache"] = cache_facts(llm, log_text)
    if "model" not in doc and llm is not None:
        try:
            doc["model"] = model_facts(llm, cfg, args.model, args)
        except Exception:
            pass
    if "model" not in doc:
        doc["model"] = {"path": os.path.abspath(args.model), "model_type": cfg.get("model_type"),
                        "architecture": (cfg.get("architectures") or [None])[0]}
    try:
        doc["gpu"]["max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    except Exception:
        pass
    doc["log_tail"] = log_text[-LOG_TAIL_CHARS:]
    if args.log:
        with open(args.log, "w", encoding="utf-8") as fh:
            fh.write(log_text)
    return doc, exit_code


def error_hint(text: str) -> str:
    t = text.lower()
    if "no kernel image is available" in t:
        return ("the compiled vLLM .so files lack this GPU's SASS: rebuild with TORCH_CUDA_ARCH_LIST including "
                "this GPU's compute capability (';'-separated for 0.2.2), check with cuobjdump --list-elf")
    if "no available memory for the cache blocks" in t or "out of memory" in t:
        return "raise --gpu-memory-utilization, lower --max-model-len, or free the GPU of other processes"
    if "has no attribute 'tokenizer'" in t or "padding_side" in t:
        return "transformers is too new for ChatGLM's remote tokenizer code: use the lock's transformers pin"
    if "trust_remote_code" in t or "remote code" in t:
        return "pass --trust-remote-code (ChatGLM ships its own config/tokenizer code)"
    if "does not recognize this architecture" in t or "unrecognized model" in t:
        return ("transformers cannot load this config: ChatGLM needs auto_map + configuration_chatglm.py in the "
                "model dir and --trust-remote-code")
    if "which is larger than the available kv cache memory" in t:
        return "lower --max-model-len (the message gives the estimated maximum) or raise --gpu-memory-utilization"
    if "is less than desired gpu memory utilization" in t:
        return ("free the GPU of other processes or lower --gpu-memory-utilization: the V1 engine needs that "
                "fraction of the GPU free when it starts")
    if "head_size" in t and "not supported" in t:
        return "vLLM 0.2.x paged attention supports head sizes 64, 80, 96, 112, 128, 256 only"
    if "xformers" in t:
        return "xformers does not match torch: install the xformers the lock pins for this torch"
    return "see traceback_tail and log_tail in this JSON"


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_model_config(args.model)
        arch_info = check_architecture(cfg)
        check_weights(args.model, cfg)
        if args.trust_remote_code is None:
            args.trust_remote_code = cfg.get("model_type") == "chatglm"
        check_gpu()
    except BadInput as e:
        return fail_bad_input(e.message, e.hint)
    args.engine, args.engine_source = detect_engine(args.engine)
    notes = model_warnings(cfg, args.engine)
    for n in notes:
        print(f"warning: {n}", file=sys.stderr)
    doc, code = run(args, cfg, arch_info, notes)
    text = json.dumps(doc, ensure_ascii=False, indent=2, default=str)
    if args.out:
        tmp = args.out + ".part"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        os.replace(tmp, args.out)
    else:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    c = doc.get("cache") or {}
    summary = (f"smoke: {'ok' if doc.get('ok') else 'FAILED'}; GPU blocks {c.get('num_gpu_blocks')}, "
               f"CPU blocks {c.get('num_cpu_blocks')} (source {c.get('source')})")
    if args.engine == "v1":
        summary = (f"smoke: {'ok' if doc.get('ok') else 'FAILED'}; GPU KV cache size {c.get('kv_cache_tokens')} "
                   f"tokens in {c.get('num_gpu_blocks')} blocks, maximum concurrency {c.get('max_concurrency')} "
                   f"(source {c.get('source')})")
    if doc.get("error"):
        summary += f"\nerror: {doc['error']['type']}: {doc['error']['message']}\nhint: {doc['error']['hint']}"
    print(summary + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
