#!/usr/bin/env bash
# Build once, install many on the GPU host: a cold build in one workspace makes the wheel and pushes it to a
# directory cache (`./inv wheel --push`); a FRESH workspace then provisions with --require-cache (installs the
# wheel, compiles nothing), verifies, and runs the smoke with kernel parity from the installed wheel. Timings,
# reports and bench/artifacts.py's JSON (install-from-cache and install+verify vs the cold build) go to $OUT.
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

# 2. a fresh workspace: fetch, env, patch, build = install from the cache, verify, smoke --parity
VLLMP_WORKSPACE_ROOT="$installer" ./inv provision --require-cache 2>&1 | tee "$OUT/logs/provision.log"
provision_rc=${PIPESTATUS[0]}; t2=$(date +%s.%N); echo "provision --require-cache rc=$provision_rc"
VLLMP_WORKSPACE_ROOT="$installer" ./inv verify --json >"$OUT/verify.json" 2>"$OUT/logs/verify.err"; echo "verify rc=$?"

.venv/bin/python bench/artifacts.py --builder "$builder/0.2.2-$VLLMP_PROFILE" \
  --installer "$installer/0.2.2-$VLLMP_PROFILE" --wall "wheel=$(python3 -c "print($t1 - $t0)")" \
  --wall "provision_from_cache=$(python3 -c "print($t2 - $t1)")" >"$OUT/artifacts.json"; cat "$OUT/artifacts.json"
for name in builder installer; do
  for f in report.json report.md smoke.json parity.json; do
    [ -f "$art/$name/0.2.2-$VLLMP_PROFILE/$f" ] && cp "$art/$name/0.2.2-$VLLMP_PROFILE/$f" "$OUT/$name-$f"
  done
done
cp "$art"/cache/*.manifest.json "$OUT/" 2>/dev/null
for name in builder installer; do   # every step log of both workspaces
  [ -d "$art/$name/0.2.2-$VLLMP_PROFILE/logs" ] && cp -r "$art/$name/0.2.2-$VLLMP_PROFILE/logs" "$OUT/logs/$name"
done
tar -C "$OUT" -czf "$OUT/logs.tar.gz" logs && rm -rf "$OUT/logs"
ls -la "$OUT"
[ "$wheel_rc" = 0 ] && [ "$provision_rc" = 0 ]
