"""Config precedence, profile validation, the plan, and the pipeline's stamps/locks."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import types

import pydantic
import pytest
from conftest import ROOT

from vllm_provision import pipeline
from vllm_provision.catalog import get_release, known_versions
from vllm_provision.core import config
from vllm_provision.core.errors import ConfigError, ProvisionError, StepFailed
from vllm_provision.core.settings import Settings
from vllm_provision.core.workspace import RunLock
from vllm_provision.pipeline import StepOutcome
from vllm_provision.plan import build_plan, plan_env
from vllm_provision.probes.host import Gpu, HostFacts

H100 = HostFacts(gpus=(Gpu(0, "NVIDIA H100 80GB HBM3", 81559, 0, "9.0", "580.159.04"),), cpu_count=16,
                 mem_available_bytes=120 << 30)


def test_precedence_yaml_profile_env_flag(isolated, monkeypatch):
    assert config.resolve({"profile": "seed"}, {}).env.backend == "conda"   # the seed profile over the defaults
    assert config.resolve({}, {"VLLMP_ENV__BACKEND": "venv"}).env.backend == "venv"
    assert config.resolve({"env": {"backend": "existing"}}, {"VLLMP_ENV__BACKEND": "venv"}).env.backend == "existing"
    assert config.resolve({}, {"VLLMP_FETCH__TIMEOUT": "5"}).fetch.timeout == 5
    assert config.resolve({}, {"VLLMP_PROFILE": "host-torch"}).env.backend == "existing"
    assert config.resolve({}, {"VLLMP_ENV__PYTHON": "3.10"}).env.python == "3.10"   # not the float 3.1


def test_unknown_setting_names_the_source(isolated):
    with pytest.raises(ConfigError) as err:
        config.resolve({}, {"VLLMP_FETCH__TIMEOUTT": "5"})
    assert err.value.message == "unknown setting fetch.timeoutt (from environment variable VLLMP_FETCH__TIMEOUTT)"
    assert "timeout" in err.value.hint


def test_unknown_profile_lists_profiles(isolated):
    with pytest.raises(ConfigError) as err:
        config.resolve({"profile": "nope"}, {})
    assert "host-torch" in err.value.message and "seed" in err.value.message


def test_catalog_has_the_seeded_releases():
    assert {"0.2.2", "0.2.7", "0.4.3", "0.6.6.post1", "0.33.0"} <= set(known_versions())
    r = get_release("v0.2.2")
    assert r.sdist.sha256.startswith("d047bec3") and r.arch_list_separator == ";"
    assert r.python_tested.contains("3.10.12") and r.build_system == "setuptools-cpp-extension"


def test_plan_arch_from_gpus_and_rendering(isolated):
    plan = build_plan({}, facts=H100)
    assert plan.build.arch_list == ("9.0",) and plan.build.arch_source == "gpus"
    plan = build_plan({"build": {"arch_list": "8.0,9.0"}}, facts=H100)
    assert plan.build.torch_cuda_arch_list == "8.0;9.0"       # 0.2.2 does not split on commas
    none = build_plan({"profile": "seed"}, facts=HostFacts())
    assert none.build.torch_cuda_arch_list == "7.0;7.5;8.0;8.6;8.9;9.0"


def test_plan_refuses_arch_the_release_cannot_build(isolated):
    with pytest.raises(ConfigError) as err:
        build_plan({"build": {"arch_list": ["10.0"]}}, facts=H100)
    assert "10.0" in err.value.message and "9.0" in err.value.message


def test_max_jobs_from_ram(isolated):
    small = HostFacts(cpu_count=16, mem_available_bytes=8 << 30)
    assert build_plan({}, facts=small).build.max_jobs == 2
    assert build_plan({}, facts=H100).build.max_jobs == 16


def test_cpu_counts_settings(isolated):
    assert build_plan({}, facts=H100).build.critical_unit_cores is None          # auto: by host size
    assert build_plan({"build": {"critical_unit_cores": "auto"}}, facts=H100).build.critical_unit_cores is None
    assert build_plan({}, {"VLLMP_BUILD__CRITICAL_UNIT_CORES": "4"}, facts=H100).build.critical_unit_cores == 4
    for bad in (0, "four", 2.5):
        with pytest.raises(ConfigError) as err:
            build_plan({"build": {"critical_unit_cores": bad}}, facts=H100)
        assert "build.critical_unit_cores" in err.value.message and "auto or a whole number" in err.value.message
    assert build_plan({"build": {"cpu_pool": 8}}, facts=H100).build.cpu_pool == 8
    for bad in (0, -2, "x"):     # a traceback or a silently shrunk pool before
        with pytest.raises(ConfigError) as err:
            build_plan({"build": {"cpu_pool": bad}}, facts=H100)
        assert "build.cpu_pool" in err.value.message and "every CPU not reserved" in err.value.hint


def test_the_validated_settings_travel_as_one_frozen_model(isolated):
    """What the schema checked is what every step reads: the model itself, by attribute (never a dict copy a
    reader fills with a default of its own), whose fields cannot be reassigned on the way."""
    plan = build_plan({"build": {"arch_list": "9.0", "ccache": False}, "smoke": {"parity": True},
                       "fetch": {"github": False}, "env": {"installer": "pip"}}, facts=H100)
    assert isinstance(plan.settings, Settings) and plan.smoke is plan.settings.smoke
    assert plan.build.arch_list == ("9.0",) and plan.build.ccache is False and plan.smoke.parity is True
    assert plan.env.installer == "pip" and [s.kind for s in plan.sources] == ["pypi-sdist"]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        plan.settings.build.max_jobs = 64
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        plan.settings.profile = "seed"
    assert plan.to_dict()["smoke"]["parity"] is True      # the plan's JSON as before


def test_seed_without_channel_falls_back_to_nearest_python_venv(isolated):
    release = get_release("0.2.2")
    settings = config.resolve({"profile": "seed"}, {})
    env = plan_env(release, "seed", settings, interpreters={"3.11": "/usr/bin/python3.11"})
    assert env.backend == "venv" and env.requested_backend == "conda"
    assert env.python == "3.11" and env.python_path == "/usr/bin/python3.11"
    assert "no conda channel" in env.note and "nearest supported 3.11" in env.note
    assert env.lock == "envs/locks/0.2.2/seed-py3.11.txt"
    with_channel = config.resolve({"profile": "seed", "conda": {"channels": ["http://127.0.0.1:1/channel"]}}, {})
    assert plan_env(release, "seed", with_channel, interpreters={}).backend == "conda"


def test_plan_json_redacts_credentials(isolated, monkeypatch):
    monkeypatch.setenv("VLLMP_PYPI__INDEX_URL", "https://bob:hunter2@nexus.example/repository/pypi/simple")
    out = json.dumps(build_plan({}, facts=H100).to_dict())
    assert "hunter2" not in out and "bob:***@nexus.example" in out


def test_cli_plan_json_does_nothing_else(isolated, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "invoke", "plan", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["release"]["version"] == "0.2.2"
    assert not (tmp_path / "ws").exists() and not (tmp_path / "cache").exists()


def _fake_steps(monkeypatch, behaviours: dict):
    """Step modules for the pipeline mechanism itself (the real steps are tested on their own)."""
    calls = []

    def module(name):
        def run(ctx):
            calls.append(name)
            b = behaviours[name]
            if isinstance(b, Exception):
                raise b
            return StepOutcome(detail=f"{name} done", status=b)
        return types.SimpleNamespace(stamp_inputs=lambda ctx: {"n": name}, run=run)
    monkeypatch.setattr(pipeline, "step_module", module)
    return calls


def test_failed_step_stops_and_next_run_resumes_from_it(isolated, monkeypatch):
    behaviours = {s: "ok" for s in pipeline.STEPS}
    behaviours["build"] = StepFailed("compile failed", hint="lower MAX_JOBS")
    calls = _fake_steps(monkeypatch, behaviours)
    plan = build_plan({}, facts=HostFacts())
    first = pipeline.run_steps(plan, HostFacts())
    assert [r.status for r in first] == ["ok", "ok", "ok", "failed", "not run", "not run"]
    assert first[3].hint == "lower MAX_JOBS" and first[3].exit_code == 1
    behaviours["build"] = "ok"
    calls.clear()
    second = pipeline.run_steps(plan, HostFacts())
    assert calls == ["build", "verify", "smoke"]
    assert [r.status for r in second][:3] == ["up-to-date"] * 3
    calls.clear()
    pipeline.run_steps(plan, HostFacts(), force=["patch"])
    assert calls == ["patch"]   # patch's stamp is unchanged by a rerun, so build stays up to date
    report = json.loads(plan.workspace.report.read_text())
    assert report["steps"]["build"]["status"] == "up-to-date" and report["steps"]["patch"]["status"] == "ok"


def test_skipped_step_is_not_stamped(isolated, monkeypatch):
    calls = _fake_steps(monkeypatch, {s: ("skipped" if s == "smoke" else "ok") for s in pipeline.STEPS})
    plan = build_plan({}, facts=HostFacts())
    pipeline.run_steps(plan, HostFacts())
    calls.clear()
    pipeline.run_steps(plan, HostFacts())
    assert calls == ["smoke"]


def test_second_run_on_the_same_workspace_is_refused_with_the_holder(isolated):
    plan = build_plan({}, facts=HostFacts())
    plan.workspace.ensure()
    with RunLock(plan.workspace.root / ".lock"):
        with pytest.raises(ProvisionError) as err:
            pipeline.run_steps(plan, HostFacts(), ["fetch"])
    assert err.value.exit_code == 1     # a runtime condition, not bad input
    assert "another run holds the workspace lock" in err.value.message and f"pid {os.getpid()}" in err.value.message


def test_default_profile_is_pypi_only_and_seed_stays_by_name(isolated):
    assert config.resolve({}, {}).profile == "pypi-cu13"
    plan = build_plan({}, facts=H100)
    assert plan.env.backend == "venv" and plan.env.cuda == "13.0"
    assert plan.env.lock.startswith("envs/locks/0.2.2/pypi-cu13-py3.")
    seed = build_plan({"profile": "seed"}, facts=H100)
    assert seed.env.requested_backend == "conda" and seed.env.cuda == "12.1"


def test_python_312_is_chosen_where_the_profile_has_a_lock_for_it(isolated):
    """0.2.2 published wheels up to 3.11; the pypi-cu13 profile is locked (and run) on 3.12 too."""
    release = get_release("0.2.2")
    found = {"3.11": "/usr/bin/python3.11", "3.12": "/usr/bin/python3.12"}
    env = plan_env(release, "pypi-cu13", config.resolve({}, {}), interpreters=found)
    assert (env.python, env.python_path, env.note) == ("3.12", "/usr/bin/python3.12", "")
    assert env.lock == "envs/locks/0.2.2/pypi-cu13-py3.12.txt"
    seed = plan_env(release, "seed", config.resolve({"profile": "seed"}, {}), interpreters=found)
    assert seed.python == "3.11" and "nearest supported 3.11" in seed.note     # no seed lock for 3.12


def test_gpu_less_default_archs_are_what_the_profiles_compiler_can_build(isolated):
    two_cores = HostFacts(cpu_count=2, mem_available_bytes=20 << 30)
    cu13 = build_plan({}, facts=two_cores).build
    assert cu13.arch_list == ("7.5", "8.0", "8.6", "8.9", "9.0")
    assert "7.0 left out: nvcc 13.0 cannot compile for it" in cu13.arch_source
    cu12 = build_plan({"profile": "seed"}, facts=two_cores).build
    assert cu12.arch_list[0] == "7.0" and "left out" not in cu12.arch_source
    # the plan says how long that takes on this host, so a 5-arch compile on 2 cores is no surprise
    assert cu13.expected_seconds > 5 * build_plan({"build": {"arch_list": "9.0"}}, facts=H100).build.expected_seconds
    assert cu13.expected_reason.endswith("on 2 cores for 5 arch(s)")


def test_plan_says_when_the_driver_is_too_old_for_the_profile(isolated):
    old = HostFacts(**{**H100.__dict__, "driver_cuda": "12.4"})
    note = build_plan({}, facts=old).env.note
    assert "supports CUDA 12.4; torch needs CUDA 13.0" in note and "(>= 580)" in note and "--profile seed" in note
    assert build_plan({}, facts=HostFacts(**{**H100.__dict__, "driver_cuda": "13.0"})).env.note == ""


# ---- what a newcomer reads: hints, flags, help ------------------------------------------------------

def package_sources():
    return [ROOT / "tasks.py", *sorted((ROOT / "vllm_provision").rglob("*.py"))]


def test_every_hint_names_the_wrapper_a_fresh_clone_has():
    """On a fresh clone only ./inv exists: no message says `inv build` or `inv provision`."""
    import re
    bare = re.compile(r"(^|[^./\w-])inv [a-z]")
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for path in package_sources()
             for n, line in enumerate(path.read_text().splitlines(), 1) if bare.search(line)]
    assert found == []


def test_one_name_for_the_notes():
    """The README calls the November 2023 write-up "the notes"; the toolkit's own texts do too."""
    texts = package_sources() + [ROOT / "vllm-provision.yaml", *sorted((ROOT / "envs").rglob("*.yaml")),
                                 *sorted((ROOT / "envs").rglob("*.toml")), *sorted((ROOT / "smoke").glob("*.py"))]
    assert [str(p.relative_to(ROOT)) for p in texts if "blog" in p.read_text().lower()] == []


@functools.cache
def task_contexts():
    """Once: Invoke pops each flag's help from its task when it makes the parser contexts."""
    import invoke

    import tasks
    return invoke.Collection.from_module(tasks).to_contexts()


def test_one_letter_means_one_flag_in_every_task():
    """Invoke's automatic short flags gave one letter several meanings (-u: --push in build, --out in wheel);
    every flag is long except -v (--verbose, wherever a task has it) and a flag whose own name is one letter
    (test -k, as pytest's)."""
    meanings, verbose_tasks = {}, []
    for context in task_contexts():
        for arg in context.args.values():
            shorts = [n for n in arg.names if len(n) == 1]
            assert len(arg.names) == 1 or (arg.name == "verbose" and arg.names[1:] == ("v",)), (context.name, arg.names)
            for letter in shorts:
                meanings.setdefault(letter, set()).add(arg.name)
            verbose_tasks += [context.name] if arg.name == "verbose" else []
    assert all(len(names) == 1 for names in meanings.values()), meanings
    assert meanings.get("v") == {"verbose"} and {"provision", "build", "env"} <= set(verbose_tasks)


def test_profile_help_lists_the_profiles_of_envs_and_the_default(tmp_path):
    default = config.defaults()["profile"]
    helps = [arg.help for context in task_contexts() for arg in context.args.values() if arg.name == "profile"]
    assert len(helps) >= 10
    for help_text in helps:
        assert all(name in help_text for name in config.profile_names()) and f"(default {default})" in help_text
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "site-cu12.yaml").write_text("env: {backend: venv}\n")
    (tmp_path / "vllm-provision.yaml").write_text("profile: site-cu12\n")
    assert config.profile_help(tmp_path) == "profile in envs/: site-cu12 (default site-cu12)"   # read, not written in


def test_defaults_file_names_the_python_each_profile_picks():
    line = next(l for l in (ROOT / "vllm-provision.yaml").read_text().splitlines() if l.strip().startswith("python:"))
    for name in config.profile_names():
        python = (config.load_profile(name).get("env") or {}).get("python")
        if python:
            assert f"{name} picks {python}" in line or f"{name} {python}" in line, (name, python, line)


def test_doctor_without_gpu_keeps_the_build_estimate_for_given_archs(isolated):
    from vllm_provision.diagnostics import doctor
    facts = HostFacts(cpu_count=2, mem_available_bytes=8 << 30, gpu_error="nvidia-smi not found")
    for arch_list in (None, ["9.0"], ["8.0", "9.0"]):
        plan = build_plan({"build": {"arch_list": arch_list}} if arch_list else {}, facts=facts)
        check = doctor.check_gpus(facts, plan)
        assert plan.build.expected_reason and plan.build.expected_reason in check.detail, check.detail


def test_doctor_judges_the_compiler_the_env_locks_not_the_hosts(isolated):
    """pypi-cu13 installs the CUDA 13 compiler from its lock into the env, and the build uses that one: doctor
    judges it, whatever nvcc the host has (here /usr/local/cuda's, found even without PATH)."""
    from conftest import without_host_cuda

    from vllm_provision.diagnostics import doctor
    facts = HostFacts(cpu_count=2, mem_available_bytes=8 << 30, gpu_error="nvidia-smi not found")
    plan = build_plan({"offline": True, "build": {"arch_list": ["9.0"]}}, facts=facts)
    assert plan.profile == "pypi-cu13" and plan.env.lock
    pinned = __import__("vllm_provision.envs.lock", fromlist=["pinned"]).pinned(ROOT / plan.env.lock)["nvidia-cuda-nvcc"]
    checks = {c.name: c for c in doctor.run_doctor(plan, facts, timeout=1, environ=without_host_cuda(dict(os.environ)))}
    assert checks["nvcc-vs-torch"].status == "pass", checks["nvcc-vs-torch"]
    assert f"nvidia-cuda-nvcc {pinned} of {plan.env.lock}" in checks["nvcc-vs-torch"].detail
    assert checks["arch-list"].status == "pass" and "nvcc 13.0" in checks["arch-list"].detail, checks["arch-list"]
    # a host nvcc of the same CUDA release lends its gcc limit (the same compiler); without one it is read later
    gcc = checks["gcc-vs-nvcc"].detail
    assert "nvcc 13.0 accepts gcc <=" in gcc or "once the env step has installed it" in gcc, gcc
