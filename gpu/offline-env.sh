# Sourced by the gpu/ scripts: the toolkit's environment on an offline GPU host, from the carried
# wheelhouse and download cache (gpu/prepare-carry.sh fills .carry/), and $OUT for the results.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
OUT="${OUT:-/tmp/vllmp-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export VLLMP_WHEELHOUSE="$root/.carry/wheels" VLLMP_EXTRAS="" VLLMP_BOOTSTRAP_PYTHON="$(command -v python3)"
export VLLMP_CACHE_DIR="$root/.carry/cache" VLLMP_PROFILE="${VLLMP_PROFILE:-host-torch}" VLLMP_OFFLINE=true
ws="$root/.provision/0.2.2-$VLLMP_PROFILE"
