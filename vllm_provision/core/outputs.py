"""The `--json` outputs' contract: each JSON object a task prints carries `schema_version` and `kind`, and
follows vllm_provision/schemas/<schema>.schema.json (docs/schemas.md lists them). A change that removes or
renames a key, or changes its meaning, raises SCHEMA_VERSION; a key added is no change of version."""

from __future__ import annotations

SCHEMA_VERSION = 1
# kind -> its schema file under vllm_provision/schemas/
SCHEMAS = {"plan": "plan", "pipeline": "pipeline", "wheel": "wheel", "doctor": "checks", "verify": "checks",
           "nccl": "nccl", "error": "error", "fleet": "fleet"}


def stamped(kind: str, data: dict) -> dict:
    """`data` with its schema_version and kind first."""
    assert kind in SCHEMAS, kind
    return {"schema_version": SCHEMA_VERSION, "kind": kind} | data
