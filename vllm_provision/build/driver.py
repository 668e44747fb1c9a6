"""Build one of a setuptools project's extensions in place, in its own build-temp directory.

Runs with the target env's python inside the source tree (cwd = src/); imports nothing from
vllm-provision. The toolkit starts one of these per extension, several at once, because
`setup.py build_ext -j N` shares one build-temp dir and torch's ninja backend then overwrites
a single build.ninja.

    python driver.py list                  -> JSON: [{"name", "sources", "bytes"}], the version, torch
    python driver.py one NAME BUILD_TEMP   -> setup.py build_ext --inplace for NAME only
"""

import json
import os
import runpy
import sys

import setuptools


def load_setup():
    """Run ./setup.py with setuptools.setup replaced, returning the keyword arguments it passed."""
    captured = {}
    real = setuptools.setup

    def capture(**kwargs):
        captured.update(kwargs)

    setuptools.setup = capture
    argv = sys.argv
    sys.argv = ["setup.py"]
    sys.path.insert(0, os.getcwd())
    try:
        runpy.run_path("setup.py", run_name="__main__")
    finally:
        setuptools.setup = real
        sys.argv = argv
    if not captured:
        sys.exit("driver: setup.py did not call setuptools.setup()")
    return captured


def main(argv):
    if len(argv) >= 1 and argv[0] == "list":
        kwargs = load_setup()
        exts = []
        for ext in kwargs.get("ext_modules") or ():
            size = sum(os.path.getsize(s) for s in ext.sources if os.path.isfile(s))
            exts.append({"name": ext.name, "sources": list(ext.sources), "bytes": size})
        import torch  # setup.py has imported it already: free to report, and the build's "torch before"
        print("DRIVER-JSON " + json.dumps({"version": kwargs.get("version"), "extensions": exts,
                                           "torch": [torch.__version__, torch.version.cuda]}))
        return 0
    if len(argv) == 3 and argv[0] == "one":
        name, build_temp = argv[1], argv[2]
        kwargs = load_setup()
        exts = [e for e in kwargs.get("ext_modules") or () if e.name == name]
        if not exts:
            sys.exit(f"driver: setup.py defines no extension {name!r}")
        kwargs["ext_modules"] = exts
        # --force: the toolkit only builds when something changed (or was asked to); distutils would
        # otherwise skip an extension whose library is newer than its sources. The compiler cache
        # makes a forced rebuild of unchanged sources cheap.
        kwargs["script_args"] = ["build_ext", "--inplace", "--force", "--build-temp", build_temp]
        setuptools.setup(**kwargs)
        return 0
    sys.exit("usage: driver.py list | driver.py one NAME BUILD_TEMP")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
