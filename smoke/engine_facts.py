"""What generate.py records about the run: versions, the GPU and other processes on it, the model.

Runs inside the target environment with stdlib + torch + vllm only (never imports the toolkit).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys


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


def get_path(obj, *paths, default=None):
    """First attribute path that resolves: get_path(engine, 'cache_config.num_gpu_blocks', ...)."""
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
        m = get_path(w, "model", "model_runner.model")
        if m is not None:
            return m
    return None


def model_facts(llm, cfg: dict, model_dir: str, args) -> dict:
    engine = llm.llm_engine
    mc = engine.model_config
    # 0.2.x keeps each config on the engine; V1's front-end engine only under vllm_config.
    pc = get_path(engine, "parallel_config", "vllm_config.parallel_config")
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
    dt = get_path(mc, "dtype")
    facts["dtype"] = str(dt).replace("torch.", "") if dt is not None else None
    try:
        import torch
        facts["dtype_bytes"] = torch.tensor([], dtype=dt).element_size() if dt is not None else None
    except Exception:
        facts["dtype_bytes"] = None
    facts["max_model_len"] = get_path(mc, "max_model_len")
    facts["max_num_batched_tokens"] = get_path(engine, "scheduler_config.max_num_batched_tokens",
                                               "vllm_config.scheduler_config.max_num_batched_tokens")
    facts["max_num_seqs"] = get_path(engine, "scheduler_config.max_num_seqs",
                                     "vllm_config.scheduler_config.max_num_seqs")
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
