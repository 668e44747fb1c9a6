"""The smoke scripts' CPU-testable parts: generate.py's pre-import checks (no vllm, no torch
needed), its log parser (kept in step with the toolkit's), and the ChatGLM reference forward
against an independent scalar implementation written out step by step below."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "smoke"
GENERATE = SMOKE / "generate.py"
PARITY = SMOKE / "parity.py"


def run_script(script, *args, env=None):
    e = dict(os.environ)
    e.pop("PYTHONPATH", None)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=e, cwd=str(ROOT))


def assert_one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    hints = [ln for ln in lines if ln.startswith("hint: ")]
    assert len(errors) == 1 and len(hints) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    for n in needles:
        assert n in errors[0], errors[0]


# --------------------------------------------------------------------------- generate.py pre-import

def test_generate_missing_dir(tmp_path):
    r = run_script(GENERATE, "--model", tmp_path / "nope")
    assert_one_line_error(r, "does not exist")


def test_generate_no_config(tmp_path):
    r = run_script(GENERATE, "--model", tmp_path)
    assert_one_line_error(r, "no config.json")


def test_generate_bad_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    assert_one_line_error(run_script(GENERATE, "--model", tmp_path), "not readable JSON")


def test_generate_unsupported_architecture_builtin_registry(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "foo", "architectures": ["FooForCausalLM"]}))
    r = run_script(GENERATE, "--model", tmp_path)
    assert_one_line_error(r, "FooForCausalLM", "not supported")
    assert "ChatGLMModel" in r.stderr  # the hint lists what is supported


def test_generate_no_architectures(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "chatglm"}))
    assert_one_line_error(run_script(GENERATE, "--model", tmp_path), "no architectures")


def test_generate_reads_registry_from_installed_vllm_sources(tmp_path):
    """A fake vllm package (never imported, only located) whose registry lacks ChatGLM."""
    pkg = tmp_path / "site" / "vllm" / "model_executor"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (pkg / "model_loader.py").write_text('_MODEL_REGISTRY = {\n    "LlamaForCausalLM": LlamaForCausalLM,\n'
                                         '    "OPTForCausalLM": OPTForCausalLM,\n}\n')
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "chatglm", "architectures": ["ChatGLMModel"]}))
    r = run_script(GENERATE, "--model", model, env={"PYTHONPATH": str(tmp_path / "site")})
    assert_one_line_error(r, "ChatGLMModel", "not supported")
    assert "model_loader.py" in r.stderr and "must not be imported" not in r.stderr


def write_safetensors(path: Path, tensors: dict[str, list[int]]) -> None:
    """A real (zero-filled fp16) safetensors file: 8-byte header length, JSON header, data."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = math.prod(shape) * 2
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


TINY_GLM = {"model_type": "chatglm", "architectures": ["ChatGLMModel"], "padded_vocab_size": 8, "hidden_size": 4,
            "num_layers": 2}
TINY_GLM_WEIGHTS = {"transformer.embedding.word_embeddings.weight": [8, 4],
                    "transformer.encoder.layers.0.input_layernorm.weight": [4],
                    "transformer.encoder.layers.1.input_layernorm.weight": [4]}


def test_generate_no_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_GLM))
    assert_one_line_error(run_script(GENERATE, "--model", tmp_path), "holds no weights")


@pytest.mark.parametrize("change,needle", [
    ({"transformer.embedding.word_embeddings.weight": [16, 4]}, "config.json says [padded_vocab_size, hidden_size] = [8, 4]"),
    ({"transformer.encoder.layers.1.input_layernorm.weight": None}, "hold 1 layers, config.json says num_layers = 2"),
])
def test_generate_weights_that_do_not_match_the_config(tmp_path, change, needle):
    (tmp_path / "config.json").write_text(json.dumps(TINY_GLM))
    tensors = {k: v for k, v in {**TINY_GLM_WEIGHTS, **change}.items() if v is not None}
    write_safetensors(tmp_path / "model.safetensors", tensors)
    assert_one_line_error(run_script(GENERATE, "--model", tmp_path), needle)


def test_generate_supported_arch_reaches_gpu_check(tmp_path):
    """ChatGLMModel passes the registry and matching weights; with no GPU visible the GPU check stops it, exit 2."""
    (tmp_path / "config.json").write_text(json.dumps(TINY_GLM))
    write_safetensors(tmp_path / "model.safetensors", TINY_GLM_WEIGHTS)
    r = run_script(GENERATE, "--model", tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    assert_one_line_error(r, "no CUDA GPU visible to torch")
    assert "CUDA_VISIBLE_DEVICES" in r.stderr          # the hint names what hides the GPU


def test_parity_bad_input(tmp_path):
    assert_one_line_error(run_script(PARITY, "--model", tmp_path / "nope"), "does not exist")
    assert_one_line_error(run_script(PARITY), "no --model")


def _load(script: str):
    """A smoke script as a module, its siblings importable as when it runs from smoke/."""
    import importlib.util
    sys.path.insert(0, str(SMOKE))
    try:
        spec = importlib.util.spec_from_file_location(f"smoke_{script}", SMOKE / f"{script}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(SMOKE))
    return mod


def test_smoke_scripts_import_only_stdlib_torch_vllm_and_each_other():
    """They run inside the target env: no toolkit import, and every sibling they import is a smoke script
    the smoke step hashes (and so reruns on a change)."""
    import ast

    from vllm_provision.steps.smoke import SCRIPTS
    siblings = {p.stem for p in SMOKE.glob("*.py")}
    allowed = set(sys.stdlib_module_names) | {"torch", "vllm", "transformers", "safetensors", "tokenizers", "numpy", "ray"}
    for path in SMOKE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                top = name.split(".")[0]
                assert top in allowed | siblings, f"{path.name} imports {name}"
                if top in siblings:
                    assert f"{top}.py" in SCRIPTS and path.name in SCRIPTS, f"{path.name} -> {top}"


def test_generate_log_parser_matches_toolkit():
    from vllm_provision.kvcache import parse as kvcache
    gen = _load("kv_facts")
    samples = [
        "INFO 11-21 10:00:01 llm_engine.py:207] # GPU blocks: 132349, # CPU blocks: 9362\n",
        "INFO llm_engine.py:322] # cuda blocks: 27000, # CPU blocks: 2048\n",
        "INFO kv_cache_utils.py:634] GPU KV cache size: 1,234,560 tokens\n"
        "INFO kv_cache_utils.py:637] Maximum concurrency for 32,768 tokens per request: 37.68x\n",
        # 0.26.0's engine-core lines (coloured on a terminal), and an engine that stopped after sizing
        "\x1b[36m(EngineCore pid=7)\x1b[0m INFO 12-03 16:40:00 [gpu_model_runner.py:5347] Model loading took 0.0 GiB "
        "memory and 0.5 seconds\n(EngineCore pid=7) INFO 12-03 16:40:05 [gpu_model_runner.py:6737] Estimated CUDA graph "
        "memory: 0.25 GiB total\n(EngineCore pid=7) INFO 12-03 16:40:05 [gpu_worker.py:560] Available KV cache memory: "
        "127.8 GiB\n(EngineCore pid=7) INFO 12-03 16:40:05 [kv_cache_utils.py:2177] GPU KV cache size: 134,008,000 "
        "tokens\n(EngineCore pid=7) INFO 12-03 16:40:05 [kv_cache_utils.py:2178] Maximum concurrency for 8,192 tokens "
        "per request: 16358.40x\n",
        "(EngineCore pid=7) INFO 12-03 16:40:05 [gpu_worker.py:560] Available KV cache memory: -0.25 GiB\n",
        "nothing here\n",
    ]
    for s in samples:
        a, b = kvcache.parse_block_log(s), gen.parse_block_log(s)
        if a is None:
            assert b is None
            continue
        for k in ("format", "num_gpu_blocks", "num_cpu_blocks", "kv_cache_tokens", "max_concurrency", "line",
                  "concurrency_tokens", "available_kv_cache_gib", "weights_gib", "cudagraph_gib"):
            assert a.get(k) == b.get(k), (k, s)
    assert gen.parse_block_log(samples[3])["available_kv_cache_gib"] == 127.8


def test_generate_stop_ids_never_empty_strings(tmp_path):
    gen = _load("generate")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 64795, 64797]}))

    class Tok:
        eos_token_id = 2

        def get_command(self, t):
            return {"<|user|>": 64795, "<|observation|>": 64797}[t]

    ids, sources = gen.resolve_stop_ids(str(tmp_path), {"model_type": "chatglm", "eos_token_id": 2}, Tok())
    assert ids == [2, 64795, 64797]
    assert sources and "generation_config.json" in sources[0]


def test_generate_model_warnings_for_chatglm_32k():
    gen = _load("model_checks")
    notes = gen.model_warnings({"model_type": "chatglm", "hidden_size": 4096, "num_attention_heads": 32,
                                "kv_channels": 128, "rope_ratio": 50, "seq_length": 32768})
    assert any("rope_ratio 50" in n for n in notes)
    assert any("8192" in n for n in notes)
    assert gen.model_warnings({"model_type": "chatglm", "hidden_size": 4096, "num_attention_heads": 32,
                               "kv_channels": 128, "seq_length": 8192}) == []
    bad = gen.model_warnings({"hidden_size": 48, "num_attention_heads": 2})
    assert any("head size" in n and "24" in n for n in bad)


def test_model_warnings_of_0_2_2_do_not_apply_to_the_v1_engine():
    gen = _load("model_checks")
    glm32k = {"model_type": "chatglm", "hidden_size": 4096, "num_attention_heads": 32, "kv_channels": 128,
              "rope_ratio": 50, "seq_length": 32768}
    assert gen.model_warnings(glm32k) and gen.model_warnings(glm32k, "v1") == []


# --------------------------------------------------------------------------- the notes' calls on the V1 engine
NOTES_SAMPLING = dict(n=1, best_of=6, top_p=0.9, top_k=3, repetition_penalty=1.2, temperature=0.7, max_tokens=500)
# vLLM 0.26.0's SamplingParams is a msgspec struct: these are its public fields (vllm/sampling_params.py)
SAMPLING_FIELDS_0_26_0 = (
    "n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "top_k", "min_p",
    "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens", "logprobs", "prompt_logprobs",
    "logprob_token_ids", "flat_logprobs", "detokenize", "skip_special_tokens", "spaces_between_special_tokens",
    "include_stop_str_in_output", "output_kind", "skip_clone", "output_text_buffer_length", "_eos_token_id",
    "_all_stop_token_ids", "structured_outputs", "logit_bias", "allowed_token_ids", "extra_args",
    "routed_experts_prompt_start", "bad_words", "_bad_words_token_ids", "skip_reading_prefix_cache",
    "thinking_token_budget", "repetition_detection")


class SamplingParams0260:
    """Stands in for 0.26.0's msgspec struct: what the mapping reads of it is __struct_fields__."""
    __struct_fields__ = SAMPLING_FIELDS_0_26_0


class SamplingParams022:
    """0.2.2's SamplingParams.__init__ signature (vllm/sampling_params.py of the 0.2.2 sdist)."""
    def __init__(self, n=1, best_of=None, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0,
                 temperature=1.0, top_p=1.0, top_k=-1, min_p=0.0, use_beam_search=False, length_penalty=1.0,
                 early_stopping=False, stop=None, stop_token_ids=None, ignore_eos=False, max_tokens=16,
                 logprobs=None, prompt_logprobs=None, skip_special_tokens=True, spaces_between_special_tokens=True,
                 logits_processors=None):
        pass


def test_notes_sampling_on_0_26_0_emulates_best_of_and_says_so():
    compat = _load("engine_compat")
    params, changes, keep = compat.map_sampling(NOTES_SAMPLING, compat.accepted_names(SamplingParams0260))
    assert params == dict(n=6, logprobs=0, top_p=0.9, top_k=3, repetition_penalty=1.2, temperature=0.7, max_tokens=500)
    assert keep == 1
    assert changes == ["best_of=6: removed in the V1 engine; the smoke asks for n=6 with logprobs=0 and keeps the 1 "
                       "with the highest cumulative logprob, as 0.2.2's best_of did (V1 ranks by the model's raw "
                       "logprobs, 0.2.2 by the processed ones)"]
    # the notes' other 0.2.2 arguments, each dropped with what replaces it
    _, lines, _ = compat.map_sampling(dict(use_beam_search=False, length_penalty=1.0, early_stopping=False,
                                           logits_processors=None, min_p=0.0),
                                      compat.accepted_names(SamplingParams0260))
    assert [line.split(":")[0] for line in lines] == ["use_beam_search=False", "length_penalty=1.0",
                                                      "early_stopping=False", "logits_processors=None"]
    assert "LLM.beam_search" in lines[0] and "LLM(logits_processors=[...])" in lines[3]


def test_notes_sampling_on_0_2_2_is_passed_as_written():
    compat = _load("engine_compat")
    assert compat.map_sampling(NOTES_SAMPLING, compat.accepted_names(SamplingParams022)) == (NOTES_SAMPLING, [], None)


def test_swap_space_is_dropped_where_engine_args_lack_it():
    import dataclasses
    compat = _load("engine_compat")

    @dataclasses.dataclass
    class EngineArgs0260:       # a few of 0.26.0's EngineArgs fields (vllm/engine/arg_utils.py): no swap_space
        model: str = ""
        trust_remote_code: bool = False
        dtype: str = "auto"
        seed: int = 0
        max_model_len: int | None = None
        tensor_parallel_size: int = 1
        gpu_memory_utilization: float = 0.92

    wanted = dict(model="/m", trust_remote_code=True, dtype="auto", max_model_len=None, gpu_memory_utilization=0.9,
                  tensor_parallel_size=1, swap_space=4, seed=0)
    kept, changes = compat.map_llm_args(wanted, compat.accepted_names(EngineArgs0260))
    assert "swap_space" not in kept and kept["gpu_memory_utilization"] == 0.9
    assert changes == ["swap_space=4: removed in the V1 engine with the CPU swap blocks (GPU↔CPU KV-cache swapping): "
                       "a preempted request is recomputed; no '# CPU blocks' any more; dropped"]
    assert compat.map_llm_args(wanted, None) == (wanted, [])

    @dataclasses.dataclass
    class EngineArgs022(EngineArgs0260):   # 0.2.2's EngineArgs has swap_space (4 GiB): passed as written
        swap_space: int = 4

    assert compat.map_llm_args(wanted, compat.accepted_names(EngineArgs022)) == (wanted, [])


def test_best_completions_keep_the_highest_cumulative_logprob():
    compat = _load("engine_compat")

    class Out:
        def __init__(self, text, score):
            self.text, self.cumulative_logprob = text, score

    outs = [Out("a", -9.5), Out("b", -2.0), Out("c", None), Out("d", -3.0)]
    assert [o.text for o in compat.best_completions(outs, 1)] == ["b"]
    assert [o.text for o in compat.best_completions(outs, 2)] == ["b", "d"]
    assert compat.best_completions(outs, None) == outs


def test_engine_detected_from_the_installed_vllm_without_importing_it(tmp_path):
    for version, engine in (("0.26.0", "v1"), ("0.2.2", "v0"), ("0.10.2", "v0")):
        site = tmp_path / version
        dist = site / f"vllm-{version}.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
        r = subprocess.run([sys.executable, "-c", "import engine_compat; print(engine_compat.detect_engine('auto'))"],
                           capture_output=True, text=True, cwd=str(SMOKE), timeout=60,
                           env={**os.environ, "PYTHONPATH": f"{site}:{SMOKE}"})
        assert r.stdout.strip() == repr((engine, f"vllm {version}")), r.stderr
    compat = _load("engine_compat")
    assert compat.detect_engine("v1") == ("v1", "given (--engine)")


FD_CAPTURE_PROBE = """
import json, multiprocessing, sys
from logcapture import FdCapture

def engine_core():      # what V1's engine-core process does: log through its own stdout
    print("(EngineCore pid=7) INFO 12-03 16:40:05 [kv_cache_utils.py:2177] GPU KV cache size: 134,008,000 tokens",
          flush=True)

if __name__ == "__main__":
    capture = FdCapture().start()
    print("front-end line", flush=True)
    child = multiprocessing.get_context("spawn").Process(target=engine_core)
    child.start()
    child.join()
    text = capture.stop()
    print(json.dumps(text))
"""


def test_fd_capture_sees_the_engine_core_child_process(tmp_path):
    """V1 logs its KV-cache lines from a spawned child: the capture must see them (and pass them to stderr)."""
    probe = tmp_path / "probe.py"
    probe.write_text(FD_CAPTURE_PROBE)
    r = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(SMOKE)})
    assert r.returncode == 0, r.stderr
    captured = json.loads(r.stdout.strip().splitlines()[-1])
    assert "GPU KV cache size: 134,008,000 tokens" in captured and "front-end line" in captured
    assert "GPU KV cache size: 134,008,000 tokens" in r.stderr
    assert r.stdout.strip().splitlines() == [json.dumps(captured)]     # stdout carries only what came after


def test_the_smoke_step_passes_the_catalogs_engine(isolated):
    from vllm_provision.cli import cli_settings
    from vllm_provision.plan import build_plan
    from vllm_provision.probes.host import HostFacts
    from vllm_provision.steps.smoke import generate_argv
    facts = HostFacts(gpus=[], driver_cuda="13.0", cpu_count=16, mem_available_bytes=64 << 30,
                      mem_total_bytes=128 << 30, disk_free_bytes=100 << 30)
    for release, engine in (("0.2.2", "v0"), ("0.26.0", "v1")):
        plan = build_plan(cli_settings(release=release), facts=facts, need_lock=False)   # no lock needed to plan a smoke
        argv = [str(a) for a in generate_argv(plan, "python", Path("/m"), "/o.json")]
        assert argv[argv.index("--engine") + 1] == engine


# --------------------------------------------------------------------------- teacher-forced compare

def test_compare_teacher_forced_counts_ties_and_mismatches():
    sys.path.insert(0, str(SMOKE))
    try:
        import parity
    finally:
        sys.path.remove(str(SMOKE))
    # 2-token prompt, 3 generated tokens; rows are the logits at positions 1, 2, 3.
    rows = {
        1: [0.0, 5.0, 1.0],      # top 1; vLLM says 1 -> match
        2: [3.0, 2.995, 0.0],    # top 0; vLLM says 1, gap 0.005 <= 0.01*3 -> tie
        3: [9.0, 0.0, 1.0],      # top 0; vLLM says 2, gap 8 -> mismatch
    }

    class Row(list):
        def argmax(self):
            return max(range(len(self)), key=lambda i: self[i])

    def logits_fn(ids):
        assert ids == [7, 8, 1, 1, 2]
        return {i: Row(r) for i, r in rows.items()}

    out = parity.compare_teacher_forced(logits_fn, [[7, 8]], [[1, 1, 2]], tie_rtol=1e-2)
    assert (out["tokens_compared"], out["ties"], out["mismatches"]) == (3, 1, 1)
    assert out["details"][0]["tie"] is True and out["details"][1]["ref_token"] == 0


# --------------------------------------------------------------------------- reference forward

# torch (CPU) is in the test extra, as on the GPU host's image; the tests above need neither torch nor vllm
import torch  # noqa: E402


def _cfg(**kw):
    cfg = dict(model_type="chatglm", architectures=["ChatGLMModel"], num_layers=2, hidden_size=16,
               num_attention_heads=2, multi_query_attention=True, multi_query_group_num=1, kv_channels=8,
               ffn_hidden_size=6, padded_vocab_size=7, layernorm_epsilon=1e-5, rmsnorm=True, add_qkv_bias=True,
               add_bias_linear=False, apply_residual_connection_post_layernorm=False, post_layer_norm=True,
               original_rope=True, seq_length=64)
    cfg.update(kw)
    return cfg


def _weights(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    H, nh, hd, ng, F_, V = (cfg["hidden_size"], cfg["num_attention_heads"], cfg["kv_channels"],
                            cfg["multi_query_group_num"], cfg["ffn_hidden_size"], cfg["padded_vocab_size"])
    qkv = (nh + 2 * ng) * hd
    w = {"transformer.embedding.word_embeddings.weight": torch.randn(V, H, generator=g)}
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}"
        w[p + ".input_layernorm.weight"] = 1 + 0.1 * torch.randn(H, generator=g)
        w[p + ".self_attention.query_key_value.weight"] = 0.3 * torch.randn(qkv, H, generator=g)
        w[p + ".self_attention.query_key_value.bias"] = 0.1 * torch.randn(qkv, generator=g)
        w[p + ".self_attention.dense.weight"] = 0.3 * torch.randn(H, nh * hd, generator=g)
        w[p + ".post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(H, generator=g)
        w[p + ".mlp.dense_h_to_4h.weight"] = 0.3 * torch.randn(2 * F_, H, generator=g)
        w[p + ".mlp.dense_4h_to_h.weight"] = 0.3 * torch.randn(H, F_, generator=g)
    w["transformer.encoder.final_layernorm.weight"] = 1 + 0.1 * torch.randn(H, generator=g)
    w["transformer.output_layer.weight"] = torch.randn(V, H, generator=g)
    return {k: v.to(torch.float64) for k, v in w.items()}


def _scalar_forward(cfg, w, ids):
    """ChatGLM2/3 written out with Python floats and loops, independent of the torch code."""
    M = {k: v.tolist() for k, v in w.items()}
    H, nh, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["kv_channels"]
    ng = cfg["multi_query_group_num"] if cfg["multi_query_attention"] else nh
    F_, eps = cfg["ffn_hidden_size"], cfg["layernorm_epsilon"]
    base = 10000.0 * cfg.get("rope_ratio", 1)
    rot = hd // 2                      # rotary on the first half of each head
    post_res = cfg["apply_residual_connection_post_layernorm"]

    def matvec(W, x, b=None):
        return [sum(W[r][c] * x[c] for c in range(len(x))) + (b[r] if b else 0.0) for r in range(len(W))]

    def rms(x, g):
        s = math.sqrt(sum(v * v for v in x) / len(x) + eps)
        return [g[i] * x[i] / s for i in range(len(x))]

    def rope(vec, pos):
        out = list(vec)
        for i in range(rot // 2):      # pair (2i, 2i+1), frequency base^(-2i/rot)
            theta = pos * base ** (-(2 * i) / rot)
            c, s = math.cos(theta), math.sin(theta)
            a, b = vec[2 * i], vec[2 * i + 1]
            out[2 * i], out[2 * i + 1] = a * c - b * s, b * c + a * s
        return out

    def silu(v):
        return v / (1 + math.exp(-v))

    xs = [list(M["transformer.embedding.word_embeddings.weight"][t]) for t in ids]
    T = len(ids)
    for layer in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{layer}"
        lns = [rms(x, M[p + ".input_layernorm.weight"]) for x in xs]
        qs, ks, vs = [], [], []
        for t in range(T):
            qkv = matvec(M[p + ".self_attention.query_key_value.weight"], lns[t],
                         M[p + ".self_attention.query_key_value.bias"])
            q = [rope(qkv[h * hd:(h + 1) * hd], t) for h in range(nh)]
            off = nh * hd
            k = [rope(qkv[off + g * hd: off + (g + 1) * hd], t) for g in range(ng)]
            off += ng * hd
            v = [qkv[off + g * hd: off + (g + 1) * hd] for g in range(ng)]
            qs.append(q), ks.append(k), vs.append(v)
        new = []
        for t in range(T):
            ctx = []
            for h in range(nh):
                g = h // (nh // ng)
                sc = [sum(qs[t][h][d] * ks[u][g][d] for d in range(hd)) / math.sqrt(hd) for u in range(t + 1)]
                m = max(sc)
                e = [math.exp(s - m) for s in sc]
                z = sum(e)
                ctx += [sum(e[u] / z * vs[u][g][d] for u in range(t + 1)) for d in range(hd)]
            attn = matvec(M[p + ".self_attention.dense.weight"], ctx)
            res = lns[t] if post_res else xs[t]
            h1 = [res[i] + attn[i] for i in range(H)]
            ln2 = rms(h1, M[p + ".post_attention_layernorm.weight"])
            up = matvec(M[p + ".mlp.dense_h_to_4h.weight"], ln2)
            act = [silu(up[i]) * up[F_ + i] for i in range(F_)]
            down = matvec(M[p + ".mlp.dense_4h_to_h.weight"], act)
            res2 = ln2 if post_res else h1
            new.append([res2[i] + down[i] for i in range(H)])
        xs = new
    xs = [rms(x, M["transformer.encoder.final_layernorm.weight"]) for x in xs]
    return [matvec(M["transformer.output_layer.weight"], x) for x in xs]


def _ref(cfg, w):
    sys.path.insert(0, str(SMOKE))
    try:
        import chatglm_reference
    finally:
        sys.path.remove(str(SMOKE))
    return chatglm_reference, chatglm_reference.ChatGLMReference(
        cfg, w, param_dtype=torch.float64, compute_dtype=torch.float64)


def test_rope_is_gptj_style_on_first_half():
    mod, _ = _ref(_cfg(), _weights(_cfg()))
    x = torch.tensor([[[1.0, 0, 0, 0, 5, 6, 7, 8]]], dtype=torch.float64)   # T=1, 1 head, hd 8 -> rot 4
    cos, sin = mod.rope_cache(torch.tensor([1]), 4, 10000.0, torch.float64)
    out = mod.apply_rope_gptj(x, cos, sin, 4)[0, 0].tolist()
    # pair (0,1) turns by theta=1: (cos 1, sin 1); pair (2,3) is zero; dims 4..7 untouched.
    # NeoX style would have put sin 1 in dim 2 instead.
    assert out == pytest.approx([math.cos(1), math.sin(1), 0, 0, 5, 6, 7, 8], abs=1e-12)
    assert mod.apply_rope_gptj(x, *mod.rope_cache(torch.tensor([0]), 4, 1e4, torch.float64), 4)[0, 0].tolist() \
        == [1.0, 0, 0, 0, 5, 6, 7, 8]


@pytest.mark.parametrize("overrides", [
    {},
    {"apply_residual_connection_post_layernorm": True, "rope_ratio": 3},
    {"multi_query_attention": False, "num_layers": 1},
    {"num_attention_heads": 4, "multi_query_group_num": 2, "hidden_size": 32, "num_layers": 1},
])
def test_reference_matches_scalar_forward(overrides):
    cfg = _cfg(**overrides)
    if not cfg["multi_query_attention"]:
        cfg["multi_query_group_num"] = cfg["num_attention_heads"]
    w = _weights(cfg, seed=len(overrides))
    ids = [3, 1, 4, 1, 5]
    _, ref = _ref(cfg, w)
    got = ref.forward(ids)
    want = torch.tensor(_scalar_forward(cfg, w, ids), dtype=torch.float64)
    assert got.shape == (5, cfg["padded_vocab_size"])
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-9), (got - want).abs().max()


def test_reference_is_causal():
    cfg = _cfg()
    _, ref = _ref(cfg, _weights(cfg))
    a = ref.forward([3, 1, 4, 1, 5])
    b = ref.forward([3, 1, 4, 6, 0])
    assert torch.allclose(a[:3], b[:3]) and not torch.allclose(a[3:], b[3:])


def _write_safetensors(path, tensors):
    names = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16"}
    header, blobs, off = {}, [], 0
    for k, t in tensors.items():
        raw = bytes(t.contiguous().flatten().view(torch.uint8).tolist())
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_load_checkpoint_roundtrip_fp16(tmp_path):
    cfg = _cfg()
    w = {k: v.to(torch.float16) for k, v in _weights(cfg).items()}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    _write_safetensors(tmp_path / "model.safetensors", w)
    mod, _ = _ref(cfg, _weights(cfg))
    cfg2, w2 = mod.load_checkpoint(str(tmp_path))
    assert cfg2 == cfg and set(w2) == set(w)
    for k in w:
        assert w2[k].dtype == torch.float16 and torch.equal(w2[k], w[k])
    # fp16 params, fp32 compute: close to the float64 scalar forward on the same fp16-rounded weights.
    ref = mod.ChatGLMReference(cfg2, w2, param_dtype=torch.float16, compute_dtype=torch.float32)
    want = torch.tensor(_scalar_forward(cfg, {k: v.double() for k, v in w.items()}, [1, 2, 3]), dtype=torch.float64)
    assert torch.allclose(ref.forward([1, 2, 3]).double(), want, rtol=1e-4, atol=1e-4)


def test_tiny_maker_checkpoint_loads_in_the_reference(tmp_path):
    """The reference loads smoke/make_tiny_chatglm.py's checkpoint as-is and runs it."""
    r = subprocess.run([sys.executable, str(SMOKE / "make_tiny_chatglm.py"), "--out", str(tmp_path / "tiny")],
                       capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr[-2000:]
    mod, _ = _ref(_cfg(), _weights(_cfg()))
    cfg, w = mod.load_checkpoint(str(tmp_path / "tiny"))
    ref = mod.ChatGLMReference(cfg, w)
    logits = ref.forward([1, 2, 3, 4])
    assert logits.shape == (4, cfg["padded_vocab_size"]) and torch.isfinite(logits).all()


def test_the_engine_cores_root_cause_is_found_in_its_output():
    """0.26.0's LLM() says only 'Engine core initialization failed. See root cause above.' (v1/engine/utils.py);
    the cause is the engine-core process's last exception, each line behind its prefix."""
    compat = _load("engine_compat")
    log = ("(EngineCore pid=7) ERROR 12-03 16:40:05 [core.py:1290] EngineCore failed to start.\n"
           "(EngineCore pid=7) Traceback (most recent call last):\n"
           "(EngineCore pid=7)   File \"/x/vllm/v1/core/kv_cache_utils.py\", line 775, in _check_enough_kv_cache_memory\n"
           "(EngineCore pid=7) ValueError: To serve at least one request with the model's max seq len (32768), "
           "(0.87 GiB KV cache is needed, which is larger than the available KV cache memory (0.5 GiB).\n"
           "Traceback (most recent call last):\n"
           "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n")
    assert compat.engine_core_root_cause(log).startswith("ValueError: To serve at least one request")
    assert compat.engine_core_root_cause("all fine\n") is None
    gen = _load("generate")
    assert "lower --max-model-len" in gen.error_hint(compat.engine_core_root_cause(log))


TP_STAND_IN = """#!{python}
# The target env's python on a host without GPUs, for the tensor-parallel smoke: Ray is not importable;
# smoke/generate.py writes the JSON given below (what a 2-GPU V1 run writes) and keeps its argv.
import json, shutil, sys
args = sys.argv[1:]
if args[:1] == ["-c"]:
    sys.exit("ModuleNotFoundError: No module named 'ray'")
with open({argv!r}, "w") as fh:
    json.dump(args, fh)
shutil.copy({smoke!r}, args[args.index("--out") + 1])
"""


def test_v1_tensor_parallel_smoke_needs_no_ray(isolated, tmp_path):
    """The V1 engine starts its own worker processes: the tensor-parallel smoke runs where Ray is missing
    (0.2.2's is skipped there), and one GPU's share is judged: 1 KV head a GPU, twice the blocks from the
    same memory (log lines built from 0.26.0's format strings, as in test_kvcache)."""
    from test_kvcache import TINY_V1_BLOCKS, tiny_v1_smoke, v1_log

    from vllm_provision.cli import cli_settings
    from vllm_provision.pipeline import StepContext
    from vllm_provision.plan import build_plan
    from vllm_provision.probes.host import HostFacts
    from vllm_provision.steps.smoke import tensor_parallel_smoke

    smoke = tiny_v1_smoke(num_gpu_blocks=2 * TINY_V1_BLOCKS)
    smoke["model"].update(num_kv_heads=1, parameter_bytes_source="safetensors headers x dtype bytes")
    smoke["log_tail"] = v1_log(TINY_V1_BLOCKS * 16384 + 5000, 268_016_000, 8192, 32716.796875)
    (tmp_path / "smoke-tp.json").write_text(json.dumps(smoke))
    python = tmp_path / "python"
    python.write_text(TP_STAND_IN.format(python=sys.executable, argv=str(tmp_path / "argv.json"),
                                         smoke=str(tmp_path / "smoke-tp.json")))
    python.chmod(0o755)
    facts = HostFacts(gpus=[], driver_cuda="13.0", cpu_count=32, mem_available_bytes=200 << 30,
                      mem_total_bytes=256 << 30, disk_free_bytes=100 << 30)
    plan = build_plan(cli_settings(release="0.26.0"), facts=facts, need_lock=False)
    plan.workspace.ensure()
    folder = tmp_path / "gpus"
    folder.mkdir()
    tp = tensor_parallel_smoke(StepContext(plan, facts, "smoke"), str(python), tmp_path / "m", 2, folder)
    assert tp["status"] == "pass" and tp["ray"] is None, tp
    assert tp["num_gpu_blocks"] == 2 * TINY_V1_BLOCKS
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2" and argv[argv.index("--engine") + 1] == "v1"
