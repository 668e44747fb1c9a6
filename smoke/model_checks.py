"""generate.py's checks before vLLM is imported: the model dir, its config and weights, the architecture
against the installed vLLM's registry, a GPU for torch. Bad input raises procgroup.BadInput.

Runs inside the target environment with stdlib + torch + vllm only (never imports the toolkit).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys

from procgroup import BadInput

# vLLM 0.2.2's _MODEL_REGISTRY keys: used when the installed vLLM's registry cannot be read
# from its sources (or vLLM is not installed, e.g. when the pre-import checks are tested).
REGISTRY_0_2_2 = [
    "AquilaModel", "AquilaForCausalLM", "BaiChuanForCausalLM", "BaichuanForCausalLM",
    "BloomForCausalLM", "ChatGLMModel", "FalconForCausalLM", "GPT2LMHeadModel",
    "GPTBigCodeForCausalLM", "GPTJForCausalLM", "GPTNeoXForCausalLM", "InternLMForCausalLM",
    "LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM", "MptForCausalLM",
    "MPTForCausalLM", "OPTForCausalLM", "PhiForCausalLM", "QWenLMHeadModel", "RWForCausalLM",
    "YiForCausalLM",
]
_SUPPORTED_HEAD_SIZES_0_2 = [64, 80, 96, 112, 128, 256]
_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "I32": 4,
                "I64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def load_model_config(model: str) -> dict:
    if not os.path.exists(model):
        raise BadInput(f"model directory {model} does not exist",
                       "pass --model a local directory holding config.json, the weights and the tokenizer "
                       "(make a tiny one with smoke/make_tiny_chatglm.py --out DIR)")
    if not os.path.isdir(model):
        raise BadInput(f"{model} is not a directory", "pass --model the model's directory, not a file in it")
    cfg_path = os.path.join(model, "config.json")
    if not os.path.isfile(cfg_path):
        raise BadInput(f"{model} has no config.json",
                       "is this the snapshot directory? a HF model dir holds config.json next to the weights")
    try:
        with open(cfg_path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (OSError, ValueError) as e:
        raise BadInput(f"{cfg_path} is not readable JSON: {e}", "re-download or regenerate the model") from None
    if not isinstance(cfg, dict):
        raise BadInput(f"{cfg_path} is not a JSON object", "re-download or regenerate the model")
    return cfg


def safetensors_headers(model_dir: str) -> dict[str, dict]:
    """Tensor name -> {dtype, shape} from every *.safetensors header (stdlib: 8-byte length + JSON)."""
    out: dict[str, dict] = {}
    for fn in sorted(os.listdir(model_dir)):
        if fn.endswith(".safetensors"):
            with open(os.path.join(model_dir, fn), "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                out.update({k: v for k, v in json.loads(fh.read(n)).items() if k != "__metadata__"})
    return out


# Where the embedding lives and which config keys size it, per model_type (checked before vLLM loads).
_EMBEDDINGS = {
    "chatglm": ("transformer.embedding.word_embeddings.weight", "padded_vocab_size", "num_layers",
                "transformer.encoder.layers.{}."),
    "llama": ("model.embed_tokens.weight", "vocab_size", "num_hidden_layers", "model.layers.{}."),
}


def check_weights(model: str, cfg: dict) -> None:
    """Weights that do not match config.json fail here, with the file named, not deep inside vLLM."""
    names = os.listdir(model)
    if not any(n.endswith((".safetensors", ".bin", ".pt")) for n in names):
        raise BadInput(f"{model} holds no weights (*.safetensors / *.bin)",
                       "copy the checkpoint's weight files next to config.json")
    layout = _EMBEDDINGS.get(cfg.get("model_type", ""))
    if not layout or not any(n.endswith(".safetensors") for n in names):
        return
    try:
        headers = safetensors_headers(model)
    except (OSError, ValueError) as e:
        raise BadInput(f"a *.safetensors file in {model} is unreadable: {e}", "re-download or regenerate the weights") from e
    embedding, vocab_key, layers_key, layer_prefix = layout
    shape = (headers.get(embedding) or {}).get("shape")
    want = [cfg.get(vocab_key), cfg.get("hidden_size")]
    if shape is None:
        raise BadInput(f"the weights have no {embedding}", "the weights are not this model's: check the directory")
    if None not in want and list(shape) != want:
        raise BadInput(f"{embedding} is {list(shape)} but config.json says [{vocab_key}, hidden_size] = {want}",
                       "the weights do not belong to this config.json: re-download or regenerate the model")
    layers = cfg.get(layers_key)
    if isinstance(layers, int):
        have = sum(1 for i in range(layers + 1) if any(k.startswith(layer_prefix.format(i)) for k in headers))
        if have != layers:
            raise BadInput(f"the weights hold {have} layers, config.json says {layers_key} = {layers}",
                           "the weights do not belong to this config.json: re-download or regenerate the model")


def vllm_registry() -> tuple[list[str], str]:
    """Architectures the installed vLLM knows, read from its sources without importing it."""
    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return list(REGISTRY_0_2_2), "builtin-0.2.2 (vllm not installed)"
    root = list(spec.submodule_search_locations)[0]
    candidates = [
        ("model_executor/model_loader.py", r"_MODEL_REGISTRY\s*=\s*\{(.*?)\n\}"),
        ("model_executor/models/__init__.py", r"_MODELS\s*=\s*\{(.*?)\n\}"),
        ("model_executor/models/__init__.py", r"_GENERATION_MODELS\s*=\s*\{(.*?)\n\}"),
        ("model_executor/models/registry.py", r"_TEXT_GENERATION_MODELS\s*=\s*\{(.*?)\n\}"),
    ]
    names: list[str] = []
    used = []
    for rel, pat in candidates:
        path = os.path.join(root, rel)
        try:
            with open(path, encoding="utf-8") as fh:
                src = fh.read()
        except OSError:
            continue
        m = re.search(pat, src, re.S)
        if m:
            found = re.findall(r'^\s*"([A-Za-z0-9_]+)"\s*:', m.group(1), re.M)
            if found:
                names += found
                used.append(rel)
    if names:
        return sorted(set(names)), "vllm sources: " + ", ".join(used)
    return [], "unreadable"


def check_architecture(cfg: dict) -> dict:
    archs = cfg.get("architectures") or []
    registry, source = vllm_registry()
    info = {"architectures": archs, "registry_source": source, "supported": None}
    if not archs:
        raise BadInput("config.json names no architectures",
                       'add "architectures": ["<ClassName>"] (ChatGLM: "ChatGLMModel"); vLLM picks its model class from it')
    if registry:
        ok = [a for a in archs if a in registry]
        info["supported"] = bool(ok)
        if not ok:
            raise BadInput(f"architecture {archs} is not supported by this vLLM ({source})",
                           f"supported: {', '.join(registry)}; use a model of a supported architecture "
                           "or a vLLM release that adds it")
    return info


def model_warnings(cfg: dict, engine: str = "v0") -> list[str]:
    """What the model will meet in this engine. The notes below are 0.2.x's limits: the V1 engine has no
    fixed list of paged-attention head sizes and honours ChatGLM's rope_ratio and seq_length."""
    notes = []
    if engine == "v1":
        return notes
    heads = cfg.get("num_attention_heads")
    hidden = cfg.get("hidden_size")
    if isinstance(heads, int) and isinstance(hidden, int) and heads:
        hd = hidden // heads
        if hd not in _SUPPORTED_HEAD_SIZES_0_2:
            notes.append(f"head size hidden_size/num_attention_heads = {hd} is not one of vLLM 0.2.x's "
                         f"paged-attention sizes {_SUPPORTED_HEAD_SIZES_0_2}: the engine will refuse it")
        kvc = cfg.get("kv_channels")
        if isinstance(kvc, int) and kvc != hd:
            notes.append(f"kv_channels {kvc} != hidden_size/num_attention_heads {hd}: vLLM 0.2.x sizes heads "
                         "from hidden_size/num_attention_heads, THUDM from kv_channels")
    if cfg.get("model_type") == "chatglm":
        rr = cfg.get("rope_ratio", 1)
        if rr not in (None, 1, 1.0):
            notes.append(f"rope_ratio {rr}: vLLM 0.2.2 ignores it (RoPE base stays 10000; fixed by PR #1841 "
                         "after 0.2.2), so 32k ChatGLM outputs degrade")
        seq = cfg.get("seq_length")
        if isinstance(seq, int) and seq > 8192:
            notes.append(f"seq_length {seq}: vLLM 0.2.2's ChatGLM RoPE cache covers 8192 positions "
                         "(PagedAttentionWithRoPE max_position default); longer sequences read past it")
    return notes


def check_gpu() -> None:
    try:
        import torch  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA runtime raising OSError
        raise BadInput(f"torch is not importable here: {type(e).__name__}: {e}",
                       "run this script with the target env's python (the one vLLM was built into)") from None
    if not torch.cuda.is_available():
        raise BadInput("no CUDA GPU visible to torch (torch.cuda.is_available() is False)",
                       f"torch {torch.__version__} (CUDA {torch.version.cuda}): check nvidia-smi, "
                       "CUDA_VISIBLE_DEVICES, and that torch is a CUDA build")
    if importlib.util.find_spec("vllm") is None:
        raise BadInput("vllm is not installed in this interpreter",
                       f"{sys.executable} has no vllm; run with the target env's python or build it first")
