"""The KV-cache arithmetic, explanation, log parsing and judge, on the blog's real numbers."""

from __future__ import annotations

import copy

import pytest

from vllm_provision.kvcache import explain as words, judge as judging, model, parse

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
    text = "INFO 11-21 10:00:00 llm_engine.py:72] Initializing\nINFO 11-21 llm_engine.py:207] # GPU blocks: 132349, # CPU blocks: 9362\n"
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
    assert v.get("gpu-blocks").status == "fail" and not v.ok


def test_judge_fails_empty_outputs():
    smoke = blog_smoke()
    smoke["outputs"][1]["completions"][0].update(text="", num_tokens=0)
    v = judging.judge(smoke)
    c = v.get("outputs")
    assert c.status == "fail" and "prompt 1" in c.detail and "stop" in c.hint
    smoke["outputs"] = []
    assert judging.judge(smoke).get("outputs").status == "fail"


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
    assert v.ok and "log:v0.2" in v.get("gpu-blocks").detail


def test_judge_v1_tokens_only():
    smoke = blog_smoke(num_gpu_blocks=None, num_cpu_blocks=None, kv_cache_tokens=20000, source="log:v1")
    v = judging.judge(smoke)
    assert v.get("kv-capacity").status == "fail" and "20 000 tokens" in v.get("kv-capacity").detail
    assert v.get("cpu-blocks").status == "skip"


def test_judge_warns_when_reference_count_differs():
    v = judging.judge(blog_smoke(), {"num_gpu_blocks": 100000})
    c = v.get("blocks-predicted")
    assert c.status == "warn" and "reference 100 000" in c.detail and v.ok


def test_judge_cpu_blocks_mismatch_warns():
    assert judging.judge(blog_smoke(num_cpu_blocks=9000)).get("cpu-blocks").status == "warn"


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
    assert {c.name: c.status for c in verdict.checks}["blocks-predicted"] == "pass"
    text = "\n".join(verdict.explanation)
    assert "4 663 853 KV-cache blocks × 16 tokens" in text and "262 144 CPU blocks = 4 GiB swap space" in text
    # the predicted count is within 0.1 % of the measured one on that run
    assert abs(verdict.prediction["num_gpu_blocks"] - smoke["cache"]["num_gpu_blocks"]) < 0.001 * smoke["cache"]["num_gpu_blocks"]
