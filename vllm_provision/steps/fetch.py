"""fetch: the release archive into the shared cache (verified), extracted into <workspace>/src."""

from __future__ import annotations

import json

from ..extract import tree_sha256
from ..pipeline import StepContext, StepOutcome
from ..sources import cache_is_sound, extract_to, obtain

MARKER = ".vllmp-source.json"


def stamp_inputs(ctx: StepContext) -> dict:
    return {"release": ctx.plan.release.version, "sources": ctx.plan.to_dict()["sources"]}


def intact(ctx: StepContext) -> bool:
    """src/ was extracted and the cache holds no corrupt copy: a corrupt one makes the step run
    again, which reports it, removes it and fetches it again (or names the fix when offline)."""
    return (ctx.workspace.src / MARKER).is_file() and cache_is_sound(ctx.plan)


def extract_release(ctx: StepContext) -> tuple:
    """The verified archive extracted afresh into src/ (anything built or patched there is gone)."""
    archive, source = obtain(ctx.plan)
    src = extract_to(archive, ctx.workspace.src)
    tree = tree_sha256(src)
    (src / MARKER).write_text(json.dumps({"archive": archive.name, "kind": source.kind, "tree_sha256": tree}))
    return archive, source, src, tree


def run(ctx: StepContext) -> StepOutcome:
    archive, source, src, tree = extract_release(ctx)
    ctx.say(f"{archive.name} ({source.kind}) verified and extracted to {src}")
    return StepOutcome(detail=f"{archive.name} verified, extracted", facts={
        "archive": str(archive), "source": source.kind, "tree_sha256": tree})
