"""fetch -> env -> patch -> build -> verify -> smoke through one mechanism.

Each step's stamp is a hash of its inputs (its plan section, relevant files, the upstream stamp);
an unchanged step is skipped and says so; a failed step stops the run, and the next run resumes
from it; `force` reruns named steps (`all`: every step). A step run without the steps before it
refuses when one of those is out of date, rather than build on what no longer matches its inputs.
An unexpected exception in a step fails that step like any other error (its traceback goes to the
step's log); report.json is written whatever happened.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vllm_provision.core import runner, ui
from vllm_provision.core.errors import ConfigError, NotBuiltYet, ProvisionError, StepFailed
from vllm_provision.core.redact import redact_text
from vllm_provision.core.workspace import RunLock, Workspace
from vllm_provision.plan import Plan
from vllm_provision.probes.host import HostFacts
from vllm_provision.steps.facts import STEPS, StepFacts, StepStatus, facts_dict

ALL = "all"     # force every step
TOOLKIT_LOG = "toolkit.log"     # what the toolkit said during the run, timestamped (ui.recording)
T = TypeVar("T")
F = TypeVar("F", bound=StepFacts)


@dataclass
class StepContext:
    plan: Plan
    facts: HostFacts
    name: str
    then: tuple[str, ...] = ()      # the steps this run goes on to after this one

    @property
    def workspace(self) -> Workspace:
        return self.plan.workspace

    @property
    def log(self) -> Path:
        return self.workspace.log(self.name)

    def say(self, message: str) -> None:
        ui.step(self.name, message)


@dataclass
class StepOutcome:
    """What a step's run() returns on success (failures raise ProvisionError)."""
    detail: str
    facts: StepFacts | dict = field(default_factory=dict)     # typed for the steps whose facts others read
    status: StepStatus = StepStatus.OK      # OK or SKIPPED (e.g. smoke on a host without a GPU)


@dataclass
class StepResult:
    step: str
    status: StepStatus
    detail: str = ""
    seconds: float = 0.0
    facts: dict = field(default_factory=dict)
    hint: str | None = None
    exit_code: int = 0      # of the error that failed the step: 1 failed check, 2 bad input; 130/143 interrupted


def step_module(name: str):
    """The step's module (steps/<name>.py), imported when a run needs it."""
    return importlib.import_module(f"vllm_provision.steps.{name}")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def stamp_of(module, ctx: StepContext, upstream: str) -> str:
    return _digest({"step": ctx.name, "inputs": module.stamp_inputs(ctx), "upstream": upstream})


def _stamp_file(ws: Workspace, name: str) -> Path:
    return ws.stamps / f"{name}.json"


def read_stamp(ws: Workspace, name: str) -> dict | None:
    try:
        return json.loads(_stamp_file(ws, name).read_text())
    except (OSError, ValueError):
        return None


def upstream_facts(ws: Workspace, facts_type: type[F]) -> F | None:
    """The facts an upstream step recorded when it last succeeded, typed; None when it never has.
    FactsUnreadable when the record does not have the shape facts_type reads."""
    previous = read_stamp(ws, facts_type.STEP)
    if previous is None:
        return None
    return facts_type.from_dict(previous.get("facts"))


def steps_to_force(force: Iterable[str]) -> set[str]:
    """The step names in `force` (`all`: every step); an unknown name is bad input."""
    names = set(force)
    unknown = names - set(STEPS) - {ALL}
    if unknown:
        raise ConfigError(f"cannot force unknown step(s) {', '.join(sorted(unknown))}",
                          hint=f"force one of {', '.join(STEPS)}, or {ALL} for every step")
    return set(STEPS) if ALL in names else names


def _log_tail(log: Path, lines: int = 40) -> str:
    try:
        with open(log, encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError:
        return ""


def _guarded(name: str, log: Path, call: Callable[..., T], *args: Any) -> T:
    """call(*args); an exception that is not a ProvisionError becomes the step's StepFailed (one line,
    redacted), with its traceback appended to the step's log."""
    try:
        return call(*args)
    except ProvisionError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a step must end as a failed step
        tail = _log_tail(log)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(redact_text(f"--- step {name} stopped on an unexpected error:\n{traceback.format_exc()}"))
        raise StepFailed(redact_text(f"{type(exc).__name__}: {exc}"),
                         hint=f"the traceback is in {log}: fix what it names, or report it with that log",
                         log_tail=tail or None) from exc


def run_steps(plan: Plan, facts: HostFacts, steps: Iterable[str] = STEPS, force: Iterable[str] = (),
              on_result: Callable[[StepResult], None] | None = None) -> list[StepResult]:
    """Run steps in order under the workspace lock; returns one result per requested step, in STEPS order."""
    wanted = [s for s in STEPS if s in set(steps)]
    force = steps_to_force(force)
    ws = plan.workspace
    ws.ensure()
    results: list[StepResult] = []
    stopped = False
    upstream = ""
    last_wanted = max((STEPS.index(s) for s in wanted), default=-1)
    with RunLock(ws.root / ".lock"), runner.sigterm_as_interrupt(), ui.recording(ws.logs / TOOLKIT_LOG):
        try:
            for name in STEPS[:last_wanted + 1]:
                module = step_module(name)
                then = tuple(s for s in wanted if STEPS.index(s) > STEPS.index(name))
                ctx = StepContext(plan, facts, name, then)
                if name not in wanted:
                    upstream = _upstream_stamp(module, ctx, upstream)
                    continue
                if stopped:
                    results.append(StepResult(name, StepStatus.NOT_RUN, "an earlier step failed"))
                    continue
                started = time.monotonic()
                try:
                    result, upstream = _run_step(module, ctx, upstream, name in force)
                except KeyboardInterrupt as exc:    # Ctrl-C or SIGTERM: the report shows where it stopped
                    code = interrupted_exit_code(exc)
                    results.append(StepResult(name, StepStatus.INTERRUPTED,
                                              f"interrupted by {'SIGTERM' if code == 143 else 'Ctrl-C'}",
                                              time.monotonic() - started, hint="rerun the same command",
                                              exit_code=code))
                    interrupted = [s for s in wanted if STEPS.index(s) > STEPS.index(name)]
                    results += [StepResult(s, StepStatus.NOT_RUN, "the run was interrupted before it") for s in interrupted]
                    raise
                stopped = result.status == StepStatus.FAILED
                results.append(result)
                if on_result:
                    on_result(result)
        finally:
            if results:     # whatever ended the run (a failure, Ctrl-C), the report says what ran
                _record(ws, results, plan)
    return results


def interrupted_exit_code(exc: BaseException) -> int:
    """The exit code of a run stopped by `exc`: 143 for SIGTERM (runner.Terminated), 130 for Ctrl-C."""
    return 143 if isinstance(exc, runner.Terminated) else 130


def _run_step(module, ctx: StepContext, upstream: str, forced: bool) -> tuple[StepResult, str]:
    """Skip the step when its stamp is unchanged and its output intact, else run it; returns its result
    and its stamp. Any error fails the step."""
    ws, name = ctx.workspace, ctx.name
    started = time.monotonic()
    try:
        stamp = _guarded(name, ctx.log, stamp_of, module, ctx, upstream)
        previous = read_stamp(ws, name)
        intact = getattr(module, "intact", lambda c: True)
        if not forced and previous and previous.get("stamp") == stamp and _guarded(name, ctx.log, intact, ctx):
            # The report keeps what the step did when it last ran, not just "skipped".
            then = f"; last run took {previous['seconds']:.1f} s: {previous['detail']}" if "detail" in previous else ""
            return StepResult(name, StepStatus.UP_TO_DATE, f"inputs unchanged since {previous.get('finished', '?')}{then}",
                              time.monotonic() - started, previous.get("facts", {})), stamp
        _stamp_file(ws, name).unlink(missing_ok=True)
        ctx.log.write_text("")      # a step's log holds its latest run; runs/<id>/logs/ keeps earlier ones
        outcome = _guarded(name, ctx.log, module.run, ctx)
    except ProvisionError as exc:
        facts = dict(getattr(exc, "facts", {}))
        if exc.log_tail:
            facts["log_tail"] = exc.log_tail
        return StepResult(name, StepStatus.FAILED, exc.message, time.monotonic() - started, hint=exc.hint,
                          exit_code=exc.exit_code, facts=facts), upstream
    facts = facts_dict(outcome.facts)
    result = StepResult(name, outcome.status, outcome.detail, time.monotonic() - started, facts)
    if outcome.status == StepStatus.OK:
        _stamp_file(ws, name).write_text(json.dumps(
            {"stamp": stamp, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "facts": facts,
             "seconds": round(result.seconds, 1), "detail": outcome.detail},
            indent=2, default=str))
    return result, stamp


def _upstream_stamp(module, ctx: StepContext, upstream: str) -> str:
    """The stamp a step that is not run here passes downstream; refuses when the step is out of date.

    A step that never ran passes its upstream on: the step that needs its output says what is missing."""
    previous = read_stamp(ctx.workspace, ctx.name)
    if not previous:
        return upstream
    if _guarded(ctx.name, ctx.log, stamp_of, module, ctx, upstream) != previous.get("stamp"):
        raise NotBuiltYet(f"step {ctx.name} is out of date (its inputs changed since it ran)",
                          hint=f"run ./inv provision (or ./inv {ctx.name}) first")
    return previous["stamp"]


def _record(ws: Workspace, results: list[StepResult], plan: Plan) -> None:
    """Merge this run's step results into report.json and render report.md (see report.py)."""
    from vllm_provision.report import record_run
    record_run(ws.report, {r.step: asdict(r) for r in results if r.status != StepStatus.NOT_RUN},
               {r.step: r.detail for r in results if r.status == StepStatus.NOT_RUN},
               release=plan.release.version, profile=plan.profile)
