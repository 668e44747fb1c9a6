#!/usr/bin/env bash
# vLLM 0.26.0 on an offline GPU host, time-boxed: the toolkit bootstrapped from its wheelhouse, the sdist and the
# external sources from the bundle (nothing fetched), configure + compile through `./inv build --time-limit`;
# the run's rate, projection and peak memory (per job, too) go to $OUT. Calls that each fit a 10-minute limit:
#   gpu/prepare-carry.sh 3.12 && cp <cache>/sources/vllm-0.26.0.tar.gz .carry/cache/sources/   # networked host
#   OUT=... gpu/cmake-timebox.sh bootstrap      # carry .carry/wheels .carry/buildreqs: the toolkit, doctor, plan
#   OUT=... gpu/cmake-timebox.sh build 450      # carry .carry/cache/sources: fetch (bundle), env, build
#   OUT=... gpu/cmake-timebox.sh more 480       # the same build dir: compile on (ninja resumes, ccache warm)
# .carry/buildreqs: vLLM 0.26.0's build requirements the GPU image lacks (setuptools-scm, setuptools-rust,
# setuptools < 81), at the 3.12 lock's versions, installed into the host's Python as doctor's hint says.
source "$(dirname "$0")/offline-env.sh"
export VLLMP_RELEASE=0.26.0 VLLMP_BUILD__ARCH_LIST=9.0
ws="$root/.provision/0.26.0-$VLLMP_PROFILE"
mkdir -p "$OUT/logs"
save() { cp "$ws"/logs/*.log "$OUT/logs/" 2>/dev/null; cp "$ws/report.json" "$OUT/" 2>/dev/null
         cp "$ws"/build/vllmp-build.log "$OUT/logs/" 2>/dev/null; true; }
case "${1:-}" in
bootstrap)
  echo "bringing the build requirements the image lacks: $(ls .carry/buildreqs | tr '\n' ' ')" | tee "$OUT/buildreqs.txt"
  ./inv doctor --offline 2>&1 | tee "$OUT/doctor-before.txt"
  python3 -m pip install -q --no-index --find-links .carry/buildreqs setuptools-scm setuptools-rust 'setuptools<81' \
    2>&1 | tee -a "$OUT/buildreqs.txt"
  ./inv --list >/dev/null && { nproc; free -g; cmake --version | head -1; gcc --version | head -1; nvcc --version | tail -2
    python3 -c 'import torch, setuptools; print("torch", torch.__version__, "setuptools", setuptools.__version__)'; }
  ./inv doctor --offline 2>&1 | tee "$OUT/doctor.txt"; ./inv plan --json >"$OUT/plan.json" ;;
build)
  ./inv fetch --offline --bundle tests/fixtures/bundles/vllm-0.26.0-externals.tar.xz 2>&1 | tee "$OUT/logs/fetch.out" || exit 1
  ./inv env 2>&1 | tee "$OUT/logs/env.out" || exit 1
  ( while sleep 5; do echo "$(date +%s) $(free -b | awk '/Mem:/ {print $3}')"; done ) >"$OUT/mem.txt" & mon=$!
  ./inv build --time-limit "${2:-450}" 2>&1 | tee "$OUT/logs/build.out"; rc=${PIPESTATUS[0]}
  kill $mon; save; exit $rc ;;
more)
  ( while sleep 5; do echo "$(date +%s) $(free -b | awk '/Mem:/ {print $3}')"; done ) >"$OUT/mem.txt" & mon=$!
  ./inv build --time-limit "${2:-480}" 2>&1 | tee "$OUT/logs/build-more.out"; rc=${PIPESTATUS[0]}
  kill $mon; save; exit $rc ;;
*) echo "error: say bootstrap, build SECONDS or more SECONDS" >&2; echo "hint: see the header of $0" >&2; exit 2 ;;
esac
