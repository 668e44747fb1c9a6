"""Plain-PyTorch reference forward of ChatGLM2/3 (THUDM layout), for kernel/model parity.

No vLLM import here: the tests run this on CPU. It follows THUDM's ``modeling_chatglm.py``:

* RMSNorm (float32 variance) or LayerNorm, ``layernorm_epsilon``;
* fused QKV (``query_key_value``, bias when ``add_qkv_bias``/``add_bias_linear``), split
  ``[heads*hd | groups*hd | groups*hd]`` with multi-query groups (head h reads group
  ``h // (heads/groups)``, as vLLM's ``head_mapping = repeat_interleave(arange(groups))``);
* rotary embedding on the first half of each head's dims (``rot_dim = hd // 2``), in
  interleaved pairs ``(x[2i], x[2i+1])`` (THUDM ``apply_rotary_pos_emb``; vLLM 0.2.2 maps
  it to ``rotary_dim=head_dim // 2, is_neox_style=False``), ``inv_freq = 1 / base^(2i/rot_dim)``
  with ``base = 10000 * rope_ratio`` (vLLM 0.2.2 ignores rope_ratio: PR #1841 came later);
* causal softmax attention with scale ``1/sqrt(hd)``; ``dense`` projection;
* SwiGLU MLP: ``dense_h_to_4h`` -> chunk(2) -> ``silu(a) * b`` -> ``dense_4h_to_h``;
* residuals from the input (or from the layernorm output when
  ``apply_residual_connection_post_layernorm``); final RMSNorm when ``post_layer_norm``;
  ``output_layer`` (untied) gives the logits.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F

_ST_DTYPES = {
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """Minimal safetensors reader (8-byte little-endian header length, JSON header, raw data)."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        data = fh.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = _ST_DTYPES.get(info["dtype"])
        if dt is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        buf = bytearray(data[start:end])
        t = torch.frombuffer(buf, dtype=dt) if buf else torch.empty(0, dtype=dt)
        out[name] = t.reshape(info["shape"]).clone()
    return out


def load_checkpoint(model_dir: str):
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as fh:
        cfg = json.load(fh)
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir} has no *.safetensors files")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(read_safetensors(os.path.join(model_dir, f)))
    return cfg, weights


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in at least float32 (THUDM computes the RMSNorm variance and softmax in fp32)."""
    return torch.promote_types(dtype, torch.float32)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.to(_acc(x.dtype))
    var = xf.pow(2).mean(-1, keepdim=True)
    return (w.to(xf.dtype) * (xf * torch.rsqrt(var + eps))).to(x.dtype)


def rope_cache(positions: torch.Tensor, rot_dim: int, base: float, dtype: torch.dtype = torch.float32) -> tuple:
    inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=dtype, device=positions.device) / rot_dim))
    freqs = positions.to(dtype)[:, None] * inv_freq[None, :]
    return freqs.cos(), freqs.sin()  # [T, rot_dim/2]


def apply_rope_gptj(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rot_dim: int) -> torch.Tensor:
    """x [T, heads, hd]; rotate pairs (x[2i], x[2i+1]) of the first rot_dim dims (THUDM layout)."""
    xr, xp = x[..., :rot_dim], x[..., rot_dim:]
    pairs = xr.reshape(*xr.shape[:-1], rot_dim // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    out = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1).flatten(-2)
    return torch.cat([out.to(x.dtype), xp], dim=-1)


class ChatGLMReference:
    def __init__(self, cfg: dict, weights: dict[str, torch.Tensor], *, param_dtype: torch.dtype = torch.float16,
                 compute_dtype: torch.dtype = torch.float32, device: str = "cpu"):
        self.cfg = cfg
        self.L = int(cfg["num_layers"])
        self.H = int(cfg["hidden_size"])
        self.nh = int(cfg["num_attention_heads"])
        self.hd = int(cfg.get("kv_channels") or self.H // self.nh)
        self.ng = int(cfg["multi_query_group_num"]) if cfg.get("multi_query_attention") else self.nh
        self.eps = float(cfg.get("layernorm_epsilon", 1e-5))
        self.rmsnorm = bool(cfg.get("rmsnorm", True))
        self.post_ln_residual = bool(cfg.get("apply_residual_connection_post_layernorm", False))
        self.post_layer_norm = bool(cfg.get("post_layer_norm", True))
        self.rot_dim = self.hd // 2
        self.base = 10000.0 * float(cfg.get("rope_ratio", 1) or 1)
        self.device = device
        # Round to the serving dtype first (what vLLM holds), then compute in compute_dtype.
        self.w = {k: v.to(param_dtype).to(compute_dtype).to(device) for k, v in weights.items()
                  if v.is_floating_point()}
        self.compute_dtype = compute_dtype
        if self.nh % self.ng:
            raise ValueError(f"num_attention_heads {self.nh} is not a multiple of the KV groups {self.ng}")

    def _p(self, name: str) -> torch.Tensor | None:
        return self.w.get(name)

    def _norm(self, x, prefix):
        w = self.w[prefix + ".weight"]
        if self.rmsnorm:
            return rms_norm(x, w, self.eps)
        return F.layer_norm(x, (x.shape[-1],), w, self._p(prefix + ".bias"), self.eps)

    def _linear(self, x, prefix):
        return F.linear(x, self.w[prefix + ".weight"], self._p(prefix + ".bias"))

    @torch.no_grad()
    def forward(self, input_ids: list[int]) -> torch.Tensor:
        """Logits [T, padded_vocab] (float32) for one sequence, every position."""
        ids = torch.tensor(list(input_ids), dtype=torch.long, device=self.device)
        T = ids.shape[0]
        x = self.w["transformer.embedding.word_embeddings.weight"][ids]
        pos = torch.arange(T, device=self.device)
        acc = _acc(self.compute_dtype)
        cos, sin = rope_cache(pos, self.rot_dim, self.base, acc)
        mask = torch.ones(T, T, dtype=torch.bool, device=self.device).tril()
        rep = self.nh // self.ng
        for i in range(self.L):
            p = f"transformer.encoder.layers.{i}"
            ln = self._norm(x, p + ".input_layernorm")
            qkv = self._linear(ln, p + ".self_attention.query_key_value")
            q, k, v = qkv.split([self.nh * self.hd, self.ng * self.hd, self.ng * self.hd], dim=-1)
            q = apply_rope_gptj(q.reshape(T, self.nh, self.hd), cos, sin, self.rot_dim)
            k = apply_rope_gptj(k.reshape(T, self.ng, self.hd), cos, sin, self.rot_dim)
            v = v.reshape(T, self.ng, self.hd)
            k = k.repeat_interleave(rep, dim=1)  # head h -> group h // rep
            v = v.repeat_interleave(rep, dim=1)
            scores = torch.einsum("qhd,khd->hqk", q.to(acc), k.to(acc)) / (self.hd ** 0.5)
            scores = scores.masked_fill(~mask, float("-inf"))
            probs = scores.softmax(-1)
            ctx = torch.einsum("hqk,khd->qhd", probs, v.to(acc)).to(x.dtype).reshape(T, self.nh * self.hd)
            attn = self._linear(ctx, p + ".self_attention.dense")
            residual = ln if self.post_ln_residual else x
            h = residual + attn
            ln2 = self._norm(h, p + ".post_attention_layernorm")
            up = self._linear(ln2, p + ".mlp.dense_h_to_4h")
            a, b = up.chunk(2, dim=-1)
            mlp = self._linear(F.silu(a) * b, p + ".mlp.dense_4h_to_h")
            residual = ln2 if self.post_ln_residual else h
            x = residual + mlp
        if self.post_layer_norm:
            x = self._norm(x, "transformer.encoder.final_layernorm")
        return F.linear(x, self.w["transformer.output_layer.weight"]).to(acc)
