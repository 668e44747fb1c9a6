"""What an interpreter's packages are, cheaply: the dist-info names of every site-packages dir it sees (a
directory listing, nothing imported or hashed) and torch's version and CUDA from torch/version.py.

    python site_listing.py [--with-base]
    -> {"dirs": {realpath: [name.dist-info, ...]}, "torch": "2.1.2" | null, "torch_cuda": "12.1" | null}
--with-base: the base interpreter's dirs under a venv too (what a --system-site-packages venv over it sees).
"""

import ast
import importlib.util
import json
import os
import site
import sys

# neither the current directory nor this file's
sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != os.path.dirname(os.path.realpath(__file__))]


def main(with_base):
    dirs = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    if with_base:
        dirs += site.getsitepackages([sys.base_prefix])
    listing = {}
    for d in dict.fromkeys(os.path.realpath(p) for p in dirs):
        if os.path.isdir(d):
            listing[d] = sorted(n for n in os.listdir(d) if n.endswith((".dist-info", ".egg-info")))
    torch: dict = {}
    spec = importlib.util.find_spec("torch")
    try:
        if spec is None or spec.origin is None:
            raise OSError("torch is not installed")
        with open(os.path.join(os.path.dirname(spec.origin), "version.py")) as fh:
            tree = ast.parse(fh.read())
    except (AttributeError, TypeError, OSError, SyntaxError):
        tree = ast.Module(body=[], type_ignores=[])
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            torch[target.id] = value.value
    print(json.dumps({"dirs": listing, "torch": torch.get("__version__"), "torch_cuda": torch.get("cuda")}))


if __name__ == "__main__":
    main("--with-base" in sys.argv[1:])
