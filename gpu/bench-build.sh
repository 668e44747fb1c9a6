#!/usr/bin/env bash
# bench/build.py on the GPU host, in calls that each fit the device's 10-minute limit:
#   OUT=... gpu/bench-build.sh plain            # the notes' serial pip install -e .
#   OUT=... gpu/bench-build.sh cold,floor,floor-build,warm  # the toolkit's build cold, the slowest unit alone
#                                                # (as the release / the toolkit compiles it), warm
#   OUT=... gpu/bench-build.sh plain --plain-limit 560   # more options go to bench/build.py
# Results merge across calls while the machine stays warm (.provision/build-bench.json), copied to $OUT.
# Sets up the workspace (fetch, env, patch) offline from .carry first when it is not there.
source "$(dirname "$0")/offline-env.sh"
for step in fetch env patch; do ./inv "$step" >>"$OUT/setup.log" 2>&1 || { tail -20 "$OUT/setup.log"; exit 1; }; done
# which vCPUs slow the slowest unit's CPU down (hidden SMT siblings), ~12 s; on the H100 VMs it showed
# no sibling, only host-wide noise, so it runs on request
if [ "${CPU_PAIRS:-0}" = 1 ]; then python3 bench/cpu_pairs.py >"$OUT/cpu-pairs.json" 2>&1; fi
# stopped before the device's 10-minute limit, so the results so far are still copied to $OUT
timeout "${BENCH_LIMIT_S:-560}" .venv/bin/python bench/build.py --workspace "$ws" --arch 9.0 --phases "${1:-cold,floor,floor-build,warm}" \
  --out "$root/.provision/build-bench.json" "${@:2}"
rc=$?
cp "$root/.provision/build-bench.json" "$OUT/" 2>/dev/null
cp "$ws/logs/bench-build.log" "$OUT/" 2>/dev/null
exit $rc
