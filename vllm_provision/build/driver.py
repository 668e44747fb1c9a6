"""Build a setuptools project's extensions in place, each in its own build-temp directory, several at once.

Runs with the target env's python inside the source tree (cwd = src/); imports nothing from
vllm-provision. `setup.py build_ext -j N` cannot do this: its extensions share one build-temp dir and
torch's ninja backend then overwrites a single build.ninja. setup.py (and the torch it imports) is
loaded once; each extension is then built in a forked child, so no child pays that start-up again.

    python driver.py build SPEC.json

SPEC: {"temp_root": dir, "logs_dir": dir, "jobs": MAX_JOBS in all, "only": [names] or null,
       "list_only": true to print the extensions and build nothing}
Prints, one line each:
    DRIVER-JSON {"version", "extensions": [{"name", "sources", "bytes", "jobs"}], "torch", "workers"}
    DRIVER-DONE {"name", "rc", "seconds", "log"}        as each extension finishes
Each extension's output goes to <logs_dir>/build-<name>.log. Exit code 1 when any failed.
"""

import json
import os
import runpy
import sys
import time
import traceback

import setuptools


def load_setup():
    """Run ./setup.py with setuptools.setup replaced, returning the keyword arguments it passed."""
    captured = {}
    real = setuptools.setup

    def capture(**kwargs):
        captured.update(kwargs)

    setuptools.setup = capture
    argv = sys.argv
    sys.argv = ["setup.py"]
    sys.path.insert(0, os.getcwd())
    try:
        runpy.run_path("setup.py", run_name="__main__")
    finally:
        setuptools.setup = real
        sys.argv = argv
    if not captured:
        sys.exit("driver: setup.py did not call setuptools.setup()")
    return captured


def jobs_for(exts, jobs):
    """MAX_JOBS per extension: every unit at once when the total allows it (a unit waiting behind
    its extension's other sources would lengthen the build), else an even share."""
    units = sum(len(e.sources) for e in exts)
    workers = max(1, min(jobs, len(exts)))
    if units <= jobs:
        return {e.name: max(1, len(e.sources)) for e in exts}, workers
    return {e.name: max(1, jobs // workers) for e in exts}, workers


def build_one(kwargs, ext, temp_root, log_path, jobs):
    """In a forked child: setup.py build_ext --inplace for `ext` only; never returns."""
    code = 1
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.environ["MAX_JOBS"] = str(jobs)
        # --force: the toolkit only builds when something changed (or was asked to); distutils would
        # otherwise skip an extension whose library is newer than its sources. The compiler cache
        # makes a forced rebuild of unchanged sources cheap.
        setuptools.setup(**dict(kwargs, ext_modules=[ext], script_args=[
            "build_ext", "--inplace", "--force", "--build-temp", os.path.join(temp_root, "temp-" + ext.name)]))
        code = 0
    except SystemExit as exc:        # distutils reports a failed compile as SystemExit("error: ...")
        print(exc, flush=True)
        code = exc.code if isinstance(exc.code, int) and exc.code else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def build(spec):
    kwargs = load_setup()
    exts = [e for e in kwargs.get("ext_modules") or () if not spec.get("only") or e.name in spec["only"]]
    missing = set(spec.get("only") or ()) - {e.name for e in exts}
    if missing:
        sys.exit(f"driver: setup.py defines no extension {', '.join(sorted(missing))}")
    # the largest sources first: the longest job starts first (the build ends with the slowest unit)
    size = {e.name: sum(os.path.getsize(s) for s in e.sources if os.path.isfile(s)) for e in exts}
    exts.sort(key=lambda e: -size[e.name])
    per_ext, workers = jobs_for(exts, int(spec["jobs"]))
    try:
        import torch  # setup.py has imported it already: free to report, and the build's "torch before"
        torch_info = [torch.__version__, torch.version.cuda]
    except ImportError:
        torch_info = None
    print("DRIVER-JSON " + json.dumps({
        "version": kwargs.get("version"), "torch": torch_info, "workers": workers,
        "extensions": [{"name": e.name, "sources": list(e.sources), "bytes": size[e.name], "jobs": per_ext[e.name]}
                       for e in exts]}), flush=True)
    if spec.get("list_only"):
        return 0
    os.makedirs(spec["temp_root"], exist_ok=True)
    queue, running, failed = list(exts), {}, 0
    while queue or running:
        while queue and len(running) < workers:
            ext = queue.pop(0)
            log_path = os.path.join(spec["logs_dir"], f"build-{ext.name}.log")
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                build_one(kwargs, ext, spec["temp_root"], log_path, per_ext[ext.name])
            running[pid] = (ext.name, time.monotonic(), log_path)
        pid, status = os.wait()
        if pid not in running:
            continue
        name, started, log_path = running.pop(pid)
        rc = os.waitstatus_to_exitcode(status)
        failed += rc != 0
        print("DRIVER-DONE " + json.dumps({"name": name, "rc": rc, "seconds": round(time.monotonic() - started, 1),
                                           "log": log_path}), flush=True)
    return 1 if failed else 0


def main(argv):
    if len(argv) == 2 and argv[0] == "build":
        with open(argv[1]) as fh:
            return build(json.load(fh))
    sys.exit("usage: driver.py build SPEC.json")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
