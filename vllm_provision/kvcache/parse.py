"""Reading vLLM's block-count log lines and the smoke JSON into the facts the explanation and judge use."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .model import DEFAULT_BLOCK_SIZE, dtype_bytes, kv_bytes_per_token

_RE_V0_22 = re.compile(r"#\s*GPU blocks:\s*(\d+),\s*#\s*CPU blocks:\s*(\d+)")
_RE_V0_LATER = re.compile(r"#\s*([A-Za-z][\w ]*?) blocks:\s*(\d+),\s*#\s*CPU blocks:\s*(\d+)")
_RE_V1_SIZE = re.compile(r"GPU KV cache size:\s*([\d,_ ]+)\s*tokens")
_RE_V1_CONC = re.compile(r"Maximum concurrency for\s*([\d,_ ]+)\s*tokens per request:\s*([\d.]+)\s*x")


def _int(s: str) -> int:
    return int(re.sub(r"[,_ ]", "", s))


def parse_block_log(text: str) -> dict[str, Any] | None:
    """Find the KV-cache sizing line in vLLM's log, whatever the release line.

    Returns ``{"format": "v0.2"|"v0"|"v1", ...}`` with ``num_gpu_blocks``/``num_cpu_blocks``
    (V0) or ``kv_cache_tokens`` (+ ``max_concurrency``/``concurrency_tokens``) (V1); the last
    match wins (a restarted engine logs again). ``None`` when there is no such line.
    """
    if not text:
        return None
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
        return out
    return None


def _line_of(text: str, m: re.Match) -> str:
    start = text.rfind("\n", 0, m.start()) + 1
    end = text.find("\n", m.end())
    return text[start:end if end >= 0 else len(text)].strip()


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
    if f.num_gpu_blocks is None and f.kv_cache_tokens is None:
        parsed = parse_block_log(smoke.get("log_tail") or "")
        if parsed:
            f.num_gpu_blocks = parsed.get("num_gpu_blocks")
            f.num_cpu_blocks = parsed.get("num_cpu_blocks")
            f.kv_cache_tokens = parsed.get("kv_cache_tokens")
            f.source = f"log:{parsed['format']}"
    return f


def as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None
