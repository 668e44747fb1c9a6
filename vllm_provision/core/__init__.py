"""The base layer: errors, settings and their layered config, the command runner, console output, progress,
redaction, workspaces, the env contract and the timings page. Imports nothing above it."""
