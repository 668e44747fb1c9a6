"""The fleet playbook, shipped with the toolkit: `ansible-playbook -i INVENTORY PLAYBOOK` runs it directly, and
`./inv fleet` runs the same file. Its library/, module_utils/, action_plugins/, filter_plugins/ and
callback_plugins/ sit beside it, where Ansible finds them."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
PLAYBOOK = HERE / "provision.yml"
