#!/usr/bin/env python3
"""The CI image on a registry-less host: base creation, image build, image size and `./inv verify` in a
container; prints JSON (no assertions). Same tools and settings as tests/test_image_slow.py (tests/images.py):
mmdebstrap (bookworm minbase + Python 3.11, from this host's apt mirror), podman import, buildah with vfs
storage and chroot isolation, podman run, all below one private directory that is removed afterwards.

    python bench/image.py --wheel DIR/vllm-0.2.2+...-cp311-cp311-linux_x86_64.whl \
        [--toolkit-cache ~/.cache/vllm-provision] [--base-tar base.tar] [--work /var/tmp/vllmp-image]
    python bench/image.py --wheel-from build [--arch 9.0] ...

With --wheel (and its .manifest.json beside it) the runtime stage is fed from the build context
(WHEEL_FROM=context): nothing is compiled. With --wheel-from build the image's first stage compiles vLLM
(`./inv wheel`, GPU-less, for --arch) on a base that also has Python's headers and g++: the full compile,
timed as the build. --toolkit-cache mounts a toolkit download/uv cache into the build, so the env's wheels are
not downloaded again; without it the build downloads them (that time is then part of the build's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import images  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a vLLM wheel made by ./inv wheel (WHEEL_FROM=context)")
    parser.add_argument("--wheel-from", choices=("context", "build"), default="context",
                        help="build: compile in the image's first stage instead of taking --wheel")
    parser.add_argument("--toolkit-cache", type=Path, help="a toolkit cache_dir to mount into the build")
    parser.add_argument("--base-tar", type=Path, help="an mmdebstrap tarball to import instead of making one")
    parser.add_argument("--work", type=Path, help="where storage and the context go (default: a temp dir)")
    parser.add_argument("--arch", default="9.0")
    args = parser.parse_args(argv)
    if (args.wheel is None) != (args.wheel_from == "build"):
        parser.error("give --wheel (its wheel feeds the image) or --wheel-from build (the image compiles it)")
    missing = images.missing_tools()
    if missing:
        print(json.dumps({"error": f"not found: {', '.join(missing)}", "hint": "apt-get install " + " ".join(missing)}))
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="vllmp-image-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"host": {"cpus": os.cpu_count(), "system": platform.platform()},
                    "date": time.strftime("%Y-%m-%d", time.gmtime()), "wheel_from": args.wheel_from}
    packages = images.BASE_PACKAGES + (images.COMPILE_PACKAGES if args.wheel_from == "build" else ())
    try:
        host = images.ContainerHost(work / "containers")
        base_tar, result["base_s"] = args.base_tar, None
        if base_tar is None:
            base_tar = work / "base.tar"
            result["base_s"] = round(images.make_base_tarball(base_tar, packages=packages), 1)
        result["base_mb"] = round(base_tar.stat().st_size / 1e6)
        result["import_s"] = round(host.import_base(base_tar, "localhost/vllmp-bench-base:12"), 1)
        context = images.build_context(work / "context", args.wheel)       # no wheels/ for --wheel-from build
        volumes = {str(args.toolkit_cache): images.TOOLKIT_CACHE_IN_BUILD} if args.toolkit_cache else {}
        built, seconds = host.build(context, "localhost/vllmp-bench-vllm:0.2.2",
                                {"BASE": "localhost/vllmp-bench-base:12", "WHEEL_FROM": args.wheel_from, "ARCH": args.arch},
                                volumes=volumes)
        result["build_s"] = round(seconds, 1)
        if args.wheel_from == "build":     # the compile's own account, as the build step printed it
            result["build_step"] = [line.strip() for line in (built.stdout + built.stderr).splitlines()
                                    if line.strip().startswith(("[build] vllm", "[build] compiled", "wheel: key"))]
        result["image_mb"] = round(host.size_bytes("localhost/vllmp-bench-vllm:0.2.2") / 1e6)
        ran, seconds = host.run_in("localhost/vllmp-bench-vllm:0.2.2", "./inv", "verify", "--json")
        report = images.json_object(ran, "ok")
        result["verify_in_container_s"] = round(seconds, 1)
        result["verify"] = {"ok": report["ok"], "checks": len(report["checks"]),
                            "pass": sum(c["status"] == "pass" for c in report["checks"])}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
