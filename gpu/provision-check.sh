#!/usr/bin/env bash
# The whole GPU check in one run: the toolkit's own ./inv, bootstrapped offline from a
# carried wheelhouse, runs doctor -> provision (fetch offline, env existing torch, patch, build,
# verify, tiny ChatGLM, smoke + kernel parity) -> verify -> no-op re-run, and leaves the reports
# under $OUT (at most 8 files come back).
#
# Prepare the carry folder here (networked host), then run on the GPU host:
#   gpu/prepare-carry.sh            # .carry/wheels (toolkit for py3.12) + .carry/cache/sources (sdist)
#   OUT=/tmp/out gpu/provision-check.sh
#   FORCE=build OUT=/tmp/out gpu/provision-check.sh   # rebuild (and so re-verify, re-smoke) a warm workspace
source "$(dirname "$0")/offline-env.sh"
export VLLMP_SMOKE__PARITY=true
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
