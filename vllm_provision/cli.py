"""Glue between Invoke tasks and the library: error printing, exit codes, summaries."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from invoke.exceptions import Exit
from rich.table import Table

from . import PROJECT_ROOT, config, doctor, envinfo, host, lock, minor_version, mirrors, report, runner, ui
from .checks import from_dicts, print_checks, summarize, to_json
from .errors import ConfigError, NotBuiltYet, ProvisionError, StepFailed
from .pipeline import STEPS, StepResult, run_steps, steps_to_force
from .plan import Plan, build_plan, gpu_refusal, lock_path


def handles_errors(func: Callable) -> Callable:
    """Turn ProvisionError into `error:`/`hint:` lines and exit 1 (failed) or 2 (bad input)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            with runner.sigterm_as_interrupt():   # SIGTERM stops what runs, like Ctrl-C
                return func(*args, **kwargs)
        except ProvisionError as exc:
            ui.error(exc.message, exc.hint, exc.log_tail)
            raise Exit(code=exc.exit_code)
        except KeyboardInterrupt:
            ui.error("interrupted", "rerun the same command: finished steps are skipped, the interrupted one resumes")
            raise Exit(code=130)

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
        ui.out.print_json(json.dumps(data))
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
    colors = {"ok": "green", "up-to-date": "green", "skipped": "yellow", "failed": "red", "not run": "dim"}
    for r in results:
        table.add_row(r.step, f"[{colors.get(r.status, '')}]{r.status}[/]", f"{r.seconds:.1f} s", r.detail)
    ui.console.print(table)


def forced_steps(force: Iterable[str], argv: Sequence[str] = ()) -> list[str]:
    """`--force STEP` (repeatable) or `--force all`. Invoke takes a bare `--force` on a repeatable option
    as no value at all, so argv (the task's own arguments) is read to refuse it."""
    argv = list(argv)
    bare = any(arg in ("--force", "-f") and (i + 1 == len(argv) or argv[i + 1].startswith("-"))
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


def run_pipeline(steps: Iterable[str], force: Iterable[str] = (), argv: Sequence[str] = (),
                 **flags: Any) -> list[StepResult]:
    steps = list(steps)
    force = forced_steps(force, argv)
    plan = make_plan(**flags)
    refusal = (gpu_refusal(plan) or pinned_artifact_refusal(plan)) if "build" in steps else None
    if refusal:     # before any download: the build would refuse these GPUs (or this pinned wheel) anyway
        raise refusal
    facts = host.probe(str(plan.workspace.root.parent))
    results = run_steps(plan, facts, steps, force, on_result=lambda r: ui.step(r.step, f"{r.status}: {r.detail}"))
    print_summary(results)
    bad = [r for r in results if r.status == "failed"]
    if bad:
        first = bad[0]
        ui.error(f"step {first.step} {first.status}: {first.detail}", first.hint, first.facts.get("log_tail"))
        raise Exit(code=first.exit_code or 1)
    return results


def pinned_artifact_refusal(plan: Plan) -> ProvisionError | None:
    """A pinned key (--artifact-key) whose cached wheel is for another Python than the env's: refused now,
    not after the env's minutes of downloads."""
    from .artifacts import install as artifact_install
    from .steps import build as build_step
    key = (plan.settings.get("artifacts") or {}).get("key")
    if not key or plan.env.backend == "existing":
        return None
    return artifact_install.python_refusal(build_step.cache_entries_of(plan), key, plan.env.python)


def require_gpu(what: str) -> None:
    facts = host.probe()
    if not facts.gpus:
        raise ConfigError(f"{what} needs a GPU and none is visible ({facts.gpu_error or 'nvidia-smi lists none'})",
                          hint="run it on the GPU host (`inv provision` skips the smoke on GPU-less hosts)")


def make_tiny_model(out: str | None, **flags: Any) -> None:
    from .steps.smoke import make_tiny_model as make
    plan = make_plan(**flags)
    env = envinfo.load(plan.workspace)
    target = Path(out).resolve() if out else plan.workspace.root / "models" / "tiny-chatglm"
    make(env.python, target, plan.workspace.log("make-tiny-model"))
    ui.info(f"tiny ChatGLM written to {target}")


def run_smoke(force: bool = False, **flags: Any) -> list[StepResult]:
    """`inv smoke` (`--all-gpus`: every GPU, the NCCL check and tensor parallelism where it can run)."""
    return run_pipeline(["smoke"], ["smoke"] if force else [], **flags)


def nccl_task(*, sizes: str | None = None, timeout: Any = None, as_json: bool = False, **flags: Any) -> int:
    """`inv nccl`: the all-reduce check across every GPU in the target env; nccl.json, report.json's `nccl`
    section, the bandwidth table (or the JSON); the exit code."""
    from .settings import Seconds
    from .steps import smoke
    from .workspace import RunLock
    seconds = smoke.NCCL_TIMEOUT_S if timeout is None else config.flag_value("timeout", timeout, Seconds)
    plan = make_plan(**flags)
    facts = host.probe(str(plan.workspace.root.parent))
    if len(facts.gpus) < 2:
        raise ConfigError(f"the NCCL check needs at least 2 GPUs and {len(facts.gpus)} is visible"
                          + (f" ({facts.gpu_error})" if facts.gpu_error else ""),
                          hint="run `inv nccl` on a multi-GPU host; one GPU has no link to check")
    ws = plan.workspace
    env = envinfo.load(ws)
    ws.ensure()
    with RunLock(ws.root / ".lock"), runner.sigterm_as_interrupt():
        data = smoke.nccl_check(env.python, ws, ws.log("nccl"), len(facts.gpus), sizes, seconds)
    report.merge_section(ws.report, "nccl", data, release=plan.release.version, profile=plan.profile)
    report.render(ws.report)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        for line in smoke.nccl_lines(data):
            ui.info(line)
    if data.get("error"):
        ui.error(data["error"]["message"], data["error"].get("hint"))
        return 1
    return 0


def doctor_task(*, as_json: bool = False, junit: str | None = None, timeout: float | None = None, **flags) -> int:
    """`inv doctor`: checks, table or JSON, report.json `host`/`doctor` sections, optional JUnit; the exit code."""
    from .settings import Seconds
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
    print_checks(f"doctor: vLLM {plan.release.version} / {plan.profile} ({seconds:.1f} s)", checks, as_json)
    return summarize(checks)[1]


def verify_task(*, as_json: bool = False, junit: str | None = None, **flags) -> int:
    """`inv verify`: run the verify step (always, under the workspace lock) and print its checks."""
    plan = make_plan(**flags)
    facts = host.probe(str(plan.workspace.root.parent))
    results = run_steps(plan, facts, ["verify"], force=["verify"])
    result = next(r for r in results if r.step == "verify")
    if "checks" not in result.facts:       # it stopped before any check ran (nothing built yet, bad input)
        raise (NotBuiltYet if result.exit_code == 2 else StepFailed)(result.detail, hint=result.hint,
                                                                     log_tail=result.facts.get("log_tail"))
    checks = from_dicts(result.facts["checks"])
    if junit:
        report.write_junit(junit, "vllm-provision.verify", checks)
    print_checks(f"verify: vLLM {plan.release.version} / {plan.profile}", checks, as_json)
    ui.info(f"report: {plan.workspace.report} and {plan.workspace.report.with_suffix('.md')}")
    return summarize(checks)[1]


def wheel_task(out: str | None, push: bool, as_json: bool = False, **flags: Any) -> None:
    """`inv wheel`: the pipeline through build (what is out of date), then the wheel of the compiled tree
    (seconds), published to every writable cache with `push`; prints path, sha256, key, version, archs
    (`as_json`: one JSON object on the last line, for fleet runs and scripts)."""
    from .artifacts import install as artifact_install
    from .pipeline import StepContext
    from .steps import build as build_step
    from .workspace import RunLock
    results = run_pipeline(["fetch", "env", "patch", "build"], **flags)
    built = next(r for r in results if r.step == "build").facts
    if built.get("source") == "cache":
        # nothing to make: the build is already in a cache; --out gets a checked copy of it (an image's
        # producer stage hands it on), else the same lines name it
        published = [f"already in {built['cache']}"]
        if out:
            plan = make_plan(**flags)
            wheel = artifact_install.copy_out(build_step.cache_entries_of(plan), built["key"], built["wheel_sha256"],
                                              Path(out).resolve())
            ui.info(f"[wheel] this workspace installed it from cache {built['cache']}: copied to {wheel.path}")
            summary = wheel.summary()
        else:
            ui.info(f"[wheel] this workspace installed it from cache {built['cache']}: nothing to make")
            summary = {"wheel": f"{built['file']} in {built['cache']}", "sha256": built["wheel_sha256"],
                       "key": built["key"], "version": built["version"], "archs": built["archs"]}
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
        sys.stdout.write(json.dumps(summary | {"published": published}) + "\n")
        return
    for name, value in summary.items():
        ui.info(f"{name}: {', '.join(value) if isinstance(value, list) else value}")


def lock_task(*, release: str | None, profile: str | None, python: str | None) -> Path:
    """`inv lock`: fetch the release if needed, then compile its lock."""
    plan = build_plan(config.flag_settings({"release": release, "profile": profile, "python": python}),
                      need_lock=False)
    if plan.env.backend == "existing" or not plan.settings["env"].get("lock"):
        raise ConfigError(f"profile {plan.profile} installs no lock (env.backend {plan.env.backend}, "
                          f"env.lock {plan.settings['env'].get('lock')})", hint="lock a profile such as seed")
    minor = minor_version(python or plan.settings["env"]["python"])
    src = plan.workspace.src
    if not (src / "requirements.txt").is_file():
        facts = host.probe(str(plan.workspace.root.parent))
        results = run_steps(plan, facts, ["fetch"])
        failed = [r for r in results if r.status == "failed"]
        if failed:
            raise StepFailed(f"fetch failed: {failed[0].detail}", hint=failed[0].hint)
    out = lock_path(plan.release.version, plan.profile, minor)
    ui.info(f"[lock] resolving vLLM {plan.release.version} for Python {minor} as of "
            f"{lock.load_recipe(plan.release, plan.profile).exclude_newer} from {mirrors.describe(plan.env)}")
    lock.compile_lock(release=plan.release, profile=plan.profile, python=minor, cuda=plan.env.cuda, src=src,
                      out=out, index=plan.env, log=plan.workspace.log("lock"), cache_dir=plan.workspace.cache / "uv")
    locked = lock.pinned(out)
    ui.info(f"[lock] wrote {out.relative_to(PROJECT_ROOT) if out.is_relative_to(PROJECT_ROOT) else out}: "
            f"{len(locked)} packages; torch {locked.get('torch')}, transformers {locked.get('transformers')}")
    return out


def fleet_task(*, hosts: str | None, ansible_inventory: str | None, limit: str | None, rerun_failed: bool,
               facts_only: bool, report_dir: str | None, caches: Sequence[str], env: Sequence[str],
               fleet: dict, **flags: Any) -> int:
    """`inv fleet`: provision many hosts over SSH (one build per kind); the report; the exit code."""
    from .fleet import run as fleet_run
    from .settings import Forks, HostKeyPolicy, Percent
    kinds = {"forks": Forks, "max_fail_percent": Percent, "host_key_policy": HostKeyPolicy}
    fleet = {name: config.flag_value(name.replace("_", "-"), value, kinds[name]) for name, value in fleet.items()}
    settings = config.resolve(cli_settings(**flags) | ({"fleet": fleet} if fleet else {}))
    root = fleet_run.report_root(settings, report_dir)
    selected = fleet_run.select_hosts(hosts_file=hosts, ansible_inventory=ansible_inventory, limit=limit,
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
    caches = list(caches) or list((settings.get("artifacts") or {}).get("caches") or [])
    fleet_run.remote_environment(settings, caches, extra)      # a credential is refused before any run dir exists
    options = fleet_run.FleetOptions(
        hosts=selected, settings=settings, run_dir=fleet_run.new_run_dir(root), facts_only=facts_only,
        caches=caches, extra_env=extra,
        on_event=lambda host, phase, status, seconds: ui.step("fleet", f"{host} {phase} {status} ({seconds:.1f} s)"))
    data = fleet_run.FleetRun(options).run()
    table = Table(title=f"fleet: vLLM {data['release']} / {data['profile']} ({data['seconds']:.1f} s)")
    for column in ("host", "kind", "status", "time", "detail"):
        table.add_column(column, overflow="fold")
    for h in data["hosts"]:
        table.add_row(h["name"], h["kind"] or "", h["status"], f"{h['seconds']:.1f} s", h["detail"])
    ui.console.print(table)
    ui.info(f"report: {options.run_dir / 'fleet-report.md'} (and .json, junit.xml)")
    if not data["ok"]:
        bad = [h for h in data["hosts"] if h["status"] != "ok"]
        ui.error(f"{len(bad)} of {len(data['hosts'])} hosts did not pass: "
                 + ", ".join(f"{h['name']} {h['status']}" for h in bad[:5]) + (" ..." if len(bad) > 5 else ""),
                 "fix them (see the report's `Not ok` table), then ./inv fleet ... --rerun-failed")
        return 1
    return 0
