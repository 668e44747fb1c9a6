"""docs/configuration.md's settings table is generated from the schema: it names every setting and
cannot drift from it."""

from __future__ import annotations

from vllm_provision.core import settings_reference
from vllm_provision.core.settings import field_of


def test_the_committed_table_is_the_generated_one():
    text = settings_reference.DOC.read_text()
    assert settings_reference.render(text) == text, "docs/configuration.md is stale: run ./inv settings-doc"


def test_every_row_is_a_setting_of_the_schema_with_its_form():
    rows = [line.split("|")[1:-1] for line in settings_reference.table().splitlines()[2:]]
    keys = [r[0].strip().strip("`") for r in rows]
    assert {"fetch.mirrors", "build.critical_unit_cores", "smoke.parity", "verify.import_timeout"} <= set(keys)
    for key, row in zip(keys, rows, strict=True):
        info = field_of(tuple(key.split(".")))
        assert info is not None and row[2].strip() == (info.description or "").replace("|", "/")
        assert row[1].strip() == f"`VLLMP_{key.upper().replace('.', '__')}`"
