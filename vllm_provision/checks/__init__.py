"""Named checks (DeepOps-doctor style) shared by preflight, doctor and verify.

Each check is `pass`/`warn`/`fail`/`skip` with one line of detail and a fix. A run of checks is
ok when none failed (warnings allowed); the exit code is 0 then, else 1 (bad input raises
ConfigError before any check runs and exits 2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from packaging.version import InvalidVersion, Version

from vllm_provision.core.words import Word
from vllm_provision.probes.host import HostFacts


class CheckStatus(Word):
    """A check's verdict (report.json, every --json output)."""
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


STATUSES = tuple(CheckStatus)


@dataclass(frozen=True)
class Check:
    name: str
    status: CheckStatus
    detail: str
    hint: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(checks: Iterable[Check]) -> tuple[bool, int]:
    """(ok, exit_code): ok unless a check failed; exit 0 when ok, else 1."""
    ok = not any(c.status == CheckStatus.FAIL for c in checks)
    return ok, 0 if ok else 1


def to_json(checks: Iterable[Check]) -> dict:
    checks = list(checks)
    ok, _ = summarize(checks)
    return {"ok": ok, "checks": [c.to_dict() for c in checks]}


def from_dicts(items: Iterable[Mapping[str, Any]]) -> list[Check]:
    return [Check(str(i.get("name", "?")), _status_of(i.get("status")), str(i.get("detail", "")), i.get("hint"))
            for i in items]


def _status_of(value: object) -> CheckStatus:
    """A recorded status; one this toolkit does not know (a report from elsewhere) reads as skip."""
    try:
        return CheckStatus(value)
    except ValueError:
        return CheckStatus.SKIP


def counts(checks: Iterable[Check]) -> dict[str, int]:
    out: dict[str, int] = {s: 0 for s in STATUSES}
    for c in checks:
        out[c.status] = out.get(c.status, 0) + 1
    return out


def print_checks(title: str, checks: list[Check], as_json: bool = False, kind: str = "doctor") -> None:
    """`--json`: {schema_version, kind, ok, checks:[...]} on stdout
    (schemas/checks.schema.json); otherwise a table (rich on a TTY, plain text in CI)."""
    import json
    import sys

    from vllm_provision.core import ui
    from vllm_provision.core.outputs import stamped
    if as_json:
        sys.stdout.write(json.dumps(stamped(kind, to_json(checks)), indent=2) + "\n")
        sys.stdout.flush()
        return
    ok, _ = summarize(checks)
    n = counts(checks)
    total = (f"{'ok' if ok else 'FAILED'}: {n[CheckStatus.PASS]} pass, {n[CheckStatus.WARN]} warn, "
             f"{n[CheckStatus.FAIL]} fail, {n[CheckStatus.SKIP]} skip")
    if not ui.out.is_terminal:      # CI logs: one line per check, its fix below it, nothing wrapped
        lines = [title]
        width = max((len(c.name) for c in checks), default=0)
        for c in checks:
            lines.append(f"{c.status.upper():4}  {c.name:{width}}  {c.detail}")
            if c.hint and c.status != CheckStatus.PASS:
                lines.append(f"      {'':{width}}  fix: {c.hint}")
        sys.stdout.write("\n".join(lines + [total]) + "\n")
        sys.stdout.flush()
        return
    from rich.table import Table
    colors = {CheckStatus.PASS: "green", CheckStatus.WARN: "yellow", CheckStatus.FAIL: "red", CheckStatus.SKIP: "dim"}
    table = Table(title=title)
    for col in ("check", "status", "detail", "fix"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.name, f"[{colors.get(c.status, '')}]{c.status.upper()}[/]", c.detail, c.hint or "",
                      )
    ui.out.print(table)
    ui.out.print(total, markup=False)


def parse_version(text: str | None) -> Version | None:
    """A Version, or None for a missing or unreadable one (probes report what they saw)."""
    try:
        return Version(text) if text else None
    except InvalidVersion:
        return None


# The oldest Linux driver branch for each CUDA major (NVIDIA's CUDA release notes, "minimum driver").
DRIVER_FLOOR = {12: "525", 13: "580"}


def check_driver(facts: HostFacts, torch_cuda: str | None) -> Check:
    name = "driver-vs-cuda"
    if not facts.gpus:
        return Check(name, CheckStatus.SKIP, f"no GPU visible ({facts.gpu_error or 'none listed'}): compiling only")
    have, want = parse_version(facts.driver_cuda), parse_version(torch_cuda)
    detail = (f"driver {facts.driver_version or facts.gpus[0].driver_version} supports CUDA {facts.driver_cuda or '?'}; "
              f"torch needs CUDA {torch_cuda}")
    if have is None or want is None:
        return Check(name, CheckStatus.WARN, detail)
    floor = DRIVER_FLOOR.get(want.major)
    fix = (f"upgrade the NVIDIA driver to one for CUDA {want.major}.{want.minor}+"
           + (f" (>= {floor})" if floor else "") + f", or use a torch built for CUDA <= {have}"
           + (": --profile seed (CUDA 12.1) with a CUDA 12 toolkit or a conda channel with cuda-nvcc"
              if want.major >= 13 else ""))
    if have.major < want.major:
        return Check(name, CheckStatus.FAIL, detail + ": the built kernels would not load", fix)
    if have < want:
        return Check(name, CheckStatus.WARN, detail + ": relies on CUDA minor-version compatibility", fix)
    return Check(name, CheckStatus.PASS, detail)
