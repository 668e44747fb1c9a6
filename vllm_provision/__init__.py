"""vllm-provision: build vLLM from source on a GPU host and prove the result works."""

import sys
from pathlib import Path

from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # noqa: F401 - the modules reading TOML import it from here

PROJECT_ROOT = Path(__file__).resolve().parent.parent
__version__ = "0.1.0"
GIB = 1 << 30


def minor_version(version: str) -> str:
    """"3.11.4" -> "3.11", "12.1" -> "12.1"."""
    v = Version(str(version))
    return f"{v.major}.{v.minor}"
