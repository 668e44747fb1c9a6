"""Filters that bring the toolkit's own logic into the playbook, on the controller: its settings, the kinds of
the hosts (from their vllmp_facts), a new report directory and the toolkit's tarball for the hosts."""

from vllm_provision.fleet import plays


class FilterModule:
    def filters(self):
        return {"vllmp_prepare": plays.prepare, "vllmp_settings": plays.settings, "vllmp_kinds": plays.kinds,
                "vllmp_base64": plays.base64_file}
