"""CUDA arch lists, read one way everywhere: "8.0;9.0+PTX", "8.0,9.0", "8.0 9.0" or a list."""

from __future__ import annotations

import re
from collections.abc import Iterable

PTX = "+PTX"


def split_archs(value: str | Iterable) -> list[str]:
    """The archs of a list text or a list, in order, blanks dropped ("8.0; 9.0+PTX" -> ["8.0", "9.0+PTX"])."""
    items = [value] if isinstance(value, str) else [str(v) for v in value]
    return [a for item in items for a in re.split(r"[;,\s]+", item) if a]


def base_arch(arch: str) -> str:
    """The compute capability without +PTX ("9.0+PTX" -> "9.0")."""
    return arch.removesuffix(PTX)


def base_archs(archs: Iterable[str]) -> tuple[str, ...]:
    """Each compute capability once, in order, without +PTX."""
    return tuple(dict.fromkeys(base_arch(a) for a in archs))
