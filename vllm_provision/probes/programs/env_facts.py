"""An env's packages, site-packages and CUDA include dirs, and its torch (imported: the env step wants its
C++ ABI too).

    python env_facts.py
    -> {"python_version", "executable", "packages": {name: version}, "site_packages": [dir],
        "include_dirs": [dir], "torch", "torch_cuda", "cxx11_abi"} (or "torch_error" in place of the torch keys)
"""

import glob
import json
import os
import platform
import sys
from importlib import metadata

sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != os.path.dirname(os.path.realpath(__file__))]


def main():
    out: dict = {"python_version": platform.python_version(), "executable": sys.executable, "packages": {}}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name:
            key = name.lower().replace("_", "-").replace(".", "-")
            out["packages"].setdefault(key, d.version)
    sites = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    out["site_packages"] = sites
    out["include_dirs"] = sorted({d for s in sites for d in glob.glob(os.path.join(s, "nvidia", "*", "include"))})
    try:
        import torch
        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.version.cuda
        out["cxx11_abi"] = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    except Exception as exc:
        out["torch_error"] = f"{type(exc).__name__}: {exc}"
    sys.stdout.flush()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
