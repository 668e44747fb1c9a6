"""The pipeline's promises: any error fails its step and the report is written, a step run alone
refuses out-of-date upstream steps, `force` takes `all`, and a busy workspace is a runtime failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types

import pytest
from conftest import ROOT
from invoke.exceptions import Exit
from processes import alive, children_of

from vllm_provision import cli, pipeline
from vllm_provision.core.errors import ConfigError, NotBuiltYet
from vllm_provision.core.workspace import RunLock
from vllm_provision.pipeline import STEPS, StepOutcome
from vllm_provision.plan import build_plan
from vllm_provision.probes.host import HostFacts


def _steps(monkeypatch, runs: dict, inputs: dict | None = None) -> list[str]:
    """Step modules whose run/stamp_inputs are the given functions of the step's context (the real steps
    have their own tests); returns the names of the steps that ran, in order."""
    ran: list[str] = []

    def module(name):
        def run(ctx):
            ran.append(name)
            return runs.get(name, lambda ctx: StepOutcome(detail=f"{name} done"))(ctx)
        stamp_inputs = (inputs or {}).get(name, lambda ctx: {"step": name})
        return types.SimpleNamespace(run=run, stamp_inputs=stamp_inputs)
    monkeypatch.setattr(pipeline, "step_module", module)
    return ran


def _read_corrupt_env_json(ctx):
    with open(ctx.log, "a") as log:
        log.write("creating the env\nresolving 42 packages\n")
    return json.loads((ctx.workspace.root / "env.json").read_text())


def _open_missing_file(ctx):
    with open(ctx.log, "a") as log:
        log.write("creating the env\nresolving 42 packages\n")
    return open(f"{ctx.workspace.root}/https://bob:hunter2@mirror.example/simple").read()


@pytest.mark.parametrize("env_run, kind", [(_read_corrupt_env_json, "JSONDecodeError"),
                                           (_open_missing_file, "FileNotFoundError")])
def test_unexpected_error_fails_the_step_with_one_error_line_and_the_report_is_written(
        isolated, monkeypatch, capsys, env_run, kind):
    plan = build_plan({}, facts=HostFacts())
    plan.workspace.ensure()
    (plan.workspace.root / "env.json").write_text('{"python": "/usr/bin/py')    # cut short, as by a full disk
    _steps(monkeypatch, {"env": env_run})
    with pytest.raises(Exit) as done:
        cli.run_pipeline(["fetch", "env"])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "hunter2" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: step env failed: {kind}: "), err
    hints = [line for line in err.splitlines() if line.startswith("hint:")]
    assert hints == [f"hint: the traceback is in {plan.workspace.log('env')}: fix what it names, "
                     "or report it with that log"]
    assert "resolving 42 packages" in err                  # the log tail
    report = json.loads(plan.workspace.report.read_text())
    assert report["steps"]["fetch"]["status"] == "ok"
    assert report["steps"]["env"]["status"] == "failed" and report["steps"]["env"]["detail"].startswith(kind)
    assert "hunter2" not in plan.workspace.report.read_text()
    log = plan.workspace.log("env").read_text()
    assert "Traceback (most recent call last)" in log and "hunter2" not in log
    assert not (plan.workspace.stamps / "env.json").exists()


def test_a_step_run_alone_refuses_an_out_of_date_upstream_step(isolated, monkeypatch, tmp_path):
    patch_file = tmp_path / "0001-fix.patch"
    patch_file.write_text("--- a/setup.py\n+++ b/setup.py\n")
    ran = _steps(monkeypatch, {}, {"patch": lambda ctx: {"patch": patch_file.read_text()}})
    plan = build_plan({}, facts=HostFacts())
    assert [r.status for r in pipeline.run_steps(plan, HostFacts())] == ["ok"] * len(STEPS)
    ran.clear()
    assert [r.status for r in pipeline.run_steps(plan, HostFacts(), ["build"])] == ["up-to-date"]
    patch_file.write_text("--- a/setup.py\n+++ b/setup.py\n@@ -1 +1 @@\n")     # the patch was edited
    build_stamp = (plan.workspace.stamps / "build.json").read_text()
    with pytest.raises(NotBuiltYet) as err:
        pipeline.run_steps(plan, HostFacts(), ["build"], force=["build"])
    assert err.value.message == "step patch is out of date (its inputs changed since it ran)"
    assert err.value.hint == "run ./inv provision (or ./inv patch) first"
    assert err.value.exit_code == 2
    assert ran == [] and (plan.workspace.stamps / "build.json").read_text() == build_stamp
    assert [r.status for r in pipeline.run_steps(plan, HostFacts(), ["patch"])] == ["ok"]
    assert [r.status for r in pipeline.run_steps(plan, HostFacts(), ["build"])] == ["ok"]   # its upstream changed
    assert ran == ["patch", "build"]


def test_a_step_whose_upstream_never_ran_here_is_left_to_say_what_it_needs(isolated, monkeypatch):
    ran = _steps(monkeypatch, {})
    plan = build_plan({}, facts=HostFacts())
    assert [r.status for r in pipeline.run_steps(plan, HostFacts(), ["build"])] == ["ok"]
    assert ran == ["build"]


def test_force_all_reruns_every_step_and_unknown_names_are_refused_before_anything(isolated, monkeypatch):
    ran = _steps(monkeypatch, {})
    plan = build_plan({}, facts=HostFacts())
    with pytest.raises(ConfigError) as err:
        pipeline.run_steps(plan, HostFacts(), force=["biuld"])
    assert err.value.message == "cannot force unknown step(s) biuld"
    assert err.value.hint == f"force one of {', '.join(STEPS)}, or all for every step"
    assert ran == [] and not plan.workspace.root.exists()
    pipeline.run_steps(plan, HostFacts())
    ran.clear()
    assert [r.status for r in pipeline.run_steps(plan, HostFacts(), force=["all"])] == ["ok"] * len(STEPS)
    assert ran == list(STEPS)


def test_busy_workspace_exits_1_naming_the_lock_and_its_holder(isolated):
    plan = build_plan({}, facts=HostFacts())
    plan.workspace.ensure()
    lock = plan.workspace.root / ".lock"
    with RunLock(lock):
        done = subprocess.run([sys.executable, "-m", "invoke", "fetch"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"another run holds the workspace lock {lock}: pid {os.getpid()} on " in errors[0]
    hints = [line for line in done.stderr.splitlines() if line.startswith("hint:")]
    assert len(hints) == 1 and hints[0].startswith("hint: wait for the other run to finish; if no process "
                                                   f"{os.getpid()} runs on ")
    assert hints[0].endswith(f"remove {lock}")
    assert "Traceback" not in done.stderr


# A pipeline whose build step runs a long command through the runner, stopped by a real signal.
DRIVER = r"""
import sys, types
from invoke.exceptions import Exit
from vllm_provision import cli, pipeline
from vllm_provision.core import runner
from vllm_provision.pipeline import StepOutcome

def module(name):
    def run(ctx):
        if name == "build":
            print("build started", file=sys.stderr, flush=True)
            runner.run(["sleep", "300"], log=ctx.log, what="compile")
        return StepOutcome(detail=f"{name} done")
    return types.SimpleNamespace(run=run, stamp_inputs=lambda ctx: {"step": name})

pipeline.step_module = module
try:
    cli.handles_errors(cli.run_pipeline)(["fetch", "env", "patch", "build"])
except Exit as exc:
    sys.exit(exc.code)
"""


@pytest.mark.parametrize("sig, code, said", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_a_signal_during_a_step_stops_it_and_the_report_records_the_real_exit_code(isolated, tmp_path, sig, code,
                                                                                  said):
    (tmp_path / "driver.py").write_text(DRIVER)
    plan = build_plan({}, facts=HostFacts())
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py")], cwd=ROOT, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    compile_pids: list[int] = []
    try:
        while "build started" not in driver.stderr.readline():
            assert driver.poll() is None
        while not compile_pids:
            assert driver.poll() is None
            compile_pids = children_of(driver.pid)
            time.sleep(0.05)
        driver.send_signal(sig)
        err = driver.communicate(timeout=60)[1]
    finally:
        if driver.poll() is None:
            driver.kill()
        for pid in children_of(driver.pid) + compile_pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not alive(compile_pids[0])
    assert driver.returncode == code and f"error: {said}" in err and "Traceback" not in err
    data = json.loads(plan.workspace.report.read_text())
    steps = data["steps"]
    assert [steps[s]["status"] for s in ("fetch", "env", "patch")] == ["ok"] * 3
    assert steps["build"]["status"] == "interrupted" and steps["build"]["exit_code"] == code
    assert steps["build"]["run"]["command"] == "./inv run-pipeline"
    run = data["run"]
    assert (run["exit_code"], run["result"], run["command"]) == (code, "interrupted", "./inv run-pipeline")
    assert [(s["step"], s["status"]) for s in run["steps"]] == [
        ("fetch", "ok"), ("env", "ok"), ("patch", "ok"), ("build", "interrupted")]
    assert json.loads((plan.workspace.root / "runs" / run["id"] / "run.json").read_text())["exit_code"] == code
    md = plan.workspace.report.with_suffix(".md").read_text()
    assert f"| result | interrupted (exit code {code}) |" in md
    stopped = "Terminated" if sig == signal.SIGTERM else "KeyboardInterrupt"
    assert f"compile interrupted ({stopped}): stopped with SIGTERM" in plan.workspace.log("build").read_text()


def test_each_run_has_its_own_logs_and_the_toolkits_messages_are_logged_with_time(isolated, monkeypatch):
    """logs/<step>.log holds the step's latest run only (no log grows forever, none is lost): the run before's
    is under runs/<id>/logs/, with toolkit.log, every message the toolkit printed, timestamped."""
    from vllm_provision import report

    def env_run(ctx):
        with open(ctx.log, "a") as log:
            log.write(f"installing, run {len(ran)}\n")
        ctx.say(f"env made, run {len(ran)}")
        return StepOutcome(detail="env done")
    ran = _steps(monkeypatch, {"env": env_run})
    plan = build_plan({}, facts=HostFacts())
    ids = []
    for _ in range(2):
        ids.append(report.begin_run("env", [])["id"])
        pipeline.run_steps(plan, HostFacts(), ["fetch", "env"], force=["env"])
        report.finish_run(0)
        time.sleep(1.1)         # run ids are per second
    ws = plan.workspace
    assert ws.log("env").read_text() == "installing, run 3\n"
    first = ws.root / "runs" / ids[0] / "logs"
    assert (first / "env.log").read_text() == "installing, run 2\n"
    said = (first / pipeline.TOOLKIT_LOG).read_text().splitlines()
    assert any(line.endswith("[env] env made, run 2") for line in said)
    assert all(line[:4].isdigit() and line[4] == "-" for line in said)         # asctime first
    assert (ws.logs / pipeline.TOOLKIT_LOG).read_text().count("env made") == 1  # this run's only


def test_only_the_newest_runs_keep_their_logs(isolated, monkeypatch):
    from vllm_provision import report
    monkeypatch.setattr(report, "KEEP_RUN_LOGS", 2)
    _steps(monkeypatch, {})
    plan = build_plan({}, facts=HostFacts())
    ids = []
    for _ in range(3):
        ids.append(report.begin_run("fetch", [])["id"])
        pipeline.run_steps(plan, HostFacts(), ["fetch"], force=["fetch"])
        report.finish_run(0)
        time.sleep(1.1)
    runs = plan.workspace.root / "runs"
    assert [(runs / i / "logs").is_dir() for i in ids] == [False, True, True]
    assert all((runs / i / "run.json").is_file() for i in ids)      # the record of every run stays
