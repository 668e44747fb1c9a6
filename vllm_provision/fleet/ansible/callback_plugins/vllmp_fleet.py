"""Callback: the fleet report of a run of provision.yml, from Ansible's own event data (task results per host,
unreachable hosts, plays and batches), through vllm_provision.fleet.collect. It loads by itself beside the
playbook and acts only on the plays of provision.yml; progress lines go to stderr as `[fleet] HOST PHASE
STATUS (SECONDS s)`.
"""

import time

from ansible import context
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: vllmp_fleet
type: notification
short_description: vllm-provision's fleet report (fleet-report.json, .md, junit.xml)
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "vllmp_fleet"
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.collector = None
        self.started = {}

    def _echo(self, line):
        self._display.display("[fleet] " + line, stderr=True)

    def v2_playbook_on_play_start(self, play):
        name = play.get_name() or ""
        if not name.startswith("vllm-provision:"):
            return
        if self.collector is None:
            from vllm_provision.fleet.collect import Collector
            self.collector = Collector(self._echo)
            variables = play.get_variable_manager().extra_vars
            self.collector.facts_only = str(variables.get("vllmp_facts_only", False)).lower() in ("true", "1", "yes")
            self.collector.forks = (context.CLIARGS or {}).get("forks")
            inventory = play.get_variable_manager()._inventory
            for host in inventory.get_hosts(play.hosts):
                self.collector.host(host.name, host.vars.get("vllmp_name"))
        self.collector.play_start(name)

    def v2_runner_on_start(self, host, task):
        self.started[(host.name, task._uuid)] = time.monotonic()

    def _record(self, result, status):
        if self.collector is None:
            return
        key = (result._host.name, result._task._uuid)
        seconds = time.monotonic() - self.started.pop(key, time.monotonic())
        phase = (result._task.vars or {}).get("vllmp_phase")
        self.collector.result(result._host.name, phase, status, result._result, seconds)

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        if self.collector is None:
            return
        data = self.collector.finish()
        if data is not None:
            self._display.display("[fleet] report: %s" % (self.collector.run_dir / "fleet-report.md"), stderr=True)
