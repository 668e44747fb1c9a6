"""The build's timings page: every compile unit on a timeline, jobs running over time, the critical path,
the longest units (cargo's `--timings` page is the model). One self-contained HTML file (inline SVG, no
script, nothing fetched), written next to report.md and linked from it.

Input is a list of units (target, start, end, group) in seconds: from the build step's facts (0.2.2: each
extension's ninja log, placed on one clock) or from any `.ninja_log` (`read_ninja_log`, CMake-era builds):

    from vllm_provision.core import timings
    units = timings.read_ninja_log(Path("build/.ninja_log").read_text())
    timings.write_page(workspace / "timings.html", units, title="vLLM 0.6 / 9.0", estimate_s=500)

From the command line, for a recorded build or any ninja build directory's log:

    python -m vllm_provision.core.timings .provision/0.2.2-pypi-cu13/report.json timings.html
    python -m vllm_provision.core.timings build/.ninja_log timings.html
"""

from __future__ import annotations

import hashlib
import html
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vllm_provision.core.files import atomic_write
from vllm_provision.core.ui import duration

PAGE = "timings.html"


@dataclass(frozen=True)
class Unit:
    target: str
    start: float        # seconds since the build started
    end: float
    group: str = ""     # the extension or CMake target it belongs to

    @property
    def seconds(self) -> float:
        return self.end - self.start


def read_ninja_log(text: str, group: str = "") -> list[Unit]:
    """The units of a `.ninja_log` (v5: start ms, end ms, mtime, output, hash; a later line for the same
    output is a rebuild and wins), in order of start."""
    last: dict[str, Unit] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 4 and parts[0].isdigit() and parts[1].isdigit():
            last[parts[3]] = Unit(parts[3], int(parts[0]) / 1000, int(parts[1]) / 1000, group)
    return sorted(last.values(), key=lambda u: (u.start, u.target))


def units_from_facts(rows: Iterable[dict]) -> tuple[list[Unit], bool]:
    """The build step's `units` facts -> units; and whether their start times were recorded (builds before
    the timings page recorded durations only: those units are drawn from 0, as the 0.2.2 driver starts
    every unit at once when the jobs allow)."""
    units, placed = [], True
    for r in rows:
        seconds = float(r.get("seconds") or 0)
        if "start" in r and "end" in r:
            start, end = float(r["start"]), float(r["end"])
        else:
            start, end, placed = 0.0, seconds, False
        units.append(Unit(str(r.get("unit") or r.get("target") or "?"), start, end, str(r.get("extension") or "")))
    return sorted(units, key=lambda u: (u.start, u.target)), placed


def concurrency(units: Sequence[Unit]) -> list[tuple[float, int]]:
    """(time, jobs running from then on), at every start and end."""
    events = sorted([(u.start, 1) for u in units] + [(u.end, -1) for u in units], key=lambda e: (e[0], e[1]))
    out: list[tuple[float, int]] = []
    running = 0
    for t, change in events:
        running += change
        if out and out[-1][0] == t:
            out[-1] = (t, running)
        else:
            out.append((t, running))
    return out


def critical_path(units: Sequence[Unit], slack: float = 1.0) -> list[Unit]:
    """The chain that kept the build from ending sooner: the unit that ended last, then, back in time, the
    unit that ended just before it started (within `slack` s: a job slot it waited for), and so on."""
    if not units:
        return []
    chain = [max(units, key=lambda u: (u.end, u.seconds))]
    while True:
        head = chain[-1]
        before = [u for u in units if u not in chain and head.start - slack <= u.end <= head.start + 1e-6]
        if not before:
            break
        chain.append(max(before, key=lambda u: (u.end, u.seconds)))
    return list(reversed(chain))


def _colour(group: str) -> str:
    hue = int(hashlib.sha256(group.encode()).hexdigest()[:4], 16) % 360
    return f"hsl({hue}, 55%, 60%)"


def render_html(units: Sequence[Unit], *, title: str, estimate_s: float | None = None,
                peak_memory_bytes: int | None = None, jobs: int | None = None, note: str = "") -> str:
    """The page (see the module's docstring)."""
    esc = html.escape
    units = sorted(units, key=lambda u: (u.start, u.target))
    begin = min((u.start for u in units), default=0.0)
    wall = max((u.end for u in units), default=0.0) - begin
    cpu = sum(u.seconds for u in units)
    steps = concurrency(units)
    peak_jobs = max((n for _, n in steps), default=0)
    path = critical_path(units)
    on_path = set(path)
    width, label_w, row_h = 1100, 360, 18
    span = max(wall, 1e-9)

    def x(t: float) -> float:
        return label_w + (t - begin) / span * (width - label_w - 20)

    facts = [("compile units", str(len(units))), ("wall time", duration(wall)),
             ("compile time, all units", f"{duration(cpu)} (parallelism {cpu / span:.1f})" if wall else "—"),
             ("most jobs at once", f"{peak_jobs}" + (f" of {jobs}" if jobs else "")),
             ("critical path", f"{len(path)} unit(s), {duration(sum(u.seconds for u in path))}"),
             ("plan's estimate", f"{duration(estimate_s)}" if estimate_s else "none"),
             ("peak memory (the largest process)",
              f"{peak_memory_bytes / 2 ** 30:.1f} GiB" if peak_memory_bytes else "not recorded")]
    step_s = next(s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1200, 3600, 10 ** 9) if span / s <= 12)
    axis = "".join(f'<line x1="{x(begin + t):.1f}" y1="0" x2="{x(begin + t):.1f}" y2="{{h}}" class="grid"/>'
                   f'<text x="{x(begin + t):.1f}" y="{{h2}}" class="tick">{duration(t)}</text>'
                   for t in range(0, int(span) + 1, step_s))
    rows = []
    for i, u in enumerate(units):
        y = i * row_h + 4
        cls = ' class="critical"' if u in on_path else ""
        rows.append(f'<g><title>{esc(u.target)} ({esc(u.group) or "no group"}): {u.seconds:.1f} s, '
                    f'{u.start - begin:.1f} s to {u.end - begin:.1f} s</title>'
                    f'<text x="{label_w - 6}" y="{y + 12}" class="label">{esc(u.target[-52:])}</text>'
                    f'<rect x="{x(u.start):.1f}" y="{y}" width="{max(1.0, x(u.end) - x(u.start)):.1f}" '
                    f'height="{row_h - 4}" fill="{_colour(u.group)}"{cls}/>'
                    f'<text x="{x(u.end) + 4:.1f}" y="{y + 12}" class="secs">{u.seconds:.1f} s</text></g>')
    timeline_h = len(units) * row_h + 8
    timeline = (f'<svg class="timeline" width="{width}" height="{timeline_h + 20}" role="img" '
                f'aria-label="compile units over time">{axis.format(h=timeline_h, h2=timeline_h + 14)}'
                + "".join(rows) + "</svg>")
    chart_h = 120
    top = max(peak_jobs, 1)
    points = [f"{x(begin):.1f},{chart_h}"]
    level = 0
    for t, n in steps:
        points += [f"{x(t):.1f},{chart_h - level / top * (chart_h - 10):.1f}",
                   f"{x(t):.1f},{chart_h - n / top * (chart_h - 10):.1f}"]
        level = n
    points.append(f"{x(begin + span):.1f},{chart_h}")
    jobs_chart = (f'<svg class="jobs" width="{width}" height="{chart_h + 20}" role="img" aria-label="jobs running">'
                  f'{axis.format(h=chart_h, h2=chart_h + 14)}'
                  f'<text x="{label_w - 6}" y="14" class="label">{top} jobs</text>'
                  f'<text x="{label_w - 6}" y="{chart_h}" class="label">0</text>'
                  f'<polygon points="{" ".join(points)}" class="area"/></svg>')
    longest = sorted(units, key=lambda u: -u.seconds)[:10]
    table = "".join(f"<tr><td><code>{esc(u.target)}</code></td><td>{esc(u.group)}</td>"
                    f"<td>{u.seconds:.1f} s</td><td>{u.start - begin:.1f} s</td><td>{u.end - begin:.1f} s</td>"
                    f"<td>{'yes' if u in on_path else ''}</td></tr>" for u in longest)
    chain = " → ".join(f"<code>{esc(u.target)}</code> ({u.seconds:.1f} s)" for u in path)
    summary = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    legend = "".join(f'<span class="key" style="background:{_colour(g)}"></span>{esc(g or "no group")} '
                     for g in sorted({u.group for u in units}))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}: build timings</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; }} th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
.label {{ text-anchor: end; font: 11px monospace; }} .secs, .tick {{ font: 10px sans-serif; fill: #555; }}
.grid {{ stroke: #eee; }} .critical {{ stroke: #c00; stroke-width: 2; }} .area {{ fill: #7aa6d8; stroke: #36c; }}
.key {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; vertical-align: middle; }}
</style></head><body>
<h1>{esc(title)}: build timings</h1>
<table class="summary">{summary}</table>
{f'<p class="note">{esc(note)}</p>' if note else ''}
<h2>Compile units</h2><p>One bar a unit, from its start to its end; outlined in red: the critical path. {legend}</p>
{timeline}
<h2>Jobs running</h2>
{jobs_chart}
<h2>Critical path</h2><p>{chain or 'none'}</p>
<h2>Longest units</h2>
<table class="longest"><tr><th>unit</th><th>target</th><th>time</th><th>start</th><th>end</th><th>critical</th></tr>{table}</table>
</body></html>
"""  # noqa: E501 - two lines of the page run long; docs/timings-h200.html is this page byte for byte


def write_page(path: Path, units: Sequence[Unit], **kwargs) -> str:
    """Write the page to `path` (atomically); returns its name, for report.json's link."""
    atomic_write(path, render_html(units, **kwargs), encoding="utf-8")
    return path.name


def page_of(source: Path) -> tuple[list[Unit], dict]:
    """The units and page settings of a report.json (its build's facts) or of a .ninja_log."""
    text = source.read_text(errors="replace")
    if not text.lstrip().startswith("{"):
        return read_ninja_log(text), {"title": source.parent.name or source.name}
    data = json.loads(text)
    facts = ((data.get("steps") or {}).get("build") or {}).get("facts") or {}
    units, placed = units_from_facts(facts.get("units") or ())
    title = f"vLLM {data.get('release', '?')} for {facts.get('arch_list', '?')}"
    return units, {"title": title, "jobs": facts.get("max_jobs"), "peak_memory_bytes": facts.get("peak_process_rss_bytes"),
                   "note": "" if placed else "This build recorded each unit's duration, not its start: every bar is "
                                             "drawn from 0, as the driver starts every unit at once when the jobs allow."}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m vllm_provision.core.timings REPORT.json|.ninja_log OUT.html", file=sys.stderr)
        return 2
    units, settings = page_of(Path(argv[0]))
    write_page(Path(argv[1]), units, **settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
