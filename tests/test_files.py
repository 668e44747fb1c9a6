"""core.files.atomic_write: the one tmp-then-rename write (report.json/md, JUnit, the fleet report, the nvcc
wrapper, wheel sidecars)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from vllm_provision.core.files import atomic_write

ROOT = Path(__file__).resolve().parent.parent


def test_atomic_write_replaces_whole_and_leaves_no_part(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    assert atomic_write(target, "new") == target and target.read_text() == "new"
    atomic_write(tmp_path / "x.whl.manifest.json", "{}", suffix=".part")
    tool = atomic_write(tmp_path / "nvcc", "#!/bin/sh\n", executable=True)
    assert os.access(tool, os.X_OK)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nvcc", "report.json", "x.whl.manifest.json"]
    atomic_write(target, "\udcff", encoding="utf-8", errors="backslashreplace")
    assert target.read_text() == "\\udcff"


def _tmp_names_written(func: ast.FunctionDef) -> set[str]:
    """Names assigned a path with a ".tmp"/".part" suffix that the function then calls write_text on."""
    tmp_names = {t.id for n in ast.walk(func) if isinstance(n, ast.Assign)
                 for t in n.targets if isinstance(t, ast.Name)
                 and any(isinstance(c, ast.Constant) and c.value in (".tmp", ".part") for c in ast.walk(n.value))}
    written = {n.func.value.id for n in ast.walk(func) if isinstance(n, ast.Call)
               and isinstance(n.func, ast.Attribute) and n.func.attr == "write_text"
               and isinstance(n.func.value, ast.Name)}
    return tmp_names & written


def test_no_other_tmp_then_rename_write_of_text():
    """A function that writes text to a temporary name (to rename it over the target) uses atomic_write."""
    found = [f"{path.relative_to(ROOT)}:{node.name}" for path in sorted((ROOT / "vllm_provision").rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)
             and _tmp_names_written(node)]
    assert found == [], found
