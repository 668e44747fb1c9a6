#!/usr/bin/env python3
"""NCCL check: an all-reduce across every GPU of the host, its result checked and its bus bandwidth measured.

Runs inside the target environment: stdlib + torch only (never imports the toolkit).

    python smoke/nccl_check.py --out nccl.json                       # every visible GPU, NCCL
    python smoke/nccl_check.py --backend gloo --device cpu --world-size 3 --sizes 64KiB,1MiB

One process per rank (GPU), all in one process group of their own, meeting through a TCPStore that
this parent hosts on 127.0.0.1 (a free port). For each message size every rank all-reduces (SUM) a
float32 pattern scaled by rank+1 and checks each element of the result, then times --iters
all-reduces after --warmup; the slowest rank's time counts, as in nccl-tests:

    algbw = bytes / time        busbw = algbw x 2 (n - 1) / n        (GB/s = 1e9 bytes a second)

NVLink multicast (NVLS) stays off: NCCL_NVLS_ENABLE=0 for every rank. A hang never hangs this
script: past --timeout seconds the parent ends the whole process group and names the ranks that
never joined the rendezvous and where the others were. A rank that fails ends the check at once.

Exit codes: 0 all sizes correct, 1 a wrong result, a failed rank or the timeout (the JSON says which),
2 bad input (one ``error:`` and one ``hint:`` line on stderr, no JSON).
The JSON (schema ``vllm-provision/nccl-check/1``): ok, backend, device, world_size, sizes (bytes,
label, wrong_elements, time_us, algbw_gbps, busbw_gbps), ranks (rank, joined, phase, returncode,
log, log_tail), never_joined, error {message, hint} or null, versions, env, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from datetime import timedelta

from procgroup import BadInput, Group, fail_bad_input, log_tail, sigterm_as_interrupt

SCHEMA = "vllm-provision/nccl-check/1"
DEFAULT_SIZES = "1MiB,64MiB,256MiB"
UNITS = {"": 1, "B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9}
PATTERN_PERIOD = 251    # a prime: a chunk reduced in the wrong place shows as wrong elements
HANG_HINT = ("a rank that never joined could not start or reach 127.0.0.1 (read its log); ranks stuck in an "
             "all-reduce point at a GPU link NCCL cannot use: rerun with NCCL_DEBUG=INFO, and with "
             "NCCL_P2P_DISABLE=1 to tell a broken NVLink/P2P path from the rest")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world-size", type=int, default=None,
                   help="ranks (default: every visible GPU; 2 with --device cpu)")
    p.add_argument("--backend", default="nccl", choices=("nccl", "gloo"))
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"message sizes, comma-separated (default {DEFAULT_SIZES})")
    p.add_argument("--iters", type=int, default=20, help="timed all-reduces per size")
    p.add_argument("--warmup", type=int, default=5, help="untimed all-reduces per size first")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds for the whole check (default 180)")
    p.add_argument("--out", default=None, help="write the JSON here (default: stdout)")
    p.add_argument("--log-dir", default=None, help="directory for rank<r>.log (default: a temporary one)")
    p.add_argument("--hold-rank", type=int, default=None,
                   help="for tests of the timeout path: this rank's process starts but never joins")
    # a rank's own arguments, set by the parent
    p.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--store-port", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else None
    if not m or unit not in UNITS:
        raise BadInput(f"{text!r} is not a message size", "write sizes as 4096, 64KiB, 1MiB or 1GiB, comma-separated")
    size = int(m.group(1)) * UNITS[unit]
    if size < 4 or size % 4:
        raise BadInput(f"{text!r} is not a whole number of float32 elements (a multiple of 4 bytes)",
                       "pick sizes such as 1MiB, 64MiB, 256MiB")
    return size


def label(size: int) -> str:
    for name, unit in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} B"


def bus_factor(world_size: int) -> float:
    """nccl-tests' all-reduce bus bandwidth factor: each byte crosses 2 (n - 1) / n links."""
    return 2 * (world_size - 1) / world_size


# --------------------------------------------------------------------------- rank

def rank_main(args) -> int:
    import torch
    import torch.distributed as dist

    timeout = timedelta(seconds=args.timeout)
    store = dist.TCPStore("127.0.0.1", args.store_port, None, False, timeout)
    rank, n = args.rank, args.world_size
    if args.hold:       # the timeout path's test: alive, connected, and never joining
        while True:
            time.sleep(3600)

    def phase(text: str) -> None:
        store.set(f"phase/{rank}", text)

    store.set(f"joined/{rank}", "1")
    phase("joined: waiting for the other ranks in init_process_group")
    device = torch.device("cpu")
    if args.device == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    dist.init_process_group(args.backend, store=dist.PrefixStore("pg", store), rank=rank, world_size=n,
                            timeout=timeout)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    results = []
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        phase(f"all-reduce of {label(size)}")
        numel = size // 4
        pattern = (torch.arange(numel, dtype=torch.int32, device=device) % PATTERN_PERIOD + 1).to(torch.float32)
        data = pattern * (rank + 1)
        dist.all_reduce(data)
        wrong = int((data != pattern * (n * (n + 1) // 2)).sum())
        del data, pattern
        buf = torch.zeros(numel, dtype=torch.float32, device=device)
        for _ in range(args.warmup):
            dist.all_reduce(buf)
        dist.all_reduce(torch.zeros(1, device=device))     # every rank starts the clock together
        synchronize()
        started = time.perf_counter()
        for _ in range(args.iters):
            dist.all_reduce(buf)
        synchronize()
        seconds = (time.perf_counter() - started) / args.iters
        del buf
        slowest = torch.tensor([seconds, float(wrong)], dtype=torch.float64, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        seconds, wrong = float(slowest[0]), int(slowest[1])
        algbw = size / seconds / 1e9
        results.append({"bytes": size, "label": label(size), "wrong_elements": wrong,
                        "time_us": round(seconds * 1e6, 2), "algbw_gbps": round(algbw, 3),
                        "busbw_gbps": round(algbw * bus_factor(n), 3)})
    if rank == 0:
        store.set("result", json.dumps(results))
    phase("done")
    dist.destroy_process_group()
    return 0


# --------------------------------------------------------------------------- parent

def check_input(args, torch) -> int:
    """The world size, after every input check (BadInput otherwise)."""
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if not sizes:
        raise BadInput("no message size given", f"pass --sizes {DEFAULT_SIZES}")
    if args.timeout <= 0 or args.iters < 1 or args.warmup < 0:
        raise BadInput("--timeout and --iters must be > 0, --warmup >= 0", "e.g. --timeout 180 --iters 20 --warmup 5")
    if args.backend == "nccl" and args.device != "cuda":
        raise BadInput("the NCCL backend needs --device cuda", "use --backend gloo --device cpu without GPUs")
    visible = torch.cuda.device_count() if args.device == "cuda" else None
    n = args.world_size or (visible if args.device == "cuda" else 2)
    if args.device == "cuda" and visible < 2:
        raise BadInput(f"an all-reduce across GPUs needs at least 2 and {visible} is visible",
                       "run it on a multi-GPU host (CUDA_VISIBLE_DEVICES must not hide the others)")
    if n < 2:
        raise BadInput(f"--world-size {n}: an all-reduce check needs at least 2 ranks", "pass --world-size 2 or more")
    if visible is not None and n > visible:
        raise BadInput(f"--world-size {n} but only {visible} GPUs are visible", f"pass --world-size {visible} or less")
    if args.hold_rank is not None and not 0 <= args.hold_rank < n:
        raise BadInput(f"--hold-rank {args.hold_rank} is not a rank of {n}", f"pick a rank from 0 to {n - 1}")
    return n


def start_store(dist, timeout: float):
    """A TCPStore on a free port of 127.0.0.1, hosted by this parent (it outlives the ranks: results stay)."""
    store = dist.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=timeout), wait_for_workers=False)
    if store.port:
        return store
    import socket  # a torch whose TCPStore cannot take port 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return dist.TCPStore("127.0.0.1", port, None, True, timedelta(seconds=timeout), wait_for_workers=False)


def store_text(store, key: str) -> str | None:
    return store.get(key).decode() if store.check([key]) else None


def versions(torch, device: str) -> dict:
    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    if device == "cuda":
        try:
            v = torch.cuda.nccl.version()
            out["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception as e:  # noqa: BLE001 - versions are facts, not checks
            out["nccl_error"] = str(e)
    return out


def run_check(args, n: int, torch, dist) -> dict:
    started = time.monotonic()
    store = start_store(dist, args.timeout)
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="nccl-check-")
    os.makedirs(log_dir, exist_ok=True)
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", PYTHONUNBUFFERED="1")
    group = Group()
    doc = {"schema": SCHEMA, "ok": False, "backend": args.backend, "device": args.device, "world_size": n,
           "timeout_s": args.timeout, "iters": args.iters, "warmup": args.warmup, "sizes": [], "ranks": [],
           "never_joined": [], "error": None, "versions": versions(torch, args.device),
           "env": {k: env[k] for k in sorted(env) if k.startswith("NCCL_")}, "store_port": store.port}
    logs = {r: os.path.join(log_dir, f"rank{r}.log") for r in range(n)}
    finished, stopped = False, None
    with sigterm_as_interrupt():
        try:
            for r in range(n):
                argv = [sys.executable, os.path.abspath(__file__), "--rank", str(r), "--world-size", str(n),
                        "--store-port", str(store.port), "--backend", args.backend, "--device", args.device,
                        "--sizes", args.sizes, "--iters", str(args.iters), "--warmup", str(args.warmup),
                        "--timeout", str(args.timeout)] + (["--hold"] if r == args.hold_rank else [])
                group.start(argv, env=env, log=logs[r])
            doc["process_group"] = group.pgid
            finished = group.wait(started + args.timeout, give_up=lambda p: p.returncode != 0)
            if not finished or group.running():     # what a finished rank left running goes too
                stopped = group.stop()
        except KeyboardInterrupt:
            group.stop()
            raise
    for r, proc in enumerate(group.procs):
        doc["ranks"].append({"rank": r, "joined": store.check([f"joined/{r}"]), "phase": store_text(store, f"phase/{r}"),
                             "returncode": proc.returncode, "log": logs[r], "log_tail": log_tail(logs[r])})
    doc["never_joined"] = [x["rank"] for x in doc["ranks"] if not x["joined"]]
    doc["stopped"] = stopped
    result = store_text(store, "result")
    doc["sizes"] = json.loads(result) if result else []
    doc["seconds"] = round(time.monotonic() - started, 3)
    doc["error"] = verdict(doc, finished)
    doc["ok"] = doc["error"] is None
    return doc


def _ranks(items) -> str:
    items = list(items)
    return f"rank{'s' if len(items) > 1 else ''} {', '.join(map(str, items))}"


def verdict(doc: dict, finished: bool) -> dict | None:
    ranks = doc["ranks"]
    # a rank ended by the stop has a negative return code (the signal): only one that exited by itself failed
    failed = [x for x in ranks if (x["returncode"] or 0) > 0]
    if failed:
        first = failed[0]
        last = (first["log_tail"].strip().splitlines() or ["no output"])[-1]
        return {"message": f"rank {first['rank']} exited with code {first['returncode']} "
                           f"({first['phase'] or 'before joining'}): {last}",
                "hint": f"read {first['log']}; " + HANG_HINT}
    if not finished:
        parts = []
        if doc["never_joined"]:
            parts.append(f"{_ranks(doc['never_joined'])} never joined")
        waiting: dict[str, list[int]] = {}
        for x in ranks:
            if x["joined"]:
                waiting.setdefault(x["phase"] or "joined", []).append(x["rank"])
        parts += [f"{_ranks(rs)} stuck at: {phase}" for phase, rs in waiting.items()]
        return {"message": f"the all-reduce check did not finish within {doc['timeout_s']:g} s "
                           f"({'; '.join(parts)}); the process group was ended ({doc['stopped']})",
                "hint": HANG_HINT}
    wrong = [s for s in doc["sizes"] if s["wrong_elements"]]
    if wrong:
        return {"message": "wrong all-reduce result: " + "; ".join(
                    f"{s['label']}: {s['wrong_elements']} of {s['bytes'] // 4} elements differ" for s in wrong),
                "hint": "a GPU or link corrupts data: run the check per GPU pair (CUDA_VISIBLE_DEVICES=i,j) and "
                        "check nvidia-smi -q for ECC / NVLink errors"}
    if not doc["sizes"]:
        return {"message": "the ranks ended without a result", "hint": f"read the rank logs in {ranks[0]['log']}"}
    return None


def print_table(doc: dict) -> None:
    err = sys.stderr
    if not doc["sizes"]:
        return
    print(f"all-reduce ({doc['backend']}, {doc['world_size']} ranks, {doc['iters']} iterations each):", file=err)
    print(f"  {'size':>9}  {'time':>11}  {'algbw':>11}  {'busbw':>11}  wrong", file=err)
    for s in doc["sizes"]:
        print(f"  {s['label']:>9}  {s['time_us']:>8.1f} us  {s['algbw_gbps']:>6.2f} GB/s  {s['busbw_gbps']:>6.2f} GB/s  "
              f"{s['wrong_elements']}", file=err)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rank is not None:
        return rank_main(args)
    try:
        import torch
        import torch.distributed as dist
    except ImportError as e:
        return fail_bad_input(f"torch is not importable here ({e})", "run this with the target env's python")
    try:
        n = check_input(args, torch)
    except BadInput as e:
        return fail_bad_input(e.message, e.hint)
    try:
        doc = run_check(args, n, torch, dist)
    except KeyboardInterrupt:
        print("nccl check: interrupted; the ranks were ended", file=sys.stderr)
        return 130
    text = json.dumps(doc, indent=2)
    if args.out:
        with open(args.out + ".part", "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        os.replace(args.out + ".part", args.out)
    else:
        sys.stdout.write(text + "\n")
    print_table(doc)
    if doc["error"]:
        print(f"error: {doc['error']['message']}", file=sys.stderr)
        print(f"hint: {doc['error']['hint']}", file=sys.stderr)
        return 1
    print(f"nccl check: ok ({doc['seconds']:.1f} s)" + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
