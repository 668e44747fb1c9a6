#!/usr/bin/env python3
"""Smoke test: load a model with vLLM, generate, and record the KV-cache sizing as JSON.

Runs INSIDE the target environment: stdlib + torch + vllm only (never imports the toolkit).

    python smoke/generate.py --model /models/chatglm3-6b-32k --out smoke.json

Exit codes: 0 generation ran (the toolkit judges the JSON: ``vllm_provision.kvcache.judge``),
1 vLLM raised (the JSON is still written, with ``error`` and the traceback tail),
2 bad input (no model dir, no config.json, an architecture this vLLM does not know, no GPU):
one ``error: ...`` and one ``hint: ...`` line on stderr, no traceback, no JSON.

The JSON (schema ``vllm-provision/smoke-generate/1``) carries versions, GPU facts, model facts,
``cache`` (num_gpu_blocks, num_cpu_blocks, block_size, gpu_memory_utilization,
swap_space_bytes, source: ``cache_config`` | ``log:v0.2`` | ``log:v0`` | ``log:v1``), the
outputs, timings, the stop tokens used, and the tail of vLLM's log.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import traceback

SCHEMA = "vllm-provision/smoke-generate/1"
BLOG_PROMPTS = ["你是谁？", "你在做什么？", "请用中文，为我讲一个关于医生的笑话"]
# The blog's SamplingParams (chatglm3-6b-32k on vLLM 0.2.2).
BLOG_SAMPLING = dict(top_p=0.9, top_k=3, best_of=6, repetition_penalty=1.2, temperature=0.7, max_tokens=500)
GiB = 1 << 30
LOG_TAIL_CHARS = 20000

# vLLM 0.2.2's _MODEL_REGISTRY keys: used when the installed vLLM's registry cannot be read
# from its sources (or vLLM is not installed, e.g. when the pre-import checks are tested).
REGISTRY_0_2_2 = [
    "AquilaModel", "AquilaForCausalLM", "BaiChuanForCausalLM", "BaichuanForCausalLM",
    "BloomForCausalLM", "ChatGLMModel", "FalconForCausalLM", "GPT2LMHeadModel",
    "GPTBigCodeForCausalLM", "GPTJForCausalLM", "GPTNeoXForCausalLM", "InternLMForCausalLM",
    "LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM", "MptForCausalLM",
    "MPTForCausalLM", "OPTForCausalLM", "PhiForCausalLM", "QWenLMHeadModel", "RWForCausalLM",
    "YiForCausalLM",
]
_SUPPORTED_HEAD_SIZES_0_2 = [64, 80, 96, 112, 128, 256]
_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "I32": 4,
                "I64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class BadInput(Exception):
    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message, self.hint = message, hint


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
    p.add_argument("--swap-space", type=int, default=4, help="CPU swap space per GPU in GiB (vLLM's default 4)")
    p.add_argument("--prompt", action="append", dest="prompts", default=None,
                   help="repeatable; default: the blog's three Chinese prompts")
    p.add_argument("--top-p", type=float, default=BLOG_SAMPLING["top_p"])
    p.add_argument("--top-k", type=int, default=BLOG_SAMPLING["top_k"])
    p.add_argument("--best-of", type=int, default=BLOG_SAMPLING["best_of"])
    p.add_argument("--n", type=int, default=1, help="completions returned per prompt")
    p.add_argument("--repetition-penalty", type=float, default=BLOG_SAMPLING["repetition_penalty"])
    p.add_argument("--temperature", type=float, default=BLOG_SAMPLING["temperature"])
    p.add_argument("--max-tokens", type=int, default=BLOG_SAMPLING["max_tokens"])
    p.add_argument("--no-stop-token-ids", action="store_true",
                   help="do not pass the model's eos ids as stop_token_ids")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the JSON here (default: stdout)")
    p.add_argument("--log", default=None, help="also write the full captured vLLM log here")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- pre-import checks

def load_model_config(model: str) -> dict:
    if not os.path.exists(model):
        raise BadInput(f"model directory {model} does not exist",
                       "pass --model a local directory holding config.json, the weights and the tokenizer "
                       "(make a tiny one with smoke/make_tiny_chatglm.py --out DIR)")
    if not os.path.isdir(model):
        raise BadInput(f"{model} is not a directory", "pass --model the model's directory, not a file in it")
    cfg_path = os.path.join(model, "config.json")
    if not os.path.isfile(cfg_path):
        raise BadInput(f"{model} has no config.json",
                       "is this the snapshot directory? a HF model dir holds config.json next to the weights")
    try:
        with open(cfg_path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (OSError, ValueError) as e:
        raise BadInput(f"{cfg_path} is not readable JSON: {e}", "re-download or regenerate the model") from None
    if not isinstance(cfg, dict):
        raise BadInput(f"{cfg_path} is not a JSON object", "re-download or regenerate the model")
    return cfg


def safetensors_headers(model_dir: str) -> dict[str, dict]:
    """Tensor name -> {dtype, shape} from every *.safetensors header (stdlib: 8-byte length + JSON)."""
    out: dict[str, dict] = {}
    for fn in sorted(os.listdir(model_dir)):
        if fn.endswith(".safetensors"):
            with open(os.path.join(model_dir, fn), "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                out.update({k: v for k, v in json.loads(fh.read(n)).items() if k != "__metadata__"})
    return out


# Where the embedding lives and which config keys size it, per model_type (checked before vLLM loads).
_EMBEDDINGS = {
    "chatglm": ("transformer.embedding.word_embeddings.weight", "padded_vocab_size", "num_layers",
                "transformer.encoder.layers.{}."),
    "llama": ("model.embed_tokens.weight", "vocab_size", "num_hidden_layers", "model.layers.{}."),
}


def check_weights(model: str, cfg: dict) -> None:
    """Weights that do not match config.json fail here, with the file named, not deep inside vLLM."""
    names = os.listdir(model)
    if not any(n.endswith((".safetensors", ".bin", ".pt")) for n in names):
        raise BadInput(f"{model} holds no weights (*.safetensors / *.bin)",
                       "copy the checkpoint's weight files next to config.json")
    layout = _EMBEDDINGS.get(cfg.get("model_type", ""))
    if not layout or not any(n.endswith(".safetensors") for n in names):
        return
    try:
        headers = safetensors_headers(model)
    except (OSError, ValueError) as e:
        raise BadInput(f"a *.safetensors file in {model} is unreadable: {e}", "re-download or regenerate the weights")
    embedding, vocab_key, layers_key, layer_prefix = layout
    shape = (headers.get(embedding) or {}).get("shape")
    want = [cfg.get(vocab_key), cfg.get("hidden_size")]
    if shape is None:
        raise BadInput(f"the weights have no {embedding}", "the weights are not this model's: check the directory")
    if None not in want and list(shape) != want:
        raise BadInput(f"{embedding} is {list(shape)} but config.json says [{vocab_key}, hidden_size] = {want}",
                       "the weights do not belong to this config.json: re-download or regenerate the model")
    layers = cfg.get(layers_key)
    if isinstance(layers, int):
        have = sum(1 for i in range(layers + 1) if any(k.startswith(layer_prefix.format(i)) for k in headers))
        if have != layers:
            raise BadInput(f"the weights hold {have} layers, config.json says {layers_key} = {layers}",
                           "the weights do not belong to this config.json: re-download or regenerate the model")


def vllm_registry() -> tuple[list[str], str]:
    """Architectures the installed vLLM knows, read from its sources without importing it."""
    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return list(REGISTRY_0_2_2), "builtin-0.2.2 (vllm not installed)"
    root = list(spec.submodule_search_locations)[0]
    candidates = [
        ("model_executor/model_loader.py", r"_MODEL_REGISTRY\s*=\s*\{(.*?)\n\}"),
        ("model_executor/models/__init__.py", r"_MODELS\s*=\s*\{(.*?)\n\}"),
        ("model_executor/models/__init__.py", r"_GENERATION_MODELS\s*=\s*\{(.*?)\n\}"),
        ("model_executor/models/registry.py", r"_TEXT_GENERATION_MODELS\s*=\s*\{(.*?)\n\}"),
    ]
    names: list[str] = []
    used = []
    for rel, pat in candidates:
        path = os.path.join(root, rel)
        try:
            with open(path, encoding="utf-8") as fh:
                src = fh.read()
        except OSError:
            continue
        m = re.search(pat, src, re.S)
        if m:
            found = re.findall(r'^\s*"([A-Za-z0-9_]+)"\s*:', m.group(1), re.M)
            if found:
                names += found
                used.append(rel)
    if names:
        return sorted(set(names)), "vllm sources: " + ", ".join(used)
    return [], "unreadable"


def check_architecture(cfg: dict) -> dict:
    archs = cfg.get("architectures") or []
    registry, source = vllm_registry()
    info = {"architectures": archs, "registry_source": source, "supported": None}
    if not archs:
        raise BadInput("config.json names no architectures",
                       'add "architectures": ["<ClassName>"] (ChatGLM: "ChatGLMModel"); vLLM picks its model class from it')
    if registry:
        ok = [a for a in archs if a in registry]
        info["supported"] = bool(ok)
        if not ok:
            raise BadInput(f"architecture {archs} is not supported by this vLLM ({source})",
                           f"supported: {', '.join(registry)}; use a model of a supported architecture "
                           "or a vLLM release that adds it")
    return info


def model_warnings(cfg: dict) -> list[str]:
    notes = []
    heads = cfg.get("num_attention_heads")
    hidden = cfg.get("hidden_size")
    if isinstance(heads, int) and isinstance(hidden, int) and heads:
        hd = hidden // heads
        if hd not in _SUPPORTED_HEAD_SIZES_0_2:
            notes.append(f"head size hidden_size/num_attention_heads = {hd} is not one of vLLM 0.2.x's "
                         f"paged-attention sizes {_SUPPORTED_HEAD_SIZES_0_2}: the engine will refuse it")
        kvc = cfg.get("kv_channels")
        if isinstance(kvc, int) and kvc != hd:
            notes.append(f"kv_channels {kvc} != hidden_size/num_attention_heads {hd}: vLLM 0.2.x sizes heads "
                         "from hidden_size/num_attention_heads, THUDM from kv_channels")
    if cfg.get("model_type") == "chatglm":
        rr = cfg.get("rope_ratio", 1)
        if rr not in (None, 1, 1.0):
            notes.append(f"rope_ratio {rr}: vLLM 0.2.2 ignores it (RoPE base stays 10000; fixed by PR #1841 "
                         "after 0.2.2), so 32k ChatGLM outputs degrade")
        seq = cfg.get("seq_length")
        if isinstance(seq, int) and seq > 8192:
            notes.append(f"seq_length {seq}: vLLM 0.2.2's ChatGLM RoPE cache covers 8192 positions "
                         "(PagedAttentionWithRoPE max_position default); longer sequences read past it")
    return notes


def check_gpu() -> None:
    try:
        import torch  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA runtime raising OSError
        raise BadInput(f"torch is not importable here: {type(e).__name__}: {e}",
                       "run this script with the target env's python (the one vLLM was built into)") from None
    if not torch.cuda.is_available():
        raise BadInput("no CUDA GPU visible to torch (torch.cuda.is_available() is False)",
                       f"torch {torch.__version__} (CUDA {torch.version.cuda}): check nvidia-smi, "
                       "CUDA_VISIBLE_DEVICES, and that torch is a CUDA build")
    if importlib.util.find_spec("vllm") is None:
        raise BadInput("vllm is not installed in this interpreter",
                       f"{sys.executable} has no vllm; run with the target env's python or build it first")


# --------------------------------------------------------------------------- log capture

class Tee(io.TextIOBase):
    """Writes through to the real stream and keeps a copy."""

    def __init__(self, real, buf: io.StringIO):
        self.real, self.buf = real, buf

    def write(self, s):
        try:
            self.real.write(s)
        except Exception:
            pass
        self.buf.write(s)
        return len(s)

    def flush(self):
        try:
            self.real.flush()
        except Exception:
            pass

    def isatty(self):
        return False

    def fileno(self):
        return self.real.fileno()

    @property
    def encoding(self):
        return getattr(self.real, "encoding", "utf-8")


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record):
        try:
            self.records.append(self.format(record))
        except Exception:
            pass


def attach_handler(handler: logging.Handler) -> None:
    """vLLM's loggers do not propagate (0.2.x sets propagate=False on each): attach to all of them."""
    mgr = logging.Logger.manager
    for name, lg in list(mgr.loggerDict.items()):
        if name == "vllm" or name.startswith("vllm."):
            if isinstance(lg, logging.Logger) and handler not in lg.handlers:
                lg.addHandler(handler)
    root = logging.getLogger("vllm")
    if handler not in root.handlers:
        root.addHandler(handler)


# --------------------------------------------------------------------------- facts

def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    try:
        import torch
        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.version.cuda
    except Exception:
        pass
    for mod in ("vllm", "transformers", "xformers", "tokenizers"):
        try:
            from importlib.metadata import version
            out[mod] = version(mod)
        except Exception:
            out[mod] = None
    return out


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def gpu_uuid(props) -> str | None:
    """This process's GPU 0 as nvidia-smi names it (GPU-<uuid>): from torch, else from CUDA_VISIBLE_DEVICES."""
    for text in (str(getattr(props, "uuid", "") or ""), os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0]):
        m = _UUID.search(text.lower())
        if m:
            return "GPU-" + m.group(0)
    return None


def other_gpu_processes(uuid: str | None = None) -> list[dict] | None:
    """Other processes holding memory on this GPU (on every GPU when its uuid is unknown): on a
    multi-GPU host, a process on another GPU takes nothing from this one."""
    try:
        r = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory,gpu_uuid",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=15)
    except Exception:
        return None
    if r.returncode != 0:
        return None
    procs = []
    for line in r.stdout.splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        pid = int(parts[0])
        if pid == os.getpid() or (uuid and parts[-1].lower() != uuid.lower()):
            continue
        try:
            used = int(float(parts[-2])) * 1024 * 1024
        except ValueError:
            used = None
        procs.append({"pid": pid, "name": ",".join(parts[1:-2]), "used_bytes": used})
    return procs


def gpu_facts() -> dict:
    import torch
    props = torch.cuda.get_device_properties(0)
    g = {"name": props.name, "count": torch.cuda.device_count(),
         "capability": f"{props.major}.{props.minor}", "total_bytes": int(props.total_memory),
         "uuid": gpu_uuid(props), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    try:
        free, total = torch.cuda.mem_get_info(0)
        g["free_bytes_before_load"] = int(free)
        g["used_before_load_bytes"] = int(total - free)  # includes this process's CUDA context
    except Exception as e:
        g["mem_get_info_error"] = str(e)
    procs = other_gpu_processes(g["uuid"])
    if procs is not None:
        g["other_processes"] = procs
        g["used_by_others_bytes"] = sum(p["used_bytes"] or 0 for p in procs)
        g["used_by_others_source"] = ("nvidia-smi --query-compute-apps" + (f" on {g['uuid']}" if g["uuid"] else ""))
    elif "used_before_load_bytes" in g:
        g["used_by_others_bytes"] = g["used_before_load_bytes"]
        g["used_by_others_source"] = "torch.cuda.mem_get_info (includes this process's CUDA context)"
    return g


def safetensors_param_count(model_dir: str) -> int | None:
    """Element count from the safetensors headers (stdlib: 8-byte length + JSON)."""
    total, seen = 0, False
    for fn in sorted(os.listdir(model_dir)):
        if not fn.endswith(".safetensors"):
            continue
        try:
            with open(os.path.join(model_dir, fn), "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                hdr = json.loads(fh.read(n))
        except Exception:
            continue
        for k, v in hdr.items():
            if k == "__metadata__" or not isinstance(v, dict):
                continue
            numel = 1
            for d in v.get("shape", []):
                numel *= d
            total += numel
            seen = True
    return total if seen else None


def _get(obj, *paths, default=None):
    """First attribute path that resolves: _get(engine, 'cache_config.num_gpu_blocks', ...)."""
    for path in paths:
        cur = obj
        try:
            for part in path.split("."):
                cur = getattr(cur, part)
            if cur is not None:
                return cur
        except AttributeError:
            continue
    return default


def _call(obj, name, *args):
    fn = getattr(obj, name, None)
    if fn is None:
        return None
    try:
        return fn(*args)
    except Exception:
        return None


def engine_model(engine):
    for path in ("workers", "driver_worker"):
        w = getattr(engine, path, None)
        if isinstance(w, list):
            w = w[0] if w else None
        if w is None:
            continue
        m = _get(w, "model", "model_runner.model")
        if m is not None:
            return m
    return None


def model_facts(llm, cfg: dict, model_dir: str, args) -> dict:
    engine = llm.llm_engine
    mc = engine.model_config
    pc = _get(engine, "parallel_config")
    facts = {
        "path": os.path.abspath(model_dir),
        "model_type": cfg.get("model_type"),
        "architecture": (cfg.get("architectures") or [None])[0],
        "trust_remote_code": args.trust_remote_code,
        "hidden_size": cfg.get("hidden_size"),
        "ffn_hidden_size": cfg.get("ffn_hidden_size") or cfg.get("intermediate_size"),
        "num_attention_heads": cfg.get("num_attention_heads"),
        "vocab_size": cfg.get("padded_vocab_size") or cfg.get("vocab_size"),
    }
    # What the engine uses to size the KV cache (ModelConfig helpers, 0.2.x names).
    facts["num_layers"] = _call(mc, "get_num_layers", pc) or cfg.get("num_layers") or cfg.get("num_hidden_layers")
    facts["num_kv_heads"] = _call(mc, "get_num_kv_heads", pc)
    if facts["num_kv_heads"] is None:
        if cfg.get("model_type") == "chatglm" and cfg.get("multi_query_attention"):
            facts["num_kv_heads"] = cfg.get("multi_query_group_num")
        else:
            facts["num_kv_heads"] = cfg.get("num_key_value_heads") or cfg.get("num_attention_heads")
    facts["head_dim"] = _call(mc, "get_head_size") or cfg.get("kv_channels")
    facts["config_kv_heads"] = (cfg.get("multi_query_group_num") if cfg.get("multi_query_attention")
                                else cfg.get("num_key_value_heads", cfg.get("num_attention_heads")))
    facts["config_kv_channels"] = cfg.get("kv_channels")
    dt = _get(mc, "dtype")
    facts["dtype"] = str(dt).replace("torch.", "") if dt is not None else None
    try:
        import torch
        facts["dtype_bytes"] = torch.tensor([], dtype=dt).element_size() if dt is not None else None
    except Exception:
        facts["dtype_bytes"] = None
    facts["max_model_len"] = _get(mc, "max_model_len")
    facts["max_num_batched_tokens"] = _get(engine, "scheduler_config.max_num_batched_tokens")
    facts["max_num_seqs"] = _get(engine, "scheduler_config.max_num_seqs")
    model = engine_model(engine)
    pbytes = None
    if model is not None:
        try:
            pbytes = sum(p.numel() * p.element_size() for p in model.parameters())
            facts["parameter_bytes_source"] = "loaded model"
        except Exception:
            pbytes = None
    if pbytes is None:
        n = safetensors_param_count(model_dir)
        if n is not None and facts.get("dtype_bytes"):
            pbytes = n * facts["dtype_bytes"]
            facts["parameter_bytes_source"] = "safetensors headers x dtype bytes"
    facts["parameter_bytes"] = pbytes
    return facts


def cache_facts(llm, log_text: str) -> dict:
    engine = llm.llm_engine if llm is not None else None
    cc = _get(engine, "cache_config") if engine is not None else None
    out = {
        "num_gpu_blocks": _get(cc, "num_gpu_blocks"),
        "num_cpu_blocks": _get(cc, "num_cpu_blocks"),
        "block_size": _get(cc, "block_size"),
        "gpu_memory_utilization": _get(cc, "gpu_memory_utilization"),
        "swap_space_bytes": _get(cc, "swap_space_bytes"),
        "source": None,
    }
    if out["num_gpu_blocks"] is not None:
        out["source"] = "cache_config"
    parsed = parse_block_log(log_text)
    if parsed:
        out["log_line"] = parsed.get("line")
        if out["num_gpu_blocks"] is None:
            out["num_gpu_blocks"] = parsed.get("num_gpu_blocks")
            out["num_cpu_blocks"] = out["num_cpu_blocks"] if out["num_cpu_blocks"] is not None else parsed.get("num_cpu_blocks")
            out["source"] = "log:" + parsed["format"]
        for k in ("kv_cache_tokens", "max_concurrency", "concurrency_tokens"):
            if k in parsed:
                out[k] = parsed[k]
        if out["source"] == "cache_config" and parsed.get("num_gpu_blocks") not in (None, out["num_gpu_blocks"]):
            out["log_disagrees"] = parsed.get("num_gpu_blocks")
    return out


# Same patterns as vllm_provision.kvcache.parse_block_log (duplicated: this script must not
# import the toolkit; tests keep the two in step).
_RE_V0_22 = re.compile(r"#\s*GPU blocks:\s*(\d+),\s*#\s*CPU blocks:\s*(\d+)")
_RE_V0_LATER = re.compile(r"#\s*([A-Za-z][\w ]*?) blocks:\s*(\d+),\s*#\s*CPU blocks:\s*(\d+)")
_RE_V1_SIZE = re.compile(r"GPU KV cache size:\s*([\d,_ ]+)\s*tokens")
_RE_V1_CONC = re.compile(r"Maximum concurrency for\s*([\d,_ ]+)\s*tokens per request:\s*([\d.]+)\s*x")


def parse_block_log(text: str):
    if not text:
        return None

    def line_of(m):
        s = text.rfind("\n", 0, m.start()) + 1
        e = text.find("\n", m.end())
        return text[s:e if e >= 0 else len(text)].strip()

    def num(s):
        return int(re.sub(r"[,_ ]", "", s))

    m = list(_RE_V0_22.finditer(text))
    if m:
        return {"format": "v0.2", "num_gpu_blocks": int(m[-1].group(1)), "num_cpu_blocks": int(m[-1].group(2)),
                "line": line_of(m[-1])}
    m = list(_RE_V0_LATER.finditer(text))
    if m:
        return {"format": "v0", "device": m[-1].group(1).strip(), "num_gpu_blocks": int(m[-1].group(2)),
                "num_cpu_blocks": int(m[-1].group(3)), "line": line_of(m[-1])}
    m = list(_RE_V1_SIZE.finditer(text))
    if m:
        out = {"format": "v1", "kv_cache_tokens": num(m[-1].group(1)), "line": line_of(m[-1])}
        c = list(_RE_V1_CONC.finditer(text))
        if c:
            out["concurrency_tokens"] = num(c[-1].group(1))
            out["max_concurrency"] = float(c[-1].group(2))
        return out
    return None


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

def run(args, cfg: dict, arch_info: dict, notes: list[str]) -> tuple[dict, int]:
    import inspect

    import torch

    doc: dict = {"schema": SCHEMA, "ok": False, "error": None, "argv": sys.argv[1:], "notes": notes,
                 "architecture_check": arch_info, "versions": versions()}
    doc["gpu"] = gpu_facts()
    prompts = args.prompts or list(BLOG_PROMPTS)
    buf = io.StringIO()
    real_out, real_err = sys.stdout, sys.stderr
    handler = ListHandler()
    llm = None
    exit_code = 0
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
            t0 = time.perf_counter()
            llm = LLM(model=args.model, trust_remote_code=args.trust_remote_code, dtype=args.dtype,
                      max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
                      tensor_parallel_size=args.tensor_parallel_size, swap_space=args.swap_space,
                      seed=args.seed)
            doc["load_seconds"] = round(time.perf_counter() - t0, 3)
            attach_handler(handler)
            tokenizer = None
            try:
                tokenizer = llm.get_tokenizer()
            except Exception:
                pass
            sp_params = set(inspect.signature(SamplingParams.__init__).parameters)
            sampling = dict(n=args.n, best_of=args.best_of, top_p=args.top_p, top_k=args.top_k,
                            repetition_penalty=args.repetition_penalty, temperature=args.temperature,
                            max_tokens=args.max_tokens)
            stop_ids, stop_sources = ([], []) if args.no_stop_token_ids else resolve_stop_ids(args.model, cfg, tokenizer)
            dropped = [k for k in sampling if k not in sp_params]
            for k in dropped:
                sampling.pop(k)
            stop_info = {"stop_token_ids": None, "resolved": stop_ids, "sources": stop_sources,
                         "supported": "stop_token_ids" in sp_params, "stop_strings": None}
            if stop_ids and "stop_token_ids" in sp_params:
                sampling["stop_token_ids"] = stop_ids
                stop_info["stop_token_ids"] = stop_ids
            # Never an empty stop string: ChatGLM's id 2 decodes to "" and stop=[""] ends every
            # completion at once (anchors item 9). We pass no stop strings at all.
            doc["sampling"] = dict(sampling, dropped_unsupported=dropped)
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
                    comps.append({"text": c.text, "num_tokens": n, "finish_reason": c.finish_reason,
                                  "token_ids_head": list(c.token_ids[:16]) if getattr(c, "token_ids", None) else []})
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
    log_text = buf.getvalue() + "\n" + "\n".join(handler.records)
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
        print(f"error: {e.message}", file=sys.stderr)
        print(f"hint: {e.hint}", file=sys.stderr)
        return 2
    notes = model_warnings(cfg)
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
    if doc.get("error"):
        summary += f"\nerror: {doc['error']['type']}: {doc['error']['message']}\nhint: {doc['error']['hint']}"
    print(summary + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
