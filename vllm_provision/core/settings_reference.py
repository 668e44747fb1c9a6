"""The settings table of docs/configuration.md, generated from the schema and the defaults file so it
cannot drift: every key, the form it takes (the schema's description), its default and what it does
(the comment beside it in vllm-provision.yaml)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel

from vllm_provision import PROJECT_ROOT
from vllm_provision.core import config
from vllm_provision.core.settings import Settings

DOC = PROJECT_ROOT / "docs" / "configuration.md"
BEGIN, END = "<!-- generated: settings table -->", "<!-- end generated -->"


def _comments(defaults_file: Path) -> dict[str, str]:
    """dotted key -> the comment on its line in the defaults file."""
    out, section = {}, ""
    for line in defaults_file.read_text().splitlines():
        m = re.match(r"^( *)([a-z_]+):\s*(.*?)\s*(?:#\s*(.*))?$", line)
        if not m or line.lstrip().startswith(("#", "-")):
            continue
        indent, key, value, comment = m.groups()
        if not indent:
            section = key if value == "" else ""
            dotted = key
        elif section and len(indent) == 2:
            dotted = f"{section}.{key}"
        else:
            continue
        if comment:
            out[dotted] = comment.replace("|", "\\|")
    return out


def _rows(model: type[BaseModel], defaults: dict, prefix: str = ""):
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from _rows(info.annotation, defaults.get(name) or {}, f"{key}.")
            continue
        default = defaults.get(name)
        shown = f"{len(default)} entries" if isinstance(default, list) and default and isinstance(default[0], dict) \
            else json.dumps(default)
        yield key, info.description or "", shown


def table(root: Path = PROJECT_ROOT) -> str:
    comments = _comments(root / config.DEFAULTS_FILE)
    lines = ["| setting | variable | takes | default | what it does |", "|---|---|---|---|---|"]
    for key, form, default in _rows(Settings, config.defaults(root)):
        variable = "VLLMP_" + key.upper().replace(".", "__")
        lines.append(f"| `{key}` | `{variable}` | {form.replace('|', '/')} | `{default}` | {comments.get(key, '')} |")
    return "\n".join(lines)


def render(text: str, root: Path = PROJECT_ROOT) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table(root)}\n{END}{tail}"


def write(path: Path = DOC) -> bool:
    """Rewrite the generated table; True when it changed."""
    old = path.read_text()
    new = render(old)
    if new != old:
        path.write_text(new)
    return new != old
