"""Load each extension .so after torch (they link against libtorch/libc10), without running vllm/__init__.py.

    python import_extensions.py '{"_C": "/path/_C.cpython-311-x86_64-linux-gnu.so", ...}'
    -> {"errors": {name: null (imported) | "Error: first line"}, "torch_error": null | "Error: ..."}
"""

import importlib.util
import json
import os
import sys

sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != os.path.dirname(os.path.realpath(__file__))]


def main(so_files):
    out: dict = {"errors": {}, "torch_error": None}
    try:
        import torch  # noqa: F401
    except Exception as exc:
        out["torch_error"] = f"{type(exc).__name__}: {exc}"
    for name, path in so_files.items():
        try:
            spec = importlib.util.spec_from_file_location("vllm." + name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"not a loadable extension: {path}")
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            out["errors"][name] = None
        except BaseException as exc:
            out["errors"][name] = (f"{type(exc).__name__}: {exc}").splitlines()[0][:300]
    sys.stdout.flush()
    print(json.dumps(out))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
