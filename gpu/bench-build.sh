#!/usr/bin/env bash
# bench/build.py on the GPU host, in calls that each fit the device's 10-minute limit:
#   OUT=... gpu/bench-build.sh plain            # the blog's serial pip install -e .
#   OUT=... gpu/bench-build.sh cold,warm,floor  # the toolkit's build, cold then warm, and the slowest unit alone
# Sets up the workspace (fetch, env, patch) offline from .carry first when it is not there.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
OUT="${OUT:-/tmp/vllmp-out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 VLLMP_WHEELHOUSE="$root/.carry/wheels" VLLMP_EXTRAS="" VLLMP_BOOTSTRAP_PYTHON="$(command -v python3)"
export VLLMP_CACHE_DIR="$root/.carry/cache" VLLMP_PROFILE="${VLLMP_PROFILE:-host-torch}" VLLMP_OFFLINE=true
if ! command -v ccache >/dev/null && [ -x "$root/.carry/bin/ccache" ]; then export PATH="$root/.carry/bin:$PATH"; fi
ws="$root/.provision/0.2.2-$VLLMP_PROFILE"
for step in fetch env patch; do ./inv "$step" >>"$OUT/setup.log" 2>&1 || { tail -20 "$OUT/setup.log"; exit 1; }; done
.venv/bin/python bench/build.py --workspace "$ws" --arch 9.0 --phases "${1:-cold,warm,floor}" --out "$OUT/build-bench.json"
rc=$?
cp "$ws/logs/bench-build.log" "$OUT/" 2>/dev/null
exit $rc
