"""Progress on long steps: a heartbeat line while a real child runs (no terminal), a live line under a
pseudo-terminal, ninja's `[N/M]`, the installers' output, the ETA (plan first, then the measured rate),
and -v/--verbose streaming a tool's own output."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from conftest import ROOT

from vllm_provision.core import runner, ui
from vllm_provision.core.progress import Progress, ninja_status
from vllm_provision.envs.common import install_progress

# A "build" through the one command runner: a real child prints ninja's status lines, one unit every 0.6 s.
BUILD = r"""
import sys
from vllm_provision.core import runner
from vllm_provision.core.progress import progress

child = ("import time\n"
         "for i in range(1, 6):\n"
         "    time.sleep(0.6)\n"
         "    print(f'[{i}/5] Building CUDA object csrc/unit{i}.cu.o', flush=True)\n")
with progress("compiling", unit="units", estimate_s=600, step="build") as p:
    runner.run([sys.executable, "-c", child], what="ninja", echo=p.feed_ninja)
print("CHILD-ENDED", file=sys.stderr, flush=True)
"""


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "VLLMP_VERBOSE")}
    return env | {"PYTHONPATH": str(ROOT)} | extra


def test_without_a_terminal_heartbeat_lines_appear_while_the_child_runs(tmp_path):
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", BUILD], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(VLLMP_HEARTBEAT_S="0.5"))
    seen: list[tuple[float, str]] = []
    for line in proc.stderr:
        seen.append((time.monotonic() - started, line.rstrip("\n")))
    assert proc.wait(timeout=60) == 0
    lines = [line for _, line in seen]
    ended = next(t for t, line in seen if line == "CHILD-ENDED")
    assert lines[0].startswith("[build] compiling: 0 units, 0 s elapsed, about 10 min 00 s left (planned)")
    beats = [(t, line) for t, line in seen[1:] if line.startswith("[build] compiling: ") and " elapsed" in line]
    # lines while the child still had units to compile, each with the count so far and the measured ETA
    midway = [(t, line) for t, line in beats if "/5 units" in line and "5/5" not in line]
    assert len(midway) >= 3, lines
    assert all(t < ended - 0.5 for t, _ in midway[:2])
    assert any("left" in line and "(planned)" not in line for _, line in midway)
    assert lines[-2].startswith("[build] compiling: 5/5 units in ")
    assert not any("\x1b[" in line for line in lines)          # plain text: no terminal codes in a CI log


def test_on_a_terminal_a_live_line_is_redrawn_then_a_closing_line_stays(tmp_path):
    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", BUILD], cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=sub,
                            stderr=sub, env=_env(TERM="xterm-256color", COLUMNS="160", VLLMP_HEARTBEAT_S="0.5"))
    os.close(sub)
    out = b""
    while True:
        ready, _, _ = select.select([main], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(main, 65536)
        except OSError:        # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=60) == 0
    text = out.decode(errors="replace")
    assert "[build] compiling" in text and "\x1b[" in text       # drawn with terminal codes, in place
    assert "3/5 units" in text and "elapsed" in text              # redrawn as the count moves
    assert "[build] compiling: 5/5 units in " in text
    assert "[build] compiling: 2/5 units, " not in text       # no heartbeat lines of the plain form
    assert text.count("compiling: 5/5 units in ") == 1


def test_ninja_status_lines_are_parsed():
    assert ninja_status("[12/400] Building CUDA object csrc/attention.cu.o") == (12, 400)
    assert ninja_status("  [1/3] c++ -c x.cpp") == (1, 3)
    assert ninja_status("FAILED: x.o") is None and ninja_status("[x/3] no") is None


def test_the_eta_is_the_plans_estimate_until_a_rate_is_measured():
    now = [100.0]
    p = Progress("compiling", 400, unit="units", estimate_s=500, clock=lambda: now[0])
    now[0] += 100
    assert p.remaining() == (400.0, "planned")
    assert p.line() == "compiling: 0/400 units, 1 min 40 s elapsed, about 6 min 40 s left (planned)"
    p.update(done=100)
    assert p.remaining() == (300.0, "measured")
    assert p.line() == "compiling: 100/400 units, 1 min 40 s elapsed, about 5 min 00 s left"
    late = Progress("compiling", None, unit="units", estimate_s=60, clock=lambda: now[0])
    now[0] += 90
    assert late.line() == "compiling: 0 units, 1 min 30 s elapsed, over the plan's 1 min 00 s"


# Real output of `uv pip install` (0.13, no terminal) and of `pip install -r lock` (24.x, no terminal).
UV_OUTPUT = """Using Python 3.11.7 environment at: envs/1
Resolved 3 packages in 218ms
Downloading numpy (16.1MiB)
Downloading torch (846.9MiB)
 Downloaded numpy
Prepared 3 packages in 1.82s
Installed 3 packages in 298ms
 + idna==3.20
"""
PIP_OUTPUT = """Collecting idna==3.20 (from -r envs/locks/0.2.2/seed-py3.11.txt (line 3))
  Downloading idna-3.20-py3-none-any.whl (70 kB)
Collecting numpy==2.4.6 (from -r envs/locks/0.2.2/seed-py3.11.txt (line 9))
  Downloading numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.whl (16.1 MB)
Installing collected packages: numpy, idna
"""


def test_installer_output_moves_the_count():
    uv = Progress("installing", unit="bytes")
    read = install_progress("uv", uv)
    for line in UV_OUTPUT.splitlines()[:5]:
        read(line)
    assert uv.total == int(16.1 * 2 ** 20) + int(846.9 * 2 ** 20) and uv.done == int(16.1 * 2 ** 20)
    assert uv.counts() == "16.1 MiB/863.0 MiB" and uv.doing == "downloading torch"
    pip = Progress("installing", 42, unit="packages")
    read = install_progress("pip", pip)
    for line in PIP_OUTPUT.splitlines():
        read(line)
    assert (pip.done, pip.counts(), pip.doing) == (2, "2/42 packages", "installing")


def test_verbose_streams_the_tools_own_output_and_only_then(monkeypatch, capsys, tmp_path):
    argv = [sys.executable, "-c", "print('warning: from the tool itself')"]
    runner.run(argv, log=tmp_path / "quiet.log")
    assert "from the tool itself" not in capsys.readouterr().err
    monkeypatch.setattr(ui, "_verbose", True)
    runner.run(argv, log=tmp_path / "loud.log")
    assert "  | warning: from the tool itself" in capsys.readouterr().err
    runner.capture(argv)                        # quick probes stay quiet even then
    assert "from the tool itself" not in capsys.readouterr().err
    assert "from the tool itself" in (tmp_path / "loud.log").read_text()


def test_the_long_tasks_take_verbose():
    done = subprocess.run([sys.executable, "-m", "invoke", "provision", "--help"], cwd=ROOT, capture_output=True,
                          text=True)
    assert "-v, --verbose" in done.stdout


def test_the_progress_variables_are_not_taken_for_unknown_settings(isolated):
    env = dict(os.environ, VLLMP_HEARTBEAT_S="5", VLLMP_VERBOSE="1")
    done = subprocess.run([sys.executable, "-m", "invoke", "plan", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
