#!/usr/bin/env bash
# One-call exploration on the GPU machine (device tool `run`).
#   bash gpu/explore.sh            (OUT=<dir> CARRY=<dir>)
# CARRY holds: vllm-0.2.2.tar.gz, patches/0.2.2/{series.toml,*.patch},
# make_tiny_chatglm.py. Everything is written under $OUT:
#   probes.json   {command: {rc, stdout, stderr}} of the host probes
#   summary.json  applied patches, build timings, install, generation results
#   logs.tgz      full logs (build per extension, pip, generation)
# Each part is guarded; nothing stops the script early.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/explore-out}
CARRY=${CARRY:-.scratch-patches/carry}
CARRY=$(cd "$CARRY" && pwd)
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-560} ))
PY=${PY:-python3}
LOGS=/tmp/explore-logs
SRC=/tmp/vllm-0.2.2
mkdir -p "$OUT" "$LOGS"
left() { echo $(( DEADLINE - $(date +%s) )); }
# seconds left minus a reserve, never below a floor: tleft RESERVE [FLOOR]
tleft() { local t=$(( $(left) - $1 )); [ $t -lt ${2:-30} ] && t=${2:-30}; echo $t; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}'; }

# ---------------------------------------------------------------- 1. probes
cat > /tmp/probe.py <<'EOF'
import json, subprocess, sys
cmds = [
    "nvidia-smi",
    "nvidia-smi --query-gpu=index,name,memory.total,memory.used,memory.free,compute_cap,driver_version,uuid --format=csv,noheader,nounits",
    "nvidia-smi --query-gpu=index,name,memory.total,memory.used,memory.free,compute_cap,driver_version,uuid --format=csv,noheader",
    "nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader,nounits",
    "nvidia-smi -q | head -40",
    "which -a nvcc; nvcc --version",
    "echo $CUDA_HOME",
    "ls -d /usr/local/cuda*; ls /usr/local/cuda*",
    "H=$(dirname $(which nvcc))/../include/crt/host_config.h; echo $H; grep -n 'GNU version' $H; grep -n '#if __GNUC__ >' $H",
    "gcc --version; g++ --version; which -a gcc-11 gcc-12 gcc-13 gcc-14 ccache sccache ninja",
    "python3 -c 'import sys,torch; print(sys.version); print(torch.__version__); print(torch.version.cuda); print(torch._C._GLIBCXX_USE_CXX11_ABI); print(torch.cuda.get_device_capability()); print(torch.cuda.mem_get_info())'",
    "python3 -c 'import torch.utils.cpp_extension as c; print(c.CUDA_HOME)'",
    "python3 -m pip list --format=json",
    "nproc",
    "free -b",
    "df -B1 /tmp .",
    "cat /proc/meminfo | head -5",
    "uname -a",
    "ls $(python3 -c 'import nvidia,os;print(os.path.dirname(nvidia.__path__[0]))')/nvidia/*/include 2>/dev/null | head",
    "ls -d $(python3 -c 'import nvidia,os;print(os.path.dirname(nvidia.__path__[0]))')/nvidia/*/include $(python3 -c 'import nvidia,os;print(os.path.dirname(nvidia.__path__[0]))')/nvidia/*/*/include 2>/dev/null",
    "cat /etc/os-release | head -4; which python3; python3 -m pip --version",
    "python3 -c 'import setuptools, packaging; print(setuptools.__version__, packaging.__version__)'",
]
res = {}
for c in cmds:
    try:
        p = subprocess.run(["bash", "-c", c], capture_output=True, text=True, timeout=60)
        res[c] = {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}
    except Exception as e:  # noqa: BLE001
        res[c] = {"rc": None, "stdout": "", "stderr": repr(e)}
json.dump(res, open(sys.argv[1], "w"), indent=1, ensure_ascii=False)
EOF
timeout 120 $PY /tmp/probe.py "$OUT/probes.json" || echo "probe failed rc=$?"

# ---------------------------------------------------------------- 2. patch
cat > /tmp/apply_series.py <<'EOF'
"""Apply the patches of series.toml whose `when` holds here; print JSON."""
import json, platform, subprocess, sys, tomllib
from importlib import metadata
from packaging.specifiers import SpecifierSet
from packaging.version import Version
series_dir, src, release = sys.argv[1], sys.argv[2], sys.argv[3]
def version_of(key):
    if key == "release":
        return release
    if key == "python":
        return platform.python_version()
    if key == "cuda":
        import torch
        return torch.version.cuda
    try:
        return metadata.version(key)
    except metadata.PackageNotFoundError:
        return None
def holds(when):
    why = {}
    for k, spec in (when or {}).items():
        v = version_of(k)
        if spec == "absent":
            ok = v is None
        else:
            ok = v is not None and Version(v) in SpecifierSet(spec, prereleases=True)
        why[k] = {"have": v, "want": spec, "ok": ok}
    return all(w["ok"] for w in why.values()), why
s = tomllib.load(open(f"{series_dir}/series.toml", "rb"))
out = []
for p in s["patch"]:
    ok, why = holds(p.get("when"))
    rec = {"file": p["file"], "applies": ok, "when": why}
    if ok:
        r = subprocess.run(["patch", "-p1", "-i", f"{series_dir}/{p['file']}"],
                           cwd=src, capture_output=True, text=True)
        rec["rc"] = r.returncode
        rec["output"] = r.stdout + r.stderr
    out.append(rec)
print(json.dumps(out))
EOF
rm -rf "$SRC" && tar xzf "$CARRY/vllm-0.2.2.tar.gz" -C /tmp
$PY /tmp/apply_series.py "$CARRY/patches/0.2.2" "$SRC" 0.2.2 > "$LOGS/patches.json" 2> "$LOGS/patches.err"
cat "$LOGS/patches.json"

# ---------------------------------------------------------------- 3. build
# One process per extension, each with its own --build-temp (torch writes one
# build.ninja per build-temp), all in parallel.
cat > /tmp/build_one.py <<'EOF'
import runpy, sys, setuptools
name = sys.argv[1]
_setup = setuptools.setup
def setup(**kw):
    kw["ext_modules"] = [e for e in kw["ext_modules"] if e.name == name]
    return _setup(**kw)
setuptools.setup = setup
sys.argv = ["setup.py", "build_ext", "--inplace", "--build-temp", f"build/tmp-{name}"]
runpy.run_path("setup.py", run_name="__main__")
EOF
EXTS="vllm.attention_ops vllm.cache_ops vllm.pos_encoding_ops vllm.layernorm_ops vllm.activation_ops vllm.quantization_ops vllm.cuda_utils"
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-4}
B0=$(date +%s.%N)
(
  cd "$SRC" || exit 1
  for e in $EXTS; do
    ( s=$(date +%s.%N); timeout $(tleft 150 60) $PY /tmp/build_one.py $e > "$LOGS/build-$e.log" 2>&1; rc=$?
      echo "{\"ext\": \"$e\", \"rc\": $rc, \"seconds\": $(since $s)}" > "$LOGS/build-$e.json" ) &
  done
  wait
)
echo "build wall: $(since $B0) s" | tee "$LOGS/build-wall.txt"
cat "$LOGS"/build-*.json
ls -la "$SRC"/vllm/*.so 2>&1 | tee "$LOGS/so.txt"
for f in "$SRC"/vllm/*.so; do echo "== $f"; cuobjdump --list-elf "$f" 2>&1; done > "$LOGS/cuobjdump.txt"
cat "$LOGS/cuobjdump.txt"

# ---------------------------------------------------------------- 4. install (background, on a copy)
# pip install -e on a copy of the built tree, so a rebuild (if any) cannot
# touch the .so files that the generation run has loaded.
rm -rf /tmp/vllm-editable && cp -a "$SRC" /tmp/vllm-editable
( cd /tmp/vllm-editable && s=$(date +%s.%N)
  timeout $(tleft 20) $PY -m pip install --no-build-isolation --no-deps -e . > "$LOGS/pip-install.log" 2>&1; rc=$?
  echo "{\"rc\": $rc, \"seconds\": $(since $s)}" > "$LOGS/pip-install.json" ) &
PIP_PID=$!

# ---------------------------------------------------------------- 5. tiny ChatGLM + generation
$PY "$CARRY/make_tiny_chatglm.py" --out /tmp/tiny-chatglm > "$LOGS/maker.json" 2> "$LOGS/maker.err"; echo "maker rc=$?"
$PY "$CARRY/make_tiny_chatglm.py" --out /tmp/tiny-chatglm-2 > "$LOGS/maker2.json" 2>&1
cat "$LOGS/maker.json"
cat > /tmp/gen.py <<'EOF'
import json, os, sys, time, traceback
model, out_path = sys.argv[1], sys.argv[2]
res = {}
def save():
    json.dump(res, open(out_path, "w"), indent=1, ensure_ascii=False)
try:
    t = time.time()
    import torch
    import vllm
    from vllm import LLM, SamplingParams
    res["vllm_file"] = vllm.__file__
    res["import_s"] = time.time() - t
    res["mem_get_info_before"] = list(torch.cuda.mem_get_info())
    t = time.time()
    llm = LLM(model=model, trust_remote_code=True, dtype="float16",
              gpu_memory_utilization=0.9)
    res["init_s"] = time.time() - t
    cc = llm.llm_engine.cache_config
    res["cache"] = {k: getattr(cc, k, None) for k in (
        "num_gpu_blocks", "num_cpu_blocks", "block_size",
        "gpu_memory_utilization", "swap_space_bytes")}
    res["max_model_len"] = llm.llm_engine.model_config.max_model_len
    res["tokenizer_class"] = type(llm.get_tokenizer()).__name__
    res["mem_get_info_after_init"] = list(torch.cuda.mem_get_info())
    save()
    prompts = ["你是谁？", "你在做什么？", "请用中文，为我讲一个关于医生的笑话"]
    sp = SamplingParams(top_p=0.9, top_k=3, best_of=6, repetition_penalty=1.2,
                        temperature=0.7, max_tokens=500)
    t = time.time()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    res["sample_s"] = time.time() - t
    res["sample"] = [{
        "prompt": o.prompt, "prompt_token_ids": o.prompt_token_ids,
        "outputs": [{"text": c.text, "n_tokens": len(c.token_ids),
                     "token_ids_head": c.token_ids[:32],
                     "finish_reason": c.finish_reason,
                     "cumulative_logprob": c.cumulative_logprob}
                    for c in o.outputs]} for o in outs]
    save()
    g = SamplingParams(temperature=0.0, max_tokens=32)
    greedy = []
    for rep in range(2):
        t = time.time()
        outs = llm.generate(prompts, g, use_tqdm=False)
        greedy.append({"seconds": time.time() - t,
                       "token_ids": [o.outputs[0].token_ids for o in outs],
                       "texts": [o.outputs[0].text for o in outs],
                       "finish_reasons": [o.outputs[0].finish_reason for o in outs]})
    res["greedy"] = greedy
    res["greedy_repeatable"] = greedy[0]["token_ids"] == greedy[1]["token_ids"]
    save()
    # Reference: the same ChatGLM forward in plain torch (fp32, no cache),
    # greedy, to check vLLM's prompt (SDPA) and decode (paged) attention.
    from safetensors.torch import load_file
    cfg = json.load(open(os.path.join(model, "config.json")))
    W = {k: v.float().cuda() for k, v in load_file(os.path.join(model, "model.safetensors")).items()}
    H, G, L = cfg["num_attention_heads"], cfg["multi_query_group_num"], cfg["num_layers"]
    D = cfg["kv_channels"]; eps = cfg["layernorm_epsilon"]
    inv = W["transformer.rotary_pos_emb.inv_freq"]
    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    def rope(x, pos):  # x [T, n, D]; interleaved pairs on the first D/2 dims
        rot = inv.numel() * 2
        f = pos[:, None].float() * inv[None, :]
        cos, sin = f.cos()[:, None, :], f.sin()[:, None, :]
        xr, xp = x[..., :rot], x[..., rot:]
        a, b = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2)
        return torch.cat([out, xp], -1)
    def forward(ids):
        T = len(ids); pos = torch.arange(T, device="cuda")
        h = W["transformer.embedding.word_embeddings.weight"][torch.tensor(ids, device="cuda")]
        for i in range(L):
            p = f"transformer.encoder.layers.{i}."
            x = rms(h, W[p + "input_layernorm.weight"])
            qkv = x @ W[p + "self_attention.query_key_value.weight"].T + W[p + "self_attention.query_key_value.bias"]
            q, k, v = qkv.split([H * D, G * D, G * D], -1)
            q = rope(q.view(T, H, D), pos); k = rope(k.view(T, G, D), pos); v = v.view(T, G, D)
            k = k.repeat_interleave(H // G, 1); v = v.repeat_interleave(H // G, 1)
            s = torch.einsum("qhd,khd->hqk", q, k) / D ** 0.5
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device="cuda").triu(1), float("-inf"))
            a = torch.einsum("hqk,khd->qhd", s.softmax(-1), v).reshape(T, H * D)
            h = h + a @ W[p + "self_attention.dense.weight"].T
            x = rms(h, W[p + "post_attention_layernorm.weight"])
            u, g2 = (x @ W[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, -1)
            h = h + (torch.nn.functional.silu(u) * g2) @ W[p + "mlp.dense_4h_to_h.weight"].T
        h = rms(h, W["transformer.encoder.final_layernorm.weight"])
        return h[-1] @ W["transformer.output_layer.weight"].T
    ref = []
    eos = set([cfg["eos_token_id"]])
    for o_ids in [o["prompt_token_ids"] for o in res["sample"]]:
        ids = list(o_ids); gen = []; margins = []
        for _ in range(32):
            lg = forward(ids); top = lg.topk(2)
            margins.append(float(top.values[0] - top.values[1]))
            t_ = int(top.indices[0]); gen.append(t_); ids.append(t_)
            if t_ in eos:
                break
        ref.append({"token_ids": gen, "min_top2_margin": min(margins)})
    res["reference_greedy"] = ref
    match = []
    for r, v in zip(ref, greedy[0]["token_ids"]):
        n = 0
        for x, y in zip(r["token_ids"], v):
            if x != y:
                break
            n += 1
        match.append(n)
    res["reference_match_prefix"] = match
    res["reference_full_match"] = [r["token_ids"] == list(v) for r, v in zip(ref, greedy[0]["token_ids"])]
except BaseException as e:  # noqa: BLE001
    res["error"] = repr(e)
    res["traceback"] = traceback.format_exc()
    traceback.print_exc()
save()
EOF
( cd /tmp && HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$SRC" timeout $(tleft 40 60) $PY /tmp/gen.py /tmp/tiny-chatglm "$LOGS/gen.json" ) > "$LOGS/gen.log" 2>&1
echo "gen rc=$?"
grep -n "GPU blocks\|CPU blocks\|Error\|error" "$LOGS/gen.log" | head -20

# ---------------------------------------------------------------- 6. wait for install
while kill -0 $PIP_PID 2>/dev/null && [ "$(left)" -gt 15 ]; do sleep 2; done
kill $PIP_PID 2>/dev/null
cat "$LOGS/pip-install.json" 2>/dev/null
( cd /tmp && $PY -m pip list 2>/dev/null | grep -i vllm; $PY -c 'import vllm, os; print(vllm.__file__)' ) > "$LOGS/installed.txt" 2>&1
cat "$LOGS/installed.txt"
grep -c "building '" "$LOGS/pip-install.log" > "$LOGS/pip-rebuilt-count.txt" 2>/dev/null

# ---------------------------------------------------------------- 7. summary
$PY - "$LOGS" "$OUT/summary.json" <<'EOF'
import glob, json, os, re, sys
logs, out = sys.argv[1], sys.argv[2]
def rd(p, j=False):
    try:
        s = open(p).read()
        return json.loads(s) if j else s
    except Exception as e:  # noqa: BLE001
        return None
s = {"patches": rd(f"{logs}/patches.json", True),
     "build_wall": rd(f"{logs}/build-wall.txt"),
     "build": [rd(p, True) for p in sorted(glob.glob(f"{logs}/build-*.json"))],
     "so": rd(f"{logs}/so.txt"), "cuobjdump": rd(f"{logs}/cuobjdump.txt"),
     "pip_install": rd(f"{logs}/pip-install.json", True),
     "pip_install_rebuilt_exts": (rd(f"{logs}/pip-rebuilt-count.txt") or "").strip(),
     "installed": rd(f"{logs}/installed.txt"),
     "maker": rd(f"{logs}/maker.json", True),
     "maker_rerun_same": rd(f"{logs}/maker.json") == (rd(f"{logs}/maker2.json") or "").replace("tiny-chatglm-2", "tiny-chatglm"),
     "generation": rd(f"{logs}/gen.json", True)}
gl = rd(f"{logs}/gen.log") or ""
m = re.findall(r".*# GPU blocks: \d+, # CPU blocks: \d+.*", gl)
s["blocks_log_line"] = m
s["build_errors"] = {os.path.basename(p): re.findall(r".*(?:error|Error).*", rd(p) or "")[:15]
                     for p in glob.glob(f"{logs}/build-*.log")}
json.dump(s, open(out, "w"), indent=1, ensure_ascii=False)
EOF
tar czf "$OUT/logs.tgz" -C "$LOGS" . 2>/dev/null
ls -la "$OUT"
echo "done, $(left) s left"
