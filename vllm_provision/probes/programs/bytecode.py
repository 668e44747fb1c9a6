"""Whether a package has compiled bytecode where this interpreter reads it (importlib.util.cache_from_source,
which honours a pycache prefix), and whether it may write what is missing. The package is found, not imported.

    python bytecode.py PACKAGE
    -> {"dont_write": bool, "dir": dir, "modules": int, "compiled": int, "writable": bool}
       (only "dont_write" when the package is not installed)
"""

import importlib.util
import json
import os
import sys

sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != os.path.dirname(os.path.realpath(__file__))]


def main(name):
    spec = importlib.util.find_spec(name)
    out: dict = {"dont_write": bool(sys.flags.dont_write_bytecode)}
    if spec and spec.submodule_search_locations:
        top = list(spec.submodule_search_locations)[0]
        modules = compiled = 0
        for root, _, files in os.walk(top):
            for f in files:
                if f.endswith(".py"):
                    modules += 1
                    compiled += os.path.exists(importlib.util.cache_from_source(os.path.join(root, f)))
        out.update(dir=top, modules=modules, compiled=compiled,
                   writable=os.access(sys.pycache_prefix or top, os.W_OK))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
