"""Env backends: one module each (venv, conda, existing), each with a `create(ctx, prefix) -> Path` (the env's python)."""
