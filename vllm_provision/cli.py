"""Glue between Invoke tasks and the library: error printing, exit codes, summaries."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from invoke.exceptions import Exit
from rich.table import Table

from vllm_provision import PROJECT_ROOT, minor_version, report
from vllm_provision.checks import print_checks, summarize, to_json
from vllm_provision.core import config, envinfo, runner, ui
from vllm_provision.core.errors import ConfigError, NotBuiltYet, ProvisionError, StepFailed
from vllm_provision.core.outputs import stamped
from vllm_provision.core.redact import redact_text
from vllm_provision.diagnostics import doctor, inputs
from vllm_provision.envs import lock, mirrors
from vllm_provision.pipeline import STEPS, StepResult, interrupted_exit_code, run_steps, steps_to_force
from vllm_provision.plan import Plan, build_plan, gpu_refusal, host_torch_refusal, lock_path
from vllm_provision.probes import host
from vllm_provision.sources import externals
from vllm_provision.steps.facts import BuildFacts, BuildSource, StepStatus, VerifyFacts


def handles_errors(func: Callable) -> Callable:
    """Turn ProvisionError into `error:`/`hint:` lines and exit 1 (failed) or 2 (bad input); Ctrl-C exits
    130, SIGTERM 143. The command is a run: what it writes into a workspace report names it, and its
    record (with this exit code) goes to <workspace>/runs/ (report.begin_run/finish_run).
    `verbose` (-v/--verbose) streams every tool's own output."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if kwargs.get("verbose"):
            ui.set_verbose(True)
        name = func.__name__.replace("_", "-")
        report.begin_run(name, task_args(name), {k: v for k, v in kwargs.items() if k != "verbose"})
        code = 1        # an unexpected exception: Python's own exit code
        try:
            with runner.sigterm_as_interrupt():   # SIGTERM stops what runs, like Ctrl-C
                result = func(*args, **kwargs)
            code = 0
            return result
        except Exit as exc:
            code = exc.code
            raise
        except ProvisionError as exc:
            code = exc.exit_code
            ui.error(exc.message, exc.hint, exc.log_tail)
            if kwargs.get("json"):      # --json: the failure as the last stdout line too (fleet runs read it)
                print_json(stamped("error", {"ok": False, "error": exc.message, "hint": exc.hint,
                                             "exit_code": exc.exit_code}))
            raise Exit(code=exc.exit_code) from exc
        except KeyboardInterrupt as exc:
            code = interrupted_exit_code(exc)
            ui.error("interrupted" if code == 130 else "terminated (SIGTERM)",
                     "rerun the same command: finished steps are skipped, the interrupted one resumes")
            raise Exit(code=code) from None
        finally:
            report.finish_run(code)

    return wrapper


# build once, install many: task flags -> artifacts.* settings
ARTIFACT_FLAGS = {"push": "push", "require_cache": "require_cache", "artifact_key": "key"}


def cli_settings(**flags: Any) -> dict:
    """Map task flags onto config keys (None/False = not given); the settings schema checks the values."""
    settings = config.flag_settings(flags)
    artifacts = {key: flags[flag] for flag, key in ARTIFACT_FLAGS.items() if flags.get(flag) not in (None, False)}
    return settings | {"artifacts": artifacts} if artifacts else settings


def make_plan(**flags: Any) -> Plan:
    return build_plan(cli_settings(**flags))


def print_plan(plan: Plan, as_json: bool) -> None:
    data = plan.to_dict()
    if as_json:
        ui.out.print_json(json.dumps(stamped("plan", data)))
        return
    table = Table(title=f"plan: vLLM {plan.release.version} / profile {plan.profile}", show_lines=False)
    table.add_column("section")
    table.add_column("setting")
    table.add_column("value", overflow="fold")
    def add(section: str, items: Iterable[tuple[str, Any]]) -> None:
        for i, (k, v) in enumerate(items):
            table.add_row(section if i == 0 else "", k, v if isinstance(v, str) else json.dumps(v))
    add("release", data["release"].items())
    add("workspace", data["workspace"].items())
    add("sources", [(f"{i + 1}. {s['kind']}", s["url"]) for i, s in enumerate(data["sources"])])
    add("externals", [(f"{e['name']} @ {e['commit'][:12]}",
                       f"{e['override']}; {'in the cache (verified)' if e['cached'] else 'from ' + ', then '.join(e['origins'])}")
                      for e in data["externals"]])
    add("env", [(k, v) for k, v in data["env"].items() if v not in (None, "", [], ())])
    add("patches", [(p["file"], p["when"] or "always") for p in data["patches"]] or [("(none)", "")])
    add("build", data["build"].items())
    add("smoke", data["smoke"].items())
    ui.out.print(table)


def print_summary(results: list[StepResult]) -> None:
    table = Table(title="summary")
    table.add_column("step")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("detail", overflow="fold")
    colors = {StepStatus.OK: "green", StepStatus.UP_TO_DATE: "green", StepStatus.SKIPPED: "yellow",
              StepStatus.FAILED: "red", StepStatus.INTERRUPTED: "red", StepStatus.NOT_RUN: "dim"}
    for r in results:
        table.add_row(r.step, f"[{colors.get(r.status, '')}]{r.status}[/]", f"{r.seconds:.1f} s", r.detail)
    ui.console.print(table)


def forced_steps(force: Iterable[str], argv: Sequence[str] = ()) -> list[str]:
    """`--force STEP` (repeatable) or `--force all`. Invoke takes a bare `--force` on a repeatable option
    as no value at all, so argv (the task's own arguments) is read to refuse it."""
    argv = list(argv)
    bare = any(arg == "--force" and (i + 1 == len(argv) or argv[i + 1].startswith("-"))
               for i, arg in enumerate(argv))
    force = list(force)
    if bare or "" in force:
        raise ConfigError("--force needs the step to rerun", hint=f"--force STEP (repeatable) with a step of "
                          f"{', '.join(STEPS)}, or --force all")
    return [step for step in STEPS if step in steps_to_force(force)]


def task_args(task: str, argv: Sequence[str] | None = None) -> list[str]:
    """The command-line arguments after the task's name."""
    argv = list(sys.argv if argv is None else argv)
    return argv[argv.index(task) + 1:] if task in argv else []


def print_json(data: dict) -> None:
    """One JSON object on one stdout line: a task's result under --json (the fleet's modules read the last one).
    Redacted like every other line the toolkit prints (an error may quote a URL with its credentials)."""
    sys.stdout.write(redact_text(json.dumps(data)) + "\n")
    sys.stdout.flush()


def run_pipeline(steps: Iterable[str], force: Iterable[str] = (), argv: Sequence[str] = (),
                 as_json: bool = False, **flags: Any) -> list[StepResult]:
    """The steps, a summary table, and with `as_json` one JSON line last: {ok, workspace, report, steps
    (name -> status), and when a step failed: error, hint, exit_code}."""
    steps = list(steps)
    force = forced_steps(force, argv)
    plan = make_plan(**flags)
    refusal = (gpu_refusal(plan) or pinned_artifact_refusal(plan)) if "build" in steps else None
    if refusal is None and set(steps) - {"fetch", "patch"}:
        refusal = host_torch_refusal(plan)      # the host's torch, where env and build would take it as it is
    if refusal:     # before any download: the build would refuse these GPUs, this pinned wheel or that torch
        raise refusal
    inputs.check(plan, steps)          # bad input (unusable directories, cache flags, --model) before any download
    facts = host.probe(str(plan.workspace.root.parent))
    results = run_steps(plan, facts, steps, force, on_result=lambda r: ui.step(r.step, f"{r.status}: {r.detail}"))
    print_summary(results)
    bad = [r for r in results if r.status == StepStatus.FAILED]
    summary = {"ok": not bad, "workspace": str(plan.workspace.root), "report": str(plan.workspace.report),
               "steps": {r.step: r.status for r in results}}
    if bad:
        first = bad[0]
        ui.error(f"step {first.step} {first.status}: {first.detail}", first.hint, first.facts.get("log_tail"))
        if as_json:
            print_json(stamped("pipeline", summary | {"error": f"step {first.step} {first.status}: {first.detail}",
                                                      "hint": first.hint, "exit_code": first.exit_code or 1}))
        raise Exit(code=first.exit_code or 1)
    if as_json:
        print_json(stamped("pipeline", summary))
    return results


def pinned_artifact_refusal(plan: Plan) -> ProvisionError | None:
    """A pinned key (--artifact-key) whose cached wheel is for another Python than the env's: refused now,
    not after the env's minutes of downloads."""
    from vllm_provision.artifacts import install as artifact_install
    from vllm_provision.steps import build as build_step
    key = plan.settings.artifacts.key
    if not key or plan.env.backend == "existing":
        return None
    return artifact_install.python_refusal(build_step.cache_entries(plan.settings.artifacts), key, plan.env.python)


def require_gpu(what: str) -> None:
    facts = host.probe()
    if not facts.gpus:
        raise ConfigError(f"{what} needs a GPU and none is visible ({facts.gpu_error or 'nvidia-smi lists none'})",
                          hint="run it on the GPU host (`./inv provision` skips the smoke on GPU-less hosts)")


def make_tiny_model(out: str | None, **flags: Any) -> None:
    from vllm_provision.steps.smoke import make_tiny_model as make
    plan = make_plan(**flags)
    env = envinfo.load(plan.workspace)
    target = Path(out).resolve() if out else plan.workspace.root / "models" / "tiny-chatglm"
    make(env.python, target, plan.workspace.log("make-tiny-model"))
    ui.info(f"tiny ChatGLM written to {target}")


def run_smoke(force: bool = False, **flags: Any) -> list[StepResult]:
    """`./inv smoke` (`--all-gpus`: every GPU, the NCCL check and tensor parallelism where it can run)."""
    return run_pipeline(["smoke"], ["smoke"] if force else [], **flags)


def nccl_task(*, sizes: str | None = None, timeout: Any = None, as_json: bool = False, **flags: Any) -> int:
    """`./inv nccl`: the all-reduce check across every GPU in the target env; nccl.json, report.json's `nccl`
    section, the bandwidth table (or the JSON); the exit code."""
    from vllm_provision.core.settings import Seconds
    from vllm_provision.core.workspace import RunLock
    from vllm_provision.steps import smoke
    seconds = smoke.NCCL_TIMEOUT_S if timeout is None else config.flag_value("timeout", timeout, Seconds)
    plan = make_plan(**flags)
    facts = host.probe(str(plan.workspace.root.parent))
    if len(facts.gpus) < 2:
        raise ConfigError(f"the NCCL check needs at least 2 GPUs and {len(facts.gpus)} is visible"
                          + (f" ({facts.gpu_error})" if facts.gpu_error else ""),
                          hint="run `./inv nccl` on a multi-GPU host; one GPU has no link to check")
    ws = plan.workspace
    env = envinfo.load(ws)
    ws.ensure()
    with RunLock(ws.root / ".lock"), runner.sigterm_as_interrupt():
        data = smoke.nccl_check(env.python, ws, ws.log("nccl"), len(facts.gpus), sizes, seconds)
    report.merge_section(ws.report, "nccl", data, release=plan.release.version, profile=plan.profile)
    report.render(ws.report)
    if as_json:
        sys.stdout.write(json.dumps(stamped("nccl", data), indent=2) + "\n")
    else:
        for line in smoke.nccl_lines(data):
            ui.info(line)
    if data.get("error"):
        ui.error(data["error"]["message"], data["error"].get("hint"))
        return 1
    return 0


def doctor_task(*, as_json: bool = False, junit: str | None = None, timeout: float | None = None, **flags) -> int:
    """`./inv doctor`: checks, table or JSON, report.json `host`/`doctor` sections, optional JUnit; the exit code."""
    from vllm_provision.core.settings import Seconds
    started = time.monotonic()
    timeout = doctor.DEFAULT_TIMEOUT if timeout is None else config.flag_value("timeout", timeout, Seconds)
    plan = make_plan(**flags)          # bad input (unknown release/profile, bad --arch) -> ConfigError, exit 2
    facts = host.probe(str(plan.workspace.root.parent))
    toolchain: dict = {}
    gpus: dict = {}
    checks = doctor.run_doctor(plan, facts, timeout=timeout, toolchain=toolchain, gpus=gpus)
    seconds = time.monotonic() - started
    rep = plan.workspace.report
    try:
        report.merge_section(rep, "host", report.host_section(facts) | {"gpu_details": gpus},
                             release=plan.release.version, profile=plan.profile)
        report.merge_section(rep, "toolchain", toolchain)
        report.merge_section(rep, "doctor", to_json(checks) | {"when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                                "seconds": round(seconds, 2)})
        report.render(rep)
    except OSError as exc:   # a read-only workspace must not hide the checks
        ui.warn(f"could not write {rep}: {exc}")
    if junit:
        report.write_junit(junit, "vllm-provision.doctor", checks)
    print_checks(f"doctor: vLLM {plan.release.version} / {plan.profile} ({seconds:.1f} s)", checks, as_json,
                 kind="doctor")
    return summarize(checks)[1]


def verify_task(*, as_json: bool = False, junit: str | None = None, **flags) -> int:
    """`./inv verify`: run the verify step (always, under the workspace lock) and print its checks."""
    plan = make_plan(**flags)
    facts = host.probe(str(plan.workspace.root.parent))
    results = run_steps(plan, facts, ["verify"], force=["verify"])
    result = next(r for r in results if r.step == "verify")
    if "checks" not in result.facts:       # it stopped before any check ran (nothing built yet, bad input)
        raise (NotBuiltYet if result.exit_code == 2 else StepFailed)(result.detail, hint=result.hint,
                                                                     log_tail=result.facts.get("log_tail"))
    checks = list(VerifyFacts.from_dict(result.facts).checks)
    if junit:
        report.write_junit(junit, "vllm-provision.verify", checks)
    print_checks(f"verify: vLLM {plan.release.version} / {plan.profile}", checks, as_json, kind="verify")
    ui.info(f"report: {plan.workspace.report} and {plan.workspace.report.with_suffix('.md')}")
    return summarize(checks)[1]


def wheel_task(out: str | None, push: bool, as_json: bool = False, **flags: Any) -> None:
    """`./inv wheel`: the pipeline through build (what is out of date), then the wheel of the compiled tree
    (seconds), published to every writable cache with `push`; prints path, sha256, key, version, archs
    (`as_json`: one JSON object on the last line, for fleet runs and scripts)."""
    from vllm_provision.artifacts import install as artifact_install
    from vllm_provision.core.workspace import RunLock
    from vllm_provision.pipeline import StepContext
    from vllm_provision.steps import build as build_step
    if push:          # before the build: a wheel with nowhere to go is bad input
        inputs.check_push(make_plan(**flags))
    results = run_pipeline(["fetch", "env", "patch", "build"], as_json=as_json, **flags)
    built = BuildFacts.from_dict(next(r for r in results if r.step == "build").facts)
    if built.source == BuildSource.CACHE:
        # nothing to make: the build is already in a cache; --out gets a checked copy of it (an image's
        # producer stage hands it on), else the same lines name it
        where, key, wheel_sha256 = built.details["cache"], str(built.key), built.details["wheel_sha256"]
        published = [f"already in {where}"]
        if out:
            plan = make_plan(**flags)
            wheel = artifact_install.copy_out(build_step.cache_entries(plan.settings.artifacts), key, wheel_sha256,
                                              Path(out).resolve())
            ui.info(f"[wheel] this workspace installed it from cache {where}: copied to {wheel.path}")
            summary = wheel.summary()
        else:
            ui.info(f"[wheel] this workspace installed it from cache {where}: nothing to make")
            summary = {"wheel": f"{built.details['file']} in {where}", "sha256": wheel_sha256,
                       "key": key, "version": built.version, "archs": built.details["archs"]}
    else:
        plan = make_plan(**flags)
        ws = plan.workspace
        with RunLock(ws.root / ".lock"), runner.sigterm_as_interrupt():
            ctx = StepContext(plan, host.probe(str(ws.root.parent)), "wheel")
            wheel, published = build_step.wheel_and_publish(ctx, envinfo.load(ws), Path(out).resolve() if out
                                                            else ws.root / "wheels", push)
        summary = wheel.summary()
        if push and not published:
            ui.warn("--push: no writable cache in artifacts.caches; the wheel stays where it is")
    if as_json:
        print_json(stamped("wheel", {"ok": True} | summary | {"published": published}))
        return
    for name, value in summary.items():
        ui.info(f"{name}: {', '.join(value) if isinstance(value, list) else value}")


def bundle_task(out: str | None, externals_only: bool = False, **flags: Any) -> Path:
    """Fetch (verified) and write the sdist and every external source for hosts with no route out; without the
    sdist when `externals_only` (carried apart where a transfer is size-limited, or taken from a PyPI mirror)."""
    if not out:
        raise ConfigError("bundle needs --out", hint="./inv bundle --out DIR (or FILE.tar.xz)")
    target = Path(out).expanduser().resolve()
    if not externals.bundle_suffix(target) and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target} exists and is not an empty directory",
                          hint="give a new or empty directory, or a .tar / .tar.gz / .tar.xz path")
    target.parent.mkdir(parents=True, exist_ok=True)
    run_pipeline(["fetch"], **flags)
    plan = make_plan(**flags)
    sdist = None if externals_only else plan.workspace.downloads / plan.release.sdist.file
    written = externals.write_bundle(plan.release, sdist, plan.workspace.cache, target)
    ui.info(f"bundle: {written} ({externals.bundle_size(written) / 1e6:.1f} MB; "
            f"{'' if externals_only else 'the sdist and '}{len(plan.release.externals)} external sources); "
            f"on the offline host: "
            f"./inv fetch --release {plan.release.version} --bundle {written} --offline")
    return written


def catalog_hashes_task(*, release: str | None, mirror: str | None) -> None:
    """The externals' hashes straight from the catalog's data, before the recipe is complete (no plan)."""
    import tempfile

    from vllm_provision.catalog import get_release
    from vllm_provision.sources.release import http_settings_of

    settings = config.resolve(cli_settings(release=release) | (
        {"fetch": {"external_mirrors": [mirror]}} if mirror else {}))
    chosen = get_release(settings.release)
    if not chosen.externals:
        raise ConfigError(f"vLLM {chosen.version} has no external sources in the catalog",
                          hint="add its [[external]] entries first")
    with tempfile.TemporaryDirectory(prefix="vllmp-hashes-") as tmp:
        for name, digest, files, size in externals.record(chosen, settings.fetch, http_settings_of(settings), Path(tmp)):
            ui.out.print(f"{name}: tree_sha256 = \"{digest}\"  # {files} files, {size / 1e6:.1f} MB")


def lock_task(*, release: str | None, profile: str | None, python: str | None) -> Path:
    """`./inv lock`: fetch the release if needed, then compile its lock."""
    plan = build_plan(config.flag_settings({"release": release, "profile": profile, "python": python}),
                      need_lock=False)
    if plan.env.backend == "existing" or not plan.settings.env.lock:
        raise ConfigError(f"profile {plan.profile} installs no lock (env.backend {plan.env.backend}, "
                          f"env.lock {plan.settings.env.lock})", hint="lock a profile such as seed")
    minor = minor_version(python or plan.settings.env.python)
    inputs.check(plan, ["fetch"])
    src = plan.workspace.src
    recipe = lock.load_recipe(plan.release, plan.profile)
    if not all((src / name).is_file() for name in recipe.requirements):
        facts = host.probe(str(plan.workspace.root.parent))
        results = run_steps(plan, facts, ["fetch"])
        failed = [r for r in results if r.status == StepStatus.FAILED]
        if failed:
            raise StepFailed(f"fetch failed: {failed[0].detail}", hint=failed[0].hint)
    out = lock_path(plan.release.version, plan.profile, minor)
    ui.info(f"[lock] resolving vLLM {plan.release.version} for Python {minor} as of "
            f"{recipe.exclude_newer} from {mirrors.describe(plan.env)}")
    lock.compile_lock(release=plan.release, profile=plan.profile, python=minor, cuda=plan.env.cuda, src=src,
                      out=out, index=plan.env, log=plan.workspace.log("lock"), cache_dir=plan.workspace.cache / "uv")
    locked = lock.pinned(out)
    ui.info(f"[lock] wrote {out.relative_to(PROJECT_ROOT) if out.is_relative_to(PROJECT_ROOT) else out}: "
            f"{len(locked)} packages; torch {locked.get('torch')}, transformers {locked.get('transformers')}")
    return out


def fleet_task(*, hosts: str | None, ansible_inventory: str | None, limit: str | None, rerun_failed: bool,
               facts_only: bool, report_dir: str | None, caches: Sequence[str], env: Sequence[str],
               fleet: dict, **flags: Any) -> int:
    """`./inv fleet`: provision many hosts with Ansible (ansible-playbook and the toolkit's playbook); the
    report; the exit code."""
    from vllm_provision.core.settings import CacheEntry, Forks, HostKeyPolicy, Percent
    from vllm_provision.fleet import engine, plays
    from vllm_provision.fleet.report import HostStatus
    kinds = {"forks": Forks, "max_fail_percent": Percent, "host_key_policy": HostKeyPolicy}
    fleet = {name: config.flag_value(name.replace("_", "-"), value, kinds[name]) for name, value in fleet.items()}
    caches = [config.flag_value("cache", c, CacheEntry) for c in caches]   # before any host is read or reached
    layer = cli_settings(**flags) | ({"fleet": fleet} if fleet else {})
    settings = config.resolve(layer)
    engine.ansible_tool("ansible-playbook")         # the fleet extra is there, before anything is made
    root = plays.report_root(settings, report_dir)
    selected = engine.select_hosts(hosts_file=hosts, ansible_inventory=ansible_inventory, limit=limit,
                                   rerun_failed=rerun_failed, root=root)
    if not selected:
        ui.info(f"fleet: no host to run (every host of {root / 'latest'} was ok)")
        return 0
    extra = {}
    for item in env:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise ConfigError(f"--env {item!r} is not NAME=VALUE", hint="e.g. --env CCACHE_DIR=/srv/ccache")
        extra[name] = value
    caches = caches or settings.artifacts.caches
    if not facts_only and not inputs.writable_caches(caches):   # the builder's wheel reaches the others only so
        raise ConfigError("fleet needs a writable artifact cache the hosts share: the builder pushes its wheel "
                          "there and the other hosts install it from there",
                          hint="--cache dir:/srv/vllm-wheels (a path every host mounts), pypi:https://host/ or "
                               "static:PATH, or set artifacts.caches")
    overrides = layer | {"caches": list(caches), "env": extra, "report_dir": str(root)}
    plays.settings(overrides)                       # a credential is refused before any run dir exists
    options = engine.FleetOptions(
        hosts=selected, overrides=overrides, run_dir=plays.new_run_dir(root), fleet=settings.fleet,
        facts_only=facts_only, ansible_inventory=Path(ansible_inventory) if ansible_inventory else None,
        echo=lambda line: ui.step("fleet", line))
    data = engine.run(options)
    table = Table(title=f"fleet: vLLM {data['release']} / {data['profile']} ({data['seconds']:.1f} s)")
    for column in ("host", "kind", "status", "time", "detail"):
        table.add_column(column, overflow="fold")
    for h in data["hosts"]:
        table.add_row(h["name"], h["kind"] or "", h["status"], f"{h['seconds']:.1f} s", h["detail"])
    ui.console.print(table)
    ui.info(f"report: {options.run_dir / 'fleet-report.md'} (and .json, junit.xml; Ansible's output: ansible.log)")
    if not data["ok"]:
        bad = [h for h in data["hosts"] if h["status"] != HostStatus.OK]
        ui.error(f"{len(bad)} of {len(data['hosts'])} hosts did not pass: "
                 + ", ".join(f"{h['name']} {h['status']}" for h in bad[:5]) + (" ..." if len(bad) > 5 else ""),
                 "fix them (see the report's `Not ok` table), then ./inv fleet ... --rerun-failed")
        return 1
    return 0
