"""The settings schema: every README example resolves to the value it promises; a bad value, a bad file or a
bare --force is one `error:` line naming the key and where it came from, one `hint:`, exit 2, no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import invoke
import pytest
import yaml
from conftest import ROOT

from vllm_provision import cli
from vllm_provision.core import config
from vllm_provision.core.errors import ConfigError
from vllm_provision.diagnostics import doctor
from vllm_provision.pipeline import STEPS
from vllm_provision.plan import build_plan, gpu_refusal
from vllm_provision.probes.host import Gpu, HostFacts

B200 = HostFacts(gpus=(Gpu(0, "NVIDIA B200", 183359, 0, "10.0", "580.159.04"),), cpu_count=16,
                 mem_available_bytes=120 << 30)


def run_inv(args: list[str], env: dict, cwd=ROOT) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VLLMP_")}
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def one_error(proc: subprocess.CompletedProcess) -> tuple[str, str]:
    """The single error:/hint: pair of a refused command (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    hints = [line for line in proc.stderr.splitlines() if line.startswith("hint:")]
    assert len(errors) == 1 and len(hints) == 1, proc.stderr
    return errors[0], hints[0]


# Each example of the README's settings section, resolved.
README_EXAMPLES = [
    ({"VLLMP_RELEASE": "0.2.7"}, ("release",), "0.2.7"),
    ({"VLLMP_FETCH__TIMEOUT": "5"}, ("fetch", "timeout"), 5),
    ({"VLLMP_PYPI__INDEX_URL": "https://user:token@nexus.corp/repository/pypi/simple"}, ("pypi", "index_url"),
     "https://user:token@nexus.corp/repository/pypi/simple"),
    ({"VLLMP_CONDA__CHANNELS": "[http://nexus.corp/repository/anaconda-proxy/main]"}, ("conda", "channels"),
     ["http://nexus.corp/repository/anaconda-proxy/main"]),
    ({"VLLMP_FETCH__MIRRORS": "[https://files.corp/vllm/{file}]"}, ("fetch", "mirrors"),
     ["https://files.corp/vllm/{file}"]),
    ({"VLLMP_FETCH__MIRRORS": "https://files.corp/vllm/{file}"}, ("fetch", "mirrors"),
     ["https://files.corp/vllm/{file}"]),
    ({"VLLMP_OFFLINE": "true"}, ("offline",), True),
    ({"VLLMP_WHEELHOUSE": "wheelhouse", "VLLMP_EXTRAS": ""}, ("offline",), False),   # the wrapper's, ignored
    ({"VLLMP_ENV__INSTALLER": "uv"}, ("env", "installer"), "uv"),
    ({"VLLMP_BUILD__CPU_PLACEMENT": "off"}, ("build", "cpu_placement"), "off"),
    ({"VLLMP_BUILD__CRITICAL_UNIT_CORES": "auto"}, ("build", "critical_unit_cores"), None),
    ({"VLLMP_BUILD__CRITICAL_UNIT_CORES": "2"}, ("build", "critical_unit_cores"), 2),
    ({"VLLMP_BUILD__CPU_POOL": "8"}, ("build", "cpu_pool"), 8),
    ({"VLLMP_ENV__PYTHON": "3.10"}, ("env", "python"), "3.10"),
    ({"VLLMP_BUILD__MAX_JOBS": "null"}, ("build", "max_jobs"), None),
    (cli.cli_settings(arch="9.0"), ("build", "arch_list"), ["9.0"]),
    (cli.cli_settings(arch="8.0;9.0"), ("build", "arch_list"), ["8.0", "9.0"]),
    (cli.cli_settings(max_jobs="4"), ("build", "max_jobs"), 4),
    (cli.cli_settings(profile="host-torch"), ("env", "backend"), "existing"),
]


@pytest.mark.parametrize("given, key, expected", README_EXAMPLES, ids=lambda v: json.dumps(v)[:60])
def test_readme_settings_examples(isolated, given, key, expected):
    is_env = all(k.startswith("VLLMP_") for k in given)
    value = config.resolve({} if is_env else given, {**isolated, **given} if is_env else isolated)
    for part in key:
        value = getattr(value, part)
    assert value == expected


@pytest.mark.parametrize("variable, key", [("VLLMP_CONDA__CHANNELS", "channels"),
                                           ("VLLMP_PYPI__EXTRA_INDEX_URLS", "extra_index_urls"),
                                           ("VLLMP_PYPI__TRUSTED_HOSTS", "trusted_hosts")])
def test_cli_scalar_for_a_list_setting_is_one_element(isolated, variable, key):
    proc = run_inv(["plan", "--json"], {**isolated, variable: "http://nexus.corp/conda"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["env"][key] == ["http://nexus.corp/conda"]   # was ['h', 't', 't', 'p', ...]


@pytest.mark.parametrize("value, url", [
    ("[https://files.corp/vllm/{file}]", "https://files.corp/vllm/vllm-0.2.2.tar.gz"),
    ("https://files.corp/vllm/{file}", "https://files.corp/vllm/vllm-0.2.2.tar.gz"),
    ('["https://files.corp/{version}/{file}"]', "https://files.corp/0.2.2/vllm-0.2.2.tar.gz")])
def test_cli_mirror_templates_in_the_readme_form(isolated, value, url):
    proc = run_inv(["plan", "--json"], {**isolated, "VLLMP_FETCH__MIRRORS": value})   # was a ValueError traceback
    assert proc.returncode == 0, proc.stderr
    mirror, *rest = json.loads(proc.stdout)["sources"]
    assert (mirror["kind"], mirror["url"], mirror["file"]) == ("mirror", url, "vllm-0.2.2.tar.gz")
    assert rest[0]["kind"] == "pypi-sdist" and rest[0]["sha256"] == mirror["sha256"]   # the mirror first, PyPI after


BAD = [
    (["plan"], {"VLLMP_BUILD__MAX_JOBS": "abc"}, "build.max_jobs", "VLLMP_BUILD__MAX_JOBS", "whole number"),
    (["plan"], {"VLLMP_PYPI__TIMEOUT": "slow"}, "pypi.timeout", "VLLMP_PYPI__TIMEOUT", "seconds"),
    (["fetch"], {"VLLMP_FETCH__TIMEOUT": "fast"}, "fetch.timeout", "VLLMP_FETCH__TIMEOUT", "seconds"),
    (["doctor", "--timeout", "abc"], {}, "--timeout", "--timeout", "seconds"),
    (["provision", "--max-jobs", "abc"], {}, "build.max_jobs", "flag --max-jobs", "whole number"),
    (["plan", "--arch", "sm90"], {}, "build.arch_list", "flag --arch", "compute capability"),
    (["plan"], {"VLLMP_FETCH__MIRRORS": "[https://files.corp/{name}]"}, "fetch.mirrors", "VLLMP_FETCH__MIRRORS",
     "{file} and {version}"),
    (["plan"], {"VLLMP_FETCH__MIRRORS": "https://files.corp/{file"}, "fetch.mirrors", "VLLMP_FETCH__MIRRORS",
     "URL template"),
    (["plan"], {"VLLMP_ENV__BACKEND": "docker"}, "env.backend", "VLLMP_ENV__BACKEND", "conda, venv or existing"),
    (["plan"], {"VLLMP_OFFLINE": "maybe"}, "offline", "VLLMP_OFFLINE", "true or false"),
    (["plan"], {"VLLMP_BUILD__CPU_POOL": "0"}, "build.cpu_pool", "VLLMP_BUILD__CPU_POOL", "whole number >= 1"),
    (["plan"], {"VLLMP_FETCH__TIMEOUTT": "5"}, "fetch.timeoutt", "VLLMP_FETCH__TIMEOUTT", "unknown setting"),
    (["plan"], {"VLLMP_FECTH__TIMEOUT": "5"}, "fecth.timeout", "VLLMP_FECTH__TIMEOUT", "unknown setting"),
]


@pytest.mark.parametrize("args, env, key, source, form", BAD, ids=[" ".join(b[0]) + " " + str(b[1]) for b in BAD])
def test_cli_bad_value_is_one_error_naming_key_and_source(isolated, args, env, key, source, form):
    error, hint = one_error(run_inv(args, {**isolated, **env}))
    assert key in error and source in error and form in error + hint


def test_cli_bad_value_in_a_profile_names_the_file(isolated, tmp_path):
    tree = copy_toolkit(tmp_path)
    (tree / "envs" / "seed.yaml").write_text('env:\n  backend: conda\n  python: 3.10\n')   # the float 3.1
    error, hint = one_error(run_inv(["plan", "--profile", "seed"], isolated, cwd=tree))
    assert "env.python is 3.1 (from envs/seed.yaml)" in error and "quote" in error
    assert "envs/seed.yaml" in hint


def copy_toolkit(tmp_path):
    """A copy of the toolkit whose files a test may break (the package reads its files next to itself)."""
    tree = tmp_path / "toolkit"
    tree.mkdir()
    for name in ("tasks.py", config.DEFAULTS_FILE):
        shutil.copy(ROOT / name, tree / name)
    for name in ("vllm_provision", "envs"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def test_cli_malformed_defaults_file_is_a_config_error(isolated, tmp_path):
    tree = copy_toolkit(tmp_path)
    (tree / "vllm-provision.yaml").write_text('release: "0.2.2\nfetch: [\n')   # was Invoke's ScannerError
    error, hint = one_error(run_inv(["plan"], isolated, cwd=tree))
    assert "vllm-provision.yaml is not valid YAML at line" in error and str(tree / "vllm-provision.yaml") in hint


def test_cli_wrong_shape_in_defaults_file_names_key_and_file(isolated, tmp_path):
    tree = copy_toolkit(tmp_path)
    data = yaml.safe_load((tree / "vllm-provision.yaml").read_text())
    data["fetch"] = "nope"                                      # was AttributeError: 'str' object has no 'get'
    (tree / "vllm-provision.yaml").write_text(yaml.safe_dump(data))
    error, hint = one_error(run_inv(["plan"], isolated, cwd=tree))
    assert error.startswith("error: fetch is 'nope' (from vllm-provision.yaml)") and "a mapping of mirrors" in error
    assert "set fetch in vllm-provision.yaml" in hint


def test_invoke_does_not_read_the_toolkit_defaults(isolated, tmp_path):
    """Invoke loads invoke.yaml/.yml/.json/.py beside tasks.py as its own configuration; the toolkit's defaults are
    not that file. Invoke's configuration holds none of the toolkit's settings, and a defaults file that is not
    valid YAML does not stop Invoke (`./inv --list` lists the tasks; the commands that read it name it)."""
    defaults = yaml.safe_load((ROOT / config.DEFAULTS_FILE).read_text())
    assert {"release", "profile", "fetch", "env", "build"} <= set(defaults)
    project = invoke.Config(project_location=str(ROOT))
    project.load_project()
    assert not set(defaults) & set(project), sorted(project)
    tree = copy_toolkit(tmp_path)
    (tree / config.DEFAULTS_FILE).write_text('release: "0.2.2\nfetch: [\n')     # Invoke's ScannerError, were it read
    listed = run_inv(["--list"], isolated, cwd=tree)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert all(f"\n  {name} " in listed.stdout for name in ("plan", "provision", "doctor", "build"))


def test_cli_bare_force_names_the_steps(isolated):
    error, hint = one_error(run_inv(["provision", "--force"], isolated))   # was accepted, forcing nothing
    assert "--force" in error and all(step in hint for step in STEPS) and "--force all" in hint
    error, _ = one_error(run_inv(["provision", "--force", "--offline"], isolated))
    assert "--force" in error


def test_force_all_is_every_step():
    assert cli.forced_steps(["all"], ["--force", "all"]) == list(STEPS)
    assert cli.forced_steps(["build", "env"], ["--force", "build", "--force", "env"]) == ["env", "build"]   # pipeline order
    assert cli.forced_steps([], []) == []
    assert cli.task_args("provision", ["inv", "provision", "--force"]) == ["--force"]
    with pytest.raises(ConfigError):
        cli.forced_steps([], ["--offline", "--force"])


def test_unsupported_gpu_plans_and_doctor_says_it(isolated, monkeypatch):
    plan = build_plan({}, facts=B200)                      # was ConfigError for every command
    assert plan.build.arch_list == ("10.0",) and plan.build.arch_source == "gpus"
    refusal = gpu_refusal(plan)
    assert refusal.exit_code == 2 and "GPU compute capability 10.0 is not supported by vLLM 0.2.2" in refusal.message
    check = doctor.check_archs(plan, B200, None)
    assert (check.status, check.detail, check.hint) == ("fail", refusal.message, refusal.hint)
    with pytest.raises(ConfigError) as err:                 # an explicit arch is still refused at plan time
        build_plan({"build": {"arch_list": ["10.0"]}}, facts=B200)
    assert "arch 10.0 is not supported" in err.value.message and "--arch" in err.value.hint


def test_build_refuses_an_unsupported_gpu_before_any_step(isolated, monkeypatch, tmp_path):
    monkeypatch.setattr("vllm_provision.probes.host.probe", lambda *a, **k: B200)    # the GPU query is the only fake
    for steps in (["build"], STEPS):
        with pytest.raises(ConfigError) as err:
            cli.run_pipeline(steps)
        assert err.value.message == gpu_refusal(build_plan({}, facts=B200)).message
    assert not (tmp_path / "ws").exists() and not (tmp_path / "cache").exists()


def test_doctor_runs_on_an_unsupported_gpu(isolated, monkeypatch, capsys):
    monkeypatch.setattr("vllm_provision.probes.host.probe", lambda *a, **k: B200)
    code = cli.doctor_task(as_json=True, offline=True)
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert code == 1 and checks["arch-list"]["status"] == "fail"
    assert "10.0 is not supported by vLLM 0.2.2" in checks["arch-list"]["detail"]
