#!/usr/bin/python
"""Ansible module: one toolkit call on a fleet host (`./inv wheel --push --json` or `./inv provision
--require-cache --json`), in the toolkit's directory, as its own process group that ends whole on timeout or
when the controller goes away. The toolkit's last stdout line is its JSON result; with `bundle`, the host's
workspace report (report.json, report.md, logs/, found where the toolkit's JSON says) and the call's output
are packed into one tarball for `fetch`.

`toolkit`: the toolkit's tarball (base64), unpacked into `chdir` first: the upload travels with the first call
on a host, in the module's own arguments, rather than as a `copy` task (three more round trips per host).
"""

import base64
import io
import json
import os
import shlex
import tarfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vllmp_group import ConnectionLost, run_group

DOCUMENTATION = """
module: vllmp_toolkit
short_description: run vllm-provision's ./inv on a host, read its JSON result
options:
  command: {type: str, required: true, description: how the toolkit runs there, e.g. ./inv}
  args: {type: list, elements: str, required: true}
  chdir: {type: str, required: true, description: the toolkit's directory on the host}
  environment: {type: dict, default: {}, description: VLLMP_* settings for the toolkit}
  timeout: {type: float, required: true}
  phase: {type: str, required: true, description: wheel or install (names the log and the messages)}
  toolkit: {type: str, description: the toolkit's tarball (base64) to unpack into chdir first}
  bundle: {type: bool, default: false}
"""


def last_json(text):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def main():
    module = AnsibleModule(argument_spec={
        "command": {"type": "str", "required": True}, "args": {"type": "list", "elements": "str", "required": True},
        "chdir": {"type": "str", "required": True}, "environment": {"type": "dict", "default": {}},
        "timeout": {"type": "float", "required": True}, "phase": {"type": "str", "required": True},
        "toolkit": {"type": "str", "no_log": True}, "bundle": {"type": "bool", "default": False}})
    p = module.params
    home = os.path.expanduser("~")
    chdir = os.path.join(home, os.path.expanduser(p["chdir"]))
    phase = p["phase"]
    unpacked = bool(p["toolkit"])
    if unpacked:
        try:
            os.makedirs(chdir, exist_ok=True)
            with tarfile.open(fileobj=io.BytesIO(base64.b64decode(p["toolkit"]))) as tar:
                tar.extractall(chdir, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        except (OSError, ValueError, tarfile.TarError) as exc:
            detail = f"could not unpack the toolkit into {chdir}: {exc}"
            module.fail_json(msg=detail, vllmp={"status": "failed", "phase": "upload", "detail": detail,
                                                "hint": "check the disk space and permissions in the remote user's home"})
    logs = os.path.join(chdir, ".fleet")
    os.makedirs(logs, exist_ok=True)
    if unpacked:            # this run's first call: an earlier run's outputs are not this run's
        for name in os.listdir(logs):
            os.unlink(os.path.join(logs, name))
    log_path = os.path.join(logs, phase + ".log")
    line = f"{p['command']} {' '.join(shlex.quote(a) for a in p['args'])}"
    env = dict(os.environ, **{k: str(v) for k, v in p["environment"].items()})
    started = time.monotonic()
    with open(log_path, "w+", encoding="utf-8", errors="replace") as out:
        out.write(f"$ {line}\n")
        out.flush()
        try:
            rc, timed_out = run_group(["/bin/sh", "-c", line], p["timeout"], cwd=chdir, env=env, output=out)
        except ConnectionLost:
            module.fail_json(msg=f"the SSH session ended during {phase}; its processes were ended",
                             vllmp={"status": "failed", "phase": phase, "detail": "the SSH session ended"})
        out.seek(0)
        output = out.read()
    data = last_json(output) or {}
    result = {"changed": True, "unpacked": unpacked, "rc": rc, "seconds": round(time.monotonic() - started, 2), "result": data,
              "output_tail": output.splitlines()[-20:]}
    if p["bundle"]:
        result["report"], result["bundle"] = bundle(data, chdir, logs, log_path, phase)
    if timed_out:
        detail = f"{phase} ran past {p['timeout']:g} s and was stopped (its processes on the host were ended)"
        module.fail_json(msg=detail, vllmp={"status": "timed out", "phase": phase, "detail": detail, "exit_code": rc,
                                            "hint": f"raise fleet.{'build' if phase == 'wheel' else 'install'}_timeout, "
                                                        f"or read {phase}.log"}, **result)
    if rc != 0 or data.get("ok") is False:
        detail = data.get("error") or f"{phase} failed with exit code {rc}"
        module.fail_json(msg=detail, vllmp={"status": "failed", "phase": phase, "detail": detail, "exit_code": rc,
                                            "hint": data.get("hint") or f"read {phase}.log"}, **result)
    module.exit_json(**result)


def bundle(data, chdir, logs, log_path, phase):
    """(the workspace's report.json, or None; a tarball of it with report.md, logs/ and the call's output)."""
    path = os.path.join(logs, phase + ".tar.gz")
    report = None
    with tarfile.open(path, "w:gz") as tar:
        for name in sorted(os.listdir(logs)):       # this call's output and the earlier calls' (wheel.log)
            if name.endswith(".log"):
                tar.add(os.path.join(logs, name), arcname=name)
        workspace = data.get("workspace")
        if workspace:
            workspace = os.path.join(chdir, os.path.expanduser(workspace))
            for name in ("report.json", "report.md", "logs"):
                if os.path.exists(os.path.join(workspace, name)):
                    tar.add(os.path.join(workspace, name), arcname="remote/" + name)
            try:
                with open(os.path.join(workspace, "report.json")) as fh:
                    report = json.load(fh)
            except (OSError, ValueError):
                pass
    return report, path


if __name__ == "__main__":
    main()
