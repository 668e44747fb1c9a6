"""The KV-cache arithmetic: bytes a token and a block, vLLM 0.2.x's block count, the swap blocks."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .units import gb, group_digits

DEFAULT_BLOCK_SIZE = 16
# SchedulerConfig in 0.2.x: max_num_batched_tokens defaults to max(max_model_len, 2048),
# max_num_seqs to 256; the profiling pass runs exactly that batch.
PROFILE_MIN_BATCHED_TOKENS = 2048
PROFILE_MAX_NUM_SEQS = 256

DTYPE_BYTES = {
    "float16": 2, "half": 2, "fp16": 2, "torch.float16": 2,
    "bfloat16": 2, "bf16": 2, "torch.bfloat16": 2,
    "float32": 4, "float": 4, "fp32": 4, "torch.float32": 4,
    "fp8": 1, "fp8_e5m2": 1, "fp8_e4m3": 1, "int8": 1,
}


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """layers x 2 (K,V) x kv_heads x head_dim x dtype_bytes."""
    for name, v in (("layers", layers), ("kv_heads", kv_heads), ("head_dim", head_dim),
                    ("dtype_bytes", dtype_bytes)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    return layers * 2 * kv_heads * head_dim * dtype_bytes


def kv_bytes_per_block(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int,
                       block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """kv_bytes_per_token x block_size (vLLM's ``CacheEngine.get_cache_block_size``)."""
    if not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    return kv_bytes_per_token(layers, kv_heads, head_dim, dtype_bytes) * block_size


def dtype_bytes(dtype: str | int | None, default: int = 2) -> int:
    if isinstance(dtype, int):
        return dtype
    if not dtype:
        return default
    return DTYPE_BYTES.get(str(dtype).lower(), default)


@dataclass(frozen=True)
class BlockPrediction:
    """A predicted GPU block count together with every input, so it can be shown."""

    num_gpu_blocks: int
    total_gpu_bytes: int
    utilization: float
    budget_bytes: int           # total x utilization
    weights_bytes: int
    activation_peak_bytes: int
    other_process_bytes: int
    other_processes_counted: bool
    peak_used_bytes: int        # what is subtracted from the budget
    bytes_per_block: int
    free_for_cache_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def formula(self) -> str:
        parts = [f"{gb(self.weights_bytes)} weights", f"{gb(self.activation_peak_bytes)} activations"]
        if self.other_processes_counted:
            parts.append(f"{gb(self.other_process_bytes)} other processes")
        return (f"({gb(self.total_gpu_bytes)} x {self.utilization:g} - ({' + '.join(parts)})) "
                f"// {group_digits(self.bytes_per_block)} B = {group_digits(self.num_gpu_blocks)} blocks")


def predict_gpu_blocks(total_gpu_bytes: int, utilization: float, weights_bytes: int,
                       activation_peak_bytes: int, other_process_bytes: int,
                       bytes_per_block: int, *, count_other_processes: bool = False
                       ) -> BlockPrediction:
    """Mirror of 0.2.2 ``profile_num_available_blocks``: ``int((total x util - peak) // block)``.

    ``peak`` is the torch allocator peak of the engine process: weights + profiling
    activations. 0.2.x does not see other processes (they only make the cache allocation
    OOM later); pass ``count_other_processes=True`` for release lines that measure
    ``total - free`` (0.4+), where their memory is subtracted as well.
    """
    if bytes_per_block <= 0:
        raise ValueError(f"bytes_per_block must be > 0, got {bytes_per_block}")
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization must be in (0, 1], got {utilization}")
    budget = total_gpu_bytes * utilization
    peak = weights_bytes + activation_peak_bytes + (other_process_bytes if count_other_processes else 0)
    blocks = max(int((budget - peak) // bytes_per_block), 0)
    return BlockPrediction(
        num_gpu_blocks=blocks, total_gpu_bytes=int(total_gpu_bytes), utilization=float(utilization),
        budget_bytes=int(budget), weights_bytes=int(weights_bytes),
        activation_peak_bytes=int(activation_peak_bytes), other_process_bytes=int(other_process_bytes),
        other_processes_counted=count_other_processes, peak_used_bytes=int(peak),
        bytes_per_block=int(bytes_per_block), free_for_cache_bytes=int(max(budget - peak, 0)))


def cpu_blocks(swap_space_bytes: int, bytes_per_block: int) -> int:
    """``int(swap_space_bytes // bytes_per_block)``: CPU blocks are swap space, not compute."""
    if bytes_per_block <= 0:
        raise ValueError(f"bytes_per_block must be > 0, got {bytes_per_block}")
    return max(int(swap_space_bytes // bytes_per_block), 0)


def estimate_activation_peak_bytes(*, max_model_len: int, hidden_size: int, ffn_hidden_size: int | None,
                                   num_heads: int, num_kv_heads: int, head_dim: int, vocab_size: int,
                                   dtype_bytes: int = 2, max_num_batched_tokens: int | None = None,
                                   max_num_seqs: int = PROFILE_MAX_NUM_SEQS) -> int:
    """Rough peak of the 0.2.x profiling pass on top of the weights (a heuristic, labelled so).

    T = max(max_model_len, 2048) tokens; the peak is the MLP (gate+up output, SiLU output),
    the fused QKV output and a few hidden-state copies, plus the sampler's float32
    logits/probabilities/sort for ``max_num_seqs`` last tokens. It is a small term next to the
    KV cache on big GPUs, so a 2x error here moves the block count by a few percent at most.
    """
    tokens = max_num_batched_tokens or max(max_model_len, PROFILE_MIN_BATCHED_TOKENS)
    ffn = ffn_hidden_size or 4 * hidden_size
    qkv = (num_heads + 2 * num_kv_heads) * head_dim
    per_token = (3 * ffn + 4 * hidden_size + qkv) * dtype_bytes
    sampler = min(max_num_seqs, tokens) * vocab_size * 4 * 4
    return tokens * per_token + sampler
