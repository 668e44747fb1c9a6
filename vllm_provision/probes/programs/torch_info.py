"""The interpreter's version, where vllm would be imported from, and torch as torch/version.py states it
(read, not imported: an import takes seconds and may need a driver).

    python torch_info.py
    -> {"python": "3.11.7", "vllm_dirs": [dir, ...], "version": "2.1.2+cu121" | null, "cuda": "12.1" | null}
"""

import importlib.util
import json
import os
import re
import sys

sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != os.path.dirname(os.path.realpath(__file__))]


def main():
    out: dict = {"python": sys.version.split()[0], "vllm_dirs": [], "cuda": None, "version": None}
    spec = importlib.util.find_spec("vllm")
    out["vllm_dirs"] = list(spec.submodule_search_locations or []) if spec else []
    spec = importlib.util.find_spec("torch")
    if spec and spec.origin:
        try:
            with open(os.path.join(os.path.dirname(spec.origin), "version.py")) as fh:
                text = fh.read()
            m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]?([0-9.]+|None)", text, re.M)
            v = re.search(r"^__version__\s*(?::[^=]*)?=\s*['\"]([^'\"]+)", text, re.M)
            out["cuda"] = None if not m or m.group(1) == "None" else m.group(1)
            out["version"] = v.group(1) if v else None
        except OSError:
            pass
    print(json.dumps(out))


if __name__ == "__main__":
    main()
