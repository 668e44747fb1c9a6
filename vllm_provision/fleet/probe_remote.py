"""Facts of a fleet host, printed as one JSON object. Runs ON the host with its python3 (3.6+), stdlib only:
the fleet sends this file's text as `python3 -c`, before the toolkit is there. Raw command outputs are
returned as they are; the toolkit parses them (host.parse_gpu_csv), so one parser serves local and remote.

argv: GPU_QUERY [host-torch PYTHON]
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig


def command(argv, timeout=60):
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"rc": None, "stdout": "", "stderr": str(exc)}
    return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def interpreters():
    found = {}
    for minor in range(6, 16):
        name = "python3.%d" % minor
        path = shutil.which(name)
        if path and command([path, "-c", "import venv"], timeout=20)["rc"] == 0:
            found["3.%d" % minor] = path
    return found


def host_torch(python):
    code = ("import json, torch; print(json.dumps({'version': torch.__version__, 'cuda': torch.version.cuda, "
            "'cxx11_abi': bool(torch._C._GLIBCXX_USE_CXX11_ABI)}))")
    done = command([python, "-c", code], timeout=300)
    if done["rc"] != 0:
        return {"error": (done["stderr"].strip().splitlines() or ["exit code %s" % done["rc"]])[-1]}
    return json.loads(done["stdout"].strip().splitlines()[-1])


def main():
    gpu_query = sys.argv[1]
    smi = shutil.which("nvidia-smi")
    facts = {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "interpreters": interpreters(),
        "platform": sysconfig.get_platform().replace("-", "_").replace(".", "_"),
        "glibc": (os.confstr("CS_GNU_LIBC_VERSION") or " ").split(" ")[-1] if hasattr(os, "confstr") else "",
        "gcc": None,
        "nvidia_smi": None,
        "torch": None,
        "cpu_count": os.cpu_count(),
        "home": os.path.expanduser("~"),
    }
    cc = os.environ.get("CUDAHOSTCXX") or os.environ.get("CXX") or os.environ.get("CC") or "g++"   # the toolkit's host-compiler rule (host.host_compiler)
    gcc = command([cc, "-dumpfullversion", "-dumpversion"], timeout=20)
    if gcc["rc"] == 0:
        facts["gcc"] = gcc["stdout"].strip()
    if smi:
        facts["nvidia_smi"] = dict(command([smi, "--query-gpu=" + gpu_query, "--format=csv,noheader,nounits"]),
                                   path=smi)
    if len(sys.argv) > 3 and sys.argv[2] == "host-torch":
        facts["torch"] = host_torch(shutil.which(sys.argv[3]) or sys.argv[3])
    sys.stdout.write(json.dumps(facts) + "\n")


main()
