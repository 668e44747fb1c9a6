"""What crosses between the steps, the report, the artifact key and the fleet: statuses and each step's facts.

A step returns its facts as one of these types; the pipeline records them in the step's stamp and in
report.json as `to_dict()` gives them (the JSON is what it was when they were plain dicts); a reader of an
upstream step's facts loads them back through `from_dict`, which refuses a record it cannot read (an older
toolkit's, a renamed field) instead of reading it as empty. Imports nothing of the pipeline, so the report
and the fleet can read them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, TypeVar

from vllm_provision.core.errors import StepFailed


class StepStatus(str, Enum):
    """A step's outcome in a run (report.json's step rows). A str, as CheckStatus is, so the JSON is unchanged."""
    OK = "ok"
    UP_TO_DATE = "up-to-date"       # its stamp matched: not run again
    SKIPPED = "skipped"             # ran, and had nothing to do here (smoke without a GPU, a partial build)
    FAILED = "failed"
    INTERRUPTED = "interrupted"     # Ctrl-C or SIGTERM
    NOT_RUN = "not run"             # asked for, but an earlier step failed or the run was interrupted

    def __str__(self) -> str:       # Enum's own str() is "StepStatus.OK"; format() follows __str__
        return self.value


class FactsUnreadable(StepFailed):
    """An upstream step's recorded facts do not have the shape this toolkit reads (an older toolkit wrote
    them, or a field was renamed): refused, never read as empty, since an empty patch list would give a
    patched build the key of an unpatched one."""

    def __init__(self, step: str, problem: str):
        super().__init__(f"the {step} step's recorded facts cannot be read: {problem}",
                         hint=f"rerun that step so it records them afresh: `./inv {step} --force`")


def _field(data: Mapping[str, Any], name: str, kind: type, step: str) -> Any:
    if name not in data:
        raise FactsUnreadable(step, f"no `{name}`")
    if not isinstance(data[name], kind):
        raise FactsUnreadable(step, f"`{name}` is {type(data[name]).__name__}, not {kind.__name__}")
    return data[name]


def _record(data: Any, step: str, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise FactsUnreadable(step, f"{what} is {type(data).__name__}, not an object")
    return data


def _records(data: Mapping[str, Any], name: str, step: str) -> list[Mapping[str, Any]]:
    """The list field `name`, each item an object."""
    return [_record(item, step, f"{name}[{i}]") for i, item in enumerate(_field(data, name, list, step))]


# the pipeline runs them in this order; the report lists them in it
STEPS = ("fetch", "env", "patch", "build", "verify", "smoke")

_Facts = TypeVar("_Facts", bound="StepFacts")


class StepFacts:
    """What a step's run() returns as its facts; `to_dict()` is what its stamp and report.json hold."""
    STEP = ""

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[_Facts], data: Any) -> _Facts:
        """The facts back from their recorded JSON; FactsUnreadable when the record has another shape."""
        raise NotImplementedError


def facts_dict(facts: StepFacts | Mapping[str, Any]) -> dict:
    """The JSON form of a step's facts, typed or (for steps not typed yet) a plain dict."""
    return facts.to_dict() if isinstance(facts, StepFacts) else dict(facts)


# ------------------------------------------------------------------------------------------------ patch
@dataclass(frozen=True)
class AppliedPatch:
    file: str           # its name in patches/<release>/series.toml
    sha256: str         # of the .patch file: part of the artifact key
    state: str          # "applied" | "already applied"


@dataclass(frozen=True)
class SkippedPatch:
    file: str
    reason: str         # why its `when` does not hold here


@dataclass(frozen=True)
class PatchFacts(StepFacts):
    """The patch step's facts: the patches the source tree holds, and those not needed here."""
    STEP = "patch"
    applied: tuple[AppliedPatch, ...] = ()
    skipped: tuple[SkippedPatch, ...] = ()

    def to_dict(self) -> dict:
        return {"applied": [asdict(a) for a in self.applied], "skipped": [asdict(s) for s in self.skipped]}

    @classmethod
    def from_dict(cls, data: Any) -> PatchFacts:
        step = cls.STEP
        data = _record(data, step, "the record")
        applied = tuple(AppliedPatch(_field(a, "file", str, step), _field(a, "sha256", str, step),
                                     _field(a, "state", str, step)) for a in _records(data, "applied", step))
        skipped = tuple(SkippedPatch(_field(s, "file", str, step), _field(s, "reason", str, step))
                        for s in _records(data, "skipped", step))
        return cls(applied, skipped)

    def key_patches(self) -> list[dict]:
        """The patches as the artifact key covers them: each applied one's file and sha256, in series order."""
        return [{"file": a.file, "sha256": a.sha256} for a in self.applied]
