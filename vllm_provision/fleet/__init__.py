"""Fleet runs on Ansible: ansible/provision.yml (facts -> kinds -> per kind a canary that builds the wheel once
-> the other hosts install it in batches) with the toolkit's modules, filters and report callback beside it.
This package holds the toolkit's side: plays.py (settings, kinds, the toolkit's tarball, used by the filters),
collect.py (the report from Ansible's events), engine.py (`./inv fleet` runs ansible-playbook), inventory.py
(hosts files, --limit)."""
