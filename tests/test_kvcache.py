"""The KV-cache arithmetic, explanation, log parsing and judge, on the blog's real numbers."""

from __future__ import annotations

import copy

import pytest

from vllm_provision.kvcache import explain as words
from vllm_provision.kvcache import judge as judging
from vllm_provision.kvcache import model, parse

GiB = 1 << 30
BLOG_GPU_BLOCKS, BLOG_CPU_BLOCKS = 132349, 9362
CHATGLM_BLOCK = 458752


def blog_smoke(**cache):
    """The blog's run (ChatGLM2-6B-32k on an A100 80GB) as smoke/generate.py writes it."""
    doc = {
        "schema": "vllm-provision/smoke-generate/1", "ok": True, "error": None,
        "gpu": {"name": "NVIDIA A100-SXM4-80GB", "total_bytes": 85_899_345_920, "used_by_others_bytes": 0,
                "other_processes": []},
        "model": {"architecture": "ChatGLMModel", "num_layers": 28, "num_kv_heads": 2, "head_dim": 128,
                  "hidden_size": 4096, "ffn_hidden_size": 13696, "num_attention_heads": 32, "vocab_size": 65024,
                  "dtype": "float16", "dtype_bytes": 2, "max_model_len": 32768, "max_num_batched_tokens": 32768,
                  "parameter_bytes": 12_487_168_000},
        "cache": {"num_gpu_blocks": BLOG_GPU_BLOCKS, "num_cpu_blocks": BLOG_CPU_BLOCKS, "block_size": 16,
                  "gpu_memory_utilization": 0.9, "swap_space_bytes": 4 * GiB, "source": "cache_config"},
        "outputs": [{"prompt": p, "completions": [{"text": "我是一个人工智能助手。", "num_tokens": 9,
                                                   "finish_reason": "stop"}]}
                    for p in ("你是谁？", "你在做什么？", "请用中文，为我讲一个关于医生的笑话")],
    }
    doc["cache"].update(cache)
    return doc


def test_chatglm_32k_bytes_a_token_and_block():
    # chatglm2/3-6b-32k: 28 layers, multi_query_group_num 2, kv_channels 128, fp16.
    assert model.kv_bytes_per_token(28, 2, 128, 2) == 28672
    assert model.kv_bytes_per_block(28, 2, 128, 2, 16) == CHATGLM_BLOCK
    with pytest.raises(ValueError):
        model.kv_bytes_per_token(28, 0, 128, 2)


def test_blog_gpu_blocks_are_60_7_gb_2_1_m_tokens_64_sequences():
    facts = parse.kv_facts(blog_smoke())
    assert facts.bytes_per_token == 28672 and facts.bytes_per_block == CHATGLM_BLOCK
    assert facts.capacity_tokens == 2_117_584                         # 132 349 blocks x 16 tokens
    head = words.explain(blog_smoke())[0]
    assert head.startswith("132 349 KV-cache blocks × 16 tokens = 2.1 M tokens ≈ 64 concurrent 32k sequences")
    assert head.endswith("= 60.7 GB of KV cache")
    assert "64 full-length sequences at once" in judging.judge(blog_smoke()).get("kv-capacity").detail


def test_blog_cpu_blocks_are_4_gib_swap():
    # vLLM floors (int(swap // block)): 9 362 blocks, and 131 072 B (0.29 of a block) stay unused.
    assert model.cpu_blocks(4 * GiB, model.kv_bytes_per_block(28, 2, 128, 2, 16)) == BLOG_CPU_BLOCKS
    swap = words.explain(blog_smoke())[1]
    assert swap == ("9 362 CPU blocks = 4 GiB swap space for preempted sequences, not compute units "
                    "(4 GiB // 458 752 B; 131 072 B left over)")
    check = judging.judge(blog_smoke()).get("cpu-blocks")
    assert check.status == "pass" and "(expected 9 362)" in check.detail


def test_tiny_chatglm_h100_figures_from_the_engine_log():
    # Measured on the H100 with the tiny ChatGLM (2 layers, 2 KV groups, head_dim 64, fp16: 1 024 B a
    # token, 16 KiB blocks): "# GPU blocks: 4667258, # CPU blocks: 262144", read back from the log.
    assert model.kv_bytes_per_block(2, 2, 64, 2, 16) == 16 * 1024
    assert model.cpu_blocks(4 * GiB, 16 * 1024) == 262144                  # 4 GiB swap, no remainder
    smoke = blog_smoke(num_gpu_blocks=None, num_cpu_blocks=None, source=None)
    smoke["model"].update(num_layers=2, head_dim=64, max_model_len=8192)
    smoke["log_tail"] = "INFO 01-01 llm_engine.py:207] # GPU blocks: 4667258, # CPU blocks: 262144\n"
    lines = words.explain(smoke)
    # 4 667 258 x 16 KiB = 76.5 GB ≈ 0.9 x an H100's ~85 GB: the tiny model's weights barely count.
    assert lines[0].startswith("4 667 258 KV-cache blocks × 16 tokens = 74.7 M tokens")
    assert lines[0].endswith("16 384 bytes a block (2 layers × 2 (K,V) × 2 KV heads × 64 head dim × 2 bytes × 16) "
                             "= 76.5 GB of KV cache")
    assert "(4 GiB // 16 384 B; 0 B left over)" in lines[1]


def test_predict_gpu_blocks_mirrors_0_2_2_formula():
    p = model.predict_gpu_blocks(total_gpu_bytes=80 * GiB, utilization=0.9, weights_bytes=12_487_168_000,
                              activation_peak_bytes=4_000_000_000, other_process_bytes=3 * GiB,
                              bytes_per_block=CHATGLM_BLOCK)
    expect = int((80 * GiB * 0.9 - (12_487_168_000 + 4_000_000_000)) // CHATGLM_BLOCK)
    assert p.num_gpu_blocks == expect == 132581  # 60 822 243 328 B / 458 752 = 132 581.97, floored
    assert p.peak_used_bytes == 16_487_168_000 and not p.other_processes_counted
    # 0.4+ counts other processes too.
    q = model.predict_gpu_blocks(80 * GiB, 0.9, 12_487_168_000, 4_000_000_000, 3 * GiB, CHATGLM_BLOCK,
                              count_other_processes=True)
    assert q.num_gpu_blocks == int((80 * GiB * 0.9 - 16_487_168_000 - 3 * GiB) // CHATGLM_BLOCK)
    assert "132 581 blocks" in p.formula()
    assert model.predict_gpu_blocks(10 * GiB, 0.5, 8 * GiB, 0, 0, CHATGLM_BLOCK).num_gpu_blocks == 0


# --------------------------------------------------------------------------- log parsing

def test_parse_log_0_2():
    text = ("INFO 11-21 10:00:00 llm_engine.py:72] Initializing\n"
            "INFO 11-21 llm_engine.py:207] # GPU blocks: 132349, # CPU blocks: 9362\n")
    p = parse.parse_block_log(text)
    assert p == {"format": "v0.2", "device": "GPU", "num_gpu_blocks": 132349, "num_cpu_blocks": 9362,
                 "line": "INFO 11-21 llm_engine.py:207] # GPU blocks: 132349, # CPU blocks: 9362"}


def test_parse_log_later_v0_device_name():
    p = parse.parse_block_log("INFO executor_base.py:110] # cuda blocks: 27437, # CPU blocks: 2048")
    assert (p["format"], p["device"], p["num_gpu_blocks"], p["num_cpu_blocks"]) == ("v0", "cuda", 27437, 2048)
    p = parse.parse_block_log("INFO gpu_executor.py:83] # GPU blocks: 7, # CPU blocks: 0")
    assert p["format"] == "v0.2" and p["num_gpu_blocks"] == 7


def test_parse_log_v1():
    text = ("INFO kv_cache_utils.py:634] GPU KV cache size: 2,117,584 tokens\n"
            "INFO kv_cache_utils.py:637] Maximum concurrency for 32,768 tokens per request: 64.62x\n")
    p = parse.parse_block_log(text)
    assert p["format"] == "v1" and p["kv_cache_tokens"] == 2117584
    assert p["concurrency_tokens"] == 32768 and p["max_concurrency"] == pytest.approx(64.62)
    assert p["num_gpu_blocks"] is None


def test_parse_log_last_match_wins_and_none():
    assert parse.parse_block_log("# GPU blocks: 1, # CPU blocks: 2\n# GPU blocks: 3, # CPU blocks: 4")["num_gpu_blocks"] == 3
    assert parse.parse_block_log("no blocks here") is None
    assert parse.parse_block_log("") is None


# --------------------------------------------------------------------------- smoke JSON + judge

def test_explain_blog_numbers():
    lines = words.explain(blog_smoke())
    assert lines[0] == ("132 349 KV-cache blocks × 16 tokens = 2.1 M tokens ≈ 64 concurrent 32k sequences; "
                        "458 752 bytes a block (28 layers × 2 (K,V) × 2 KV heads × 128 head dim × 2 bytes × 16) "
                        "= 60.7 GB of KV cache")
    assert lines[1].startswith("9 362 CPU blocks = 4 GiB swap space for preempted sequences, not compute units")
    assert "131 072 B left over" in lines[1]
    assert "GPU blocks are KV-cache blocks, not compute units." in lines


def test_judge_passes_blog_json_and_predicts_close():
    v = judging.judge(blog_smoke(), {"num_gpu_blocks": BLOG_GPU_BLOCKS})
    assert v.ok, [c.to_dict() for c in v.checks]
    assert {c.name: c.status for c in v.checks} == {
        "engine-ran": "pass", "gpu-blocks": "pass", "kv-capacity": "pass", "blocks-predicted": "pass",
        "cpu-blocks": "pass", "outputs": "pass"}
    pred = v.prediction
    # Heuristic activations for a 32k profiling batch are ~4.3 GB; the prediction lands within 1 %.
    assert abs(pred["num_gpu_blocks"] - BLOG_GPU_BLOCKS) / BLOG_GPU_BLOCKS < 0.01
    assert "predicted" in v.get("blocks-predicted").detail and "measured 132 349" in v.get("blocks-predicted").detail
    assert "9 362 CPU blocks = 4 GiB swap space" in v.get("cpu-blocks").detail


def test_judge_fails_capacity_below_max_model_len_and_names_the_fix():
    smoke = blog_smoke(num_gpu_blocks=459, num_cpu_blocks=BLOG_CPU_BLOCKS)  # 7 344 tokens
    smoke["gpu"]["other_processes"] = [{"pid": 4242, "name": "python train.py", "used_bytes": 60 * 10**9}]
    smoke["gpu"]["used_by_others_bytes"] = 60 * 10**9
    v = judging.judge(smoke)
    assert not v.ok and v.exit_code == 1
    c = v.get("kv-capacity")
    assert c.status == "fail"
    assert "7 344 tokens < max_model_len 32 768" in c.detail
    assert "--max-model-len" in c.hint and "--gpu-memory-utilization" in c.hint
    assert "python train.py (pid 4242" in c.hint
    # measured far below the prediction: warned, with the other process named as a likely reason
    p = v.get("blocks-predicted")
    assert p.status == "warn" and "other processes" in p.hint


def test_judge_fails_zero_blocks():
    v = judging.judge(blog_smoke(num_gpu_blocks=0))
    assert not v.ok and v.exit_code == 1
    fix = ("lower --max-model-len; raise --gpu-memory-utilization (now 0.9); "
           "free the GPU of other processes (nvidia-smi shows them)")
    blocks, capacity = v.get("gpu-blocks"), v.get("kv-capacity")
    assert (blocks.status, blocks.detail, blocks.hint) == ("fail", "0 GPU blocks: no memory left for the KV cache", fix)
    assert (capacity.status, capacity.detail, capacity.hint) == (
        "fail", "KV cache holds 0 tokens < max_model_len 32 768: vLLM cannot hold even one full-length sequence", fix)
    # 0 blocks against 131 852 predicted: all the way below the prediction, and the peak that implies
    p = v.get("blocks-predicted")
    assert p.status == "warn" and p.detail.startswith("predicted 131 852 vs measured 0 (-100.0 % off; ")
    assert p.hint.startswith("likely: the engine's peak was 77.3 GB vs 16.8 GB assumed")
    assert v.explanation[0].startswith("0 KV-cache blocks × 16 tokens = 0 tokens ≈ 0 concurrent 32k sequences")
    assert v.explanation[-1] == "capacity 0 tokens vs max_model_len 32 768: one full-length sequence does NOT fit"


def test_judge_fails_empty_outputs():
    smoke = blog_smoke()
    smoke["outputs"][1]["completions"][0].update(text="", num_tokens=0)
    v = judging.judge(smoke)
    c = v.get("outputs")
    assert c.status == "fail" and "prompt 1" in c.detail and "stop" in c.hint
    assert c.detail == "prompt 1 (你在做什么？) completion 0: empty (finish_reason stop)"
    assert not v.ok
    smoke["outputs"] = []
    c = judging.judge(smoke).get("outputs")
    assert (c.status, c.detail, c.hint) == ("fail", "no outputs in the smoke JSON",
                                            "generation returned nothing; see the smoke log")


def test_judge_fails_error_json_with_its_message():
    smoke = {"schema": "vllm-provision/smoke-generate/1", "ok": False,
             "error": {"type": "RuntimeError",
                       "message": "CUDA error: no kernel image is available for execution on the device",
                       "traceback_tail": "..."},
             "model": {"max_model_len": 32768}, "cache": {}, "log_tail": ""}
    v = judging.judge(smoke)
    assert not v.ok
    c = v.get("engine-ran")
    assert c.status == "fail" and "no kernel image" in c.detail and "TORCH_CUDA_ARCH_LIST" in c.hint


def test_judge_falls_back_to_log_line():
    smoke = blog_smoke(num_gpu_blocks=None, num_cpu_blocks=None, source=None)
    smoke["log_tail"] = "INFO llm_engine.py:207] # GPU blocks: 132349, # CPU blocks: 9362\n"
    v = judging.judge(smoke)
    assert v.ok and v.get("gpu-blocks").detail == "132 349 KV-cache blocks (source: log:v0.2)"
    # the log's CPU count is judged like the engine's, and the explanation reads the same figures
    assert v.get("cpu-blocks").detail.startswith("9 362 CPU blocks = 4 GiB swap space // 458 752 B a block "
                                                 "(expected 9 362)")
    assert v.explanation == words.explain(blog_smoke())


def test_judge_v1_tokens_only():
    smoke = blog_smoke(num_gpu_blocks=None, num_cpu_blocks=None, kv_cache_tokens=20000, source="log:v1")
    v = judging.judge(smoke)
    c = v.get("kv-capacity")
    assert (c.status, c.detail) == ("fail", "KV cache holds 20 000 tokens < max_model_len 32 768: vLLM cannot hold "
                                            "even one full-length sequence")
    assert c.hint.startswith("lower --max-model-len (≤ 20 000 fits); raise --gpu-memory-utilization (now 0.9)")
    assert v.get("gpu-blocks").detail == "20 000 KV-cache tokens (source: log:v1)"
    cpu = v.get("cpu-blocks")
    assert (cpu.status, cpu.detail) == ("skip", "the V1 engine has no CPU swap blocks (GPU↔CPU KV-cache swapping "
                                                "was removed; a preempted request is recomputed)")
    p = v.get("blocks-predicted")
    assert p.status == "warn" and p.detail.startswith("predicted 2 109 632 tokens vs measured 20 000 (-99.1 % off; ")


def test_judge_warns_when_reference_count_differs():
    v = judging.judge(blog_smoke(), {"num_gpu_blocks": 100000})
    c = v.get("blocks-predicted")
    assert c.status == "warn" and v.ok
    assert c.detail.startswith("predicted 131 852 vs measured 132 349 (+0.4 % off; ")
    assert c.detail.endswith("; reference 100 000 vs measured 132 349 (32.3 % off)")
    assert c.hint == ("likely: the reference was taken on another GPU size, gpu_memory_utilization, max_model_len "
                      "or release (block counts change with each)")


def test_judge_cpu_blocks_mismatch_warns():
    v = judging.judge(blog_smoke(num_cpu_blocks=9000))
    c = v.get("cpu-blocks")
    assert (c.status, c.detail, c.hint) == (
        "warn", "9 000 CPU blocks = 4 GiB swap space // 458 752 B a block (expected 9 362); swap space for preempted "
                "sequences, not compute units", "the engine's block size or dtype differs from the model facts in the JSON")
    assert v.ok                                 # a warning, not a failure


def test_judge_does_not_mutate_input():
    s = blog_smoke()
    before = copy.deepcopy(s)
    judging.judge(s, {"max_model_len": 65536})
    assert s == before


def test_judge_on_the_real_h100_smoke_run():
    """The JSON smoke/generate.py wrote on the H100 (tests/fixtures/gpu/h100/provision/smoke.json)."""
    import json
    from pathlib import Path

    smoke = json.loads((Path(__file__).parent / "fixtures/gpu/h100/provision/smoke.json").read_text())
    verdict = judging.judge(smoke)
    assert verdict.ok, [c for c in verdict.checks if c.status == "fail"]
    assert {c.name: c.status for c in verdict.checks} == {
        "engine-ran": "pass", "gpu-blocks": "pass", "kv-capacity": "pass", "blocks-predicted": "pass",
        "cpu-blocks": "pass", "outputs": "pass"}
    assert verdict.get("blocks-predicted").detail == (
        "predicted 4 665 777 vs measured 4 663 853 (-0.0 % off; (85.0 GB x 0.9 - (0.0 GB weights + 0.1 GB "
        "activations)) // 16 384 B = 4 665 777 blocks; activations heuristic)")
    assert verdict.get("kv-capacity").detail == ("74 621 648 tokens ≥ max_model_len 8 192 "
                                                 "(9109 full-length sequences at once)")
    text = "\n".join(verdict.explanation)
    assert "4 663 853 KV-cache blocks × 16 tokens" in text and "262 144 CPU blocks = 4 GiB swap space" in text
    # the predicted count is within 0.1 % of the measured one on that run
    assert abs(verdict.prediction["num_gpu_blocks"] - smoke["cache"]["num_gpu_blocks"]) < 0.001 * smoke["cache"]["num_gpu_blocks"]


# --------------------------------------------------------------------------- the V1 engine (0.26.0)
# The log lines below are built from vLLM 0.26.0's own format strings (its sdist; file and line beside each),
# not recorded on a GPU: the recorded-fixture tests come with the 0.26.0 GPU run. vllm/logger.py formats
# "%(levelname)s %(asctime)s [%(fileinfo)s:%(lineno)d] %(message)s" (datefmt "%m-%d %H:%M:%S"); the engine-core
# process prefixes each line with "(EngineCore pid=N) " (vllm/utils/system_utils.py decorate_logs, no colour
# off a terminal).
FMT_AVAILABLE = "Available KV cache memory: %s GiB"                        # v1/worker/gpu_worker.py:560
FMT_SIZE = "GPU KV cache size: %s tokens"                                  # v1/core/kv_cache_utils.py:2177
FMT_CONCURRENCY = "Maximum concurrency for %s tokens per request: %.2fx"   # v1/core/kv_cache_utils.py:2178
FMT_WEIGHTS = "Model loading took %s GiB memory and %.6f seconds"         # v1/worker/gpu_model_runner.py:5347
FMT_CUDAGRAPH = "Estimated CUDA graph memory: %.2f GiB total"              # v1/worker/gpu_model_runner.py:6737
H200_BYTES = 150_109_880_320                       # torch's total_memory on the H200 (tests/fixtures/gpu/h200x2)
TINY_V1_BLOCKS = 8_375_500


def v1_line(where: str, fmt: str, *args) -> str:
    return f"(EngineCore pid=4242) INFO 12-03 16:40:05 [{where}] " + fmt % args


def format_gib(n: int) -> str:
    """vllm/utils/mem_utils.py format_gib."""
    return f"{round(n / GiB, 2)}"


def v1_log(available_bytes: int, tokens: int, max_model_len: int, concurrency: float) -> str:
    return "\n".join([
        v1_line("gpu_model_runner.py:5347", FMT_WEIGHTS, format_gib(3_617_280), 0.51234),
        v1_line("gpu_model_runner.py:6737", FMT_CUDAGRAPH, 0.25),
        v1_line("gpu_worker.py:560", FMT_AVAILABLE, format_gib(available_bytes)),
        v1_line("kv_cache_utils.py:2177", FMT_SIZE, f"{tokens:,}"),
        v1_line("kv_cache_utils.py:2178", FMT_CONCURRENCY, f"{max_model_len:,}", concurrency), ""])


def tiny_v1_smoke(**cache):
    """The tiny ChatGLM on an H200 under 0.26.0 as smoke/generate.py writes it: the engine sized its cache from
    8 375 500 blocks' worth of memory (137 224 197 000 B, logged as 127.8 GiB)."""
    doc = {
        "schema": "vllm-provision/smoke-generate/1", "ok": True, "error": None, "engine": "v1",
        "gpu": {"name": "NVIDIA H200", "total_bytes": H200_BYTES, "used_by_others_bytes": 0, "other_processes": []},
        "model": {"architecture": "ChatGLMModel", "num_layers": 2, "num_kv_heads": 2, "head_dim": 64,
                  "hidden_size": 256, "ffn_hidden_size": 856, "num_attention_heads": 4, "vocab_size": 192,
                  "dtype": "float16", "dtype_bytes": 2, "max_model_len": 8192, "max_num_batched_tokens": 16384,
                  "max_num_seqs": 1024, "parameter_bytes": 3_617_280},
        "cache": {"num_gpu_blocks": TINY_V1_BLOCKS, "block_size": 16, "gpu_memory_utilization": 0.92,
                  "source": "cache_config"},
        "log_tail": v1_log(TINY_V1_BLOCKS * 16384 + 5000, 134_008_000, 8192, 16358.3984375),
        "outputs": [{"prompt": "你是谁？", "completions": [{"text": "我是", "num_tokens": 2, "finish_reason": "stop"}]}],
    }
    doc["cache"].update(cache)
    return doc


def test_v1_log_lines_parse_with_the_engine_core_prefix_and_colour():
    log = tiny_v1_smoke()["log_tail"]
    p = parse.parse_block_log(log)
    assert (p["format"], p["kv_cache_tokens"], p["concurrency_tokens"]) == ("v1", 134_008_000, 8192)
    assert p["max_concurrency"] == pytest.approx(16358.40)
    assert (p["available_kv_cache_gib"], p["weights_gib"], p["cudagraph_gib"]) == (127.8, 0.0, 0.25)
    assert p["line"] == "(EngineCore pid=4242) INFO 12-03 16:40:05 [kv_cache_utils.py:2177] GPU KV cache size: 134,008,000 tokens"
    # coloured (a terminal, or VLLM_LOGGING_COLOR=1): the same figures, the line without escapes
    coloured = log.replace("(EngineCore pid=4242)", "\x1b[36m(EngineCore pid=4242)\x1b[0m").replace("INFO", "\x1b[32mINFO\x1b[0m")
    assert parse.parse_block_log(coloured) == p
    # an engine that stopped after sizing (not one max_model_len request fit) still says its memory
    alone = parse.parse_block_log(v1_line("gpu_worker.py:560", FMT_AVAILABLE, "0.5"))
    assert (alone["format"], alone["kv_cache_tokens"], alone["available_kv_cache_gib"]) == ("v1", None, 0.5)


def test_v1_sizing_mirrors_kv_cache_utils():
    # one layer's page: 2 x 16 tokens x 2 KV heads x 64 x 2 B; blocks = int(available // page // layers)
    assert model.v1_page_bytes(2, 64, 2, 16) == 8192
    assert model.v1_num_blocks(TINY_V1_BLOCKS * 16384 + 5000, 8192, 2) == TINY_V1_BLOCKS
    assert model.v1_num_blocks(-5, 8192, 2) == 0
    # tokens = int(blocks / ceil(L / block_size) x L): blocks x 16 only when L is a multiple of 16
    assert model.v1_capacity(TINY_V1_BLOCKS, 16, 8192) == (134_008_000, 16358.3984375)
    assert model.v1_capacity(TINY_V1_BLOCKS, 16, 8190) == (133_975_283, 16358.3984375)
    # ChatGLM3-6B-32k: 16 KiB a layer's page, 28 layers; half a GiB holds 1 170 blocks, 0.57 of a 32k request
    page = model.v1_page_bytes(2, 128, 2, 16)
    assert page * 28 == CHATGLM_BLOCK
    assert model.v1_capacity(model.v1_num_blocks(GiB // 2, page, 28), 16, 32768) == (18720, 0.5712890625)
    # request_memory: ceil(total x utilization); LLM()'s default utilization is 0.92 in the V1 engine
    assert model.v1_requested_bytes(H200_BYTES, 0.92) == 138_101_089_895
    assert model.V1_DEFAULT_GPU_MEMORY_UTILIZATION == 0.92
    assert model.v1_default_max_num_batched_tokens(H200_BYTES, "NVIDIA H200") == 16384
    assert model.v1_default_max_num_batched_tokens(80 * GiB, "NVIDIA A100-SXM4-80GB") == 8192


def test_v1_explanation_tokens_concurrency_and_memory():
    lines = words.explain(tiny_v1_smoke())
    assert lines[0] == ("GPU KV cache size: 134 008 000 tokens = 8 375 500 blocks × 16 tokens ≈ 16358 concurrent 8k "
                        "sequences (vLLM: maximum concurrency 16358.40x for 8 192 tokens a request); 1 024 bytes a "
                        "token (2 layers × 2 (K,V) × 2 KV heads × 64 head dim × 2 bytes) = 137.2 GB of KV cache")
    assert lines[1] == ("Available KV cache memory 127.8 GiB = ceil(139.80 GiB × 0.92) = 128.62 GiB budget − 0 GiB "
                        "weights − 0.25 GiB CUDA graphs − 0.57 GiB activations and other non-KV memory; // (8 192 B a "
                        "page (2 × 16 tokens × 2 KV heads × 64 × 2 B) × 2 layers) = 8 375 500 blocks")
    assert lines[2].startswith("no CPU blocks: the V1 engine has no swap space")
    assert lines[-1] == "capacity 134 008 000 tokens vs max_model_len 8 192: one full-length sequence fits"


def test_v1_judge_redoes_the_sizing_and_predicts_within_tolerance():
    v = judging.judge(tiny_v1_smoke())
    assert {c.name: c.status for c in v.checks} == {
        "engine-ran": "pass", "gpu-blocks": "pass", "kv-capacity": "pass", "kv-from-memory": "pass",
        "blocks-predicted": "pass", "cpu-blocks": "skip", "outputs": "pass"}, [c.to_dict() for c in v.checks]
    assert v.get("kv-from-memory").detail.startswith(
        "127.8 GiB // (8 192 B a page × 2 layers) = 8 375 173–8 375 828 blocks; the engine's 8 375 500 blocks agree")
    assert "16358.40x" in v.get("kv-capacity").detail
    # from the GPU and the shape alone: ceil(total x 0.92) less the weights, heuristic activations and the
    # logged CUDA graphs, within 10 % (0.3 % here: the rest is the engine's non-torch memory)
    pred = v.prediction
    assert abs(pred["kv_cache_tokens"] - 134_008_000) / 134_008_000 < 0.01
    assert pred["requested_bytes"] == 138_101_089_895 and pred["cudagraph_bytes"] == GiB // 4
    assert pred["num_gpu_blocks"] * 16 == pred["kv_cache_tokens"]
    assert "predicted 134 464 256 tokens vs measured 134 008 000" in v.get("blocks-predicted").detail


def test_v1_judge_from_the_log_alone():
    """The front-end could not read the engine's cache_config: the log's figures are judged the same way."""
    smoke = tiny_v1_smoke(num_gpu_blocks=None, source=None)
    v = judging.judge(smoke)
    assert v.ok and v.get("kv-from-memory").status == "pass"
    assert "134 008 000 KV-cache tokens (source: log:v1)" in v.get("gpu-blocks").detail


def test_v1_judge_fails_capacity_below_max_model_len():
    """ChatGLM3-6B-32k with half a GiB for its cache: 1 170 blocks hold 18 720 tokens, 0.57 of one request."""
    smoke = blog_smoke(num_gpu_blocks=1170, num_cpu_blocks=None, swap_space_bytes=None, gpu_memory_utilization=0.92)
    smoke["engine"] = "v1"
    smoke["log_tail"] = v1_log(GiB // 2, 18720, 32768, 0.5712890625)
    v = judging.judge(smoke)
    assert not v.ok
    c = v.get("kv-capacity")
    assert c.status == "fail" and "18 720 tokens < max_model_len 32 768" in c.detail and "--max-model-len" in c.hint
    assert v.get("kv-from-memory").status == "pass"
    assert "does NOT fit" in v.explanation[-1]


def test_v1_kv_from_memory_warns_when_the_cache_is_not_the_models_plain_one():
    """An fp8 KV cache halves the page: twice the blocks the model facts allow from the same memory."""
    smoke = tiny_v1_smoke(num_gpu_blocks=2 * TINY_V1_BLOCKS)
    smoke["log_tail"] = v1_log(TINY_V1_BLOCKS * 16384 + 5000, 268_016_000, 8192, 32716.796875)
    c = judging.judge(smoke).get("kv-from-memory")
    assert c.status == "warn" and "the engine has 16 751 000 blocks" in c.detail and "fp8" in c.hint


@pytest.mark.parametrize("message,needle", [
    # vllm/v1/core/kv_cache_utils.py _check_enough_kv_cache_memory
    ("To serve at least one request with the model's max seq len (32768), (0.87 GiB KV cache is needed, which is "
     "larger than the available KV cache memory (0.5 GiB). Based on the available memory, the estimated maximum "
     "model length is 18720. Try increasing `gpu_memory_utilization` or decreasing `max_model_len`",
     "lower --max-model-len (the message gives the estimated maximum)"),
    # vllm/v1/worker/utils.py request_memory
    ("Free memory on device cuda:0 (60.12/139.8 GiB) on startup is less than desired GPU memory utilization "
     "(0.92, 128.62 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.",
     "free the GPU of other processes"),
    # vllm/v1/engine/utils.py: all LLM() says when the engine-core process died without a known cause
    ("Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore': 1}",
     "its own exception is in the smoke log"),
])
def test_v1_engine_refusals_get_their_fix(message, needle):
    smoke = {"schema": "vllm-provision/smoke-generate/1", "ok": False, "engine": "v1",
             "error": {"type": "ValueError", "message": message}, "model": {"max_model_len": 32768}, "cache": {},
             "log_tail": ""}
    c = judging.judge(smoke).get("engine-ran")
    assert c.status == "fail" and needle in c.hint


def test_release_says_which_engine_the_smoke_reads(tmp_path):
    from vllm_provision.catalog import get_release, parse_release
    from vllm_provision.core.errors import ConfigError
    assert (get_release("0.2.2").llm_engine, get_release("0.26.0").llm_engine) == ("v0", "v1")
    recipe = tmp_path / "0.26.0.toml"
    recipe.write_text(get_release("0.26.0").path.read_text().replace('llm_engine = "v1"', 'llm_engine = "v2"'))
    with pytest.raises(ConfigError) as err:
        parse_release(recipe)
    assert "llm_engine 'v2' is not one of v0, v1" in err.value.message
