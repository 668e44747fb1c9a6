"""driver.py on a real setuptools project with C extensions (real gcc, real forks, real logs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vllm_provision.build import DRIVER
from vllm_provision.steps.build import cuda_sources_named

SETUP = """
from setuptools import setup, Extension
setup(name="tiny", version="1.2.3", packages=["tiny"], ext_modules=[
    Extension("tiny.small", sources=["csrc/small.c"]),
    Extension("tiny.large", sources=["csrc/large.c", "csrc/large_part.c"]),
    {extra}
])
"""
MODULE = """#include <Python.h>
static struct PyModuleDef m = {{PyModuleDef_HEAD_INIT, "{name}", NULL, -1, NULL}};
PyMODINIT_FUNC PyInit_{name}(void) {{ return PyModule_Create(&m); }}
"""


def _project(tmp_path: Path, broken: bool = False) -> Path:
    src = tmp_path / "src"
    (src / "tiny").mkdir(parents=True)
    (src / "tiny" / "__init__.py").write_text("")
    (src / "csrc").mkdir()
    (src / "csrc" / "small.c").write_text(MODULE.format(name="small"))
    (src / "csrc" / "large.c").write_text(MODULE.format(name="large") + "/* padding */\n" * 200)
    (src / "csrc" / "large_part.c").write_text("int large_part(void) { return 1; }\n")
    extra = ""
    if broken:
        (src / "csrc" / "broken.c").write_text("this is not C;\n")
        extra = 'Extension("tiny.broken", sources=["csrc/broken.c"]),'
    (src / "setup.py").write_text(SETUP.format(extra=extra))
    return src


def _drive(src: Path, tmp_path: Path, **spec):
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"temp_root": str(src / "build" / "tmp"), "logs_dir": str(logs), **spec}))
    done = subprocess.run([sys.executable, str(DRIVER), "build", str(path)], cwd=src, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    listing = next(json.loads(x.split(" ", 1)[1]) for x in lines if x.startswith("DRIVER-JSON "))
    finished = [json.loads(x.split(" ", 1)[1]) for x in lines if x.startswith("DRIVER-DONE ")]
    return done, listing, finished, logs


def test_builds_every_extension_in_its_own_temp_dir(tmp_path):
    src = _project(tmp_path)
    done, listing, finished, logs = _drive(src, tmp_path, jobs=4)
    assert done.returncode == 0, done.stdout + done.stderr
    assert listing["version"] == "1.2.3"
    # largest first; 3 units fit in 4 jobs, so each extension gets one job per source
    assert [(e["name"], e["jobs"]) for e in listing["extensions"]] == [("tiny.large", 2), ("tiny.small", 1)]
    assert listing["workers"] == 2
    assert sorted(f["name"] for f in finished) == ["tiny.large", "tiny.small"] and all(f["rc"] == 0 for f in finished)
    for name in ("small", "large"):
        assert len(list((src / "tiny").glob(f"{name}.*.so"))) == 1
        assert (src / "build" / "tmp" / f"temp-tiny.{name}").is_dir()
        assert (logs / f"build-tiny.{name}.log").stat().st_size > 0
    check = subprocess.run([sys.executable, "-c", "import tiny.small, tiny.large"], cwd=src)
    assert check.returncode == 0


def test_fewer_jobs_than_units_share_them_evenly(tmp_path):
    src = _project(tmp_path)
    done, listing, finished, _ = _drive(src, tmp_path, jobs=2)
    assert done.returncode == 0
    assert [e["jobs"] for e in listing["extensions"]] == [1, 1] and listing["workers"] == 2


def test_one_failing_extension_fails_the_run_and_keeps_its_log(tmp_path):
    src = _project(tmp_path, broken=True)
    done, listing, finished, logs = _drive(src, tmp_path, jobs=1)
    assert done.returncode == 1
    status = {f["name"]: f["rc"] for f in finished}
    assert status["tiny.broken"] != 0 and status["tiny.large"] == 0 and status["tiny.small"] == 0
    assert "error" in (logs / "build-tiny.broken.log").read_text().lower()


def test_list_only_and_unknown_extension(tmp_path):
    src = _project(tmp_path)
    done, listing, finished, _ = _drive(src, tmp_path, jobs=4, list_only=True)
    assert done.returncode == 0 and finished == [] and not (src / "build" / "tmp").exists()
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"temp_root": str(tmp_path / "t"), "logs_dir": str(tmp_path), "jobs": 1,
                                "only": ["tiny.nope"]}))
    bad = subprocess.run([sys.executable, str(DRIVER), "build", str(path)], cwd=src, capture_output=True, text=True)
    assert bad.returncode == 1 and "no extension tiny.nope" in bad.stderr


def test_cuda_sources_named_reads_setup_literals(tmp_path):
    (tmp_path / "csrc").mkdir()
    (tmp_path / "csrc" / "a.cu").write_text("x" * 10)
    setup = 'sources=["csrc/a.cpp", "csrc/a.cu", \'csrc/missing.cu\']'
    assert cuda_sources_named(setup, tmp_path) == {"csrc/a.cu": 10}
