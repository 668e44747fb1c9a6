"""Action: end a host's part in the fleet run with the toolkit's outcome (status, detail, hint), decided on the
controller: `failed` fails the host, `skipped` skips it (its kind's canary did not pass). Nothing runs on it."""

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        outcome = dict(self._task.args.get("outcome") or {})
        if not outcome:
            return {"changed": False, "msg": "no outcome"}
        if outcome.get("status") == "skipped":
            return {"skipped": True, "skip_reason": outcome.get("detail"), "changed": False, "vllmp": outcome}
        return {"failed": True, "msg": outcome.get("detail"), "changed": False, "vllmp": outcome}
