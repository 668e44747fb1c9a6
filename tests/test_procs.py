"""The toolkit's /proc reader (core/procs.py) and the smoke scripts' own copy (smoke/procgroup.py, which may
not import the toolkit) answer alike about a real process group: running, a zombie only, gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import ROOT

from vllm_provision.core import procs

sys.path.insert(0, str(ROOT / "smoke"))
import procgroup  # noqa: E402


def _until(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_toolkit_and_the_smoke_scripts_read_a_process_group_alike():
    # a leader in a group of its own that forks a child and exits: the group runs on in the child, then is gone
    leader = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1.5)'])\n"
                               "time.sleep(0.5)"], process_group=0)
    group = procgroup.Group()
    group.pgid = leader.pid
    me = procs.read(os.getpid())
    assert me is not None and me.alive and me.pid == os.getpid() and me.ppid == os.getppid()
    assert procs.read(leader.pid).pgrp == leader.pid
    assert procs.group_running(leader.pid) and group.running()
    leader.wait()
    # the leader reaped: its child still runs in the group
    assert procs.group_running(leader.pid) is group.running() is True
    assert _until(lambda: not procs.group_running(leader.pid), 15)
    assert group.running() is False
    assert procs.read(leader.pid) is None


def test_a_group_of_only_a_zombie_is_not_running_for_either():
    ended = subprocess.Popen(["true"], process_group=0)      # not waited for: a zombie of this process
    group = procgroup.Group()
    group.pgid = ended.pid
    try:
        assert _until(lambda: procs.read(ended.pid).state == "Z")
        assert procs.group_running(ended.pid) is group.running() is False
    finally:
        ended.wait()


def test_the_table_holds_every_process_with_its_memory_and_start():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        table = procs.table()
        assert sleeper.pid in table and os.getpid() in table
        mine = table[os.getpid()]
        assert mine.comm.startswith("python") and mine.rss_bytes > 10 * 2**20 and mine.start.isdigit()
        assert table[sleeper.pid].comm == "sleep" and table[sleeper.pid].ppid == os.getpid()
        assert procs.read(sleeper.pid).start == table[sleeper.pid].start
    finally:
        sleeper.kill()
        sleeper.wait()
    assert procs.read(sleeper.pid) is None
