"""fetch -> env -> patch -> build -> verify -> smoke through one mechanism.

Each step's stamp is a hash of its inputs (its plan section, relevant files, the upstream stamp);
an unchanged step is skipped and says so; a failed step stops the run, and the next run resumes
from it; `force` reruns named steps.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from . import ui
from .errors import ProvisionError
from .host import HostFacts
from .plan import Plan
from .workspace import RunLock, Workspace

STEPS = ("fetch", "env", "patch", "build", "verify", "smoke")


@dataclass
class StepContext:
    plan: Plan
    facts: HostFacts
    name: str

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
    facts: dict = field(default_factory=dict)
    status: str = "ok"      # ok | skipped (e.g. smoke on a host without a GPU)


@dataclass
class StepResult:
    step: str
    status: str             # ok | up-to-date | skipped | failed | not implemented | not run
    detail: str = ""
    seconds: float = 0.0
    facts: dict = field(default_factory=dict)
    hint: str | None = None
    exit_code: int = 0      # of the error that failed the step: 1 failed check, 2 bad input


def step_module(name: str):
    """The step's module, or None while the step is not built yet."""
    try:
        return importlib.import_module(f"vllm_provision.steps.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"vllm_provision.steps.{name}":
            return None
        raise


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


def run_steps(plan: Plan, facts: HostFacts, steps: Iterable[str] = STEPS, force: Iterable[str] = (),
              on_result: Callable[[StepResult], None] | None = None) -> list[StepResult]:
    """Run steps in order under the workspace lock; returns one result per step in STEPS order."""
    wanted = [s for s in STEPS if s in set(steps)]
    force = set(force)
    ws = plan.workspace
    ws.ensure()
    results: list[StepResult] = []
    stopped = False
    upstream = ""
    with RunLock(ws.root / ".lock"):
        for name in STEPS:
            module = step_module(name)
            ctx = StepContext(plan, facts, name)
            # Steps before the requested ones only contribute their stamps (they must have run).
            if name not in wanted:
                previous = read_stamp(ws, name)
                upstream = previous["stamp"] if previous else upstream
                continue
            if stopped:
                results.append(StepResult(name, "not run", "an earlier step failed"))
                continue
            if module is None:
                results.append(StepResult(name, "not implemented", "not implemented yet",
                                          hint=f"the {name} step is not built yet in this version of vllm-provision",
                                          exit_code=1))
                stopped = True
                if on_result:
                    on_result(results[-1])
                continue
            started = time.monotonic()
            stamp = stamp_of(module, ctx, upstream)
            previous = read_stamp(ws, name)
            intact = getattr(module, "intact", lambda c: True)
            if name not in force and previous and previous.get("stamp") == stamp and intact(ctx):
                # The report keeps what the step did when it last ran, not just "skipped".
                then = f"; last run took {previous['seconds']:.1f} s: {previous['detail']}" if "detail" in previous else ""
                result = StepResult(name, "up-to-date", f"inputs unchanged since {previous.get('finished', '?')}{then}",
                                    time.monotonic() - started, previous.get("facts", {}))
            else:
                _stamp_file(ws, name).unlink(missing_ok=True)
                try:
                    outcome = module.run(ctx)
                except ProvisionError as exc:
                    result = StepResult(name, "failed", exc.message, time.monotonic() - started, hint=exc.hint,
                                        exit_code=exc.exit_code, facts={"log_tail": exc.log_tail} if exc.log_tail else {})
                    results.append(result)
                    if on_result:
                        on_result(result)
                    stopped = True
                    continue
                result = StepResult(name, outcome.status, outcome.detail, time.monotonic() - started, outcome.facts)
                if outcome.status == "ok":
                    _stamp_file(ws, name).write_text(json.dumps(
                        {"stamp": stamp, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "facts": outcome.facts,
                         "seconds": round(result.seconds, 1), "detail": outcome.detail},
                        indent=2, default=str))
            upstream = stamp
            results.append(result)
            if on_result:
                on_result(result)
        _record(ws, results, plan)
    return results


def _record(ws: Workspace, results: list[StepResult], plan: Plan) -> None:
    """Merge this run's step results into report.json and render report.md (see report.py)."""
    from .report import record_run
    record_run(ws.report, {r.step: asdict(r) for r in results if r.status != "not run"},
               release=plan.release.version, profile=plan.profile)
