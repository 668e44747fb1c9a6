"""The contract between the env step and the steps after it (patch, build, verify, smoke).

The env step writes <workspace>/env.json; later steps read it with `load(workspace)`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vllm_provision.core.errors import NotBuiltYet
from vllm_provision.core.workspace import Workspace


@dataclass(frozen=True)
class EnvInfo:
    backend: str                       # conda | venv | existing
    prefix: str                        # the versioned prefix the stable link <workspace>/env points to
    python: str                        # <prefix>/bin/python
    python_version: str                # "3.11.7"
    packages: dict = field(default_factory=dict)   # normalized name -> version, as installed in the env
    torch: str | None = None           # torch.__version__
    torch_cuda: str | None = None      # torch.version.cuda
    cxx11_abi: bool | None = None      # torch._C._GLIBCXX_USE_CXX11_ABI
    cuda_home: str | None = None       # a CUDA_HOME whose nvcc matches torch_cuda (host toolkit or provisioned)
    nvcc: str | None = None            # <cuda_home>/bin/nvcc
    nvcc_version: str | None = None    # "13.0"
    include_dirs: tuple = ()           # extra CUDA header dirs from pip wheels (site-packages/nvidia/*/include)
    lock: str | None = None            # lock file used as constraints (None: profile without lock)
    installer: str = "pip"             # uv | pip

    def to_dict(self) -> dict:
        return asdict(self)

    def versions(self) -> dict[str, str | None]:
        """Inputs for patch conditions (`when`): python, torch, cuda and every installed package."""
        out: dict[str, str | None] = dict(self.packages)
        out.update({"python": self.python_version, "torch": (self.torch or "").split("+")[0] or None,
                    "cuda": self.torch_cuda})
        return out


def path(ws: Workspace) -> Path:
    return ws.root / "env.json"


def save(ws: Workspace, info: EnvInfo) -> None:
    tmp = path(ws).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info.to_dict(), indent=2))
    tmp.replace(path(ws))


def load(ws: Workspace) -> EnvInfo:
    try:
        data = json.loads(path(ws).read_text())
    except (OSError, ValueError):
        raise NotBuiltYet(f"no environment for {ws.root.name} yet", hint="run `./inv env` (or `./inv provision`)") from None
    data["include_dirs"] = tuple(data.get("include_dirs") or ())
    return EnvInfo(**data)
