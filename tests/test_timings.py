"""The timings page: every compile unit on a timeline, jobs over time, the critical path, the longest
units; from a real recorded H200 build and from a real ninja run's .ninja_log."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from vllm_provision import report
from vllm_provision.core import timings
from vllm_provision.core.progress import ninja_status

H200 = Path(__file__).parent / "fixtures" / "gpu" / "h200" / "artifacts" / "builder-report.json"


def test_the_page_of_a_recorded_h200_build(tmp_path):
    facts = json.loads(H200.read_text())["steps"]["build"]["facts"]
    units, placed = timings.units_from_facts(facts["units"])
    assert len(units) == 15 and not placed
    page = timings.render_html(units, title="vLLM 0.2.2 for 9.0", estimate_s=600, jobs=facts["max_jobs"],
                               note="start times not recorded")
    assert page.count("<rect ") == 15                                     # one bar a unit
    for unit in facts["units"]:
        assert f"<code>{unit['unit']}</code>" in page or unit["unit"][-52:] in page
    longest = re.findall(r"<tr><td><code>([^<]+)</code></td><td>([^<]*)</td><td>([\d.]+) s", page)
    assert longest[0] == ("csrc/attention/attention_kernels.cu", "vllm.attention_ops", "80.1")
    assert [float(s) for _, _, s in longest] == sorted((float(s) for _, _, s in longest), reverse=True)
    assert "<tr><th>most jobs at once</th><td>15 of 16</td></tr>" in page    # every unit at once on 16 jobs
    assert "<tr><th>wall time</th><td>1 min 20 s</td></tr>" in page
    assert "<tr><th>plan&#x27;s estimate</th><td>10 min 00 s</td></tr>" in page
    assert "<tr><th>peak memory (the largest process)</th><td>not recorded</td></tr>" in page
    path = page.split("<h2>Critical path</h2>")[1].split("</p>")[0]
    assert "csrc/attention/attention_kernels.cu</code> (80.1 s)" in path
    assert not re.search(r"(src|href)=\"?https?:", page)                 # nothing fetched to view it


# the test extra's ninja wheel (beside this Python), else the host's
NINJA = next((n for n in (str(Path(sys.executable).parent / "ninja"), shutil.which("ninja")) if n and Path(n).is_file()),
             None)


def test_the_page_of_a_real_ninja_build_and_its_progress_lines(tmp_path):
    assert NINJA, "ninja is in the test extra (pyproject.toml)"
    # a unit that waits for another (the critical path) beside two independent ones, two jobs at once
    (tmp_path / "build.ninja").write_text(
        "rule work\n  command = sleep $secs && touch $out\n"
        "build a.o: work\n  secs = 0.8\n"
        "build b.o: work\n  secs = 0.2\n"
        "build c.o: work\n  secs = 0.3\n"
        "build lib.so: work a.o\n  secs = 0.4\n")
    out = subprocess.run([NINJA, "-j", "2"], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    statuses = [s for s in map(ninja_status, out.splitlines()) if s]
    assert statuses[-1] == (4, 4) and len(statuses) == 4
    units = timings.read_ninja_log((tmp_path / ".ninja_log").read_text(), group="lib")
    assert sorted(u.target for u in units) == ["a.o", "b.o", "c.o", "lib.so"]
    assert max(n for _, n in timings.concurrency(units)) == 2
    assert [u.target for u in timings.critical_path(units)] == ["a.o", "lib.so"]
    name = timings.write_page(tmp_path / timings.PAGE, units, title="a CMake-era build", peak_memory_bytes=3 << 30)
    page = (tmp_path / name).read_text()
    assert page.count('class="critical"') == 2 and "<code>a.o</code>" in page and "4 unit" not in page
    assert "<tr><th>compile units</th><td>4</td></tr>" in page
    assert "<tr><th>peak memory (the largest process)</th><td>3.0 GiB</td></tr>" in page


def test_report_md_links_the_page_of_the_latest_build():
    data = {"steps": {"build": {"status": "ok", "detail": "built", "seconds": 90.0,
                                "facts": {"arch_list": "9.0", "max_jobs": 16, "timings": "timings.html"}}}}
    md = report.render_markdown(data)
    assert "Every compile unit on a timeline: [timings.html](timings.html)" in md
    assert "Build for arch 9.0, 16 jobs." in md


def test_the_build_step_counts_and_places_the_units_of_its_ninja_dirs(tmp_path):
    import time

    from vllm_provision.steps.build import _unit_times, tmp_root, units_done
    src = tmp_path / "src"
    (src / "csrc").mkdir(parents=True)
    for name in ("slow.cu", "fast.cpp"):
        (src / "csrc" / name).write_text("x\n")
    temp = tmp_root(src) / "temp-vllm.ext"
    (temp / "csrc").mkdir(parents=True)
    # the shape torch's cpp_extension writes: absolute outputs and inputs
    (temp / "build.ninja").write_text(
        "rule slow\n  command = sleep 0.6 && cp $in $out\nrule fast\n  command = cp $in $out\n"
        f"build {temp}/csrc/slow.o: slow {src}/csrc/slow.cu\nbuild {temp}/csrc/fast.o: fast {src}/csrc/fast.cpp\n")
    assert units_done(tmp_root(src)) == 0
    started_at = time.time()
    time.sleep(0.3)
    subprocess.run([NINJA, "-j", "2"], cwd=temp, check=True, capture_output=True)
    assert units_done(tmp_root(src)) == 2
    units = _unit_times(src, [{"name": "vllm.ext"}], started_at)
    slow = next(u for u in units if u["unit"] == "csrc/slow.cu")
    # on the compile's clock: started after the 0.3 s pause, lasted the rule's 0.6 s sleep (upper bounds loose
    # for a busy CI host; they catch a unit placed on the wrong clock, which is off by hours)
    assert 0.2 < slow["start"] < 30 and 0.5 < slow["end"] - slow["start"] < 30
    placed, recorded = timings.units_from_facts(units)
    assert recorded and {u.group for u in placed} == {"vllm.ext"}


def test_the_docs_example_is_the_page_of_the_recorded_h200_build(tmp_path):
    """docs/timings-h200.html is what `python -m vllm_provision.core.timings` makes of the H200 build's report."""
    out = tmp_path / "page.html"
    done = subprocess.run([sys.executable, "-m", "vllm_provision.core.timings", str(H200), str(out)],
                          cwd=Path(__file__).parent.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert "<title>vLLM 0.2.2 for 9.0: build timings</title>" in page and "every bar is drawn from 0" in page
    assert page == (Path(__file__).parent.parent / "docs" / "timings-h200.html").read_text()
