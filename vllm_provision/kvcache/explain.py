"""The KV-cache numbers in words: bytes, tokens, sequences, and what the blocks mean."""

from __future__ import annotations

from vllm_provision import GIB
from vllm_provision.kvcache.model import v1_page_bytes, v1_requested_bytes
from vllm_provision.kvcache.parse import KVFacts, as_int, kv_facts
from vllm_provision.kvcache.units import gb, gib, group_digits, seq_len, tokens


def explain(smoke: dict) -> list[str]:
    """Human lines saying what the block counts mean (KV-cache blocks, not compute units)."""
    f = kv_facts(smoke)
    if f.engine == "v1":
        return explain_v1(f, smoke)
    lines: list[str] = []
    bpb = f.bytes_per_block
    cap = f.capacity_tokens
    if f.num_gpu_blocks is not None:
        head = (f"{group_digits(f.num_gpu_blocks)} KV-cache blocks × {f.block_size} tokens = "
                f"{tokens(cap)} tokens")
        if f.max_model_len:
            head += f" ≈ {cap // f.max_model_len} concurrent {seq_len(f.max_model_len)} sequences"
        if bpb is not None:
            head += (f"; {group_digits(bpb)} bytes a block ({f.layers} layers × 2 (K,V) × "
                     f"{f.kv_heads} KV heads × {f.head_dim} head dim × {f.dtype_bytes} bytes × "
                     f"{f.block_size}) = {gb(f.num_gpu_blocks * bpb)} of KV cache")
        lines.append(head)
    elif f.kv_cache_tokens is not None:
        line = f"KV cache holds {tokens(f.kv_cache_tokens)} tokens"
        if f.max_model_len:
            line += (f" ≈ {f.kv_cache_tokens // f.max_model_len} concurrent "
                     f"{seq_len(f.max_model_len)} sequences")
        lines.append(line)
    else:
        lines.append("no KV-cache block count was found (neither on the engine nor in its log)")
    if f.num_cpu_blocks is not None:
        line = f"{group_digits(f.num_cpu_blocks)} CPU blocks"
        if f.swap_space_bytes is not None:
            line += f" = {gib(f.swap_space_bytes)} swap space"
        elif bpb is not None:
            line += f" = {gib(f.num_cpu_blocks * bpb)} swap space"
        line += " for preempted sequences, not compute units"
        if f.swap_space_bytes is not None and bpb:
            rest = f.swap_space_bytes - f.num_cpu_blocks * bpb
            line += (f" ({gib(f.swap_space_bytes)} // {group_digits(bpb)} B; "
                     f"{group_digits(rest)} B left over)")
        lines.append(line)
    return lines + _capacity_lines(f, cap)


def explain_v1(f: KVFacts, smoke: dict) -> list[str]:
    """The V1 engine's figures: the cache in tokens, the concurrency, where the memory came from."""
    lines: list[str] = []
    bpt = f.bytes_per_token
    cap = f.capacity_tokens
    if cap is not None:
        head = f"GPU KV cache size: {group_digits(cap)} tokens"
        if f.num_gpu_blocks is not None:
            head += f" = {group_digits(f.num_gpu_blocks)} blocks × {f.block_size} tokens"
        if f.max_model_len:
            head += f" ≈ {cap // f.max_model_len} concurrent {seq_len(f.max_model_len)} sequences"
        if f.max_concurrency is not None:
            head += (f" (vLLM: maximum concurrency {f.max_concurrency:.2f}x for "
                     f"{group_digits(f.concurrency_tokens or f.max_model_len or 0)} tokens a request)")
        if bpt is not None:
            head += (f"; {group_digits(bpt)} bytes a token ({f.layers} layers × 2 (K,V) × {f.kv_heads} KV heads × "
                     f"{f.head_dim} head dim × {f.dtype_bytes} bytes) = {gb(cap * bpt)} of KV cache")
        lines.append(head)
    else:
        lines.append("no KV-cache size was found (neither on the engine nor in its log)")
    memory = _memory_line(f, smoke)
    if memory:
        lines.append(memory)
    lines.append("no CPU blocks: the V1 engine has no swap space (GPU↔CPU KV-cache swapping was removed, "
                 "a preempted request is recomputed), so swap_space is gone")
    return lines + _capacity_lines(f, cap)


def _memory_line(f: KVFacts, smoke: dict) -> str | None:
    """Where 'Available KV cache memory' came from, and how it became blocks."""
    if f.available_kv_cache_gib is None:
        return None
    line = f"Available KV cache memory {f.available_kv_cache_gib:g} GiB"
    total = as_int((smoke.get("gpu") or {}).get("total_bytes"))
    util = f.gpu_memory_utilization
    if total and util:
        budget = v1_requested_bytes(total, util)
        parts = [f"{f.weights_gib:g} GiB weights" if f.weights_gib is not None else None,
                 f"{f.cudagraph_gib:g} GiB CUDA graphs" if f.cudagraph_gib is not None else None]
        known = sum(x for x in (f.weights_gib, f.cudagraph_gib) if x is not None)
        rest = budget / GIB - f.available_kv_cache_gib - known
        parts.append(f"{rest:.2f} GiB activations and other non-KV memory")
        line += (f" = ceil({gib(total)} × {util:g}) = {budget / GIB:.2f} GiB budget − "
                 + " − ".join(p for p in parts if p))
    try:
        page = v1_page_bytes(f.kv_heads, f.head_dim, f.dtype_bytes, f.block_size)
    except (TypeError, ValueError):
        return line
    line += (f"; // ({group_digits(page)} B a page (2 × {f.block_size} tokens × {f.kv_heads} KV heads × "
             f"{f.head_dim} × {f.dtype_bytes} B) × {f.layers} layers)")
    if f.num_gpu_blocks is not None:
        line += f" = {group_digits(f.num_gpu_blocks)} blocks"
    return line


def _capacity_lines(f: KVFacts, cap: int | None) -> list[str]:
    """What the blocks are, and whether one full-length sequence fits (both engines)."""
    lines = ["GPU blocks are KV-cache blocks, not compute units."]
    if cap is not None and f.max_model_len:
        verdict = "fits" if cap >= f.max_model_len else "does NOT fit"
        lines.append(f"capacity {group_digits(cap)} tokens vs max_model_len "
                     f"{group_digits(f.max_model_len)}: one full-length sequence {verdict}")
    return lines
