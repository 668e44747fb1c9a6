"""One small error hierarchy; every error carries a hint that tells the user what to do."""

from __future__ import annotations


class ProvisionError(Exception):
    """A failure the user can act on. `exit_code` 1: a check or step failed."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, log_tail: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.log_tail = log_tail

    def __str__(self) -> str:  # keeps `str(exc)` a single line for logs
        return self.message


class ConfigError(ProvisionError):
    """Bad input: unknown release, malformed profile, missing file the user named. Exit 2."""

    exit_code = 2


class StepFailed(ProvisionError):
    """A pipeline step ran and failed (download, install, compile, check). Exit 1.

    `facts`: what the step found before it failed (verify's checks), kept in its result."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, log_tail: str | None = None,
                 facts: dict | None = None):
        super().__init__(message, hint, log_tail)
        self.facts = facts or {}


class NotBuiltYet(ConfigError):
    """A step was asked for before the steps it needs have run. Exit 2."""
