"""The installed vllm (its version, and the directory it is installed editable from) and the torch it
builds against (imported).

    python vllm_installed.py
    -> {"torch": [version, cuda], "vllm": "0.2.2" | null, "editable_dir": dir | null}
"""

import importlib.metadata as md
import json
import os
import sys
from urllib.parse import unquote, urlparse

sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != os.path.dirname(os.path.realpath(__file__))]


def main():
    import torch
    out: dict = {"torch": [torch.__version__, torch.version.cuda], "vllm": None, "editable_dir": None}
    try:
        d = md.distribution("vllm")
        out["vllm"] = d.version
        url = json.loads(d.read_text("direct_url.json") or "{}")
        if url.get("dir_info", {}).get("editable"):
            out["editable_dir"] = unquote(urlparse(url["url"]).path)
    except md.PackageNotFoundError:
        pass
    sys.stdout.flush()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
