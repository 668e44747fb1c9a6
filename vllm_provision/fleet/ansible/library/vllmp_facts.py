#!/usr/bin/python
"""Ansible module: the facts of a GPU host that decide which wheel it can share (its kind), as ansible_facts
vllmp_host. Runs on the host with its python3, stdlib only (Ansible's `setup` knows neither the GPUs, nor
glibc, nor gcc, nor which python3.X have venv). Raw command outputs come back as they are; the toolkit parses
them on the controller (host.parse_gpu_csv), so one parser serves local and remote runs.

A failing or hung nvidia-smi fails the host here, with the toolkit's status, detail and hint under `vllmp`.
"""

import os
import platform
import shutil
import sys
import sysconfig
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vllmp_group import ConnectionLost, capture

DOCUMENTATION = """
module: vllmp_facts
short_description: vllm-provision's facts of a GPU host (GPUs, Pythons with venv, platform, glibc, gcc, torch)
options:
  gpu_query: {type: str, required: true, description: nvidia-smi --query-gpu fields}
  host_torch_python: {type: str, description: with a host-torch profile, the python3 whose torch is read}
  timeout: {type: float, default: 120, description: seconds for the whole probe; a hung command is ended}
"""


class TimedOut(Exception):
    pass


def main():
    module = AnsibleModule(argument_spec={"gpu_query": {"type": "str", "required": True},
                                          "host_torch_python": {"type": "str"},
                                          "timeout": {"type": "float", "default": 120}},
                           supports_check_mode=True)
    deadline = time.monotonic() + module.params["timeout"]

    def command(argv, limit=60):
        rc, output, timed_out = capture(argv, min(limit, deadline - time.monotonic()))
        if timed_out:
            raise TimedOut(" ".join(argv[:2]))
        return rc, output

    def fail(status, detail, hint, exit_code=None, **facts):
        module.fail_json(msg=detail, vllmp={"status": status, "detail": detail, "hint": hint,
                                            "exit_code": exit_code}, **facts)

    try:
        interpreters = {}
        for minor in range(6, 16):
            path = shutil.which(f"python3.{minor}")
            if path and command([path, "-c", "import venv"], 20)[0] == 0:
                interpreters[f"3.{minor}"] = path
        facts = {
            "python": {"version": platform.python_version(), "executable": sys.executable},
            "interpreters": interpreters,
            "platform": sysconfig.get_platform().replace("-", "_").replace(".", "_"),
            "glibc": (os.confstr("CS_GNU_LIBC_VERSION") or " ").split(" ")[-1] if hasattr(os, "confstr") else "",
            "gcc": None, "nvidia_smi": None, "torch": None, "cpu_count": os.cpu_count(),
            "home": os.path.expanduser("~"),
        }
        # the toolkit's host-compiler rule (host.host_compiler)
        cc = os.environ.get("CUDAHOSTCXX") or os.environ.get("CXX") or os.environ.get("CC") or "g++"
        rc, output = command([cc, "-dumpfullversion", "-dumpversion"], 20)
        if rc == 0:
            facts["gcc"] = output.strip()
        smi = shutil.which("nvidia-smi")
        if smi:
            rc, output = command([smi, "--query-gpu=" + module.params["gpu_query"], "--format=csv,noheader,nounits"])
            facts["nvidia_smi"] = {"rc": rc, "stdout": output, "path": smi}
            if rc != 0:
                tail = (output.strip().splitlines() or ["no output"])[-1]
                fail("failed", f"nvidia-smi failed with exit code {rc}: {tail}",
                     "fix the GPU driver on the host (`nvidia-smi` must list the GPUs); the host cannot be "
                     "matched to a kind without them", rc, ansible_facts={"vllmp_host": facts})
        python = module.params["host_torch_python"]
        if python:
            code = ("import json, torch; print(json.dumps({'version': torch.__version__, 'cuda': torch.version.cuda, "
                    "'cxx11_abi': bool(torch._C._GLIBCXX_USE_CXX11_ABI)}))")
            rc, output = command([shutil.which(python) or python, "-c", code], 300)
            lines = output.strip().splitlines() or [f"exit code {rc}"]
            facts["torch"] = {"error": lines[-1]} if rc != 0 else module.from_json(lines[-1])
    except TimedOut as exc:
        fail("timed out", f"the facts probe ran past {module.params['timeout']:g} s ({exc} hung) and was stopped",
             "run `nvidia-smi` on the host: a hang there is a driver or GPU "
             "fault; or raise fleet.facts_timeout", 124)
    except ConnectionLost:
        fail("failed", "the SSH session ended during the facts probe", "rerun the fleet")
    module.exit_json(changed=False, ansible_facts={"vllmp_host": facts})


if __name__ == "__main__":
    main()
