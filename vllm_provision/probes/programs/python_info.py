"""An interpreter's version, search path and prefixes, and its torch distribution's version (from metadata,
not imported).

    python python_info.py
    -> {"python_version": "3.11.7", "version_info": [3, 11], "sys_path": [dir, ...] (this file's dir left out),
        "is_venv": bool, "sites": [purelib, platlib], "venv_module": bool, "torch_dist": "2.1.2" | null}
"""

import importlib.metadata
import json
import os
import platform
import sys
import sysconfig

sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != os.path.dirname(os.path.realpath(__file__))]


def main():
    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = None
    try:
        import venv  # noqa: F401
        venv_module = True
    except Exception:
        venv_module = False
    paths = sysconfig.get_paths()
    print(json.dumps({"python_version": platform.python_version(), "version_info": list(sys.version_info[:2]),
                      "sys_path": sys.path, "is_venv": sys.prefix != sys.base_prefix,
                      "sites": sorted({paths["purelib"], paths["platlib"]}), "venv_module": venv_module,
                      "torch_dist": torch}))


if __name__ == "__main__":
    main()
