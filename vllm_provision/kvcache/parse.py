"""Reading vLLM's block-count log lines and the smoke JSON into the facts the explanation and judge use."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vllm_provision.kvcache.model import DEFAULT_BLOCK_SIZE, dtype_bytes, kv_bytes_per_token

_RE_V0_22 = re.compile(r"#\s*GPU blocks:\s*(\d+),\s*#\s*CPU blocks:\s*(\d+)")
_RE_V0_LATER = re.compile(r"#\s*([A-Za-z][\w ]*?) blocks:\s*(\d+),\s*#\s*CPU blocks:\s*(\d+)")
_RE_V1_SIZE = re.compile(r"GPU KV cache size:\s*([\d,_ ]+)\s*tokens")
_RE_V1_CONC = re.compile(r"Maximum concurrency for\s*([\d,_ ]+)\s*tokens per request:\s*([\d.]+)\s*x")
# The V1 worker's memory figures (vllm/v1/worker/gpu_worker.py, gpu_model_runner.py), each printed with
# format_gib (round(bytes / GiB, 2)) or "%.2f": the memory the KV cache was sized from, the weights, the
# CUDA graphs.
_RE_V1_AVAILABLE = re.compile(r"Available KV cache memory:\s*(-?\d+(?:\.\d+)?)\s*GiB")
_RE_V1_WEIGHTS = re.compile(r"Model loading took\s*(-?\d+(?:\.\d+)?)\s*GiB memory")
_RE_V1_CUDAGRAPH = re.compile(r"Estimated CUDA graph memory:\s*(-?\d+(?:\.\d+)?)\s*GiB total")
# vLLM colours its log on a terminal (or with VLLM_LOGGING_COLOR=1): the escapes go before matching.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _int(s: str) -> int:
    return int(re.sub(r"[,_ ]", "", s))


def parse_block_log(text: str) -> dict[str, Any] | None:
    """Find the KV-cache sizing line in vLLM's log, whatever the release line.

    Returns ``{"format": "v0.2"|"v0"|"v1", ...}`` with ``num_gpu_blocks``/``num_cpu_blocks``
    (V0) or ``kv_cache_tokens`` (+ ``max_concurrency``/``concurrency_tokens``) (V1); the last
    match wins (a restarted engine logs again). ``None`` when there is no such line.

    V1 lines come from the engine-core process, prefixed ``(EngineCore pid=N) INFO MM-DD HH:MM:SS
    [file.py:line]``; with them, V1 also yields the worker's ``available_kv_cache_gib`` (the memory the
    cache was sized from), ``weights_gib`` and ``cudagraph_gib`` when logged. An engine that stopped after
    sizing its memory (not enough for one sequence) still yields ``available_kv_cache_gib``.
    """
    if not text:
        return None
    text = _ANSI.sub("", text)
    m = list(_RE_V0_22.finditer(text))
    if m:
        g = m[-1]
        return {"format": "v0.2", "device": "GPU", "num_gpu_blocks": int(g.group(1)),
                "num_cpu_blocks": int(g.group(2)), "line": _line_of(text, g)}
    m = list(_RE_V0_LATER.finditer(text))
    if m:
        g = m[-1]
        return {"format": "v0", "device": g.group(1).strip(), "num_gpu_blocks": int(g.group(2)),
                "num_cpu_blocks": int(g.group(3)), "line": _line_of(text, g)}
    m = list(_RE_V1_SIZE.finditer(text))
    if m:
        g = m[-1]
        out: dict[str, Any] = {"format": "v1", "kv_cache_tokens": _int(g.group(1)),
                               "num_gpu_blocks": None, "num_cpu_blocks": None,
                               "line": _line_of(text, g)}
        c = list(_RE_V1_CONC.finditer(text))
        if c:
            out["concurrency_tokens"] = _int(c[-1].group(1))
            out["max_concurrency"] = float(c[-1].group(2))
        out.update(_v1_memory(text))
        return out
    memory = _v1_memory(text)
    if "available_kv_cache_gib" in memory:
        return {"format": "v1", "kv_cache_tokens": None, "num_gpu_blocks": None, "num_cpu_blocks": None,
                "line": memory["available_line"], **memory}
    return None


def _v1_memory(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, pattern in (("available_kv_cache_gib", _RE_V1_AVAILABLE), ("weights_gib", _RE_V1_WEIGHTS),
                         ("cudagraph_gib", _RE_V1_CUDAGRAPH)):
        m = list(pattern.finditer(text))
        if m:
            out[key] = float(m[-1].group(1))
            if key == "available_kv_cache_gib":
                out["available_line"] = _line_of(text, m[-1])
    return out


def _line_of(text: str, m: re.Match) -> str:
    start = text.rfind("\n", 0, m.start()) + 1
    end = text.find("\n", m.end())
    return text[start:end if end >= 0 else len(text)].strip()


ENGINES = ("v0", "v1")
# The memory keys a V1 smoke JSON's cache section carries (from the engine's log; see parse_block_log).
V1_LOG_KEYS = ("kv_cache_tokens", "max_concurrency", "concurrency_tokens", "available_kv_cache_gib",
               "weights_gib", "cudagraph_gib")


@dataclass
class KVFacts:
    """The numbers the explanation and the judge need, pulled out of a smoke JSON."""

    layers: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    dtype: str | None = None
    dtype_bytes: int | None = None
    block_size: int = DEFAULT_BLOCK_SIZE
    num_gpu_blocks: int | None = None
    num_cpu_blocks: int | None = None
    kv_cache_tokens: int | None = None
    max_model_len: int | None = None
    swap_space_bytes: int | None = None
    gpu_memory_utilization: float | None = None
    source: str | None = None
    # v0: 0.2.x-0.10 (block counts, CPU swap blocks); v1: the engine since 0.8, the only one from 0.11
    engine: str = "v0"
    max_concurrency: float | None = None          # V1: "Maximum concurrency for L tokens per request: X"
    concurrency_tokens: int | None = None         # the L of that line (the engine's max_model_len)
    available_kv_cache_gib: float | None = None   # V1: "Available KV cache memory: X GiB"
    weights_gib: float | None = None              # V1: "Model loading took X GiB memory"
    cudagraph_gib: float | None = None            # V1: "Estimated CUDA graph memory: X GiB total"

    @property
    def bytes_per_token(self) -> int | None:
        try:
            return kv_bytes_per_token(self.layers, self.kv_heads, self.head_dim, self.dtype_bytes)
        except (ValueError, TypeError):
            return None

    @property
    def bytes_per_block(self) -> int | None:
        b = self.bytes_per_token
        return None if b is None else b * self.block_size

    @property
    def capacity_tokens(self) -> int | None:
        # V1 says its capacity in tokens itself (max concurrency x max_model_len): that figure is judged.
        if self.engine == "v1" and self.kv_cache_tokens is not None:
            return self.kv_cache_tokens
        if self.num_gpu_blocks is not None:
            return self.num_gpu_blocks * self.block_size
        return self.kv_cache_tokens


def kv_facts(smoke: dict) -> KVFacts:
    model = smoke.get("model") or {}
    cache = smoke.get("cache") or {}
    f = KVFacts()
    f.layers = as_int(model.get("num_layers"))
    f.kv_heads = as_int(model.get("num_kv_heads"))
    f.head_dim = as_int(model.get("head_dim"))
    f.dtype = model.get("dtype")
    f.dtype_bytes = as_int(model.get("dtype_bytes")) or (dtype_bytes(f.dtype) if f.dtype else None)
    f.block_size = as_int(cache.get("block_size")) or DEFAULT_BLOCK_SIZE
    f.num_gpu_blocks = as_int(cache.get("num_gpu_blocks"))
    f.num_cpu_blocks = as_int(cache.get("num_cpu_blocks"))
    f.kv_cache_tokens = as_int(cache.get("kv_cache_tokens"))
    f.max_model_len = as_int(model.get("max_model_len"))
    f.swap_space_bytes = as_int(cache.get("swap_space_bytes"))
    util = cache.get("gpu_memory_utilization")
    f.gpu_memory_utilization = float(util) if isinstance(util, (int, float)) else None
    f.source = cache.get("source")
    # Trust the log over nothing: if the engine attributes were unreadable, use the parsed line.
    parsed = None
    if f.num_gpu_blocks is None and f.kv_cache_tokens is None:
        parsed = parse_block_log(smoke.get("log_tail") or "")
        if parsed:
            f.num_gpu_blocks = parsed.get("num_gpu_blocks")
            f.num_cpu_blocks = parsed.get("num_cpu_blocks")
            f.kv_cache_tokens = parsed.get("kv_cache_tokens")
            f.source = f"log:{parsed['format']}"
    engine = smoke.get("engine")
    f.engine = engine if engine in ENGINES else ("v1" if str(f.source or "").endswith("v1") else "v0")
    if f.engine == "v1":
        if parsed is None and any(cache.get(k) is None for k in V1_LOG_KEYS):
            parsed = parse_block_log(smoke.get("log_tail") or "")
        parsed = parsed if parsed and parsed.get("format") == "v1" else {}
        for key in V1_LOG_KEYS:
            value = cache.get(key)
            setattr(f, key, value if isinstance(value, (int, float)) and not isinstance(value, bool)
                    else parsed.get(key))
        f.kv_cache_tokens = as_int(f.kv_cache_tokens)
        f.concurrency_tokens = as_int(f.concurrency_tokens)
    return f


def as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None
