"""fetch: the release archive into the shared cache (verified), extracted into <workspace>/src; for a
CMake-era release also every external source its configure would download (verified, trimmed, cached)."""

from __future__ import annotations

import json
from pathlib import Path

from vllm_provision.pipeline import StepContext, StepOutcome
from vllm_provision.sources import externals
from vllm_provision.sources.extract import tree_sha256
from vllm_provision.sources.release import cache_is_sound, extract_to, http_settings, obtain
from vllm_provision.steps.facts import FetchFacts

MARKER = ".vllmp-source.json"


def stamp_inputs(ctx: StepContext) -> dict:
    return {"release": ctx.plan.release.version, "sources": ctx.plan.to_dict()["sources"],
            "externals": {e.name: e.tree_sha256 for e in ctx.plan.release.externals}}


def intact(ctx: StepContext) -> bool:
    """src/ was extracted and the cache holds no corrupt copy: a corrupt one makes the step run
    again, which reports it, removes it and fetches it again (or names the fix when offline).
    Every external must still be verified in the cache too."""
    cache = ctx.plan.workspace.cache
    return ((ctx.workspace.src / MARKER).is_file() and cache_is_sound(ctx.plan)
            and all(externals.cached_archive(cache, e) for e in ctx.plan.release.externals))


def import_bundle(ctx: StepContext) -> None:
    bundle = ctx.plan.settings.fetch.bundle
    if bundle:
        path = Path(bundle).expanduser()
        count = externals.import_bundle(ctx.plan.release, path, ctx.plan.workspace.downloads,
                                        ctx.plan.workspace.cache, say=ctx.say)
        ctx.say(f"bundle {path}: {count} file(s) imported, the rest already in the cache")


def obtain_externals(ctx: StepContext) -> dict:
    if not ctx.plan.release.externals:
        return {}
    got = externals.obtain(ctx.plan.release, ctx.plan.workspace.cache, ctx.plan.settings.fetch, http_settings(ctx.plan),
                           offline=ctx.plan.offline, log=ctx.log, say=ctx.say)
    ctx.say(externals.summary(got))
    return {name: path.name for name, path in got.items()}


def extract_release(ctx: StepContext) -> tuple:
    """The verified archive extracted afresh into src/ (anything built or patched there is gone)."""
    archive, source = obtain(ctx.plan)
    src = extract_to(archive, ctx.workspace.src)
    tree = tree_sha256(src)
    (src / MARKER).write_text(json.dumps({"archive": archive.name, "kind": source.kind, "tree_sha256": tree}))
    return archive, source, src, tree


def run(ctx: StepContext) -> StepOutcome:
    import_bundle(ctx)
    got = obtain_externals(ctx)   # before the sdist is extracted: an offline host without them stops here
    archive, source, src, tree = extract_release(ctx)
    ctx.say(f"{archive.name} ({source.kind}) verified and extracted to {src}")
    detail = f"{archive.name} verified, extracted" + (f"; {len(got)} external sources verified" if got else "")
    return StepOutcome(detail=detail, facts=FetchFacts(str(archive), source.kind, tree, got))
