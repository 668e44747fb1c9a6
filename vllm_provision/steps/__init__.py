"""One module per pipeline step, each with `stamp_inputs(ctx)`, `run(ctx)` and optionally `intact(ctx)`; `facts`
holds what they hand on (statuses, each step's facts)."""
