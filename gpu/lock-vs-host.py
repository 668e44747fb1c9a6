"""Which of a lock's pins the host interpreter already has: run with the host's python3 on the GPU host
(which has no package index) to say which locked versions a host-torch run there also exercises.
Prints JSON: {lock, python, same: {name: version}, differ: {name: [locked, host]}, absent: [name]}."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import sys
from pathlib import Path

lock = Path(sys.argv[1] if len(sys.argv) > 1 else "envs/locks/0.2.2/pypi-cu13-py3.12.txt")
pins = dict(re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", lock.read_text(), re.M))
host = {}
for dist in metadata.distributions():
    host[re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()] = dist.version
same, differ, absent = {}, {}, []
for name, version in sorted(pins.items()):
    have = host.get(re.sub(r"[-_.]+", "-", name).lower())
    if have is None:
        absent.append(name)
    elif have.split("+")[0] == version:
        same[name] = have
    else:
        differ[name] = [version, have]
print(json.dumps({"lock": str(lock), "python": sys.version.split()[0], "same": same, "differ": differ,
                  "absent": absent}, indent=1))
