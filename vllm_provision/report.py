"""The workspace report: report.json (machines), report.md (onboarding docs), JUnit XML (CI), run history.

`merge_section` updates one top-level section of report.json atomically (tmp file + rename, under a
small flock so doctor/verify/pipeline writers do not lose each other's sections); `render` writes
report.md from whatever report.json holds.

Every command is a run (`begin_run` ... `finish_run(exit_code)`, called by the CLI): each section and step
row it writes names it (command and start), so report.json/report.md show the latest run of each step
and nothing stale passes as current; at its end the run's own record goes to
<workspace>/runs/<timestamp>/run.json (kept as history) and report.json's `run` is that latest run.
report.json follows vllm_provision/schemas/report.schema.json (`schema_version`).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shlex
import shutil
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vllm_provision import GIB, PROJECT_ROOT, __version__
from vllm_provision.checks import Check, CheckStatus, counts, from_dicts
from vllm_provision.core import runner
from vllm_provision.core.files import atomic_write
from vllm_provision.core.redact import redact_text
from vllm_provision.probes.host import HostFacts
from vllm_provision.steps.facts import STEPS, StepStatus


@contextmanager
def _locked(report: Path) -> Iterator[None]:
    report.parent.mkdir(parents=True, exist_ok=True)
    with open(report.with_name(report.name + ".lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read(report: Path) -> dict:
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(report: Path, data: dict) -> None:
    atomic_write(report, redact_text(json.dumps(data, indent=2, default=str)))


SCHEMA_VERSION = 2
SCHEMA = Path(__file__).with_name("schemas") / "report.schema.json"
TIMINGS = "timings.html"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


# ------------------------------------------------------------------------------------------ runs
_run: dict | None = None            # the command this process runs (begin_run), while it runs
_touched: list[Path] = []           # the reports it wrote
_ids: list[str] = []                # the runs this process began


def toolkit_version() -> dict:
    """The toolkit's version and, in a git checkout, its commit (`-dirty` with local changes)."""
    done = runner.capture(["git", "-C", str(PROJECT_ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
                          timeout=10) if (PROJECT_ROOT / ".git").exists() else None
    return {"version": __version__, "commit": done.output.strip() if done and done.returncode == 0 else None}


def begin_run(task: str, argv: list[str], flags: dict | None = None) -> dict:
    """This process runs `./inv <task> <argv>`: what it writes into a workspace report names it."""
    global _run
    _touched.clear()
    started = time.time()
    _ids.append(time.strftime("%Y%m%d-%H%M%S", time.localtime(started)) + f"-{os.getpid()}")
    same = _ids.count(_ids[-1])     # a second run in this process within the same second
    _run = {"id": _ids[-1] + (f"-{same}" if same > 1 else ""),
            "command": redact_text(shlex.join(["./inv", task, *argv])), "task": task,
            "flags": {k: v for k, v in (flags or {}).items() if v not in (None, False, [], (), "")},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "_t0": started}
    return _run


def run_ref() -> dict | None:
    """The current run as a section or step row names it: {id, command, started}."""
    return {k: _run[k] for k in ("id", "command", "started")} if _run else None


def _note(report: Path) -> None:
    if _run is not None and report not in _touched:
        _touched.append(report)


def result_of(exit_code: int) -> str:
    return {0: "ok", 2: "bad input", 130: "interrupted", 143: "interrupted"}.get(exit_code, "failed")


def finish_run(exit_code: int) -> list[Path]:
    """The run ended with `exit_code`: its record into runs/<id>/run.json of every workspace it wrote,
    report.json's `run` set to it, report.md rendered again. Returns the records written."""
    global _run
    if _run is None:
        return []
    run, _run = _run, None
    ended = time.time()
    if not _touched:
        return []
    record = {k: v for k, v in run.items() if not k.startswith("_")} | {
        "toolkit": toolkit_version(), "ended": _now(), "seconds": round(ended - run["_t0"], 1), "exit_code": exit_code,
        "result": result_of(exit_code)}
    written = []
    for report in list(_touched):
        try:
            with _locked(report):
                data = read(report)
                mine = [dict(s, step=name) for name, s in (data.get("steps") or {}).items()
                        if (s.get("run") or {}).get("id") == record["id"]]
                ran = {s["step"] for s in mine}
                wanted = (data.get("run_steps") or {}).get(record["id"]) or []
                rows = sorted(mine + [{"step": n, "status": StepStatus.NOT_RUN, "detail": why}
                                      for n, why in wanted if n not in ran],
                              key=lambda s: STEPS.index(s["step"]) if s["step"] in STEPS else 99)
                run_record = record | {"steps": [{k: s.get(k) for k in ("step", "status", "detail", "seconds")}
                                                 for s in rows]}
                folder = report.parent / "runs" / record["id"]
                folder.mkdir(parents=True, exist_ok=True)
                _write(folder / "run.json", run_record | {"schema_version": SCHEMA_VERSION})
                _keep_logs(report.parent, folder, since=run["_t0"])
                data.pop("run_steps", None)
                data["run"] = run_record
                data["schema_version"] = SCHEMA_VERSION
                data["updated"] = _now()
                _write(report, data)
            render(report)
            written.append(folder / "run.json")
        except OSError:
            continue        # a read-only or vanished workspace: the command's own exit code stands
    _touched.clear()
    return written


KEEP_RUN_LOGS = 20     # runs whose logs stay under runs/<id>/logs/ (every run.json stays)


def _keep_logs(workspace: Path, folder: Path, since: float) -> None:
    """The logs this run wrote (logs/ holds each step's latest) copied to runs/<id>/logs/; the logs of all
    but the newest KEEP_RUN_LOGS runs removed."""
    logs = workspace / "logs"
    written = [p for p in logs.glob("*.log") if p.is_file() and p.stat().st_mtime >= since - 1] if logs.is_dir() else []
    if written:
        (folder / "logs").mkdir(exist_ok=True)
    for path in written:
        shutil.copy2(path, folder / "logs" / path.name)
    kept = sorted((p for p in (workspace / "runs").glob("*/logs") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in kept[:-KEEP_RUN_LOGS]:
        shutil.rmtree(old, ignore_errors=True)


def merge_section(report: Path, name: str, section: Any, **top: Any) -> dict:
    """Replace section `name` of report.json (and set top-level keys in `top`), atomically; a dict section
    names the run that wrote it."""
    _note(report)
    if isinstance(section, dict) and _run is not None:
        section = dict(section, run=run_ref())
    with _locked(report):
        data = read(report)
        data[name] = section
        data.update({k: v for k, v in top.items() if v is not None})
        data["schema_version"] = SCHEMA_VERSION
        data["updated"] = _now()
        _write(report, data)
    return data


def merge_steps(report: Path, steps: dict[str, dict], not_run: dict[str, str] | None = None, **top: Any) -> dict:
    """Merge step results (name -> StepResult dict) into report.json's `steps`, atomically: each row is the
    latest run of its step, with the run (command, start) and when it ended. `not_run` (name -> why):
    steps this run was asked for and did not run; they keep their earlier row (its own command and time)
    and the run's record lists them as not run."""
    _note(report)
    ended = _now()
    with _locked(report):
        data = read(report)
        merged = data.get("steps") or {}
        merged.update({name: dict(row, ended=ended, **({"run": run_ref()} if _run else {}))
                       for name, row in steps.items()})
        data["steps"] = merged
        if _run is not None and not_run:
            data.setdefault("run_steps", {})[_run["id"]] = sorted(not_run.items())
        data.update({k: v for k, v in top.items() if v is not None})
        data["schema_version"] = SCHEMA_VERSION
        data["updated"] = ended
        _write(report, data)
    return data


# ------------------------------------------------------------------------------------------ markdown
def host_section(facts: HostFacts) -> dict:
    """The `host` section of report.json."""
    data = facts.to_dict()
    data.update({"hostname": socket.gethostname(), "kernel": platform.release(),
                 "probed": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return data


def _cell(value: Any) -> str:
    return redact_text(str(value if value is not None else "")).replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: Iterable[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _checks_table(checks: list[Check]) -> list[str]:
    return _table(["check", "status", "detail", "fix"], [[c.name, c.status, c.detail, c.hint or ""] for c in checks])


def _ran_by(section: dict) -> str:
    """"by `./inv doctor` at 2026-12-03T16:40:00" for a section or row that names its run."""
    run = section.get("run") if isinstance(section, dict) else None
    when = section.get("ended") or section.get("when") or (run or {}).get("started") or ""
    return " ".join(x for x in (f"by `{run['command']}`" if run else "", f"at {when}" if when else "") if x)


def relative_paths(text: str, root: Path | None) -> str:
    """Paths as a wiki reader can use them: the workspace's relative to it, the home's as ~."""
    if root is not None:
        for where in {str(root), str(root.resolve())}:
            text = text.replace(where + "/", "").replace(where, ".")
    home = os.path.expanduser("~")
    return text.replace(home + "/", "~/") if home not in ("", "/") else text


def _host_rows(host: dict) -> list[list[Any]]:
    gpus = host.get("gpus") or []
    rows = [["hostname", host.get("hostname", "")], ["kernel", host.get("kernel", "")],
            ["CPUs", host.get("cpu_count", "")],
            ["RAM", f"{host.get('mem_available_bytes', 0) / GIB:.1f} GiB available of "
                    f"{host.get('mem_total_bytes', 0) / GIB:.1f} GiB"],
            ["disk free", f"{host.get('disk_free_bytes', 0) / GIB:.1f} GiB"],
            ["driver", gpus[0].get("driver_version", "—") if gpus else "—"],
            ["driver CUDA", host.get("driver_cuda") or "—"]]
    rows += [[f"GPU {g.get('index')}", f"{g.get('name')}, compute capability {g.get('compute_cap')}, "
                                      f"{g.get('memory_total_mib', 0)} MiB"] for g in gpus]
    if not gpus:
        rows.append(["GPUs", f"none ({host.get('gpu_error') or 'no GPU listed'})"])
    rows.append(["probed", host.get("probed", "")])
    return rows


def render_markdown(data: dict, root: Path | None = None) -> str:
    """report.md: the latest run, the host in one table, then each step's latest run (which command, when)."""
    release, profile = data.get("release", "?"), data.get("profile", "?")
    lines = [f"# vLLM {release} / profile {profile}", "",
             f"Updated {data.get('updated', '?')} by vllm-provision.", ""]
    run = data.get("run") or {}
    if run:
        toolkit = run.get("toolkit") or {}
        lines += ["## Latest run", ""]
        lines += _table(["fact", "value"], [
            ["command", f"`{run.get('command')}`"], ["result", f"{run.get('result')} (exit code {run.get('exit_code')})"],
            ["started", run.get("started")], ["ended", run.get("ended")], ["time", f"{run.get('seconds')} s"],
            ["toolkit", f"vllm-provision {toolkit.get('version')}"
                        + (f" ({toolkit['commit']})" if toolkit.get("commit") else "")],
            ["record", f"runs/{run.get('id')}/run.json"]])
        lines.append("")
    host = data.get("host") or {}
    lines += ["## Host", ""]
    lines += _table(["fact", "value"], _host_rows(host)) if host else \
        ["not probed yet (run `./inv doctor` or `./inv verify`)"]
    lines.append("")
    env = data.get("env") or {}
    tool = data.get("toolchain") or {}
    lines += ["## Toolchain", ""]
    rows = [["python", env.get("python_version") or tool.get("python")],
            ["env", f"{env.get('backend', '')} {env.get('prefix', '')}".strip()],
            ["torch", env.get("torch") or tool.get("torch")],
            ["torch CUDA", env.get("torch_cuda") or tool.get("torch_cuda")],
            ["nvcc", f"{env.get('nvcc_version') or tool.get('nvcc_version') or ''} "
                     f"{env.get('nvcc') or tool.get('nvcc') or ''}".strip()],
            ["host compiler", tool.get("compiler")],
            ["lock", env.get("lock") or tool.get("lock") or "none"]]
    rows = [r for r in rows if r[1]]
    lines += _table(["tool", "version"], rows) if rows else ["not known yet (the env step records it)"]
    lines += ["", "## Release", ""]
    steps = data.get("steps") or {}
    fetch = (steps.get("fetch") or {}).get("facts") or {}
    lines += _table(["fact", "value"], [["vLLM", release], ["profile", profile],
                                        ["archive", Path(str(fetch.get("archive", "—"))).name],
                                        ["source", fetch.get("source", "—")],
                                        ["tree sha256", fetch.get("tree_sha256", "—")]])
    lines += ["", "## Patches applied", ""]
    patch_facts = (steps.get("patch") or {}).get("facts") or {}
    applied = patch_facts.get("applied") or patch_facts.get("patches")
    why = _patch_reasons(str(release))
    if isinstance(applied, list) and applied:
        for p in applied:
            if isinstance(p, dict):
                name = p.get("file", p.get("name", "?"))
                sha = f" (sha256 {p['sha256'][:12]}…)" if p.get("sha256") else ""
                lines.append(f"- `{name}`{sha}: {p.get('why') or why.get(name, p.get('state', ''))}")
            else:
                lines.append(f"- `{p}`: {why.get(str(p), '')}")
    elif "patch" in steps:
        lines.append("none")
    else:
        lines.append("patch step not run yet")
    for p in patch_facts.get("skipped") or ():
        if isinstance(p, dict):
            lines.append(f"- not needed: `{p.get('file', '?')}` ({p.get('reason', '')})")
    lines += ["", "## Steps (the latest run of each)", ""]
    names = list(STEPS) + sorted(set(steps) - set(STEPS))
    lines += _table(["step", "status", "time", "ran", "detail"],
                    [[name, s.get("status"), f"{float(s.get('seconds') or 0):.1f} s", _ran_by(s), s.get("detail", "")]
                     if (s := steps.get(name)) else [name, StepStatus.NOT_RUN, "", "", "never run in this workspace"]
                     for name in names])
    build_facts = ((steps.get("build") or {}).get("facts")) or {}
    if build_facts.get("arch_list"):
        lines += ["", f"Build for arch {build_facts['arch_list']}"
                      + (f", {build_facts.get('max_jobs')} jobs" if build_facts.get("max_jobs") else "") + "."]
    lines += _build_units(build_facts)
    if build_facts.get("timings"):
        lines += ["", f"Every compile unit on a timeline: [{build_facts['timings']}]({build_facts['timings']})"]
    for section, title in (("doctor", "Doctor"), ("verify", "Verify")):
        sec = data.get(section) or {}
        if sec.get("checks"):
            checks = from_dicts(sec["checks"])
            n = counts(checks)
            lines += ["", f"## {title}: {'ok' if sec.get('ok') else 'FAILED'} "
                          f"({n[CheckStatus.PASS]} pass, {n[CheckStatus.WARN]} warn, "
                          f"{n[CheckStatus.FAIL]} fail, {n[CheckStatus.SKIP]} skip; "
                          f"{sec.get('when', '')})", ""]
            if sec.get("run"):
                lines += [f"Checked {_ran_by(sec)}.", ""]
            lines += _checks_table(checks)
    smoke = data.get("smoke")
    if isinstance(smoke, dict) and smoke:
        lines += ["", "## Smoke", ""]
        lines += _table(["fact", "value"], [[k, json.dumps(v) if isinstance(v, (dict, list)) else v]
                                            for k, v in smoke.items()])
    lines += _gpus_section(data.get("gpus")) + _nccl_section(data.get("nccl"))
    return relative_paths("\n".join(lines) + "\n", root)


def _gpus_section(gpus: Any) -> list[str]:
    """`./inv smoke --all-gpus`: one row a GPU, each judged against its own prediction; tensor parallelism."""
    if not isinstance(gpus, dict) or not gpus.get("per_gpu"):
        return []
    lines = ["", f"## Smoke on every GPU ({gpus.get('count')} GPUs, {gpus.get('when', '')})", ""]
    lines += _table(["GPU", "name", "GPU blocks", "predicted", "off", "verdict", "other processes", "why short / detail"],
                    [[r.get("gpu"), r.get("name"), r.get("num_gpu_blocks"), r.get("predicted_blocks"),
                      "" if r.get("off_pct") is None else f"{r['off_pct']:+.1f} %", r.get("status"),
                      ", ".join(r.get("other_processes") or []) or "none",
                      r.get("shortfall") or ("" if r.get("status") == CheckStatus.PASS else r.get("detail", ""))]
                     for r in gpus["per_gpu"]])
    tp = gpus.get("tensor_parallel") or {}
    if tp:
        shown = tp.get("reason") or (f"{tp.get('num_gpu_blocks')} GPU blocks a GPU vs {tp.get('predicted_blocks')} "
                                     f"predicted; {tp.get('detail', '')}")
        lines += ["", f"Tensor parallel ({tp.get('tensor_parallel_size', '—')} GPUs): {tp.get('status')}: {shown}"]
    return lines


def _nccl_section(nccl: Any) -> list[str]:
    """`./inv nccl` / the all-GPU smoke: the all-reduce table, nccl-tests' columns."""
    if not isinstance(nccl, dict) or "world_size" not in nccl:
        return []
    versions = nccl.get("versions") or {}
    lines = ["", f"## NCCL all-reduce: {'ok' if nccl.get('ok') else 'FAILED'} ({nccl.get('world_size')} GPUs, "
                 f"NCCL {versions.get('nccl', '?')}, torch {versions.get('torch', '?')}, "
                 f"NCCL_NVLS_ENABLE={(nccl.get('env') or {}).get('NCCL_NVLS_ENABLE', '?')})", ""]
    if nccl.get("sizes"):
        lines += _table(["size", "time (us)", "algbw (GB/s)", "busbw (GB/s)", "wrong elements"],
                        [[s.get("label"), s.get("time_us"), s.get("algbw_gbps"), s.get("busbw_gbps"),
                          s.get("wrong_elements")] for s in nccl["sizes"]])
    if nccl.get("error"):
        lines += ["", f"error: {nccl['error'].get('message')}", "", f"fix: {nccl['error'].get('hint')}"]
    return lines


def _build_units(build: dict, top: int = 5) -> list[str]:
    """The build's critical path: its slowest compile units and where they ran."""
    units = [u for u in build.get("units") or () if isinstance(u, dict)]
    if not units:
        return []
    placement = build.get("cpu_placement") or {}
    lines = ["", f"## Build: the {min(top, len(units))} slowest of {len(units)} compile units", ""]
    lines += _table(["unit", "compile", "extension", "CPUs"],
                    [[f"`{u.get('unit')}`", f"{float(u.get('seconds') or 0):.1f} s", u.get("extension", ""),
                      placement.get(u.get("unit"), placement.get("others", "any"))] for u in units[:top]])
    return lines


def _patch_reasons(release: str) -> dict[str, str]:
    """file -> why, from patches/<release>/series (empty when it cannot be read)."""
    try:
        from vllm_provision.catalog.patches import load_series
        return {p.file: p.why for p in load_series(release)}
    except Exception:  # noqa: BLE001 - a report must render even without the series
        return {}


def render(report: Path) -> Path:
    """Write report.md next to report.json from its current content; returns its path."""
    md = report.with_suffix(".md")
    # a report.json holding lone surrogates (bytes that were not UTF-8) must still render, now and later
    return atomic_write(md, render_markdown(read(report), report.parent), encoding="utf-8", errors="backslashreplace")


def record_run(report: Path, steps: dict[str, dict], not_run: dict[str, str] | None = None, **top: Any) -> None:
    """The pipeline's end-of-run hook: merge step results, then render report.md."""
    merge_steps(report, steps, not_run, **top)
    env_json = report.with_name("env.json")
    if env_json.is_file():
        try:
            merge_section(report, "env", json.loads(env_json.read_text()))
        except ValueError:
            pass
    render(report)


# ------------------------------------------------------------------------------------------ junit
def junit_xml(suite: str, cases: Iterable[dict]) -> str:
    """JUnit XML: one testcase per check/step. Case keys: name, status (pass|ok|up-to-date|warn|fail|
    failed|skip|skipped|...), detail, hint, seconds."""
    cases = list(cases)
    failing = {CheckStatus.FAIL, StepStatus.FAILED}
    skipping = {CheckStatus.SKIP, StepStatus.SKIPPED, StepStatus.NOT_RUN}
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)),
                       failures=str(sum(c["status"] in failing for c in cases)), errors="0",
                       skipped=str(sum(c["status"] in skipping for c in cases)),
                       time=f"{sum(float(c.get('seconds') or 0) for c in cases):.3f}",
                       timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"))
    for c in cases:
        tc = ET.SubElement(ts, "testcase", classname=suite, name=redact_text(c["name"]),
                           time=f"{float(c.get('seconds') or 0):.3f}")
        detail = redact_text(c.get("detail") or "")
        hint = redact_text(c.get("hint") or "")
        if c["status"] in failing:
            el = ET.SubElement(tc, "failure", message=detail, type=c["status"])
            el.text = f"{detail}\nfix: {hint}" if hint else detail
        elif c["status"] in skipping:
            ET.SubElement(tc, "skipped", message=detail)
        else:
            out = ET.SubElement(tc, "system-out")
            out.text = f"{c['status']}: {detail}" + (f"\nfix: {hint}" if hint else "")
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(path: str | Path, suite: str, checks: Iterable[Check]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, junit_xml(suite, [c.to_dict() for c in checks]), encoding="utf-8",
                        errors="backslashreplace")
