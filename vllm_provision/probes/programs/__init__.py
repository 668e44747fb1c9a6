"""Standalone probe programs, run by file path with a *target env's* interpreter (which does not have the
toolkit): each imports only the standard library (and what it probes), and answers one JSON object on the
last line of stdout. `vllm_provision.probes.program(name)` is the path; `probes.answer(output)` reads it."""
