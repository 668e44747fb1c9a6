"""fetch: the release archive into the shared cache (verified), extracted into <workspace>/src."""

from __future__ import annotations

import json

from ..extract import tree_sha256
from ..pipeline import StepContext, StepOutcome
from ..sources import extract_to, obtain

MARKER = ".vllmp-source.json"


def stamp_inputs(ctx: StepContext) -> dict:
    return {"release": ctx.plan.release.version, "sources": ctx.plan.to_dict()["sources"]}


def intact(ctx: StepContext) -> bool:
    return (ctx.workspace.src / MARKER).is_file()


def run(ctx: StepContext) -> StepOutcome:
    archive, source = obtain(ctx.plan)
    src = extract_to(archive, ctx.workspace.src)
    tree = tree_sha256(src)
    (src / MARKER).write_text(json.dumps({"archive": archive.name, "kind": source.kind, "tree_sha256": tree}))
    ctx.say(f"{archive.name} ({source.kind}) verified and extracted to {src}")
    return StepOutcome(detail=f"{archive.name} verified, extracted", facts={
        "archive": str(archive), "source": source.kind, "tree_sha256": tree})
