"""The KV-cache facts generate.py records: the block counts from the engine's cache_config, else from
vLLM's log line (0.2.x `# GPU blocks: N, # CPU blocks: M`, later formats too); for the V1 engine also the
cache size in tokens, the maximum concurrency and the memory it was sized from (its log lines).

Runs inside the target environment with stdlib + torch + vllm only (never imports the toolkit).
"""

from __future__ import annotations

import re

from engine_facts import get_path


def cache_facts(llm, log_text: str) -> dict:
    engine = llm.llm_engine if llm is not None else None
    # V1's front-end engine keeps the configs under vllm_config; the engine core sends the sizes back to it.
    cc = get_path(engine, "cache_config", "vllm_config.cache_config") if engine is not None else None
    out = {
        "num_gpu_blocks": get_path(cc, "num_gpu_blocks"),
        "num_cpu_blocks": get_path(cc, "num_cpu_blocks"),
        "block_size": get_path(cc, "block_size"),
        "gpu_memory_utilization": get_path(cc, "gpu_memory_utilization"),
        "swap_space_bytes": get_path(cc, "swap_space_bytes"),
        "source": None,
    }
    if out["num_gpu_blocks"] is not None:
        out["source"] = "cache_config"
    for key, attr in (("kv_cache_tokens", "kv_cache_size_tokens"), ("max_concurrency", "kv_cache_max_concurrency")):
        value = get_path(cc, attr)
        if value is not None:
            out[key] = value
    parsed = parse_block_log(log_text)
    if parsed:
        out["log_line"] = parsed.get("line")
        if out["num_gpu_blocks"] is None:
            out["num_gpu_blocks"] = parsed.get("num_gpu_blocks")
            out["num_cpu_blocks"] = out["num_cpu_blocks"] if out["num_cpu_blocks"] is not None else parsed.get("num_cpu_blocks")
            out["source"] = "log:" + parsed["format"]
        for k in ("kv_cache_tokens", "max_concurrency", "concurrency_tokens", "available_kv_cache_gib",
                  "weights_gib", "cudagraph_gib"):
            if parsed.get(k) is not None and out.get(k) is None:    # the engine's own (unrounded) value first
                out[k] = parsed[k]
        if out["source"] == "cache_config" and parsed.get("num_gpu_blocks") not in (None, out["num_gpu_blocks"]):
            out["log_disagrees"] = parsed.get("num_gpu_blocks")
    return out


# Same patterns as vllm_provision.kvcache.parse.parse_block_log (duplicated: this script must not
# import the toolkit; tests keep the two in step).
_RE_V0_22 = re.compile(r"#\s*GPU blocks:\s*(\d+),\s*#\s*CPU blocks:\s*(\d+)")
_RE_V0_LATER = re.compile(r"#\s*([A-Za-z][\w ]*?) blocks:\s*(\d+),\s*#\s*CPU blocks:\s*(\d+)")
_RE_V1_SIZE = re.compile(r"GPU KV cache size:\s*([\d,_ ]+)\s*tokens")
_RE_V1_CONC = re.compile(r"Maximum concurrency for\s*([\d,_ ]+)\s*tokens per request:\s*([\d.]+)\s*x")
_RE_V1_AVAILABLE = re.compile(r"Available KV cache memory:\s*(-?\d+(?:\.\d+)?)\s*GiB")
_RE_V1_WEIGHTS = re.compile(r"Model loading took\s*(-?\d+(?:\.\d+)?)\s*GiB memory")
_RE_V1_CUDAGRAPH = re.compile(r"Estimated CUDA graph memory:\s*(-?\d+(?:\.\d+)?)\s*GiB total")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_block_log(text: str):
    if not text:
        return None
    text = _ANSI.sub("", text)

    def line_of(m):
        s = text.rfind("\n", 0, m.start()) + 1
        e = text.find("\n", m.end())
        return text[s:e if e >= 0 else len(text)].strip()

    def num(s):
        return int(re.sub(r"[,_ ]", "", s))

    def memory():
        out = {}
        for key, pattern in (("available_kv_cache_gib", _RE_V1_AVAILABLE), ("weights_gib", _RE_V1_WEIGHTS),
                             ("cudagraph_gib", _RE_V1_CUDAGRAPH)):
            found = list(pattern.finditer(text))
            if found:
                out[key] = float(found[-1].group(1))
                if key == "available_kv_cache_gib":
                    out["available_line"] = line_of(found[-1])
        return out

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
        out.update(memory())
        return out
    mem = memory()
    if "available_kv_cache_gib" in mem:
        return {"format": "v1", "kv_cache_tokens": None, "line": mem["available_line"], **mem}
    return None
