"""Action: place a host after the kinds are known, on the controller, with no round trip. A host without a kind
fails with the toolkit's outcome (status, detail, hint); any other host joins `group` (as group_by would:
vllmp_canaries or vllmp_installers), one task instead of two."""

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        outcome = dict(self._task.args.get("outcome") or {})
        if outcome:
            return {"failed": True, "msg": outcome.get("detail"), "changed": False, "vllmp": outcome}
        group = self._task.args.get("group")
        if not group:
            return {"changed": False}
        return {"changed": False, "add_group": group, "parent_groups": ["all"]}
