"""The notes' vLLM 0.2.2 calls mapped onto the installed engine: which engine it is (V0 or V1), the LLM()
arguments and the SamplingParams it still accepts, and one line for each thing that changed.

Runs inside the target environment with stdlib only (generate.py hands it vLLM's classes; it never imports
the toolkit, nor vllm itself).

What changed between 0.2.2 and the V1 engine (0.26.0's sources: vllm/sampling_params.py,
vllm/entrypoints/llm.py, vllm/engine/arg_utils.py, docs/usage/v1_guide.md):

- ``best_of``: removed from SamplingParams. 0.2.2 sampled ``best_of`` sequences and returned the ``n`` with
  the highest cumulative log-probability; the smoke asks for ``n = best_of`` with ``logprobs=0`` (which makes
  V1 add up each completion's log-probabilities) and keeps the ``n`` best itself. V1's log-probabilities are
  the model's raw ones (``logprobs_mode`` raw_logprobs), 0.2.2's came after temperature and penalties.
- ``use_beam_search``, ``length_penalty``, ``early_stopping``: removed; beam search is
  ``LLM.beam_search(prompts, BeamSearchParams(beam_width, max_tokens, length_penalty=...))`` (no
  early_stopping).
- ``logits_processors``: per-request processors removed; V1 takes logits-processor classes once, in
  ``LLM(logits_processors=[...])``.
- ``top_k=-1`` (every token): 0 means that now; -1 is still accepted, so nothing to map (the notes use 3).
- ``swap_space`` (LLM/EngineArgs): removed with the CPU swap blocks; a preempted request is recomputed.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re

ENGINES = ("v0", "v1")
V1_ONLY_FROM = (0, 11)      # the V0 engine's code was removed in 0.11; V1 is the default since 0.8

# Each 0.2.2 SamplingParams argument the V1 engine no longer accepts, and what replaces it.
REMOVED_SAMPLING = {
    "best_of": "removed in the V1 engine",
    "use_beam_search": ("removed from SamplingParams: beam search is LLM.beam_search(prompts, "
                        "BeamSearchParams(beam_width, max_tokens, length_penalty=...)); the smoke samples"),
    "length_penalty": "removed from SamplingParams: only BeamSearchParams has it (LLM.beam_search)",
    "early_stopping": "removed: LLM.beam_search has no early_stopping",
    "logits_processors": ("per-request logits processors were removed: V1 takes logits-processor classes once, "
                          "in LLM(logits_processors=[...])"),
}
REMOVED_LLM_ARGS = {
    "swap_space": ("removed in the V1 engine with the CPU swap blocks (GPU↔CPU KV-cache swapping): a preempted "
                   "request is recomputed; no '# CPU blocks' any more"),
}


def _version_tuple(text: str) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else ()


def detect_engine(requested: str = "auto") -> tuple[str, str]:
    """(engine, why): the caller's choice, else V1 for a vLLM from 0.11 on (read from its metadata)."""
    if requested in ENGINES:
        return requested, "given (--engine)"
    if os.environ.get("VLLM_USE_V1") == "0":
        return "v0", "VLLM_USE_V1=0"
    try:
        from importlib.metadata import version
        installed = version("vllm")
    except Exception:
        return "v0", "vllm's version is unknown"
    engine = "v1" if _version_tuple(installed) >= V1_ONLY_FROM else "v0"
    return engine, f"vllm {installed}"


def accepted_names(cls) -> set[str] | None:
    """The keyword arguments a vLLM class accepts: a msgspec struct's fields (V1's SamplingParams), a
    dataclass's fields (EngineArgs), else its __init__ signature; None when it takes any (**kwargs)."""
    fields = getattr(cls, "__struct_fields__", None)
    if fields:
        return {f for f in fields if not f.startswith("_")}
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls) if f.init}
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {name for name in params if name != "self"}


def map_llm_args(wanted: dict, accepted: set[str] | None) -> tuple[dict, list[str]]:
    """LLM() keyword arguments this vLLM accepts, and a line for each one dropped."""
    if accepted is None:
        return dict(wanted), []
    kept, changes = {}, []
    for key, value in wanted.items():
        if key in accepted or key == "model":
            kept[key] = value
        else:
            why = REMOVED_LLM_ARGS.get(key, "not accepted by this vLLM's engine arguments")
            changes.append(f"{key}={value!r}: {why}; dropped")
    return kept, changes


def map_sampling(wanted: dict, accepted: set[str] | None) -> tuple[dict, list[str], int | None]:
    """(SamplingParams keyword arguments, a line for each change, how many completions to keep a prompt).

    The last is None when the engine returns exactly what was asked for; with ``best_of`` emulated it is the
    notes' ``n``: the caller keeps that many completions, those with the highest cumulative log-probability.
    """
    if accepted is None:
        return dict(wanted), [], None
    params, changes, keep = {}, [], None
    n = int(wanted.get("n") or 1)
    for key, value in wanted.items():
        if key in accepted:
            params[key] = value
            continue
        if key == "best_of":
            if value is None or int(value) <= n:
                changes.append(f"best_of={value!r}: {REMOVED_SAMPLING['best_of']}; equal to n, so nothing to choose")
                continue
            if "logprobs" not in accepted:
                changes.append(f"best_of={value!r}: {REMOVED_SAMPLING['best_of']} and this SamplingParams has no "
                               "logprobs to rank completions by; dropped")
                continue
            keep = n
            changes.append(f"best_of={value}: {REMOVED_SAMPLING['best_of']}; the smoke asks for n={value} with "
                           f"logprobs=0 and keeps the {n} with the highest cumulative logprob, as 0.2.2's best_of "
                           "did (V1 ranks by the model's raw logprobs, 0.2.2 by the processed ones)")
        else:
            why = REMOVED_SAMPLING.get(key, "not accepted by this vLLM's SamplingParams")
            changes.append(f"{key}={value!r}: {why}; dropped")
    if keep is not None:
        params["n"] = int(wanted["best_of"])
        if params.get("logprobs") is None:
            params["logprobs"] = 0
    return params, changes, keep


def best_completions(completions: list, keep: int | None) -> list:
    """The ``keep`` completions with the highest cumulative logprob (all of them when keep is None)."""
    if keep is None:
        return list(completions)

    def score(c):
        value = getattr(c, "cumulative_logprob", None)
        return float("-inf") if value is None else value

    return sorted(completions, key=score, reverse=True)[:keep]


# A traceback's last line in the engine-core process's output, behind its "(EngineCore pid=N) " prefix.
_ROOT_CAUSE = re.compile(r"^(?:\x1b\[[0-9;]*m)?(?:\([\w-]+ pid=\d+\)(?:\x1b\[[0-9;]*m)? )?"
                         r"([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", re.M)


def engine_core_root_cause(log_text: str) -> str | None:
    """Under V1, ``LLM()`` raises only 'Engine core initialization failed. See root cause above.': the cause
    is the last exception the engine-core process printed (e.g. not one max_model_len request fits)."""
    found = [m for m in _ROOT_CAUSE.finditer(log_text or "")
             if not m.group(2).startswith("Engine core initialization failed")]
    return f"{found[-1].group(1)}: {found[-1].group(2).strip()}" if found else None
