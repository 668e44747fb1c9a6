"""The KV-cache numbers in words: bytes, tokens, sequences, and what the blocks mean."""

from __future__ import annotations

from .parse import kv_facts
from .units import gb, gib, group_digits, seq_len, tokens

def explain(smoke: dict) -> list[str]:
    """Human lines saying what the block counts mean (KV-cache blocks, not compute units)."""
    f = kv_facts(smoke)
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
    lines.append("GPU blocks are KV-cache blocks, not compute units.")
    if cap is not None and f.max_model_len:
        verdict = "fits" if cap >= f.max_model_len else "does NOT fit"
        lines.append(f"capacity {group_digits(cap)} tokens vs max_model_len "
                     f"{group_digits(f.max_model_len)}: one full-length sequence {verdict}")
    return lines
