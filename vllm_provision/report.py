"""The workspace report: report.json (machines), report.md (onboarding docs), JUnit XML (CI).

`merge_section` updates one top-level section of report.json atomically (tmp file + rename, under a
small flock so doctor/verify/pipeline writers do not lose each other's sections); `render` writes
report.md from whatever report.json holds.
"""

from __future__ import annotations

import fcntl
import json
import platform
import socket
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from . import GIB
from .checks import Check, counts, from_dicts
from .host import HostFacts
from .redact import redact_text


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
    tmp = report.with_name(report.name + ".tmp")
    tmp.write_text(redact_text(json.dumps(data, indent=2, default=str)))
    tmp.replace(report)


def merge_section(report: Path, name: str, section: Any, **top: Any) -> dict:
    """Replace section `name` of report.json (and set top-level keys in `top`), atomically."""
    with _locked(report):
        data = read(report)
        data[name] = section
        data.update({k: v for k, v in top.items() if v is not None})
        data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        _write(report, data)
    return data


def merge_steps(report: Path, steps: dict[str, dict], **top: Any) -> dict:
    """Merge step results (name -> StepResult dict) into report.json's `steps`, atomically."""
    with _locked(report):
        data = read(report)
        merged = data.get("steps") or {}
        merged.update(steps)
        data["steps"] = merged
        data.update({k: v for k, v in top.items() if v is not None})
        data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
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


def render_markdown(data: dict) -> str:
    release, profile = data.get("release", "?"), data.get("profile", "?")
    lines = [f"# vLLM {release} / profile {profile}", "",
             f"Updated {data.get('updated', '?')} by vllm-provision.", ""]
    host = data.get("host") or {}
    lines += ["## Host", ""]
    if host:
        lines += _table(["fact", "value"], [
            ["hostname", host.get("hostname", "")],
            ["kernel", host.get("kernel", "")],
            ["CPUs", host.get("cpu_count", "")],
            ["RAM", f"{host.get('mem_available_bytes', 0) / GIB:.1f} GiB available of "
                    f"{host.get('mem_total_bytes', 0) / GIB:.1f} GiB"],
            ["disk free", f"{host.get('disk_free_bytes', 0) / GIB:.1f} GiB"],
            ["driver", (host.get("gpus") or [{}])[0].get("driver_version", "—") if host.get("gpus") else "—"],
            ["driver CUDA", host.get("driver_cuda") or "—"],
        ])
        lines += ["", "### GPUs", ""]
        gpus = host.get("gpus") or []
        if gpus:
            lines += _table(["#", "name", "compute capability", "memory"],
                            [[g.get("index"), g.get("name"), g.get("compute_cap"),
                              f"{g.get('memory_total_mib', 0)} MiB"] for g in gpus])
        else:
            lines.append(f"none ({host.get('gpu_error') or 'no GPU listed'})")
    else:
        lines.append("not probed yet (run `./inv doctor` or `./inv verify`)")
    lines.append("")
    env = data.get("env") or {}
    tool = data.get("toolchain") or {}
    lines += ["## Toolchain", ""]
    rows = [["python", env.get("python_version") or tool.get("python")],
            ["env", f"{env.get('backend', '')} {env.get('prefix', '')}".strip()],
            ["torch", env.get("torch") or tool.get("torch")],
            ["torch CUDA", env.get("torch_cuda") or tool.get("torch_cuda")],
            ["nvcc", f"{env.get('nvcc_version') or tool.get('nvcc_version') or ''} {env.get('nvcc') or tool.get('nvcc') or ''}".strip()],
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
    lines += ["", "## Steps", ""]
    if steps:
        order = {name: i for i, name in enumerate(("fetch", "env", "patch", "build", "verify", "smoke"))}
        lines += _table(["step", "status", "time", "detail"],
                        [[name, s.get("status"), f"{float(s.get('seconds') or 0):.1f} s", s.get("detail", "")]
                         for name, s in sorted(steps.items(), key=lambda kv: order.get(kv[0], 99))])
    else:
        lines.append("no step has run yet")
    lines += _build_units(((steps.get("build") or {}).get("facts")) or {})
    for section, title in (("doctor", "Doctor"), ("verify", "Verify")):
        sec = data.get(section) or {}
        if sec.get("checks"):
            checks = from_dicts(sec["checks"])
            n = counts(checks)
            lines += ["", f"## {title}: {'ok' if sec.get('ok') else 'FAILED'} "
                          f"({n['pass']} pass, {n['warn']} warn, {n['fail']} fail, {n['skip']} skip; "
                          f"{sec.get('when', '')})", ""]
            lines += _checks_table(checks)
    smoke = data.get("smoke")
    if isinstance(smoke, dict) and smoke:
        lines += ["", "## Smoke", ""]
        lines += _table(["fact", "value"], [[k, json.dumps(v) if isinstance(v, (dict, list)) else v]
                                            for k, v in smoke.items()])
    lines += _gpus_section(data.get("gpus")) + _nccl_section(data.get("nccl"))
    return "\n".join(lines) + "\n"


def _gpus_section(gpus: Any) -> list[str]:
    """`./inv smoke --all-gpus`: one row a GPU, each judged against its own prediction; tensor parallelism."""
    if not isinstance(gpus, dict) or not gpus.get("per_gpu"):
        return []
    lines = ["", f"## Smoke on every GPU ({gpus.get('count')} GPUs, {gpus.get('when', '')})", ""]
    lines += _table(["GPU", "name", "GPU blocks", "predicted", "off", "verdict", "other processes", "why short / detail"],
                    [[r.get("gpu"), r.get("name"), r.get("num_gpu_blocks"), r.get("predicted_blocks"),
                      "" if r.get("off_pct") is None else f"{r['off_pct']:+.1f} %", r.get("status"),
                      ", ".join(r.get("other_processes") or []) or "none",
                      r.get("shortfall") or ("" if r.get("status") == "pass" else r.get("detail", ""))]
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
        from .patches import load_series
        return {p.file: p.why for p in load_series(release)}
    except Exception:  # noqa: BLE001 - a report must render even without the series
        return {}


def render(report: Path) -> Path:
    """Write report.md next to report.json from its current content; returns its path."""
    md = report.with_suffix(".md")
    tmp = md.with_name(md.name + ".tmp")
    # a report.json holding lone surrogates (bytes that were not UTF-8) must still render, now and later
    tmp.write_text(render_markdown(read(report)), encoding="utf-8", errors="backslashreplace")
    tmp.replace(md)
    return md


def record_run(report: Path, steps: dict[str, dict], **top: Any) -> None:
    """The pipeline's end-of-run hook: merge step results, then render report.md."""
    merge_steps(report, steps, **top)
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
    failing = {"fail", "failed"}
    skipping = {"skip", "skipped", "not run"}
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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(junit_xml(suite, [c.to_dict() for c in checks]), encoding="utf-8", errors="backslashreplace")
    tmp.replace(path)
    return path
