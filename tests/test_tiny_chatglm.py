"""Checks of smoke/make_tiny_chatglm.py: loads offline, deterministic bytes."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The maker's imports, all test dependencies (pyproject's test extra): a broken install fails here, never skips.
import safetensors  # noqa: E402,F401
import tokenizers  # noqa: E402,F401
import torch  # noqa: E402,F401
import transformers  # noqa: E402

MAKER = Path(__file__).resolve().parents[1] / "smoke" / "make_tiny_chatglm.py"
PROMPTS = ["你是谁？", "你在做什么？", "请用中文，为我讲一个关于医生的笑话"]


def _make(out, *extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    p = subprocess.run([sys.executable, str(MAKER), "--out", str(out), *extra],
                       capture_output=True, text=True, env=env, check=True,
                       timeout=300)
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, p.stdout
    return json.loads(lines[0])


def _digests(d):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(Path(d).iterdir()) if f.is_file()}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-chatglm")
    return out, _make(out)


def test_files_and_report(ckpt):
    out, info = ckpt
    names = set(_digests(out))
    assert {"config.json", "configuration_chatglm.py", "generation_config.json",
            "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names
    assert info["files"] == _digests(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "chatglm"
    assert cfg["architectures"] == ["ChatGLMModel"]
    assert cfg["auto_map"]["AutoConfig"] == "configuration_chatglm.ChatGLMConfig"
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == cfg["kv_channels"]
    assert cfg["kv_channels"] in (64, 80, 96, 112, 128, 256)


def test_rerun_is_byte_identical(ckpt, tmp_path):
    out, info = ckpt
    again = _make(tmp_path / "again")
    assert _digests(out) == _digests(tmp_path / "again")
    assert again["files"] == info["files"]


def test_seed_changes_weights_only(ckpt, tmp_path):
    out, _ = ckpt
    _make(tmp_path / "s1", "--seed", "1")
    a, b = _digests(out), _digests(tmp_path / "s1")
    assert a["model.safetensors"] != b["model.safetensors"]
    assert a["tokenizer.json"] == b["tokenizer.json"]


def test_weights_layout_and_scale(ckpt):
    import torch
    from safetensors.torch import load_file
    out, info = ckpt
    w = load_file(str(out / "model.safetensors"))
    n, h = info["num_layers"], info["hidden_size"]
    hd, heads, g = info["head_dim"], info["num_attention_heads"], info[
        "multi_query_group_num"]
    assert w["transformer.embedding.word_embeddings.weight"].shape == (
        info["padded_vocab_size"], h)
    assert w["transformer.output_layer.weight"].shape == (
        info["padded_vocab_size"], h)
    assert w["transformer.rotary_pos_emb.inv_freq"].shape == (hd // 4,)
    for i in range(n):
        p = f"transformer.encoder.layers.{i}."
        assert w[p + "self_attention.query_key_value.weight"].shape == (
            (heads + 2 * g) * hd, h)
        assert w[p + "self_attention.query_key_value.bias"].shape == (
            (heads + 2 * g) * hd,)
        assert w[p + "self_attention.dense.weight"].shape == (h, heads * hd)
        assert w[p + "mlp.dense_h_to_4h.weight"].shape == (
            2 * info["ffn_hidden_size"], h)
        assert w[p + "mlp.dense_4h_to_h.weight"].shape == (
            h, info["ffn_hidden_size"])
        assert w[p + "input_layernorm.weight"].shape == (h,)
        assert w[p + "post_attention_layernorm.weight"].shape == (h,)
    assert "transformer.encoder.final_layernorm.weight" in w
    for name, t in w.items():
        assert t.dtype == torch.float16, name
        assert torch.isfinite(t).all(), name
    # logits of a normalised hidden state stay small in fp16
    x = torch.randn(8, h)
    x = x / x.pow(2).mean(-1, keepdim=True).sqrt()
    logits = (x.half().float() @ w["transformer.output_layer.weight"].float().T)
    assert logits.abs().max() < 100


def test_loads_offline_with_transformers(ckpt, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out, info = ckpt
    cfg = transformers.AutoConfig.from_pretrained(str(out),
                                                  trust_remote_code=True)
    assert cfg.model_type == "chatglm"
    assert cfg.num_layers == info["num_layers"]
    assert cfg.multi_query_group_num == info["multi_query_group_num"]
    assert cfg.padded_vocab_size == info["padded_vocab_size"]
    for kw in ({}, {"trust_remote_code": True}):
        tok = transformers.AutoTokenizer.from_pretrained(str(out), **kw)
        assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    unk = tok.convert_tokens_to_ids("<unk>")
    for p in PROMPTS + ["Hello, world! 123"]:
        ids = tok.encode(p)
        assert ids[:2] == [tok.convert_tokens_to_ids("[gMASK]"),
                           tok.convert_tokens_to_ids("sop")]
        assert unk not in ids
        assert tok.decode(ids, skip_special_tokens=True) == p
    assert tok.eos_token_id == info["eos_token_id"]
    assert tok.decode([tok.eos_token_id]) != ""
    # every id the model can emit decodes to something
    assert len(tok) == info["padded_vocab_size"]
    assert all(t for t in tok.convert_ids_to_tokens(
        list(range(info["padded_vocab_size"]))))


# --------------------------------------------------------------------------- vLLM 0.26.0 reads it
VLLM_0_26_0 = Path(__file__).parent / "fixtures" / "vllm-0.26.0"
# The config fields vLLM 0.26.0's ChatGLM code reads (vllm/model_executor/models/chatglm.py: GLMAttention,
# GLMMLP, GLMBlock, GLMTransformer, ChatGLMModel, ChatGLMBaseModel), read from its sdist.
CHATGLM_0_26_0_READS = (
    "hidden_size", "num_attention_heads", "multi_query_attention", "multi_query_group_num", "add_bias_linear",
    "add_qkv_bias", "original_rope", "apply_residual_connection_post_layernorm", "fp32_residual_connection",
    "rmsnorm", "layernorm_epsilon", "hidden_dropout", "ffn_hidden_size", "num_layers", "post_layer_norm",
    "padded_vocab_size", "kv_channels", "tie_word_embeddings", "seq_length")


def _vllm_0_26_0_chatglm_config():
    """vLLM 0.26.0's own ChatGLMConfig (vllm/transformers_utils/configs/chatglm.py, copied verbatim from the
    sdist: sha256 d0bc3fbc…58f9). vLLM registers it for model_type chatglm and reads every ChatGLM config.json
    through it, whatever the checkpoint's auto_map names (transformers_utils/config.py HFConfigParser)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("vllm_0_26_0_chatglm_config", VLLM_0_26_0 / "chatglm_config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ChatGLMConfig


def test_vllm_0_26_0_config_class_reads_the_tiny_config(ckpt):
    out, info = ckpt
    assert hashlib.sha256((VLLM_0_26_0 / "chatglm_config.py").read_bytes()).hexdigest() == \
        "d0bc3fbc26c1a5bb1639288b406eaaf4ba607969a06d3008249c251d86cc58f9"
    cfg = _vllm_0_26_0_chatglm_config().from_pretrained(str(out))
    assert [k for k in CHATGLM_0_26_0_READS if not hasattr(cfg, k)] == []
    assert not hasattr(cfg, "vision_config")      # ChatGLMForCausalLM refuses a config with one
    assert cfg.tie_word_embeddings is False and cfg.original_rope is True   # GPT-J rotary: is_neox_style False
    # what the engine sizes the KV cache by (ModelConfig): layers through attribute_map, n_head_kv first for
    # the KV heads, hidden_size // num_attention_heads for the head size (no head_dim), seq_length as the length
    assert cfg.num_hidden_layers == info["num_layers"]
    assert cfg.n_head_kv == info["multi_query_group_num"]
    assert getattr(cfg, "head_dim", None) is None
    assert cfg.hidden_size // cfg.num_attention_heads == cfg.kv_channels == info["head_dim"]
    assert cfg.max_position_embeddings == cfg.seq_length == 8192
    assert info["kv_bytes_per_token_fp16"] == info["num_layers"] * 2 * cfg.n_head_kv * cfg.kv_channels * 2 == 1024


def test_vllm_0_26_0_loads_every_tiny_weight(ckpt):
    """Every tensor lands on a parameter of 0.26.0's ChatGLM module tree and every parameter gets one:
    ChatGLMModel's mapper drops '.word_embeddings', AutoWeightsLoader skips 'rotary_pos_emb.inv_freq', the QKV
    projection has a bias (add_qkv_bias) and no other linear does (add_bias_linear false)."""
    from safetensors import safe_open
    out, info = ckpt
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        names = set(fh.keys())
    loaded = {n.replace(".word_embeddings", "") for n in names if "rotary_pos_emb.inv_freq" not in n}
    per_layer = ("input_layernorm.weight", "self_attention.query_key_value.weight",
                 "self_attention.query_key_value.bias", "self_attention.dense.weight",
                 "post_attention_layernorm.weight", "mlp.dense_h_to_4h.weight", "mlp.dense_4h_to_h.weight")
    params = {"transformer.embedding.weight", "transformer.encoder.final_layernorm.weight",
              "transformer.output_layer.weight"}
    params |= {f"transformer.encoder.layers.{i}.{p}" for i in range(info["num_layers"]) for p in per_layer}
    assert loaded == params
