#!/usr/bin/env bash
# Every GPU of the host in one run (under ten minutes), once gpu/provision-check.sh has provisioned the host-torch
# workspace on this machine (while it is warm; when it has not, this runs it first and takes its time too):
#   raw nvidia-smi outputs (probes.json) -> inv doctor --json (GPU count, memory held by other processes,
#   links) -> inv smoke --all-gpus (the smoke on each GPU at once, NCCL all-reduce, tensor parallel when
#   Ray is importable) -> inv nccl --json (the all-reduce check on its own)
# and leaves the JSON results under $OUT (at most 8 files come back: the rest is in logs.tar.gz).
#
#   OUT=/tmp/out gpu/multi-gpu-check.sh
# Afterwards, here: copy probes.json, smoke-gpu0.json, smoke-gpu1.json and nccl.json into
# tests/fixtures/gpu/h200x2/ (tests/test_multi_gpu.py then reads the recordings).
source "$(dirname "$0")/offline-env.sh"
# NVLink multicast stays off on this host (it can take the shared GPUs out of service).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
logs="$OUT/logs"; mkdir -p "$logs"
t0=$(date +%s)

if [ ! -f "$ws/stamps/verify.json" ]; then
    echo "no provisioned $VLLMP_PROFILE workspace here: running gpu/provision-check.sh first"
    OUT="$logs/provision" gpu/provision-check.sh >"$logs/provision-check.log" 2>&1; echo "provision-check rc=$?"
fi
t1=$(date +%s)

# The GPU query, the processes on each GPU and the link matrix, as tests/fixtures/gpu/h100/probes.json records them.
python3 - "$OUT/probes.json" <<'EOF'
import json, subprocess, sys
commands = [
    "nvidia-smi",
    "nvidia-smi --query-gpu=index,name,memory.total,memory.used,compute_cap,driver_version,uuid --format=csv,noheader,nounits",
    "nvidia-smi --query-compute-apps=gpu_uuid,pid,process_name,used_memory --format=csv,noheader,nounits",
    "nvidia-smi topo -m",
    "nvidia-smi nvlink --status",
    "python3 -c 'import torch; print(torch.__version__, torch.cuda.device_count(), torch.cuda.nccl.version())'",
    "python3 -c 'import ray; print(ray.__version__)'",
    "nproc",
]
out = {}
for cmd in commands:
    try:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60)
        out[cmd] = {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr}
    except subprocess.TimeoutExpired:
        out[cmd] = {"rc": None, "stdout": "", "stderr": "timed out after 60 s"}
with open(sys.argv[1], "w") as fh:
    json.dump(out, fh, indent=1)
EOF
echo "probes: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d[[c for c in d if "topo" in c][0]]["stdout"])' "$OUT/probes.json")"

timeout 120 ./inv doctor --json >"$OUT/doctor.json" 2>"$logs/doctor.err"; doctor_rc=$?; echo "doctor rc=$doctor_rc"
timeout 300 ./inv smoke --all-gpus --force 2>&1 | tee "$logs/smoke-all-gpus.log"; smoke_rc=${PIPESTATUS[0]}
echo "smoke --all-gpus rc=$smoke_rc"
timeout 240 ./inv nccl --json >"$OUT/nccl.json" 2>"$logs/nccl.err"; nccl_rc=$?; echo "nccl rc=$nccl_rc"
cat "$logs/nccl.err"
t2=$(date +%s)

cp "$ws/report.json" "$OUT/report.json" 2>/dev/null
for gpu in 0 1; do cp "$ws/gpus/smoke-gpu$gpu.json" "$OUT/" 2>/dev/null; done
cp -r "$ws/gpus" "$logs/gpus" 2>/dev/null          # every GPU's smoke JSON and log, smoke-tp.json, per-gpu.json
cp "$ws/report.md" "$logs/" 2>/dev/null
cp -r "$ws/logs" "$logs/workspace-logs" 2>/dev/null
echo "{\"doctor_rc\": $doctor_rc, \"smoke_all_gpus_rc\": $smoke_rc, \"nccl_rc\": $nccl_rc," \
     "\"provision_wall_s\": $((t1 - t0)), \"checks_wall_s\": $((t2 - t1))}" >"$OUT/summary.json"
cat "$OUT/summary.json"
tar -C "$OUT" -czf "$OUT/logs.tar.gz" logs && rm -rf "$logs"
ls -la "$OUT"
[ "$smoke_rc" = 0 ] && [ "$nccl_rc" = 0 ]
