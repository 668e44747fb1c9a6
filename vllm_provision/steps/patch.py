"""patch: apply the release's patch series (patches/<release>/series.toml) whose `when` holds.

Idempotent: a patch that is already applied (its reverse applies cleanly) is skipped; one that
neither applies nor is applied stops the run naming the patch and the failing hunk. The applied
patches and their sha256 are this step's facts and part of its stamp, so the build's stamp follows.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from vllm_provision.catalog import Release, patches
from vllm_provision.core import envinfo, runner
from vllm_provision.core.errors import StepFailed
from vllm_provision.core.workspace import Workspace
from vllm_provision.pipeline import StepContext, StepOutcome
from vllm_provision.steps.facts import AppliedPatch, PatchFacts, SkippedPatch
from vllm_provision.steps.fetch import extract_release

MARKER = ".vllmp-patches.json"


def _versions(ws: Workspace, release: Release) -> dict:
    """The versions the patches' conditions read: the env's packages and the release."""
    return dict(envinfo.load(ws).versions()) | {"release": release.version}


def selected(series, versions) -> list[tuple[patches.Patch, bool, str]]:
    return [(p, *p.applies(versions)) for p in series]


def stamp_inputs(ctx: StepContext) -> dict:
    series = patches.load_series(ctx.plan.release.version)
    versions = _versions(ctx.workspace, ctx.plan.release)
    return {"release": ctx.plan.release.version,
            "patches": [{"file": p.file, "sha256": p.sha256, "applies": ok} for p, ok, _ in selected(series, versions)]}


def intact(ctx: StepContext) -> bool:
    try:
        recorded = json.loads((ctx.workspace.src / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return all(is_applied(Path(p["path"]), ctx.workspace.src, None)
               for p in recorded.get("applied", []) if Path(p["path"]).is_file())


def _patch(args: list[str], patch_file: Path, src: Path, log: Path | None):
    return runner.run(["patch", "-p1", "--batch", "-i", str(patch_file), *args],
                      cwd=src, log=log, check=False, timeout=120, what=f"patch {patch_file.name}")


def is_applied(patch_file: Path, src: Path, log: Path | None) -> bool:
    """Already applied: the reverse applies cleanly (and the forward does not)."""
    return _patch(["--reverse", "--dry-run", "--force"], patch_file, src, log).returncode == 0


def failing_hunk(output: str) -> str:
    """`Hunk #2 FAILED at 31.` + the file it was for, from patch's output."""
    current = ""
    failed = []
    for line in output.splitlines():
        m = re.match(r"(?:patching|checking) file (.+)", line)
        if m:
            current = m.group(1).strip()
        m = re.search(r"Hunk #(\d+) FAILED at (\d+)", line)
        if m:
            failed.append(f"{current} hunk #{m.group(1)} (at line {m.group(2)})")
        if "can't find file to patch" in line or "No file to patch" in line:
            failed.append("a file the patch names is missing")
    return ", ".join(failed) or (output.strip().splitlines() or ["no output"])[-1]


def apply_one(p: patches.Patch, src: Path, log: Path | None) -> str:
    """'applied' | 'already applied'; StepFailed naming the patch and hunk when it does not apply."""
    forward = _patch(["--forward", "--dry-run"], p.path, src, log)
    if forward.returncode == 0:
        done = _patch(["--forward"], p.path, src, log)
        if done.returncode != 0:
            raise StepFailed(f"patch {p.file} failed while applying: {failing_hunk(done.output)}",
                             hint=f"the source tree may be half-patched: `./inv fetch --force` re-extracts it; log: {log}")
        return "applied"
    if is_applied(p.path, src, log):
        return "already applied"
    raise StepFailed(f"patch {p.file} does not apply to {src}: {failing_hunk(forward.output)}",
                     hint=f"the sources differ from what the patch expects: re-extract with `./inv fetch --force`, "
                          f"or update {p.path} (why: {p.why})")


def no_longer_wanted(src: Path, chosen) -> list[str]:
    """Patches the tree holds (by its marker) that this run would not apply as they are: no longer needed
    (a condition changed with the env) or changed since (a newer toolkit's version of the patch)."""
    try:
        recorded = json.loads((src / MARKER).read_text()).get("applied", [])
    except (OSError, ValueError):
        return []
    wanted = {(p.file, p.sha256) for p, ok, _ in chosen if ok}
    return [r["file"] for r in recorded if (r.get("file"), r.get("sha256")) not in wanted]


def run(ctx: StepContext) -> StepOutcome:
    src = ctx.workspace.src
    if not src.is_dir():
        raise StepFailed(f"no sources in {src}", hint="run `./inv fetch` first")
    series = patches.load_series(ctx.plan.release.version)
    versions = _versions(ctx.workspace, ctx.plan.release)
    chosen = selected(series, versions)
    applied, skipped = [], []
    stale = no_longer_wanted(src, chosen)
    if stale:
        # a patch cannot be taken back once its file has changed: start again from the verified archive
        extract_release(ctx)
        ctx.say(f"sources extracted afresh: {', '.join(stale)} no longer wanted as applied")
    for p, ok, why in chosen:
        if not ok:
            skipped.append(SkippedPatch(p.file, why))
            ctx.say(f"{p.file}: not needed ({why})")
            continue
        state = apply_one(p, src, ctx.log)
        applied.append({"file": p.file, "sha256": p.sha256, "state": state, "when": why, "path": str(p.path)})
        ctx.say(f"{p.file}: {state} ({why})")
    # the marker also keeps each patch's path and condition: intact() re-checks the tree with them
    (src / MARKER).write_text(json.dumps({"applied": applied, "skipped": [asdict(s) for s in skipped]}, indent=2))
    detail = (f"{len(applied)} patch(es) applied" + (f" ({', '.join(a['file'] for a in applied)})" if applied else "")
              + (f", {len(skipped)} not needed" if skipped else ""))
    return StepOutcome(detail=detail, facts=PatchFacts(
        applied=tuple(AppliedPatch(a["file"], a["sha256"], a["state"]) for a in applied), skipped=tuple(skipped)))
