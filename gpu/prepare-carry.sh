#!/usr/bin/env bash
# Fill .carry/ (git-ignored) with what the offline GPU host needs: the toolkit's wheels for its
# Python and the release archive in the cache layout. Run on a networked host.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="${1:-3.12}"
./inv wheelhouse --python-version "$py" --out .carry/wheels
# a throwaway workspace: only the cache copy matters here
VLLMP_CACHE_DIR="$root/.carry/cache" VLLMP_WORKSPACE_ROOT="$(mktemp -d)" ./inv fetch
du -sh .carry

# ccache for hosts whose image has none (the GPU machine's Ubuntu image): Debian's binary and the
# hiredis it links (libzstd, glibc and libstdc++ are in every image), unpacked aside and started through a wrapper.
deb_dir="$(mktemp -d)"
(cd "$deb_dir" && apt-get download ccache libhiredis0.14 >/dev/null 2>&1) || {
  echo "warning: could not download ccache from Debian; the GPU build will run without a compiler cache" >&2; exit 0; }
rm -rf .carry/ccache && mkdir -p .carry/ccache .carry/bin
for deb in "$deb_dir"/*.deb; do dpkg -x "$deb" .carry/ccache; done
cat > .carry/bin/ccache <<'WRAP'
#!/usr/bin/env bash
here="$(cd "$(dirname "$0")/../ccache" && pwd)"
LD_LIBRARY_PATH="$here/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/usr/bin/ccache" "$@"
WRAP
chmod +x .carry/bin/ccache
.carry/bin/ccache --version | head -1
du -sh .carry
