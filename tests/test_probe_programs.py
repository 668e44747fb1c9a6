"""The probe programs (vllm_provision/probes/programs/*.py, and the build driver) run with a target env's
interpreter, which does not have the toolkit: each imports nothing from it and answers one JSON object.
Each is run here with a real interpreter: this test venv's (which has torch) and a bare venv (which has not)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from vllm_provision import probes
from vllm_provision.probes import envprobe

ROOT = Path(__file__).resolve().parent.parent
STANDALONE = sorted(probes.PROGRAMS.glob("*.py")) + [ROOT / "vllm_provision" / "build" / "driver.py"]
PROGRAMS = sorted(p.stem for p in probes.PROGRAMS.glob("*.py") if p.stem != "__init__")


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> str:
    """A real venv without pip or torch."""
    prefix = tmp_path_factory.mktemp("bare")
    venv.EnvBuilder(with_pip=False).create(prefix)
    return str(prefix / "bin" / "python")


def run(python: str, name: str, *args: str, cwd: Path | None = None) -> dict:
    done = subprocess.run([python, probes.program(name), *args], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    data = json.loads(lines[-1])
    assert isinstance(data, dict)
    assert probes.answer(done.stdout) == data
    return data


@pytest.mark.parametrize("path", STANDALONE, ids=lambda p: p.name)
def test_probe_programs_import_nothing_from_the_toolkit(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: a relative import"
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        assert not any(n == "vllm_provision" or n.startswith("vllm_provision.") for n in names), \
            f"{path.name} imports {names}: the target env does not have the toolkit"


def test_every_program_is_known_to_this_test():
    assert PROGRAMS == ["bytecode", "env_facts", "import_extensions", "python_info", "site_listing", "torch_info",
                        "vllm_installed"]
    assert not [p for p in PROGRAMS if p in sys.stdlib_module_names], "a program's name shadows the stdlib"


def test_torch_info(bare, tmp_path):
    import torch
    (tmp_path / "vllm").mkdir()           # the caller's current directory is not on the probe's path
    (tmp_path / "vllm" / "__init__.py").write_text("")
    got = run(sys.executable, "torch_info", cwd=tmp_path)
    assert got["python"] == sys.version.split()[0] and got["version"] == torch.__version__
    assert got["cuda"] == torch.version.cuda and got["vllm_dirs"] == []
    assert run(bare, "torch_info") == {"python": sys.version.split()[0], "vllm_dirs": [], "cuda": None,
                                       "version": None}
    info = envprobe.torch_of(bare)
    assert (info.python, info.version, info.error) == (sys.version.split()[0], None, "")


def test_env_facts(bare):
    import torch
    got = run(sys.executable, "env_facts")
    assert got["torch"] == torch.__version__ and isinstance(got["cxx11_abi"], bool)
    assert got["packages"]["pytest"] and got["site_packages"] and isinstance(got["include_dirs"], list)
    none = envprobe.env_facts(Path(bare))
    assert "torch" not in none and none["torch_error"].startswith("ModuleNotFoundError")
    assert none["python_version"] == sys.version.split()[0]


def test_bytecode(bare):
    got = run(sys.executable, "bytecode", "json")
    assert got["modules"] > 0 and got["dir"].endswith("json") and isinstance(got["writable"], bool)
    assert list(run(bare, "bytecode", "no_such_package")) == ["dont_write"]
    assert envprobe.bytecode_of(bare, "no_such_package").dir is None


def test_site_listing(bare):
    import torch
    got = run(sys.executable, "site_listing")
    assert got["torch"] == torch.__version__.split("+")[0] or got["torch"] == torch.__version__
    assert any(n.startswith("pytest-") for listed in got["dirs"].values() for n in listed)
    base = run(bare, "site_listing", "--with-base")
    assert base["torch"] is None and len(base["dirs"]) >= len(run(bare, "site_listing")["dirs"])
    state = envprobe.site_state(bare)
    assert state["torch"] is None and "dists_sha256" in state


def test_import_extensions(tmp_path):
    import _json
    ext = Path(getattr(_json, "__file__", None) or pytest.skip("this interpreter's _json is built in"))
    (tmp_path / "_broken.so").write_text("not an ELF file")
    got = run(sys.executable, "import_extensions", json.dumps({"_json": str(ext), "_broken": str(tmp_path / "_broken.so")}))
    assert got["torch_error"] is None and got["errors"]["_json"] is None
    assert got["errors"]["_broken"].startswith("ImportError")
    res = envprobe.import_extensions(sys.executable, {"_json": ext})
    assert (res.errors, res.torch_error, res.crash) == ({"_json": None}, None, None)


def test_python_info(bare):
    import torch
    got = run(sys.executable, "python_info")
    assert got["version_info"] == list(sys.version_info[:2]) and got["venv_module"] is True
    assert got["torch_dist"] == torch.__version__ and str(probes.PROGRAMS) not in got["sys_path"]
    bare_info = run(bare, "python_info")
    assert bare_info["is_venv"] is True and bare_info["torch_dist"] is None
    assert bare_info["sites"] and all(s.startswith(str(Path(bare).parent.parent)) for s in bare_info["sites"])
    from vllm_provision.build import cmake
    assert cmake.env_torch(bare) is None and cmake.env_torch(sys.executable) == torch.__version__
    assert cmake.python_path(bare, Path("/src")).startswith("/src:")


def test_vllm_installed():
    import torch
    got = run(sys.executable, "vllm_installed")
    assert got == {"torch": [torch.__version__, torch.version.cuda], "vllm": None, "editable_dir": None}


def test_answer_reads_the_last_json_object_line():
    assert probes.answer('noise\n{"a": 1}\nWARNING x\n{"b": 2}\n') == {"b": 2}
    assert probes.answer("Traceback\nError: x\n") is None and probes.answer("[1, 2]\n") is None
