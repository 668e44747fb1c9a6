"""The KV-cache check: what vLLM's ``# GPU blocks`` / ``# CPU blocks`` numbers mean, and a judge.

``GPU blocks`` are KV-cache blocks, not compute units. One block holds the keys and values of
``block_size`` tokens for every layer::

    bytes a token = layers x 2 (K and V) x kv_heads x head_dim x dtype bytes
    bytes a block = bytes a token x block_size

vLLM 0.2.2 (``Worker.profile_num_available_blocks``) runs one profiling forward pass with
``max_num_batched_tokens`` tokens, reads the torch allocator's peak (weights + activations of
*this* process; other processes are not subtracted in 0.2.x) and sizes the cache as::

    num_gpu_blocks = int((total_gpu_bytes x gpu_memory_utilization - peak) // bytes a block)
    num_cpu_blocks = int(swap_space_bytes // bytes a block)

so CPU blocks are the swap space for preempted sequences, nothing more. Later releases
(0.4+) count memory held by other processes against the budget too (``total - free``).

Toolkit side: stdlib only (this module reads the JSON that ``smoke/generate.py`` writes).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from .checks import Check

GiB = 1 << 30
DEFAULT_BLOCK_SIZE = 16
# SchedulerConfig in 0.2.x: max_num_batched_tokens defaults to max(max_model_len, 2048),
# max_num_seqs to 256; the profiling pass runs exactly that batch.
PROFILE_MIN_BATCHED_TOKENS = 2048
PROFILE_MAX_NUM_SEQS = 256
TOLERANCE_PREDICTION = 0.10

DTYPE_BYTES = {
    "float16": 2, "half": 2, "fp16": 2, "torch.float16": 2,
    "bfloat16": 2, "bf16": 2, "torch.bfloat16": 2,
    "float32": 4, "float": 4, "fp32": 4, "torch.float32": 4,
    "fp8": 1, "fp8_e5m2": 1, "fp8_e4m3": 1, "int8": 1,
}

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"


# --------------------------------------------------------------------------- arithmetic

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
        parts = [f"{_g(self.weights_bytes)} weights", f"{_g(self.activation_peak_bytes)} activations"]
        if self.other_processes_counted:
            parts.append(f"{_g(self.other_process_bytes)} other processes")
        return (f"({_g(self.total_gpu_bytes)} x {self.utilization:g} - ({' + '.join(parts)})) "
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


# --------------------------------------------------------------------------- log parsing

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


# --------------------------------------------------------------------------- formatting

def group_digits(n: int | float, sep: str = " ") -> str:
    """132349 -> '132 349' (space-grouped thousands, as the KV-cache explanation prints them)."""
    return f"{int(n):,}".replace(",", sep)


def _g(n: float) -> str:
    """Bytes in decimal GB with one decimal (as ``nvidia-smi``/the blog speak of '80 GB')."""
    return f"{n / 1e9:.1f} GB"


def _gib(n: float) -> str:
    v = n / GiB
    return f"{v:.0f} GiB" if abs(v - round(v)) < 0.005 else f"{v:.2f} GiB"


def _tokens(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} M"
    if n >= 10_000:
        return f"{n / 1e3:.0f} k"
    return group_digits(n)


def _seq_len(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else group_digits(n)


# --------------------------------------------------------------------------- reading the smoke JSON

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
    f.layers = _as_int(model.get("num_layers"))
    f.kv_heads = _as_int(model.get("num_kv_heads"))
    f.head_dim = _as_int(model.get("head_dim"))
    f.dtype = model.get("dtype")
    f.dtype_bytes = _as_int(model.get("dtype_bytes")) or (dtype_bytes(f.dtype) if f.dtype else None)
    f.block_size = _as_int(cache.get("block_size")) or DEFAULT_BLOCK_SIZE
    f.num_gpu_blocks = _as_int(cache.get("num_gpu_blocks"))
    f.num_cpu_blocks = _as_int(cache.get("num_cpu_blocks"))
    f.kv_cache_tokens = _as_int(cache.get("kv_cache_tokens"))
    f.max_model_len = _as_int(model.get("max_model_len"))
    f.swap_space_bytes = _as_int(cache.get("swap_space_bytes"))
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


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


# --------------------------------------------------------------------------- explanation

def explain(smoke: dict) -> list[str]:
    """Human lines saying what the block counts mean (KV-cache blocks, not compute units)."""
    f = kv_facts(smoke)
    lines: list[str] = []
    bpb = f.bytes_per_block
    cap = f.capacity_tokens
    if f.num_gpu_blocks is not None:
        head = (f"{group_digits(f.num_gpu_blocks)} KV-cache blocks × {f.block_size} tokens = "
                f"{_tokens(cap)} tokens")
        if f.max_model_len:
            head += f" ≈ {cap // f.max_model_len} concurrent {_seq_len(f.max_model_len)} sequences"
        if bpb is not None:
            head += (f"; {group_digits(bpb)} bytes a block ({f.layers} layers × 2 (K,V) × "
                     f"{f.kv_heads} KV heads × {f.head_dim} head dim × {f.dtype_bytes} bytes × "
                     f"{f.block_size}) = {_g(f.num_gpu_blocks * bpb)} of KV cache")
        lines.append(head)
    elif f.kv_cache_tokens is not None:
        line = f"KV cache holds {_tokens(f.kv_cache_tokens)} tokens"
        if f.max_model_len:
            line += (f" ≈ {f.kv_cache_tokens // f.max_model_len} concurrent "
                     f"{_seq_len(f.max_model_len)} sequences")
        lines.append(line)
    else:
        lines.append("no KV-cache block count was found (neither on the engine nor in its log)")
    if f.num_cpu_blocks is not None:
        line = f"{group_digits(f.num_cpu_blocks)} CPU blocks"
        if f.swap_space_bytes is not None:
            line += f" = {_gib(f.swap_space_bytes)} swap space"
        elif bpb is not None:
            line += f" = {_gib(f.num_cpu_blocks * bpb)} swap space"
        line += " for preempted sequences, not compute units"
        if f.swap_space_bytes is not None and bpb:
            rest = f.swap_space_bytes - f.num_cpu_blocks * bpb
            line += (f" ({_gib(f.swap_space_bytes)} // {group_digits(bpb)} B; "
                     f"{group_digits(rest)} B left over)")
        lines.append(line)
    lines.append("GPU blocks are KV-cache blocks, not compute units.")
    if cap is not None and f.max_model_len:
        verdict = "fits" if cap >= f.max_model_len else "does NOT fit"
        lines.append(f"capacity {group_digits(cap)} tokens vs max_model_len "
                     f"{group_digits(f.max_model_len)}: one full-length sequence {verdict}")
    return lines


# --------------------------------------------------------------------------- judge

@dataclass
class Verdict:
    checks: list[Check] = field(default_factory=list)
    explanation: list[str] = field(default_factory=list)
    prediction: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not any(c.status == FAIL for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def get(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks],
                "explanation": list(self.explanation), "prediction": self.prediction}


def other_processes(smoke: dict) -> tuple[int | None, list[str]]:
    """(bytes other processes held on the smoke's GPU before vLLM loaded, 'name (pid N, X GB)' for each)."""
    gpu = smoke.get("gpu") or {}
    procs = gpu.get("other_processes") or []
    names = []
    for p in procs:
        if isinstance(p, dict):
            label = f"{p.get('name') or '?'} (pid {p.get('pid')}"
            if isinstance(p.get("used_bytes"), int):
                label += f", {_g(p['used_bytes'])}"
            names.append(label + ")")
    used = _as_int(gpu.get("used_by_others_bytes"))
    if used is None and procs:
        used = sum(p.get("used_bytes") or 0 for p in procs if isinstance(p, dict))
    return used, names


def judge(smoke: dict, expected: dict | None = None) -> Verdict:
    """Named checks over a ``smoke/generate.py`` JSON (pass/fail/warn/skip + detail + hint).

    ``expected`` (optional) may carry ``max_model_len`` (override), ``num_gpu_blocks`` (a
    reference count, e.g. the blog's 132349, shown side by side), ``activation_peak_bytes``
    (override the heuristic), ``count_other_processes`` (release line 0.4+), ``min_outputs``.
    """
    expected = dict(expected or {})
    v = Verdict()
    if not isinstance(smoke, dict):
        v.checks.append(Check("smoke-json", FAIL, f"not a JSON object: {type(smoke).__name__}",
                              "re-run smoke/generate.py and pass the JSON document it writes"))
        return v

    err = smoke.get("error")
    if err:
        msg = err.get("message") if isinstance(err, dict) else str(err)
        etype = err.get("type") if isinstance(err, dict) else None
        hint = (err.get("hint") if isinstance(err, dict) else None) or _hint_for_error(msg or "")
        v.checks.append(Check("engine-ran", FAIL, f"{etype + ': ' if etype else ''}{msg}", hint))
    else:
        v.checks.append(Check("engine-ran", PASS, "vLLM loaded the model and generated"))

    f = kv_facts(smoke)
    if expected.get("max_model_len"):
        f.max_model_len = int(expected["max_model_len"])
    v.explanation = explain(smoke) if (f.num_gpu_blocks is not None or f.kv_cache_tokens is not None) else []
    others_bytes, others_names = other_processes(smoke)

    # gpu-blocks > 0
    if f.num_gpu_blocks is None and f.kv_cache_tokens is None:
        v.checks.append(Check("gpu-blocks", FAIL if not err else SKIP,
                              "no GPU block count on the engine or in the log",
                              "check the smoke log for 'GPU blocks'; the engine may have died before profiling"))
    elif ((f.num_gpu_blocks is not None and f.num_gpu_blocks <= 0)
          or (f.num_gpu_blocks is None and (f.kv_cache_tokens or 0) <= 0)):
        v.checks.append(Check("gpu-blocks", FAIL, f"{f.num_gpu_blocks} GPU blocks: no memory left for the KV cache",
                              _capacity_hint(f, others_bytes, others_names)))
    else:
        shown = (f"{group_digits(f.num_gpu_blocks)} KV-cache blocks" if f.num_gpu_blocks is not None
                 else f"{group_digits(f.kv_cache_tokens)} KV-cache tokens")
        v.checks.append(Check("gpu-blocks", PASS, f"{shown} (source: {f.source or 'unknown'})"))

    # capacity >= max_model_len
    cap = f.capacity_tokens
    if cap is None or not f.max_model_len:
        v.checks.append(Check("kv-capacity", SKIP, "capacity or max_model_len unknown"))
    elif cap < f.max_model_len:
        v.checks.append(Check(
            "kv-capacity", FAIL,
            f"KV cache holds {group_digits(cap)} tokens < max_model_len {group_digits(f.max_model_len)}: "
            "vLLM cannot hold even one full-length sequence",
            _capacity_hint(f, others_bytes, others_names)))
    else:
        v.checks.append(Check("kv-capacity", PASS,
                              f"{group_digits(cap)} tokens ≥ max_model_len {group_digits(f.max_model_len)} "
                              f"({cap // f.max_model_len} full-length sequences at once)"))

    v.prediction = _prediction(smoke, f, expected, others_bytes)
    v.checks.append(_prediction_check(f, v.prediction, expected, others_bytes))
    v.checks.append(_cpu_check(f))
    v.checks.append(_outputs_check(smoke, expected, bool(err)))
    return v


def _capacity_hint(f: KVFacts, others_bytes: int | None, others_names: list[str]) -> str:
    parts = []
    if f.max_model_len and f.capacity_tokens:
        parts.append(f"lower --max-model-len (≤ {group_digits(f.capacity_tokens)} fits)")
    else:
        parts.append("lower --max-model-len")
    util = f.gpu_memory_utilization
    parts.append(f"raise --gpu-memory-utilization (now {util:g})" if util else
                 "raise --gpu-memory-utilization")
    if others_names or (others_bytes and others_bytes > 512 * 1024 * 1024):
        who = ", ".join(others_names) if others_names else "other processes"
        amount = f" ({_g(others_bytes)} in use before vLLM loaded)" if others_bytes else ""
        parts.append(f"free the GPU: {who}{amount}")
    else:
        parts.append("free the GPU of other processes (nvidia-smi shows them)")
    return "; ".join(parts)


def _prediction(smoke: dict, f: KVFacts, expected: dict, others_bytes: int | None) -> dict | None:
    model = smoke.get("model") or {}
    gpu = smoke.get("gpu") or {}
    total = _as_int(gpu.get("total_bytes"))
    weights = _as_int(model.get("parameter_bytes"))
    bpb = f.bytes_per_block
    util = f.gpu_memory_utilization
    if not (total and weights and bpb and util):
        return None
    act = expected.get("activation_peak_bytes")
    act_source = "expected"
    if act is None:
        try:
            act = estimate_activation_peak_bytes(
                max_model_len=f.max_model_len or PROFILE_MIN_BATCHED_TOKENS,
                hidden_size=int(model.get("hidden_size")),
                ffn_hidden_size=_as_int(model.get("ffn_hidden_size")),
                num_heads=int(model.get("num_attention_heads") or f.kv_heads),
                num_kv_heads=int(f.kv_heads), head_dim=int(f.head_dim),
                vocab_size=int(model.get("vocab_size") or 0), dtype_bytes=int(f.dtype_bytes),
                max_num_batched_tokens=_as_int(model.get("max_num_batched_tokens")))
            act_source = "heuristic"
        except (TypeError, ValueError):
            act, act_source = 0, "unknown (0)"
    count_others = bool(expected.get("count_other_processes", False))
    p = predict_gpu_blocks(total, util, weights, int(act), others_bytes or 0, bpb,
                           count_other_processes=count_others)
    d = p.to_dict()
    d["activation_source"] = act_source
    d["formula"] = p.formula()
    if f.num_gpu_blocks is not None:
        # What the engine's peak must have been, backed out of the measured count.
        d["implied_peak_bytes"] = int(total * util - f.num_gpu_blocks * bpb)
    return d


def _prediction_check(f: KVFacts, pred: dict | None, expected: dict, others_bytes: int | None) -> Check:
    measured = f.num_gpu_blocks
    if measured is None:
        return Check("blocks-predicted", SKIP, "no measured GPU block count to compare")
    ref = expected.get("num_gpu_blocks")
    lines, worst, reasons = [], 0.0, []
    if pred is not None:
        pv = pred["num_gpu_blocks"]
        dev = abs(measured - pv) / max(pv, 1)
        worst = max(worst, dev)
        lines.append(f"predicted {group_digits(pv)} vs measured {group_digits(measured)} "
                     f"({dev * 100:+.1f} % off; {pred['formula']}; activations {pred['activation_source']})")
        if dev > TOLERANCE_PREDICTION:
            implied = pred.get("implied_peak_bytes")
            if implied is not None:
                reasons.append(f"the engine's peak was {_g(implied)} vs {_g(pred['peak_used_bytes'])} "
                               "assumed (activations of the profiling pass, CUDA graphs, or a different "
                               "max_num_batched_tokens)")
            if others_bytes and not pred["other_processes_counted"]:
                reasons.append(f"{_g(others_bytes)} held by other processes (0.4+ subtracts it, 0.2.x does not)")
    if ref is not None:
        dev = abs(measured - int(ref)) / max(int(ref), 1)
        worst = max(worst, dev)
        lines.append(f"reference {group_digits(int(ref))} vs measured {group_digits(measured)} ({dev * 100:.1f} % off)")
        if dev > TOLERANCE_PREDICTION:
            reasons.append("the reference was taken on another GPU size, gpu_memory_utilization, "
                           "max_model_len or release (block counts change with each)")
    if not lines:
        return Check("blocks-predicted", SKIP, "not enough facts (GPU total, parameter bytes, model shape) to predict")
    status = WARN if worst > TOLERANCE_PREDICTION else PASS
    return Check("blocks-predicted", status, "; ".join(lines),
                 ("likely: " + "; ".join(reasons)) if status == WARN and reasons else
                 ("off by more than 10 %: compare GPU size, utilization, max_model_len" if status == WARN else None))


def _cpu_check(f: KVFacts) -> Check:
    if f.num_cpu_blocks is None:
        return Check("cpu-blocks", SKIP, "no CPU block count (V1 engines do not log one)")
    bpb = f.bytes_per_block
    if f.swap_space_bytes is None or not bpb:
        return Check("cpu-blocks", PASS, f"{group_digits(f.num_cpu_blocks)} CPU blocks = swap space for "
                                         "preempted sequences, not compute units")
    want = cpu_blocks(f.swap_space_bytes, bpb)
    detail = (f"{group_digits(f.num_cpu_blocks)} CPU blocks = {_gib(f.swap_space_bytes)} swap space // "
              f"{group_digits(bpb)} B a block (expected {group_digits(want)}); swap space for preempted "
              "sequences, not compute units")
    if want != f.num_cpu_blocks:
        return Check("cpu-blocks", WARN, detail,
                     "the engine's block size or dtype differs from the model facts in the JSON")
    return Check("cpu-blocks", PASS, detail)


def _outputs_check(smoke: dict, expected: dict, errored: bool) -> Check:
    outputs = smoke.get("outputs")
    if not outputs:
        return Check("outputs", SKIP if errored else FAIL, "no outputs in the smoke JSON",
                     None if errored else "generation returned nothing; see the smoke log")
    empty = []
    n = 0
    for i, o in enumerate(outputs):
        comps = (o or {}).get("completions") or []
        if not comps:
            empty.append(f"prompt {i} ({_short((o or {}).get('prompt'))}): no completions")
        for j, c in enumerate(comps):
            n += 1
            if not (c.get("text") or "").strip() or not c.get("num_tokens", 1):
                empty.append(f"prompt {i} ({_short(o.get('prompt'))}) completion {j}: empty "
                             f"(finish_reason {c.get('finish_reason')})")
    min_outputs = int(expected.get("min_outputs", 1))
    if len(outputs) < min_outputs:
        return Check("outputs", FAIL, f"{len(outputs)} prompts answered, expected ≥ {min_outputs}")
    if empty:
        return Check("outputs", FAIL, "; ".join(empty[:5]) + (" …" if len(empty) > 5 else ""),
                     "an immediate stop: check the stop tokens (an empty stop string, eos id 2 for "
                     "ChatGLM) and the tokenizer/transformers version")
    return Check("outputs", PASS, f"{len(outputs)} prompts, {n} completions, none empty")


def _short(s: Any, n: int = 24) -> str:
    s = str(s or "")
    return s if len(s) <= n else s[: n - 1] + "…"


def _hint_for_error(msg: str) -> str:
    m = msg.lower()
    if "no kernel image is available" in m:
        return ("the compiled .so files lack this GPU's SASS: rebuild with TORCH_CUDA_ARCH_LIST "
                "including this GPU's compute capability (';'-separated for 0.2.2)")
    if "no available memory for the cache blocks" in m or "out of memory" in m:
        return ("raise --gpu-memory-utilization, lower --max-model-len, or free the GPU of other processes")
    if "larger than the maximum number of tokens that can be stored in kv cache" in m:
        return "lower --max-model-len or raise --gpu-memory-utilization"
    if "trust_remote_code" in m or "remote code" in m:
        return "pass --trust-remote-code (ChatGLM ships its own modelling and tokenizer code)"
    if "has no attribute 'tokenizer'" in m or "padding_side" in m:
        return "transformers is too new for ChatGLM's tokenizer code: pin transformers from the lock"
    return "see the traceback tail in the smoke JSON and the smoke log"


def summarize(v: Verdict) -> Iterable[str]:
    for c in v.checks:
        yield f"{c.status.upper():5} {c.name}: {c.detail}" + (f"\n      hint: {c.hint}" if c.hint else "")
