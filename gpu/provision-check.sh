#!/usr/bin/env bash
# The whole GPU check in one device call: the toolkit's own ./inv, bootstrapped offline from a
# carried wheelhouse, runs doctor -> provision (fetch offline, env existing torch, patch, build,
# verify, tiny ChatGLM, smoke + kernel parity) -> verify -> no-op re-run, and leaves the reports
# under $OUT (at most 8 files come back).
#
# Prepare the carry folder here (networked host), then run on the GPU host:
#   gpu/prepare-carry.sh            # .carry/wheels (toolkit for py3.12) + .carry/cache/sources (sdist)
#   OUT=/tmp/out gpu/provision-check.sh
#   FORCE=build OUT=/tmp/out gpu/provision-check.sh   # rebuild (and so re-verify, re-smoke) a warm workspace
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
OUT="${OUT:-/tmp/vllmp-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export VLLMP_WHEELHOUSE="$root/.carry/wheels" VLLMP_EXTRAS="" VLLMP_BOOTSTRAP_PYTHON="$(command -v python3)"
export VLLMP_CACHE_DIR="$root/.carry/cache" VLLMP_PROFILE="${VLLMP_PROFILE:-host-torch}" VLLMP_OFFLINE=true
export VLLMP_SMOKE__PARITY=true
ws="$root/.provision/0.2.2-$VLLMP_PROFILE"
logs="$OUT/logs"; mkdir -p "$logs"

t0=$(date +%s)
./inv doctor --json >"$OUT/doctor.json" 2>"$logs/doctor.err"; echo "doctor rc=$?"
./inv provision ${FORCE:+--force "$FORCE"} 2>&1 | tee "$logs/provision.log"; provision_rc=${PIPESTATUS[0]}; echo "provision rc=$provision_rc"
t1=$(date +%s)
./inv verify --json >"$OUT/verify.json" 2>"$logs/verify.err"; echo "verify rc=$?"
.venv/bin/python bench/noop.py >"$OUT/noop.json" 2>"$logs/noop.err"; echo "noop: $(tr -d '\n' <"$OUT/noop.json")"
for f in report.json report.md smoke.json parity.json; do [ -f "$ws/$f" ] && cp "$ws/$f" "$OUT/$f"; done
cp -r "$ws/logs" "$logs/workspace-logs" 2>/dev/null
echo "{\"provision_rc\": $provision_rc, \"provision_wall_s\": $((t1 - t0))}" >"$logs/summary.json"
tar -C "$OUT" -czf "$OUT/logs.tar.gz" logs && rm -rf "$logs"
ls -la "$OUT"
exit "$provision_rc"
