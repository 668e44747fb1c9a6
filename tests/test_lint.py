"""The lint step of `./inv test`: real ruff with the project's configuration finds an unused import and unsorted
imports, and the test task stops on a lint failure before pytest starts."""

from __future__ import annotations

import subprocess
import sys

import invoke
import pytest

from vllm_provision import PROJECT_ROOT
from vllm_provision.core import lint


def test_ruff_with_the_project_config_finds_an_unused_import_and_import_order(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nimport os\n\nprint(os.sep)\n")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config",
                             str(PROJECT_ROOT / "pyproject.toml"), "--output-format", "concise", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "F401" in result.stdout and "`sys` imported but unused" in result.stdout
    assert "I001" in result.stdout


def test_the_test_task_lints_first_and_stops_on_a_finding(monkeypatch):
    import tasks

    ran = []
    monkeypatch.setattr(lint, "run", lambda: ran.append("lint") or 3)
    monkeypatch.setattr(tasks.os, "execv", lambda *a: ran.append("pytest"))
    with pytest.raises(invoke.exceptions.Exit) as exc:
        tasks.test(invoke.Context(), k="anything")
    assert exc.value.code == 3 and ran == ["lint"]
