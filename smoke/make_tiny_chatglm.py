#!/usr/bin/env python3
"""Write a tiny, deterministic, random-weight ChatGLM2/3-layout checkpoint.

Runs inside the target environment with only the standard library, torch,
safetensors and tokenizers (all of which vLLM 0.2.2 already depends on).
It does not import the toolkit.

Usage:
    python make_tiny_chatglm.py --out DIR [--seed 0] [--layers 2]
        [--hidden 256] [--heads 4] [--kv-groups 2] [--head-dim 64]
        [--ffn 856] [--vocab N] [--seq-length 8192]

Writes into DIR:
    config.json                 model_type "chatglm", architectures
                                ["ChatGLMModel"] (the name vLLM 0.2.2's
                                registry maps to ChatGLMForCausalLM, and
                                0.26.0's still does; 0.26.0 reads the config
                                through its own ChatGLMConfig), auto_map
                                to configuration_chatglm.ChatGLMConfig
    configuration_chatglm.py    THUDM-compatible config class
    generation_config.json      eos ids like ChatGLM3: [eos, <|user|>,
                                <|observation|>]
    model.safetensors           fp16 weights named exactly as THUDM's
    tokenizer.json              fast tokenizer (tokenizers library): a
                                character-level BPE whose vocabulary covers
                                ASCII and the smoke prompts, with ChatGLM's
                                special tokens; encode prepends "[gMASK] sop"
    tokenizer_config.json, special_tokens_map.json

Every id below padded_vocab_size decodes to a non-empty string (the vocabulary
is filled up to padded_vocab_size), so random-weight sampling never produces
an id the tokenizer cannot decode. Re-running with the same arguments gives
byte-identical files. Prints one JSON line describing what it wrote.
"""
import argparse
import hashlib
import json
import os
import sys

# Prompts used by the smoke test (the notes' three prompts).
PROMPTS = ["你是谁？", "你在做什么？", "请用中文，为我讲一个关于医生的笑话"]

# ChatGLM3's special tokens (names as in THUDM's tokenizer).
REGULAR_SPECIALS = ["<unk>", "<s>", "<eos>"]  # ids 0, 1, 2 as in ChatGLM
COMMAND_TOKENS = [
    "[MASK]", "[gMASK]", "[sMASK]", "sop", "eop",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
]

CONFIG_PY = '''\
# coding=utf-8
# Written by vllm-provision's make_tiny_chatglm.py; field names and defaults
# follow THUDM's configuration_chatglm.py (ChatGLM2-6B / ChatGLM3-6B).
from transformers import PretrainedConfig


class ChatGLMConfig(PretrainedConfig):
    model_type = "chatglm"

    def __init__(
        self,
        num_layers=28,
        padded_vocab_size=65024,
        hidden_size=4096,
        ffn_hidden_size=13696,
        kv_channels=128,
        num_attention_heads=32,
        seq_length=2048,
        hidden_dropout=0.0,
        classifier_dropout=None,
        attention_dropout=0.0,
        layernorm_epsilon=1e-5,
        rmsnorm=True,
        apply_residual_connection_post_layernorm=False,
        post_layer_norm=True,
        add_bias_linear=False,
        add_qkv_bias=False,
        bias_dropout_fusion=True,
        multi_query_attention=False,
        multi_query_group_num=1,
        rope_ratio=1,
        apply_query_key_layer_scaling=True,
        attention_softmax_in_fp32=True,
        fp32_residual_connection=False,
        quantization_bit=0,
        pre_seq_len=None,
        prefix_projection=False,
        original_rope=True,
        **kwargs
    ):
        self.num_layers = num_layers
        self.vocab_size = padded_vocab_size
        self.padded_vocab_size = padded_vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.kv_channels = kv_channels
        self.num_attention_heads = num_attention_heads
        self.seq_length = seq_length
        self.hidden_dropout = hidden_dropout
        self.classifier_dropout = classifier_dropout
        self.attention_dropout = attention_dropout
        self.layernorm_epsilon = layernorm_epsilon
        self.rmsnorm = rmsnorm
        self.apply_residual_connection_post_layernorm = apply_residual_connection_post_layernorm
        self.post_layer_norm = post_layer_norm
        self.add_bias_linear = add_bias_linear
        self.add_qkv_bias = add_qkv_bias
        self.bias_dropout_fusion = bias_dropout_fusion
        self.multi_query_attention = multi_query_attention
        self.multi_query_group_num = multi_query_group_num
        self.rope_ratio = rope_ratio
        self.apply_query_key_layer_scaling = apply_query_key_layer_scaling
        self.attention_softmax_in_fp32 = attention_softmax_in_fp32
        self.fp32_residual_connection = fp32_residual_connection
        self.quantization_bit = quantization_bit
        self.pre_seq_len = pre_seq_len
        self.prefix_projection = prefix_projection
        self.original_rope = original_rope
        super().__init__(**kwargs)
'''


def _base_chars():
    """ASCII printable + newline/tab + every character of the prompts."""
    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    for p in PROMPTS:
        for ch in p:
            if ch not in chars:
                chars.append(ch)
    return chars


def _fill_tokens(n, taken):
    """n more single-character tokens (CJK ideographs), then <unused_i>."""
    out = []
    cp = 0x4E00
    while len(out) < n and cp <= 0x9FFF:
        ch = chr(cp)
        if ch not in taken:
            out.append(ch)
        cp += 1
    i = 0
    while len(out) < n:
        out.append(f"<unused_{i}>")
        i += 1
    return out


def build_vocab(vocab_size=None):
    """Return (tokens in id order, padded_vocab_size)."""
    base = REGULAR_SPECIALS + _base_chars()
    needed = len(base) + len(COMMAND_TOKENS)
    if vocab_size is None:
        vocab_size = (needed + 63) // 64 * 64
    if vocab_size < needed:
        raise SystemExit(f"--vocab must be at least {needed}")
    fill = _fill_tokens(vocab_size - needed, set(base))
    # Command tokens sit at the top of the vocabulary, as in ChatGLM3
    # (64789..64797 of 65024 there).
    tokens = base + fill + COMMAND_TOKENS
    assert len(tokens) == vocab_size and len(set(tokens)) == vocab_size
    return tokens, vocab_size


def build_tokenizer_json(tokens):
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    vocab = {t: i for i, t in enumerate(tokens)}
    # Character-level BPE (no merges): every character of the input is one
    # token; unknown characters map to <unk>.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    specials = REGULAR_SPECIALS + COMMAND_TOKENS
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.TemplateProcessing(
        single="[gMASK] sop $A",
        pair="[gMASK] sop $A $B",
        special_tokens=[("[gMASK]", vocab["[gMASK]"]), ("sop", vocab["sop"])],
    )
    # Serialise through json so that the bytes are stable and sorted.
    return json.loads(tok.to_str())


def build_weights(args, vocab_size):
    import torch

    g = torch.Generator(device="cpu")
    g.manual_seed(args.seed)
    std = 0.02
    h = args.hidden
    hd = args.head_dim
    q = args.heads * hd
    kv = args.kv_groups * hd

    def randn(*shape, scale=std):
        return (torch.randn(*shape, generator=g, dtype=torch.float32) *
                scale).to(torch.float16)

    def ones(n):
        return torch.ones(n, dtype=torch.float16)

    w = {}
    w["transformer.embedding.word_embeddings.weight"] = randn(vocab_size, h)
    rot = hd // 2  # THUDM: RotaryEmbedding(kv_channels // 2)
    inv_freq = 1.0 / (10000**(torch.arange(0, rot, 2, dtype=torch.float32) /
                              rot))
    w["transformer.rotary_pos_emb.inv_freq"] = inv_freq.to(torch.float16)
    for i in range(args.layers):
        p = f"transformer.encoder.layers.{i}."
        w[p + "input_layernorm.weight"] = ones(h)
        w[p + "self_attention.query_key_value.weight"] = randn(q + 2 * kv, h)
        w[p + "self_attention.query_key_value.bias"] = randn(q + 2 * kv)
        w[p + "self_attention.dense.weight"] = randn(h, q)
        w[p + "post_attention_layernorm.weight"] = ones(h)
        w[p + "mlp.dense_h_to_4h.weight"] = randn(2 * args.ffn, h)
        w[p + "mlp.dense_4h_to_h.weight"] = randn(h, args.ffn)
    w["transformer.encoder.final_layernorm.weight"] = ones(h)
    # A larger output scale gives peakier (less uniform) next-token
    # distributions while keeping fp16 logits far from overflow.
    w["transformer.output_layer.weight"] = randn(vocab_size, h, scale=0.08)
    return w


def _dump(path, obj):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-groups", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--ffn", type=int, default=None,
                    help="ffn_hidden_size (default: hidden*13696/4096, "
                    "rounded up to a multiple of 8)")
    ap.add_argument("--vocab", type=int, default=None,
                    help="padded_vocab_size (default: smallest multiple of "
                    "64 that holds the base vocabulary)")
    ap.add_argument("--seq-length", type=int, default=8192)
    args = ap.parse_args(argv)

    if args.heads * args.head_dim != args.hidden:
        ap.error("--hidden must equal --heads * --head-dim (vLLM 0.2.2 "
                 "derives head size as hidden_size // num_attention_heads)")
    if args.heads % args.kv_groups:
        ap.error("--heads must be a multiple of --kv-groups")
    if args.head_dim not in (64, 80, 96, 112, 128, 256):
        ap.error("--head-dim must be one of 64, 80, 96, 112, 128, 256 "
                 "(vLLM 0.2.2 paged attention)")
    if args.ffn is None:
        args.ffn = (args.hidden * 13696 // 4096 + 7) // 8 * 8

    from safetensors.torch import save_file

    tokens, vocab_size = build_vocab(args.vocab)
    ids = {t: i for i, t in enumerate(tokens)}
    eos_id = ids["<eos>"]
    pad_id = ids["<unk>"]
    stop_ids = [eos_id, ids["<|user|>"], ids["<|observation|>"]]

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    config = {
        "_name_or_path": "vllm-provision/tiny-chatglm",
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        },
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": args.ffn,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": args.hidden,
        "kv_channels": args.head_dim,
        "layernorm_epsilon": 1e-05,
        "multi_query_attention": True,
        "multi_query_group_num": args.kv_groups,
        "num_attention_heads": args.heads,
        "num_layers": args.layers,
        "original_rope": True,
        "padded_vocab_size": vocab_size,
        "post_layer_norm": True,
        "pre_seq_len": None,
        "prefix_projection": False,
        "quantization_bit": 0,
        "rmsnorm": True,
        "seq_length": args.seq_length,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "use_cache": True,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
    }
    _dump(os.path.join(out, "config.json"), config)
    _dump(os.path.join(out, "generation_config.json"), {
        "_from_model_config": False,
        "eos_token_id": stop_ids,
        "pad_token_id": pad_id,
    })
    with open(os.path.join(out, "configuration_chatglm.py"), "w",
              encoding="utf-8", newline="\n") as f:
        f.write(CONFIG_PY)

    _dump(os.path.join(out, "tokenizer.json"), build_tokenizer_json(tokens))
    special_map = {
        "unk_token": "<unk>",
        "bos_token": "<s>",
        "eos_token": "<eos>",
        "pad_token": "<unk>",
        "additional_special_tokens": list(COMMAND_TOKENS),
    }
    _dump(os.path.join(out, "special_tokens_map.json"), special_map)
    tok_cfg = dict(special_map)
    tok_cfg.update({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": args.seq_length,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
    })
    _dump(os.path.join(out, "tokenizer_config.json"), tok_cfg)

    weights = build_weights(args, vocab_size)
    save_file(weights, os.path.join(out, "model.safetensors"),
              metadata={"format": "pt"})

    files = {}
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            files[name] = hashlib.sha256(f.read()).hexdigest()
    n_params = sum(t.numel() for t in weights.values())
    per_token_kv = args.layers * 2 * args.kv_groups * args.head_dim * 2
    print(json.dumps({
        "out": out,
        "model_type": "chatglm",
        "architectures": config["architectures"],
        "seed": args.seed,
        "num_layers": args.layers,
        "hidden_size": args.hidden,
        "num_attention_heads": args.heads,
        "multi_query_group_num": args.kv_groups,
        "head_dim": args.head_dim,
        "ffn_hidden_size": args.ffn,
        "padded_vocab_size": vocab_size,
        "seq_length": args.seq_length,
        "eos_token_id": eos_id,
        "stop_token_ids": stop_ids,
        "special_token_ids": {t: ids[t] for t in REGULAR_SPECIALS +
                              COMMAND_TOKENS},
        "params": n_params,
        "kv_bytes_per_token_fp16": per_token_kv,
        "files": files,
    }, ensure_ascii=False, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
