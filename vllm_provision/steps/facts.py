"""What crosses between the steps, the report, the artifact key and the fleet: statuses and each step's facts.

A step returns its facts as one of these types; the pipeline records them in the step's stamp and in
report.json as `to_dict()` gives them (the JSON is what it was when they were plain dicts); a reader of an
upstream step's facts loads them back through `from_dict`, which refuses a record it cannot read (an older
toolkit's, a renamed field) instead of reading it as empty. Imports nothing of the pipeline, so the report
and the fleet can read them too.
"""

from __future__ import annotations

from enum import Enum


class StepStatus(str, Enum):
    """A step's outcome in a run (report.json's step rows). A str, as CheckStatus is, so the JSON is unchanged."""
    OK = "ok"
    UP_TO_DATE = "up-to-date"       # its stamp matched: not run again
    SKIPPED = "skipped"             # ran, and had nothing to do here (smoke without a GPU, a partial build)
    FAILED = "failed"
    INTERRUPTED = "interrupted"     # Ctrl-C or SIGTERM
    NOT_RUN = "not run"             # asked for, but an earlier step failed or the run was interrupted

    def __str__(self) -> str:       # Enum's own str() is "StepStatus.OK"; format() follows __str__
        return self.value
