"""What crosses between the steps, the report, the artifact key and the fleet: statuses and each step's facts.

A step returns its facts as one of these types; the pipeline records them in the step's stamp and in
report.json as `to_dict()` gives them (the JSON is what it was when they were plain dicts); a reader of an
upstream step's facts loads them back through `from_dict`, which refuses a record it cannot read (an older
toolkit's, a renamed field) instead of reading it as empty. Imports nothing of the pipeline, so the report
and the fleet can read them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from vllm_provision.checks import Check, CheckStatus, from_dicts, summarize, to_json
from vllm_provision.core.errors import StepFailed
from vllm_provision.core.words import Word


class StepStatus(Word):
    """A step's outcome in a run (report.json's step rows)."""
    OK = "ok"
    UP_TO_DATE = "up-to-date"       # its stamp matched: not run again
    SKIPPED = "skipped"             # ran, and had nothing to do here (smoke without a GPU, a partial build)
    FAILED = "failed"
    INTERRUPTED = "interrupted"     # Ctrl-C or SIGTERM
    NOT_RUN = "not run"             # asked for, but an earlier step failed or the run was interrupted


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


def _optional(data: Mapping[str, Any], name: str, kind: type, step: str) -> Any:
    """The field `name` when it is there and not null, else None."""
    return _field(data, name, kind, step) if data.get(name) is not None else None


_Word = TypeVar("_Word", bound=Word)


def _word(data: Mapping[str, Any], name: str, kind: type[_Word], step: str) -> _Word:
    """The field `name` as a member of the closed vocabulary `kind`; a word outside it is refused."""
    value = _field(data, name, str, step)
    if value not in {w.value for w in kind}:
        raise FactsUnreadable(step, f"`{name}` is {value!r}, not one of {', '.join(w.value for w in kind)}")
    return kind(value)


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
    """The JSON form of a step's facts (a failed step's partial facts are a plain dict)."""
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


# ------------------------------------------------------------------------------------------------ fetch
@dataclass(frozen=True)
class FetchFacts(StepFacts):
    """The fetch step's facts: the verified release archive, where it came from, the extracted tree's hash,
    and each external source's verified archive (name -> file name in the download cache)."""
    STEP = "fetch"
    archive: str
    source: str                     # the kind of source that served it: cache, mirror, pypi, github, bundle
    tree_sha256: str
    externals: Mapping[str, str]

    def to_dict(self) -> dict:
        return {"archive": self.archive, "source": self.source, "tree_sha256": self.tree_sha256,
                "externals": dict(self.externals)}

    @classmethod
    def from_dict(cls, data: Any) -> FetchFacts:
        step = cls.STEP
        data = _record(data, step, "the record")
        externals = _field(data, "externals", dict, step)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in externals.items()):
            raise FactsUnreadable(step, "`externals` is not a map of names to file names")
        return cls(_field(data, "archive", str, step), _field(data, "source", str, step),
                   _field(data, "tree_sha256", str, step), dict(externals))


# ------------------------------------------------------------------------------------------------ env
@dataclass(frozen=True)
class EnvFacts(StepFacts):
    """The env step's facts as its row in the report shows them. The steps after it read the env itself
    from env.json (`core.envinfo.EnvInfo`); these are the summary of what was made and why."""
    STEP = "env"
    prefix: str
    python: str
    python_version: str
    packages: int                   # how many distributions the env holds
    installer: str                  # uv | pip
    compiler_source: str            # where the env's nvcc came from
    compiler_reason: str            # why that one (or why none matches torch)
    torch: str | None = None
    torch_cuda: str | None = None
    cuda_home: str | None = None
    nvcc_version: str | None = None
    lock: str | None = None
    torch_error: str | None = None  # torch present but not importable

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.torch_error is None:
            del data["torch_error"]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> EnvFacts:
        step = cls.STEP
        data = _record(data, step, "the record")
        required = {name: _field(data, name, kind, step) for name, kind in (
            ("prefix", str), ("python", str), ("python_version", str), ("packages", int), ("installer", str),
            ("compiler_source", str), ("compiler_reason", str))}
        optional = {name: _optional(data, name, str, step) for name in (
            "torch", "torch_cuda", "cuda_home", "nvcc_version", "lock", "torch_error")}
        return cls(**required, **optional)


# ------------------------------------------------------------------------------------------------ verify
@dataclass(frozen=True)
class VerifyFacts(StepFacts):
    """The verify step's facts: its checks, in report order (ok: none failed). `./inv verify` prints them; a
    failed verify records the same form (StepFailed's facts), and so does report.json's verify section."""
    STEP = "verify"
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return summarize(self.checks)[0]

    def to_dict(self) -> dict:
        return to_json(self.checks)

    @classmethod
    def from_dict(cls, data: Any) -> VerifyFacts:
        step = cls.STEP
        data = _record(data, step, "the record")
        checks = _records(data, "checks", step)
        _field(data, "ok", bool, step)         # part of the record's shape; the checks decide it
        for item in checks:
            _field(item, "name", str, step)
            _word(item, "status", CheckStatus, step)
        return cls(tuple(from_dicts(checks)))


# ------------------------------------------------------------------------------------------------ build
class BuildSource(Word):
    COMPILED = "compiled"       # compiled in this workspace's src/
    CACHE = "cache"             # a verified wheel installed from an artifact cache


@dataclass(frozen=True)
class BuildFacts(StepFacts):
    """The build step's facts as the steps after it, the report, `./inv wheel` and the fleet read them; the
    step records more (units, timings, per-shape details), kept in `details` and written back unchanged."""
    STEP = "build"
    source: BuildSource
    arch_list: str                  # TORCH_CUDA_ARCH_LIST the binary was built for
    version: str | None = None      # the installed vllm's version
    key: str | None = None          # the artifact key (a cache install; a compile's is under artifact)
    max_jobs: int | None = None
    timings: str | None = None      # the timeline page, relative to the workspace
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        typed = {"source": self.source.value, "arch_list": self.arch_list, "version": self.version, "key": self.key,
                 "max_jobs": self.max_jobs, "timings": self.timings}
        return dict(self.details) | {k: v for k, v in typed.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Any) -> BuildFacts:
        step = cls.STEP
        data = _record(data, step, "the record")
        source = _word(data, "source", BuildSource, step)
        typed = {"source", "arch_list", "version", "key", "max_jobs", "timings"}
        # an install from a cache stands for its key: without one it cannot be checked or handed on
        key = _field(data, "key", str, step) if source == BuildSource.CACHE else _optional(data, "key", str, step)
        return cls(source, _field(data, "arch_list", str, step), _optional(data, "version", str, step),
                   key, _optional(data, "max_jobs", int, step), _optional(data, "timings", str, step),
                   {k: v for k, v in data.items() if k not in typed})


# ------------------------------------------------------------------------------------------------ smoke
@dataclass(frozen=True)
class SmokeFacts(StepFacts):
    """The smoke step's facts as the fleet and `./inv smoke`'s readers take them: the KV-cache blocks the
    engine reported and whether the verdict passed (both absent in the every-GPU form, whose rows are under
    `gpus`); the rest (model, timings, parity, per-GPU rows) is kept in `details` and written back unchanged."""
    STEP = "smoke"
    num_gpu_blocks: int | None = None
    verdict: Mapping[str, Any] | None = None        # kvjudge's verdict: {"ok": bool, "checks": [...], ...}
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        typed = {"verdict": dict(self.verdict) if self.verdict is not None else None, "num_gpu_blocks": self.num_gpu_blocks}
        return {k: v for k, v in typed.items() if v is not None} | dict(self.details)

    @classmethod
    def from_dict(cls, data: Any) -> SmokeFacts:
        step = cls.STEP
        data = _record(data, step, "the record")
        verdict = _optional(data, "verdict", dict, step)
        if verdict is not None:
            _field(verdict, "ok", bool, step)
        return cls(_optional(data, "num_gpu_blocks", int, step), verdict,
                   {k: v for k, v in data.items() if k not in ("verdict", "num_gpu_blocks")})

    @property
    def passed(self) -> bool | None:
        """The verdict's ok; None without a verdict."""
        return None if self.verdict is None else bool(self.verdict["ok"])
