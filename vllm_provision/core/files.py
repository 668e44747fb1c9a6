"""Files written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: str | os.PathLike, text: str, *, suffix: str = ".tmp", executable: bool = False,
                 encoding: str | None = None, errors: str | None = None) -> Path:
    """Write `text` to `path` through `<path><suffix>` renamed over it: a reader sees the old file or the new
    one, never a part. `executable`: the new file gets the x bits its read bits allow."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    tmp.write_text(text, encoding=encoding, errors=errors)
    if executable:
        tmp.chmod(tmp.stat().st_mode | 0o111)
    os.replace(tmp, path)
    return path
