"""The KV-cache arithmetic: bytes a token and a block, vLLM 0.2.x's block count, the swap blocks, and the
V1 engine's sizing (blocks from the available memory, the capacity in tokens, the maximum concurrency)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from vllm_provision.kvcache.units import gb, group_digits

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


# ------------------------------------------------------------------------------------------ V1 engine
# vLLM's V1 engine (the only one from 0.11; 0.26.0 read here) sizes the cache per layer, not per block:
#   FullAttentionSpec.real_page_size_bytes = 2 x block_size x kv_heads x head_dim x dtype bytes (one layer)
#   get_num_blocks:  num_blocks = int(available // page_size // num_layers)
#   get_kv_cache_capacity: blocks a request = ceil(max_model_len / block_size),
#       max_concurrency = num_blocks / blocks a request, tokens = int(max_concurrency x max_model_len)
#   gpu_worker.determine_available_memory / request_memory:
#       available = ceil(total x gpu_memory_utilization) - (weights + activation peak + non-torch increase)
#                   - CUDA graph estimate
# Other processes' memory is not subtracted (the engine refuses to start when free < ceil(total x util)).
V1_DEFAULT_GPU_MEMORY_UTILIZATION = 0.92     # CacheConfig / LLM() default in 0.26.0 (0.9 in 0.2.2)
V1_DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192     # LLM class default below 70 GiB or on an A100 ...
V1_LARGE_GPU_MAX_NUM_BATCHED_TOKENS = 16384  # ... and on larger GPUs (H100, H200): EngineArgs defaults
V1_LARGE_GPU_BYTES = 70 * (1 << 30)
GIB_ROUNDING = 0.005                         # format_gib prints round(bytes / GiB, 2)


def v1_page_bytes(kv_heads: int, head_dim: int, dtype_bytes: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """One layer's page: ``2 x block_size x kv_heads x head_dim x dtype bytes`` (FullAttentionSpec)."""
    if not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    return kv_bytes_per_token(1, kv_heads, head_dim, dtype_bytes) * block_size


def v1_num_blocks(available_bytes: int | float, page_bytes: int, layers: int) -> int:
    """``get_num_blocks``: ``int(available // page_size // num_layers)``, never below 0."""
    if page_bytes <= 0 or layers <= 0:
        raise ValueError(f"page_bytes and layers must be > 0, got {page_bytes}, {layers}")
    return max(int(available_bytes // page_bytes // layers), 0)


def v1_capacity(num_blocks: int, block_size: int, max_model_len: int) -> tuple[int, float]:
    """``get_kv_cache_capacity``: (tokens, max concurrency) for one full-attention group.

    A request of ``max_model_len`` tokens needs ``ceil(max_model_len / block_size)`` blocks; the logged
    token count is ``int(concurrency x max_model_len)``, so it equals blocks x block_size only when
    ``max_model_len`` is a multiple of the block size."""
    per_request = -(-max_model_len // block_size)
    concurrency = num_blocks / per_request
    return int(concurrency * max_model_len), concurrency


def v1_requested_bytes(total_gpu_bytes: int, utilization: float) -> int:
    """``request_memory``: ``ceil(total x gpu_memory_utilization)``."""
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization must be in (0, 1], got {utilization}")
    return math.ceil(total_gpu_bytes * utilization)


def v1_default_max_num_batched_tokens(total_gpu_bytes: int, gpu_name: str = "") -> int:
    """The LLM class's default ``max_num_batched_tokens`` (the size of the profiling pass)."""
    large = total_gpu_bytes >= V1_LARGE_GPU_BYTES and "a100" not in gpu_name.lower()
    return V1_LARGE_GPU_MAX_NUM_BATCHED_TOKENS if large else V1_DEFAULT_MAX_NUM_BATCHED_TOKENS


def v1_blocks_from_logged_gib(available_gib: float, page_bytes: int, layers: int) -> tuple[int, int]:
    """The block counts the logged (rounded) ``Available KV cache memory: X GiB`` allows: (fewest, most)."""
    gib = 1 << 30
    low = max(available_gib - GIB_ROUNDING, 0) * gib
    high = (available_gib + GIB_ROUNDING) * gib
    return v1_num_blocks(low, page_bytes, layers), v1_num_blocks(high, page_bytes, layers)


@dataclass(frozen=True)
class V1Prediction:
    """The V1 engine's cache size predicted from the GPU and the model's shape, with every input."""

    num_gpu_blocks: int
    kv_cache_tokens: int
    max_concurrency: float
    total_gpu_bytes: int
    utilization: float
    requested_bytes: int        # ceil(total x utilization)
    weights_bytes: int
    activation_peak_bytes: int
    cudagraph_bytes: int
    available_bytes: int        # requested - weights - activations - CUDA graphs
    page_bytes: int             # one layer's page
    layers: int
    block_size: int
    max_model_len: int
    other_processes_counted: bool = False   # V1 never subtracts them (it refuses to start instead)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def formula(self) -> str:
        parts = [f"{gb(self.weights_bytes)} weights", f"{gb(self.activation_peak_bytes)} activations"]
        if self.cudagraph_bytes:
            parts.append(f"{gb(self.cudagraph_bytes)} CUDA graphs")
        return (f"(ceil({gb(self.total_gpu_bytes)} x {self.utilization:g}) - ({' + '.join(parts)})) "
                f"// ({group_digits(self.page_bytes)} B a page x {self.layers} layers) = "
                f"{group_digits(self.num_gpu_blocks)} blocks = {group_digits(self.kv_cache_tokens)} tokens")


def predict_v1(total_gpu_bytes: int, utilization: float, weights_bytes: int, activation_peak_bytes: int,
               cudagraph_bytes: int, page_bytes: int, layers: int, block_size: int, max_model_len: int
               ) -> V1Prediction:
    """Mirror of V1's ``determine_available_memory`` then ``get_num_blocks`` and ``get_kv_cache_capacity``.

    The engine's non-torch increase (cuBLAS workspaces, the allocator's slack) is not known here: it is
    the part of a miss the judge backs out of the logged available memory."""
    requested = v1_requested_bytes(total_gpu_bytes, utilization)
    available = requested - weights_bytes - activation_peak_bytes - cudagraph_bytes
    blocks = v1_num_blocks(max(available, 0), page_bytes, layers)
    tokens, concurrency = v1_capacity(blocks, block_size, max_model_len)
    return V1Prediction(
        num_gpu_blocks=blocks, kv_cache_tokens=tokens, max_concurrency=concurrency,
        total_gpu_bytes=int(total_gpu_bytes), utilization=float(utilization), requested_bytes=requested,
        weights_bytes=int(weights_bytes), activation_peak_bytes=int(activation_peak_bytes),
        cudagraph_bytes=int(cudagraph_bytes), available_bytes=int(available), page_bytes=int(page_bytes),
        layers=int(layers), block_size=int(block_size), max_model_len=int(max_model_len))
