#!/usr/bin/env bash
# Build once, install many on the GPU host: a cold build in one workspace makes the wheel and pushes it to a
# directory cache (`./inv wheel --push`); a FRESH workspace then provisions with --require-cache (installs the
# wheel, compiles nothing), verifies, and runs the smoke with kernel parity from the installed wheel. Timings,
# reports and bench/artifacts.py's JSON (install-from-cache and install+verify vs the cold build) go to $OUT.
# Then `inv verify` alone, and two more fresh installs on the now warm host: as separate commands (verify imports
# vLLM, then the smoke) and as one provision (the smoke's import is the proof), wall-clock each.
#
#   gpu/prepare-carry.sh                     # on a networked host: .carry/wheels + .carry/cache/sources
#   OUT=/tmp/out gpu/artifact-check.sh
source "$(dirname "$0")/offline-env.sh"
export VLLMP_SMOKE__PARITY=true
art="$root/.provision/artifact-check"
rm -rf "$art"; mkdir -p "$art/cache" "$OUT/logs"
export VLLMP_ARTIFACTS__CACHES="[dir:$art/cache]"
builder="$art/builder"; installer="$art/installer"

# 1. cold build (empty workspace and compiler cache), then the wheel, pushed to the directory cache
t0=$(date +%s.%N)
VLLMP_WORKSPACE_ROOT="$builder" CCACHE_DIR="$art/ccache" ./inv wheel --push 2>&1 | tee "$OUT/logs/wheel.log"
wheel_rc=${PIPESTATUS[0]}; t1=$(date +%s.%N); echo "wheel rc=$wheel_rc"
ls -la "$art/cache"

# bytecode of the host's packages that `import vllm` loads, before anything here imported them (a package
# without it is compiled on its first import: verify's first `import vllm` on a fresh host pays for that)
bytecode() {   # doctor's probe (envprobe.bytecode_of), for each package
  .venv/bin/python -c 'import dataclasses, json; from vllm_provision.probes.envprobe import bytecode_of
print(json.dumps({p: dataclasses.asdict(bytecode_of("python3", p)) for p in ("torch", "transformers", "sympy", "sklearn")}))'
}
echo "host bytecode before: $(bytecode)" | tee "$OUT/bytecode.txt"

# 2. a fresh workspace: fetch, env, patch, build = install from the cache, verify, smoke --parity
VLLMP_WORKSPACE_ROOT="$installer" ./inv provision --require-cache 2>&1 | tee "$OUT/logs/provision.log"
provision_rc=${PIPESTATUS[0]}; t2=$(date +%s.%N); echo "provision --require-cache rc=$provision_rc"
echo "host bytecode after: $(bytecode)" | tee -a "$OUT/bytecode.txt"
.venv/bin/python bench/artifacts.py --builder "$builder/0.2.2-$VLLMP_PROFILE" \
  --installer "$installer/0.2.2-$VLLMP_PROFILE" --wall "wheel=$(python3 -c "print($t1 - $t0)")" \
  --wall "provision_from_cache=$(python3 -c "print($t2 - $t1)")" >"$OUT/artifacts.json"; cat "$OUT/artifacts.json"
# `inv verify` alone: its own `from vllm import LLM, SamplingParams` (in provision the smoke's import proves it)
t3=$(date +%s.%N)
VLLMP_WORKSPACE_ROOT="$installer" ./inv verify --json >"$OUT/verify.json" 2>"$OUT/logs/verify.err"
verify_rc=$?; t4=$(date +%s.%N); echo "verify alone rc=$verify_rc"
python3 - "$OUT/artifacts.json" "$(python3 -c "print(round($t4 - $t3, 1))")" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
data["wall_s"]["verify_alone"] = float(sys.argv[2])
json.dump(data, open(sys.argv[1], "w"), indent=2)
PY
"$installer/0.2.2-$VLLMP_PROFILE/env/bin/python" -X importtime -c "from vllm import LLM, SamplingParams" 2>&1 |
  sort -t'|' -k2 -n -r | head -40 >"$OUT/importtime-top.txt"

# 3. what proving vLLM's import once a run saves: two more fresh workspaces, now that the host has imported vLLM
# (page cache warm for both), the same install as separate commands (verify imports vLLM, then the smoke does)
# and as one provision (the smoke's import is the proof)
walls=()
for shape in separate provision; do
  ws3="$art/installer-$shape"; s=$(date +%s.%N)
  if [ "$shape" = separate ]; then      # one run per step: verify's run does not go on to the smoke
    VLLMP_WORKSPACE_ROOT="$ws3" ./inv fetch env patch build --require-cache verify smoke >"$OUT/logs/warm-$shape.log" 2>&1
  else
    VLLMP_WORKSPACE_ROOT="$ws3" ./inv provision --require-cache >"$OUT/logs/warm-$shape.log" 2>&1
  fi
  rc=$?; walls+=("$shape=$(python3 -c "print(round($(date +%s.%N) - $s, 1))")"); echo "$shape rc=$rc ${walls[-1]}"
done
python3 - "$OUT/artifacts.json" "$art" "$VLLMP_PROFILE" "${walls[@]}" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
data["warm_host_s"] = {}
for shape, wall in (w.split("=") for w in sys.argv[4:]):
    steps = json.load(open(f"{sys.argv[2]}/installer-{shape}/0.2.2-{sys.argv[3]}/report.json"))["steps"]
    data["warm_host_s"][shape] = {"wall": float(wall), **{n: round(steps[n]["seconds"], 1) for n in ("build", "verify", "smoke")}}
json.dump(data, open(sys.argv[1], "w"), indent=2)
PY
cat "$OUT/artifacts.json"
for name in builder installer; do
  for f in report.json parity.json; do      # the device returns 8 files at most
    [ -f "$art/$name/0.2.2-$VLLMP_PROFILE/$f" ] && cp "$art/$name/0.2.2-$VLLMP_PROFILE/$f" "$OUT/$name-$f"
  done
done
cp "$art"/cache/*.manifest.json "$OUT/logs/" 2>/dev/null
for name in builder installer; do   # every step log of both workspaces
  [ -d "$art/$name/0.2.2-$VLLMP_PROFILE/logs" ] && cp -r "$art/$name/0.2.2-$VLLMP_PROFILE/logs" "$OUT/logs/$name"
done
tar -C "$OUT" -czf "$OUT/logs.tar.gz" logs && rm -rf "$OUT/logs"
ls -la "$OUT"
[ "$wheel_rc" = 0 ] && [ "$provision_rc" = 0 ]
