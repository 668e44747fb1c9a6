#!/usr/bin/env python3
"""Kernel and model parity for a vLLM 0.2.2 build, against plain-PyTorch references.

Runs INSIDE the target env (stdlib + torch + vllm). Two parts:

* ops: vLLM 0.2.2's compiled ops (``vllm.activation_ops.silu_and_mul``,
  ``vllm.layernorm_ops.rms_norm``, ``vllm.pos_encoding_ops.rotary_embedding`` neox + GPT-J,
  ``vllm.cache_ops.reshape_and_cache``, ``vllm.attention_ops.paged_attention_v1``/``v2``) on
  random fp16 inputs of several shapes vs torch references (modelled on vLLM's
  ``tests/kernels``); max abs error vs tolerance per op and shape.
* model: greedy (temperature 0) generation with vLLM on a (tiny) ChatGLM checkpoint, then a
  teacher-forced pass of ``smoke/chatglm_reference.py`` over prompt + vLLM's tokens: at every
  step vLLM's token must be the reference argmax, unless the reference logit of vLLM's token
  is within ``--tie-rtol`` of the top one (an fp16 rounding tie, counted as a tie).

    python smoke/parity.py --model /tmp/tiny-chatglm --out parity.json

JSON: ``{ok, schema, versions, gpu, model: {tokens_compared, mismatches, ties, ...},
ops: [{name, shape, max_abs_err, tol, ok, error?, hint?}], errors: [...]}``.
Exit 0 all ok, 1 a check failed, 2 bad input (no GPU, no model dir, vllm not installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA = "vllm-provision/smoke-parity/1"
NO_KERNEL_HINT = ("the compiled vLLM .so lacks SASS/PTX for this GPU: rebuild with TORCH_CUDA_ARCH_LIST including "
                  "this GPU's compute capability (';'-separated for 0.2.2) and check with cuobjdump --list-elf")
PARTITION_SIZE = 512  # paged_attention_v2_launcher in 0.2.2


class BadInput(Exception):
    def __init__(self, message, hint):
        super().__init__(message)
        self.message, self.hint = message, hint


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="tiny ChatGLM checkpoint dir (smoke/make_tiny_chatglm.py --out DIR)")
    p.add_argument("--ops-only", action="store_true", help="skip the model-level check")
    p.add_argument("--model-only", action="store_true", help="skip the op-level checks")
    p.add_argument("--max-tokens", type=int, default=32, help="greedy tokens generated per prompt")
    p.add_argument("--prompt-lens", default="5,11,23", help="comma-separated random prompt lengths")
    p.add_argument("--tie-rtol", type=float, default=1e-2,
                   help="a mismatch is a tie when ref[top] - ref[vllm] <= rtol * max(1, |ref[top]|)")
    p.add_argument("--max-ties-fraction", type=float, default=0.25,
                   help="fail when more than this fraction of compared tokens are ties (a sign of drift)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the JSON here (default: stdout)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- op references

def _tol(ref, atol, rtol):
    return float(atol + rtol * ref.abs().max().item())


def _err(a, b):
    return float((a.float() - b.float()).abs().max().item()) if a.numel() else 0.0


def _op_result(name, shape, err, tol, **extra):
    d = {"name": name, "shape": shape, "max_abs_err": err, "tol": tol, "ok": bool(err <= tol)}
    d.update(extra)
    return d


def check_silu_and_mul(torch, ops, shapes):
    out = []
    for (n, d) in shapes:
        x = torch.randn(n, 2 * d, dtype=torch.float16, device="cuda")
        o = torch.empty(n, d, dtype=torch.float16, device="cuda")
        ops.silu_and_mul(o, x)
        xf = x.float()
        ref = torch.nn.functional.silu(xf[:, :d]) * xf[:, d:]
        out.append(_op_result("activation_ops.silu_and_mul", [n, 2 * d], _err(o, ref), _tol(ref, 1e-3, 2e-3)))
    return out


def check_rms_norm(torch, ops, shapes, eps=1e-6):
    out = []
    for (n, h) in shapes:
        x = torch.randn(n, h, dtype=torch.float16, device="cuda")
        w = torch.empty(h, dtype=torch.float16, device="cuda").normal_(1.0, 0.1)
        o = torch.empty_like(x)
        ops.rms_norm(o, x, w, eps)
        xf = x.float()
        ref = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()
        out.append(_op_result("layernorm_ops.rms_norm", [n, h], _err(o, ref), _tol(ref, 1e-3, 2e-3)))
    return out


def ref_rotary(torch, positions, x, head_size, rot_dim, cos_sin, is_neox):
    """x [T, heads*hd] -> rotated copy (float32), as pos_encoding_kernels.cu does."""
    T = x.shape[0]
    x = x.float().view(T, -1, head_size).clone()
    cos, sin = cos_sin.float()[positions].chunk(2, dim=-1)  # [T, rot_dim/2]
    cos, sin = cos[:, None, :], sin[:, None, :]
    xr = x[..., :rot_dim]
    if is_neox:
        x1, x2 = xr[..., : rot_dim // 2], xr[..., rot_dim // 2:]
        rot = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    else:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rot = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    x[..., :rot_dim] = rot
    return x.view(T, -1)


def check_rotary(torch, ops, cases, max_pos=8192, base=10000.0):
    out = []
    for (T, nh, nkv, hd, rot_dim, is_neox) in cases:
        inv = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float32, device="cuda") / rot_dim))
        t = torch.arange(max_pos, dtype=torch.float32, device="cuda")
        freqs = torch.einsum("i,j->ij", t, inv)
        cos_sin = torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(torch.float16)
        positions = torch.randint(0, max_pos, (T,), device="cuda", dtype=torch.int64)
        q = torch.randn(T, nh * hd, dtype=torch.float16, device="cuda")
        k = torch.randn(T, nkv * hd, dtype=torch.float16, device="cuda")
        rq = ref_rotary(torch, positions, q, hd, rot_dim, cos_sin, is_neox)
        rk = ref_rotary(torch, positions, k, hd, rot_dim, cos_sin, is_neox)
        ops.rotary_embedding(positions, q, k, hd, cos_sin, is_neox)
        err = max(_err(q, rq), _err(k, rk))
        style = "neox" if is_neox else "gptj"
        out.append(_op_result(f"pos_encoding_ops.rotary_embedding[{style}]",
                              {"tokens": T, "heads": nh, "kv_heads": nkv, "head_size": hd, "rot_dim": rot_dim},
                              err, _tol(rq, 1e-3, 2e-3)))
    return out


def check_reshape_and_cache(torch, ops, cases):
    out = []
    for (T, nkv, hd, bs, nblocks) in cases:
        x = 16 // torch.tensor([], dtype=torch.float16).element_size()
        key = torch.randn(T, nkv, hd, dtype=torch.float16, device="cuda")
        value = torch.randn(T, nkv, hd, dtype=torch.float16, device="cuda")
        slots = torch.tensor(random.sample(range(nblocks * bs), T), dtype=torch.int64, device="cuda")
        kc = torch.randn(nblocks, nkv, hd // x, bs, x, dtype=torch.float16, device="cuda")
        vc = torch.randn(nblocks, nkv, hd, bs, dtype=torch.float16, device="cuda")
        rkc, rvc = kc.clone(), vc.clone()
        ops.reshape_and_cache(key, value, kc, vc, slots)
        for i, s in enumerate(slots.tolist()):
            b, o = divmod(s, bs)
            rkc[b, :, :, o, :] = key[i].reshape(nkv, hd // x, x)
            rvc[b, :, :, o] = value[i]
        err = max(_err(kc, rkc), _err(vc, rvc))
        out.append(_op_result("cache_ops.reshape_and_cache",
                              {"tokens": T, "kv_heads": nkv, "head_size": hd, "block_size": bs}, err, 0.0))
    return out


def ref_paged_attention(torch, query, kc, vc, head_mapping, scale, block_tables, context_lens, bs):
    num_seqs, nh, hd = query.shape
    out = torch.empty(num_seqs, nh, hd, dtype=torch.float32, device=query.device)
    hm = head_mapping.long()
    for i in range(num_seqs):
        L = int(context_lens[i])
        idx = torch.arange(L, device=query.device)
        blocks = block_tables[i].long()[idx // bs]
        offs = idx % bs
        keys = kc[blocks, :, :, offs, :].reshape(L, kc.shape[1], hd).float()    # [L, nkv, hd]
        vals = vc[blocks, :, :, offs].float()                                    # [L, nkv, hd]
        keys, vals = keys[:, hm, :], vals[:, hm, :]                              # [L, nh, hd]
        s = torch.einsum("hd,lhd->hl", query[i].float(), keys) * scale
        p = s.softmax(-1)
        out[i] = torch.einsum("hl,lhd->hd", p, vals)
    return out


def check_paged_attention(torch, ops, cases, version):
    out = []
    fn = getattr(ops, f"paged_attention_{version}", None)
    if fn is None:
        return out
    for (num_seqs, nh, nkv, hd, bs, max_ctx) in cases:
        x = 8  # 16 bytes / fp16
        scale = float(hd ** -0.5)
        num_blocks = 1024
        kc = torch.empty(num_blocks, nkv, hd // x, bs, x, dtype=torch.float16, device="cuda").uniform_(-scale, scale)
        vc = torch.empty(num_blocks, nkv, hd, bs, dtype=torch.float16, device="cuda").uniform_(-scale, scale)
        q = torch.empty(num_seqs, nh, hd, dtype=torch.float16, device="cuda").uniform_(-scale, scale)
        ctx = [random.randint(1, max_ctx) for _ in range(num_seqs)]
        ctx[-1] = max_ctx
        context_lens = torch.tensor(ctx, dtype=torch.int32, device="cuda")
        mbps = (max_ctx + bs - 1) // bs
        block_tables = torch.tensor([[random.randint(0, num_blocks - 1) for _ in range(mbps)] for _ in range(num_seqs)],
                                    dtype=torch.int32, device="cuda")
        head_mapping = torch.repeat_interleave(torch.arange(nkv, dtype=torch.int32, device="cuda"), nh // nkv)
        o = torch.empty_like(q)
        if version == "v1":
            fn(o, q, kc, vc, head_mapping, scale, block_tables, context_lens, bs, max_ctx, None)
        else:
            parts = (max_ctx + PARTITION_SIZE - 1) // PARTITION_SIZE
            tmp = torch.empty(num_seqs, nh, parts, hd, dtype=torch.float16, device="cuda")
            exp_sums = torch.empty(num_seqs, nh, parts, dtype=torch.float32, device="cuda")
            max_logits = torch.empty_like(exp_sums)
            fn(o, exp_sums, max_logits, tmp, q, kc, vc, head_mapping, scale, block_tables, context_lens, bs,
               max_ctx, None)
        ref = ref_paged_attention(torch, q, kc, vc, head_mapping, scale, block_tables, context_lens, bs)
        out.append(_op_result(f"attention_ops.paged_attention_{version}",
                              {"seqs": num_seqs, "heads": nh, "kv_heads": nkv, "head_size": hd, "block_size": bs,
                               "max_context_len": max_ctx}, _err(o, ref), _tol(ref, 1e-3, 1e-2)))
    return out


def _failed_op(name, e):
    msg = " ".join(str(e).split())[:600]
    d = {"name": name, "shape": None, "max_abs_err": None, "tol": None, "ok": False,
         "error": f"{type(e).__name__}: {msg}"}
    if "no kernel image is available" in msg.lower():
        d["hint"] = NO_KERNEL_HINT
    elif isinstance(e, (ImportError, AttributeError)):
        d["hint"] = ("this vLLM build does not expose 0.2.2's op modules (vllm.*_ops): a different release, "
                     "or the extension failed to build/load")
    return d


def run_ops(torch):
    results = []
    plan = [
        ("vllm.activation_ops", "activation_ops.silu_and_mul",
         lambda m: check_silu_and_mul(torch, m, [(7, 512), (83, 4096), (1, 13696)])),
        ("vllm.layernorm_ops", "layernorm_ops.rms_norm",
         lambda m: check_rms_norm(torch, m, [(7, 768), (83, 4096), (1, 5120)])),
        ("vllm.pos_encoding_ops", "pos_encoding_ops.rotary_embedding",
         lambda m: check_rotary(torch, m, [(7, 32, 32, 128, 128, True), (83, 8, 8, 64, 32, True),
                                           (7, 32, 2, 128, 64, False), (83, 4, 2, 128, 64, False)])),
        ("vllm.cache_ops", "cache_ops.reshape_and_cache",
         lambda m: check_reshape_and_cache(torch, m, [(42, 2, 128, 16, 64), (7, 8, 64, 16, 8), (83, 4, 128, 32, 16)])),
        ("vllm.attention_ops", "attention_ops.paged_attention_v1",
         lambda m: check_paged_attention(torch, m, [(7, 32, 2, 128, 16, 100), (3, 8, 8, 64, 16, 37),
                                                    (5, 16, 4, 128, 32, 300)], "v1")),
        ("vllm.attention_ops", "attention_ops.paged_attention_v2",
         lambda m: check_paged_attention(torch, m, [(3, 32, 2, 128, 16, 1500), (2, 8, 8, 64, 16, 1100)], "v2")),
    ]
    import importlib
    for mod_name, label, fn in plan:
        try:
            mod = importlib.import_module(mod_name)
            res = fn(mod)
            torch.cuda.synchronize()
            results.extend(res)
        except Exception as e:  # one broken op must not hide the others
            try:
                torch.cuda.synchronize()
            except Exception:
                pass
            results.append(_failed_op(label, e))
    return results


# --------------------------------------------------------------------------- model check

def tokenizer_vocab_size(model_dir):
    path = os.path.join(model_dir, "tokenizer.json")
    try:
        with open(path, encoding="utf-8") as fh:
            tj = json.load(fh)
        vocab = (tj.get("model") or {}).get("vocab") or {}
        n = len(vocab) if isinstance(vocab, (dict, list)) else 0
        ids = [t.get("id", -1) for t in tj.get("added_tokens") or []]
        return max([n - 1] + ids) + 1 if (n or ids) else None
    except Exception:
        return None


def compare_teacher_forced(ref_logits_fn, prompts, generations, tie_rtol):
    """Pure logic (testable on CPU): per step, vLLM token vs reference argmax, ties counted."""
    compared = mismatches = ties = 0
    details = []
    for pi, (prompt, gen) in enumerate(zip(prompts, generations)):
        if not gen:
            continue
        logits = ref_logits_fn(list(prompt) + list(gen))
        for i, tok in enumerate(gen):
            row = logits[len(prompt) - 1 + i]
            top = int(row.argmax())
            compared += 1
            if top == tok:
                continue
            gap = float(row[top] - row[tok])
            tol = tie_rtol * max(1.0, abs(float(row[top])))
            entry = {"prompt": pi, "step": i, "vllm_token": int(tok), "ref_token": top, "gap": gap, "tol": tol}
            if gap <= tol:
                ties += 1
                entry["tie"] = True
            else:
                mismatches += 1
                entry["tie"] = False
            if len(details) < 20:
                details.append(entry)
    return {"tokens_compared": compared, "mismatches": mismatches, "ties": ties, "details": details}


def run_model(torch, args, cfg, errors):
    sys.path.insert(0, HERE)
    from chatglm_reference import ChatGLMReference, load_checkpoint
    from vllm import LLM, SamplingParams

    info = {"tokens_compared": 0, "mismatches": None, "ties": None}
    vocab = int(cfg.get("padded_vocab_size") or cfg.get("vocab_size"))
    tok_n = tokenizer_vocab_size(args.model)
    info["padded_vocab_size"] = vocab
    info["tokenizer_vocab_size"] = tok_n
    hi = min(vocab, tok_n) if tok_n else vocab
    rng = random.Random(args.seed)
    lens = [int(x) for x in args.prompt_lens.split(",") if x.strip()]
    prompts = [[rng.randrange(min(3, hi - 1), hi) for _ in range(n)] for n in lens]
    info["prompts"] = prompts
    llm = LLM(model=args.model, trust_remote_code=True, dtype="float16", seed=args.seed,
              gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len)
    sp = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    try:
        results = llm.generate(prompt_token_ids=prompts, sampling_params=sp, use_tqdm=False)
    except Exception as e:
        if tok_n and tok_n < vocab:
            errors.append(f"tokenizer has {tok_n} ids but the model emits up to {vocab}: detokenizing a "
                          "generated id past the tokenizer fails in 0.2.2; make the tiny tokenizer cover "
                          "padded_vocab_size")
        raise e
    gens = [list(r.outputs[0].token_ids) for r in results]
    info["generated"] = gens
    _, weights = load_checkpoint(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref = ChatGLMReference(cfg, weights, param_dtype=torch.float16, compute_dtype=torch.float32, device=device)
    info.update(compare_teacher_forced(lambda ids: ref.forward(ids).cpu(), prompts, gens, args.tie_rtol))
    rr = cfg.get("rope_ratio", 1)
    if info["mismatches"] and rr not in (None, 1, 1.0):
        errors.append(f"config rope_ratio {rr}: vLLM 0.2.2 ignores it (RoPE base 10000; PR #1841 came later) "
                      "while the reference uses 10000*rope_ratio; mismatches expected")
    hd = cfg.get("kv_channels")
    if hd and hd != cfg["hidden_size"] // cfg["num_attention_heads"]:
        errors.append("kv_channels != hidden_size/num_attention_heads: vLLM 0.2.2 sizes heads from the latter")
    frac = info["ties"] / info["tokens_compared"] if info["tokens_compared"] else 0.0
    info["ties_fraction"] = round(frac, 4)
    info["ok"] = info["tokens_compared"] > 0 and info["mismatches"] == 0 and frac <= args.max_ties_fraction
    if info["tokens_compared"] == 0:
        errors.append("vLLM generated no tokens to compare")
    return info


# --------------------------------------------------------------------------- main

def preflight(args):
    if args.model_only and args.ops_only:
        raise BadInput("--ops-only and --model-only exclude each other", "pass at most one")
    cfg = None
    if not args.ops_only:
        if not args.model:
            raise BadInput("no --model given", "pass --model DIR of a tiny ChatGLM (smoke/make_tiny_chatglm.py "
                                                "--out DIR), or --ops-only")
        if not os.path.isdir(args.model):
            raise BadInput(f"model directory {args.model} does not exist",
                           "make one: python smoke/make_tiny_chatglm.py --out DIR")
        cfg_path = os.path.join(args.model, "config.json")
        if not os.path.isfile(cfg_path):
            raise BadInput(f"{args.model} has no config.json", "point --model at the checkpoint directory")
        with open(cfg_path, encoding="utf-8") as fh:
            cfg = json.load(fh)
        if cfg.get("model_type") != "chatglm":
            raise BadInput(f"model_type is {cfg.get('model_type')!r}, the reference forward is ChatGLM2/3 only",
                           "use smoke/make_tiny_chatglm.py's checkpoint")
        if not any(f.endswith(".safetensors") for f in os.listdir(args.model)):
            raise BadInput(f"{args.model} has no *.safetensors weights", "the reference reads model.safetensors")
    try:
        import torch
    except Exception as e:
        raise BadInput(f"torch is not importable: {e}", "run with the target env's python") from None
    if not torch.cuda.is_available():
        raise BadInput("no CUDA GPU visible to torch", "run on the GPU host; check nvidia-smi and CUDA_VISIBLE_DEVICES")
    if importlib.util.find_spec("vllm") is None:
        raise BadInput("vllm is not installed in this interpreter", "run with the target env's python")
    return cfg, torch


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg, torch = preflight(args)
    except BadInput as e:
        print(f"error: {e.message}", file=sys.stderr)
        print(f"hint: {e.hint}", file=sys.stderr)
        return 2
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    props = torch.cuda.get_device_properties(0)
    doc = {"schema": SCHEMA, "ok": False, "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                                                       "torch_cuda": torch.version.cuda},
           "gpu": {"name": props.name, "capability": f"{props.major}.{props.minor}"},
           "model": None, "ops": [], "errors": []}
    try:
        from importlib.metadata import version
        doc["versions"]["vllm"] = version("vllm")
    except Exception:
        pass
    t0 = time.perf_counter()
    if not args.model_only:
        doc["ops"] = run_ops(torch)
    if not args.ops_only:
        try:
            doc["model"] = run_model(torch, args, cfg, doc["errors"])
        except Exception as e:
            msg = " ".join(str(e).split())[:1000]
            entry = {"tokens_compared": 0, "mismatches": None, "ties": None, "ok": False,
                     "error": f"{type(e).__name__}: {msg}", "traceback_tail": traceback.format_exc()[-4000:]}
            if "no kernel image is available" in msg.lower():
                entry["hint"] = NO_KERNEL_HINT
            doc["model"] = entry
            doc["errors"].append(f"model check: {type(e).__name__}: {msg}")
    doc["seconds"] = round(time.perf_counter() - t0, 2)
    ops_ok = all(o.get("ok") for o in doc["ops"])
    model_ok = True if args.ops_only else bool((doc["model"] or {}).get("ok"))
    doc["ok"] = ops_ok and model_ok
    text = json.dumps(doc, indent=2, default=str)
    if args.out:
        with open(args.out + ".part", "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        os.replace(args.out + ".part", args.out)
    else:
        print(text)
    for o in doc["ops"]:
        if not o.get("ok"):
            print(f"FAIL op {o['name']} {o.get('shape')}: err {o.get('max_abs_err')} tol {o.get('tol')} "
                  f"{o.get('error') or ''}" + (f"\nhint: {o['hint']}" if o.get("hint") else ""), file=sys.stderr)
    m = doc["model"]
    if m is not None:
        print(f"model parity: {m.get('tokens_compared')} tokens, {m.get('mismatches')} mismatches, "
              f"{m.get('ties')} ties{' ERROR ' + m['error'] if m.get('error') else ''}", file=sys.stderr)
    print(f"parity: {'ok' if doc['ok'] else 'FAILED'}", file=sys.stderr)
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
