#!/usr/bin/env python3
"""Run one command once per GPU, all at once, each process seeing only its GPU.

Runs inside the target environment (stdlib only; never imports the toolkit). The toolkit runs the
single-GPU smoke (smoke/generate.py) through it, so each GPU gets the very same smoke:

    python smoke/per_gpu.py --gpus 0,1 --timeout 1800 --log-dir D --result D/per-gpu.json -- \\
        python smoke/generate.py --model M --out D/smoke-gpu{gpu}.json

`{gpu}` in the command is replaced by the GPU's index; each process gets CUDA_VISIBLE_DEVICES=<index>
(with CUDA_DEVICE_ORDER=PCI_BUS_ID, so CUDA's index is nvidia-smi's) and writes its output to
<log-dir>/gpu<index>.log. Past --timeout seconds every process still running is ended (with all it
started) and marked timed out.

The result JSON (schema ``vllm-provision/per-gpu/1``): ``gpus`` = [{gpu, returncode, timed_out, log}],
``seconds``, ``process_group``, ``stopped`` (how the stragglers were ended, or null). Exit codes: 0 every
process exited 0, 1 one failed or timed out (the toolkit judges each GPU's own output), 2 bad input
(error:/hint: lines).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from procgroup import Group, fail_bad_input, sigterm_as_interrupt

SCHEMA = "vllm-provision/per-gpu/1"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", required=True, help="comma-separated GPU indexes, e.g. 0,1")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds for all of them (default 1800)")
    p.add_argument("--log-dir", required=True, help="directory for gpu<index>.log")
    p.add_argument("--result", required=True, help="write the result JSON here")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command ({gpu} = the GPU index)")
    args = p.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    return args


def gpu_indexes(text: str) -> list[int]:
    items = [i.strip() for i in text.split(",") if i.strip()]
    if not items or not all(i.isdigit() for i in items):
        raise ValueError(text)
    if len(set(items)) != len(items):
        raise ValueError(text)
    return [int(i) for i in items]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        gpus = gpu_indexes(args.gpus)
    except ValueError:
        return fail_bad_input(f"--gpus {args.gpus!r} is not a list of distinct GPU indexes",
                              "pass --gpus 0,1 (the indexes nvidia-smi shows)")
    if not args.command:
        return fail_bad_input("no command to run per GPU", "end the options with -- and the command, e.g. "
                                                           "-- python smoke/generate.py --out smoke-gpu{gpu}.json")
    if args.timeout <= 0:
        return fail_bad_input(f"--timeout {args.timeout:g} is not a positive number of seconds",
                              "pass --timeout 1800")
    os.makedirs(args.log_dir, exist_ok=True)
    group = Group()
    started = time.monotonic()
    entries = []
    stopped = None
    late: set[int] = set()
    with sigterm_as_interrupt():
        try:
            for gpu in gpus:
                env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu), CUDA_DEVICE_ORDER="PCI_BUS_ID")
                log = os.path.join(args.log_dir, f"gpu{gpu}.log")
                proc = group.start([a.replace("{gpu}", str(gpu)) for a in args.command], env=env, log=log)
                entries.append({"gpu": gpu, "proc": proc, "log": os.path.abspath(log)})
            if not group.wait(started + args.timeout):
                late = {e["gpu"] for e in entries if e["proc"].poll() is None}
            if late or group.running():     # what a finished process left running goes too
                stopped = group.stop()
        except KeyboardInterrupt:
            group.stop()
            print("per_gpu: interrupted; every GPU's process was ended", file=sys.stderr)
            return 130
    seconds = round(time.monotonic() - started, 3)
    for e in entries:
        code = e.pop("proc").returncode
        e.update(returncode=code, timed_out=e["gpu"] in late)
    doc = {"schema": SCHEMA, "timeout_s": args.timeout, "seconds": seconds, "process_group": group.pgid,
           "stopped": stopped, "gpus": entries}
    tmp = args.result + ".part"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
    os.replace(tmp, args.result)
    bad = [e for e in entries if e["returncode"] != 0]
    for e in bad:
        why = f"timed out after {args.timeout:g} s" if e["timed_out"] else f"exited {e['returncode']}"
        print(f"per_gpu: GPU {e['gpu']} {why}; see {e['log']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
