"""A closed vocabulary of words (statuses, sources) that JSON and messages show as the bare word."""

from __future__ import annotations

from enum import Enum


class Word(str, Enum):
    """A str, so json.dumps, f-strings and `== "ok"` see the bare value and every --json output reads as
    before; `enum.StrEnum` does the same but needs Python 3.11 (the toolkit runs on 3.10)."""

    def __str__(self) -> str:      # Enum's own str() is "Class.MEMBER"; format() follows __str__
        return self.value
