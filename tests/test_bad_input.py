"""Bad input, class by class, through the program `./inv` runs (`python -m vllm_provision`): each member is one
`error:` line naming the problem and one `hint:` line, exit 2, no traceback, and nothing created: no workspace,
no cache, nothing downloaded. Several members of each class: unusable directories, bytes that are not UTF-8,
URL templates that format, timeouts that are no finite number, cache and model flags that cannot work, flags
Invoke cannot parse, profiles that are paths.

The commands run side by side (each mostly waits on Python's start), once per module; each case asserts on its
own result."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT

from vllm_provision.core.settings import MAX_SECONDS
from vllm_provision.diagnostics import inputs

KEY = "0" * 64


@dataclass
class Case:
    id: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)   # "{dir}" is the case's own directory
    says: tuple[str, ...] = ()                          # in the error line (or the hint, second item on)
    setup: Callable[[Path], None] | None = None
    tree: bool = False                                  # a copy of the toolkit whose files the case breaks


def a_file(d: Path) -> None:
    (d / "afile").write_text("not a directory\n")


def bad_model(content: str | None, name: str = "config.json") -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / "model").mkdir()
        if content is not None:
            (d / "model" / name).write_text(content)
    return setup


def in_tree(path: str, data: bytes) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        target = d / "toolkit" / path
        target.write_bytes(target.read_bytes() + data)
    return setup


NOT_UTF8 = "\udcff"    # byte 0xff as os.environ and sys.argv carry it

CASES = [
    # the workspace root or the cache: a regular file, under one, or on a file system nobody can write
    Case("workspace-is-a-file", ["fetch", "--offline"], {"VLLMP_WORKSPACE_ROOT": "{dir}/afile"},
         ("the workspace", "is a regular file", "VLLMP_WORKSPACE_ROOT"), a_file),
    Case("workspace-under-a-file", ["provision", "--arch", "9.0"], {"VLLMP_WORKSPACE_ROOT": "{dir}/afile/sub"},
         ("the workspace", "afile (on the way to", "VLLMP_WORKSPACE_ROOT"), a_file),
    Case("workspace-read-only-fs", ["env"], {"VLLMP_WORKSPACE_ROOT": "/sys/vllmp-test"},
         ("the workspace", "/sys is not writable", "VLLMP_WORKSPACE_ROOT")),
    Case("cache-is-a-file", ["fetch"], {"VLLMP_CACHE_DIR": "{dir}/afile"},
         ("the cache", "is a regular file", "VLLMP_CACHE_DIR"), a_file),
    Case("cache-not-writable", ["build", "--arch", "9.0"], {"VLLMP_CACHE_DIR": "/proc/vllmp-test"},
         ("the cache", "/proc is not writable", "VLLMP_CACHE_DIR")),
    Case("lock-workspace-is-a-file", ["lock", "--profile", "seed"], {"VLLMP_WORKSPACE_ROOT": "{dir}/afile"},
         ("the workspace", "is a regular file"), a_file),
    # bytes that are not UTF-8, in each layer of settings and in any argument
    Case("not-utf8-index-url", ["doctor", "--timeout", "1"],
         {"VLLMP_PYPI__INDEX_URL": f"http://127.0.0.1:9/{NOT_UTF8}/"},
         ("VLLMP_PYPI__INDEX_URL holds bytes that are not valid UTF-8",)),
    Case("not-utf8-mirror", ["plan"], {"VLLMP_FETCH__MIRRORS": f"https://files.corp/{NOT_UTF8}/{{file}}"},
         ("VLLMP_FETCH__MIRRORS holds bytes",)),
    Case("not-utf8-workspace", ["fetch", "--offline"], {"VLLMP_WORKSPACE_ROOT": f"{{dir}}/ws{NOT_UTF8}"},
         ("VLLMP_WORKSPACE_ROOT holds bytes",)),
    Case("not-utf8-flag-value", ["plan", "--arch", f"9.0{NOT_UTF8}"], {}, ("argument 3", "not valid UTF-8")),
    Case("not-utf8-model", ["provision", "--model", f"/tmp/m{NOT_UTF8}"], {}, ("argument 3", "not valid UTF-8")),
    Case("not-utf8-defaults-file", ["plan"], {}, ("vllm-provision.yaml is not valid UTF-8 at line",),
         in_tree("vllm-provision.yaml", b"# \xff\n"), tree=True),
    Case("not-utf8-profile-file", ["plan", "--profile", "seed"], {}, ("envs/seed.yaml is not valid UTF-8",),
         in_tree("envs/seed.yaml", b"# caf\xe9\n"), tree=True),
    # mirror templates: {file} and {version} only, bare
    Case("template-conversion", ["plan"], {"VLLMP_FETCH__MIRRORS": "https://files.corp/{file!r}"},
         ("fetch.mirrors", "formats {file} (!r)")),
    Case("template-conversion-s", ["plan"], {"VLLMP_FETCH__MIRRORS": "[https://files.corp/{version!s}/{file}]"},
         ("fetch.mirrors", "formats {version} (!s)")),
    Case("template-width", ["plan"], {"VLLMP_FETCH__MIRRORS": "https://files.corp/{file:>30}"},
         ("fetch.mirrors", "formats {file} (:>30)")),
    Case("template-huge-width", ["fetch"], {"VLLMP_FETCH__MIRRORS": "https://files.corp/{file:>999999999}"},
         ("fetch.mirrors", "formats {file}")),
    Case("template-nested", ["plan"], {"VLLMP_FETCH__MIRRORS": "https://files.corp/{file:{version}}"},
         ("fetch.mirrors", "formats {file}")),
    # timeouts and delays: a finite number of seconds, up to a week
    Case("timeout-inf", ["plan"], {"VLLMP_FETCH__TIMEOUT": "inf"}, ("fetch.timeout", f"<= {MAX_SECONDS}")),
    Case("timeout-nan", ["plan"], {"VLLMP_VERIFY__IMPORT_TIMEOUT": "nan"}, ("verify.import_timeout",)),
    Case("timeout-1e300", ["fetch"], {"VLLMP_PYPI__TIMEOUT": "1e300"}, ("pypi.timeout",)),
    Case("timeout-negative", ["plan"], {"VLLMP_FLEET__CONNECT_TIMEOUT": "-5"}, ("fleet.connect_timeout",)),
    Case("backoff-inf", ["plan"], {"VLLMP_FETCH__BACKOFF": "inf"}, ("fetch.backoff",)),
    Case("retries-huge", ["plan"], {"VLLMP_FETCH__RETRIES": "1000000000"}, ("fetch.retries", "from 0 to 100")),
    Case("doctor-timeout-inf", ["doctor", "--timeout", "inf"], {}, ("--timeout is 'inf'",)),
    Case("nccl-timeout-1e300", ["nccl", "--timeout", "1e300"], {}, ("--timeout is '1e300'",)),
    # cache and model flags that cannot work, found before fetch and env
    Case("require-cache-no-cache", ["build", "--require-cache", "--arch", "9.0"], {},
         ("--require-cache", "no cache is set")),
    Case("artifact-key-no-cache", ["provision", "--artifact-key", KEY, "--arch", "9.0"], {},
         ("--artifact-key", "no cache is set")),
    Case("push-no-cache", ["provision", "--push", "--arch", "9.0"], {}, ("--push needs a writable cache",)),
    Case("push-read-only-cache", ["build", "--push", "--arch", "9.0"],
         {"VLLMP_ARTIFACTS__CACHES": "static+https://127.0.0.1:9/vllm/"}, ("--push", "read-only")),
    Case("wheel-push-no-cache", ["wheel", "--push", "--arch", "9.0"], {}, ("--push needs a writable cache",)),
    Case("push-dir-cache-is-a-file", ["build", "--push", "--arch", "9.0"],
         {"VLLMP_ARTIFACTS__CACHES": "dir:{dir}/afile"}, ("the cache dir:", "is a regular file"), a_file),
    Case("model-is-a-file", ["provision", "--arch", "9.0", "--model", "{dir}/afile"], {},
         ("is a file, not a checkpoint directory",), a_file),
    Case("model-config-not-json", ["provision", "--arch", "9.0", "--model", "{dir}/model"], {},
         ("config.json is not JSON",), bad_model("{'model_type': 'chatglm',")),
    Case("model-config-empty", ["provision", "--arch", "9.0", "--model", "{dir}/model"], {},
         ("config.json is not JSON",), bad_model("")),
    Case("model-without-config", ["provision", "--arch", "9.0", "--model", "{dir}/model"], {},
         ("has no config.json",), bad_model("{}", name="README.md")),
    Case("model-missing", ["provision", "--arch", "9.0", "--model", "{dir}/nowhere"], {}, ("does not exist",)),
    Case("fleet-cache-s3", ["fleet", "--hosts", "{dir}/hosts", "--cache", "s3://bucket/vllm/"], {},
         ("--cache is 's3://bucket/vllm/'",), lambda d: (d / "hosts").write_text("127.0.0.1:9\n")),
    Case("fleet-cache-relative-dir", ["fleet", "--hosts", "{dir}/hosts", "--cache", "dir:wheels"], {},
         ("--cache is 'dir:wheels'",), lambda d: (d / "hosts").write_text("127.0.0.1:9\n")),
    Case("fleet-without-cache", ["fleet", "--hosts", "{dir}/hosts"], {}, ("fleet needs a writable artifact cache",),
         lambda d: (d / "hosts").write_text("127.0.0.1:9\n")),
    Case("fleet-read-only-cache", ["fleet", "--hosts", "{dir}/hosts", "--cache", "static+https://127.0.0.1:9/v/"], {},
         ("fleet needs a writable artifact cache",), lambda d: (d / "hosts").write_text("127.0.0.1:9\n")),
    # a command line Invoke cannot parse
    Case("unknown-flag", ["plan", "--bogus"], {}, ("--bogus", "./inv plan --help")),
    Case("flag-without-value", ["provision", "--max-jobs"], {}, ("--max-jobs", "./inv provision --help")),
    Case("unknown-task", ["provison"], {}, ("provison", "./inv --list")),
    Case("help-for-unknown-task", ["--help", "provison"], {}, ("provison", "./inv --list")),
    Case("unknown-core-flag", ["--bogus", "plan"], {}, ("--bogus",)),
    # a profile is a name in envs/, never a path
    Case("profile-path", ["fetch", "--profile", "../envs/host-torch"], {},
         ("unknown profile '../envs/host-torch' (from flag --profile)", "e.g. --profile")),
    Case("profile-subdir", ["plan", "--profile", "envs/seed"], {}, ("unknown profile 'envs/seed'",)),
    Case("profile-file-name", ["plan", "--profile", "seed.yaml"], {}, ("unknown profile 'seed.yaml'",)),
    Case("profile-absolute", ["plan"], {"VLLMP_PROFILE": "/etc/passwd"},
         ("unknown profile '/etc/passwd' (from environment variable VLLMP_PROFILE)",)),
    Case("profile-unknown", ["env", "--profile", "cuda99"], {}, ("unknown profile 'cuda99'", "pypi-cu13")),
]


def run_case(case: Case, base: Path) -> tuple[subprocess.CompletedProcess, Path]:
    d = base / case.id
    d.mkdir()
    cwd = ROOT
    if case.tree:
        cwd = d / "toolkit"
        shutil.copytree(ROOT, cwd, ignore=shutil.ignore_patterns(".*", "__pycache__", "tests", "docs", "bench",
                                                                 "gpu", "smoke", "Dockerfile", "*.md"))
    if case.setup:
        case.setup(d)
    fill = lambda text: text.replace("{dir}", str(d))   # noqa: E731
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLMP_", "PIP_", "UV_"))}
    # an en_US.UTF-8 terminal: printing bytes that are not UTF-8 fails there (C.UTF-8 passes them through)
    env.update({"PYTHONIOENCODING": "utf-8:strict", "VLLMP_WORKSPACE_ROOT": str(d / "ws"),
                "VLLMP_CACHE_DIR": str(d / "cache"), "VLLMP_FETCH__TIMEOUT": "2", "VLLMP_FETCH__RETRIES": "0",
                "VLLMP_PYPI__INDEX_URL": "http://127.0.0.1:9/simple/", "VLLMP_FETCH__GITHUB": "false"})
    env.update({k: fill(v) for k, v in case.env.items()})
    argv = [sys.executable, "-m", "vllm_provision", *map(fill, case.args)]
    try:   # refused input takes seconds; a command still running after two minutes went on to the long steps
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, errors="backslashreplace",
                              timeout=120)
    except subprocess.TimeoutExpired:
        proc = subprocess.CompletedProcess(argv, -9, "", "still running after 120 s: the input was not refused")
    return proc, d


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad-input")
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = {case.id: pool.submit(run_case, case, base) for case in CASES}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_and_one_hint_before_anything_is_made(results, case):
    proc, d = results[case.id]
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    hints = [line for line in proc.stderr.splitlines() if line.startswith("hint:")]
    assert len(errors) == 1 and len(hints) == 1, proc.stderr
    assert case.says[0] in errors[0], errors[0]
    assert all(said in errors[0] + hints[0] for said in case.says[1:]), errors + hints
    assert not (d / "ws").exists() and not (d / "cache").exists(), "a refused command made a workspace or cache"
    assert not list(d.glob("**/.vllmp-write-test-*"))


@pytest.mark.parametrize("path, problem", [("afile", "is a regular file"), ("afile/sub/deeper", "(on the way to"),
                                           ("/sys/vllmp-test", "not writable"), ("fresh/new", None),
                                           ("existing", None)])
def test_unwritable_names_why_and_leaves_nothing(tmp_path, path, problem):
    a_file(tmp_path)
    (tmp_path / "existing").mkdir()
    before = sorted(tmp_path.rglob("*"))
    found = inputs.unwritable(tmp_path / path)
    assert (found is None) if problem is None else (problem in found), found
    assert sorted(tmp_path.rglob("*")) == before
