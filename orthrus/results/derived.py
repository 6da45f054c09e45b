"""Metrics derived from records and summary rows, each written once (definitions: docs/metrics.md).

- ``pooled_acceptance``: acceptance length per request (mean), token-weighted (all cycles of all
  requests pooled) and by position (pooled), over a group of records;
- ``ar_counterpart``: the AR cell measured with the same prompts, context and settings as a cell
  (what ``speedup_vs_ar`` divides by and what KV overhead subtracts); ``counterpart_key``: within
  the two cells, records pair by prompt, and by node too when the run spans several nodes;
- ``kv_overhead_bytes``: a cell's peak KV bytes beyond its AR counterpart's (0 for AR itself);
- ``batch1_counterpart``: the same engine with the same settings at batch size 1 (what batch
  invariance compares a batched cell's tokens with, and what ``*_vs_batch1`` ratios divide by).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from orthrus.engines.base import GenerationResult
from orthrus.results.vocabulary import AR_ENGINE, AR_MATCH, COLUMN, FIELD

# cell parameters an AR counterpart must share with a cell (the vocabulary's ``ar_match`` axes; the
# model and engine settings may differ: a DLM is compared with the AR model); a parameter neither row
# has is not compared
AR_MATCH_KEYS = AR_MATCH


def is_present(value: Any) -> bool:
    """Not None and not NaN (pandas turns a missing figure into NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def values_equal(a: Any, b: Any) -> bool:
    """Equal as values: both absent, or equal as numbers, or equal as text."""
    if a == b or (not is_present(a) and not is_present(b)):
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def acceptance_by_position(drafted_per_cycle: list[int], accepted_per_cycle: list[int]) -> list[float]:
    """Fraction of cycles drafting position j in which it was accepted: GenerationResult's definition."""
    cycles = GenerationResult(
        tokens=[], prompt_tokens=0, drafted_per_cycle=drafted_per_cycle, accepted_per_cycle=accepted_per_cycle
    )
    return cycles.acceptance_by_position


def pooled_acceptance(
    records: Iterable[dict[str, Any]],
) -> tuple[float | None, float | None, list[float] | None]:
    """(mean of per-request acceptance lengths, token-weighted acceptance length, pooled acceptance
    by position) over ok records; None where no record drafted."""
    per_request: list[float] = []
    drafted: list[int] = []
    accepted: list[int] = []
    for r in records:
        if r.get(FIELD.acceptance_length) is not None:
            per_request.append(float(r[FIELD.acceptance_length]))
        if r.get("accepted_per_cycle"):
            accepted.extend(r["accepted_per_cycle"])
            drafted.extend(r.get("drafted_per_cycle") or [max(r["accepted_per_cycle"])] * len(r["accepted_per_cycle"]))
    mean = float(np.mean(per_request)) if per_request else None
    weighted = float(sum(accepted) / len(accepted)) if accepted else None
    return mean, weighted, acceptance_by_position(drafted, accepted) if drafted else None


def compiled(row: dict[str, Any]) -> bool:
    """The cell's engine runs compiled (its ``compile`` option)."""
    return bool((row.get("engine_options") or {}).get("compile"))


def ar_counterpart(row: dict[str, Any], rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The AR row among ``rows`` (cells or summary rows) measured like ``row``: compiled when ``row``
    is (eager when it is not), then the same model first."""
    candidates = [
        other
        for other in rows
        if other.get("engine") == AR_ENGINE
        and all(values_equal(other.get(k), row.get(k)) for k in AR_MATCH_KEYS if k in other or k in row)
    ]
    alike = [other for other in candidates if compiled(other) == compiled(row)] or candidates
    same_model = [other for other in alike if values_equal(other.get("model"), row.get("model"))]
    return (same_model or alike or [None])[0]


def batch1_counterpart(cell: dict[str, Any], cells: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The cell among ``cells`` (cell parameters, with ``cell_id``) equal to ``cell`` in every
    parameter but ``batch_size``, at batch size 1; None when the run has none (or ``cell`` is at 1)."""
    if not is_present(cell.get("batch_size")) or int(cell["batch_size"]) == 1:
        return None
    keys = set(cell) - {"batch_size", "cell_id"}
    for other in cells:
        if not is_present(other.get("batch_size")) or int(other["batch_size"]) != 1:
            continue
        if set(other) - {"batch_size", "cell_id"} == keys and all(values_equal(other[k], cell[k]) for k in keys):
            return other
    return None


def spans_nodes(records: Iterable[dict[str, Any]]) -> bool:
    """The records name more than one node (a distributed run over several machines)."""
    return len({r.get("node") for r in records if r.get("node") is not None}) > 1


def counterpart_key(record: dict[str, Any], by_node: bool) -> str:
    """What a record is paired with in its AR counterpart cell: its prompt, and, when the run spans
    several nodes (``spans_nodes``), also the node that measured it, so that a speedup divides
    times measured on the same machine (a node left unnamed, e.g. a local resume, pairs by prompt)."""
    prompt = str(record["prompt_id"])
    return f"{record.get('node')}\x1f{prompt}" if by_node and record.get("node") is not None else prompt


def kv_overhead_bytes(row: dict[str, Any], rows: Iterable[dict[str, Any]]) -> float | None:
    """``kv_cache_bytes_peak_max`` of a summary row minus that of its AR counterpart (0 for AR)."""
    own = row.get(COLUMN.kv_cache_bytes_peak_max)
    if not is_present(own):
        return None
    if row.get("engine") == AR_ENGINE:
        return 0.0
    ar = ar_counterpart(row, rows)
    theirs = ar.get(COLUMN.kv_cache_bytes_peak_max) if ar is not None else None
    return float(own) - float(theirs) if is_present(theirs) else None


# ----------------------------------------------------------------------------- the cost model
# A draft-verify cycle of a dual-view engine costs two forward passes over a block of K tokens
# (draft, verify) and commits accepted + 1 tokens; AR commits one token per one-token pass. So the
# predicted speedup over AR is (accepted + 1) / 2 x t_fwd(1) / t_fwd(K). Both times come from the
# run's own records: the mean time of a pass after the prefill, (e2e - ttft) / passes after the
# prefill, in the AR counterpart cell (t_fwd(1)) and in the dual-view cell (t_fwd(K), the mean of its
# draft and verify passes; the last, shorter block and any one-token tail step are included).
COST_MODEL_KIND = "dual_view"  # the engines' model_kind the cost model describes (Orthrus)


def time_per_pass_after_prefill_ms(record: dict[str, Any]) -> float | None:
    """(e2e_ms - ttft_ms) / forward passes after the prefill, for an ok record that counted its passes."""
    if record.get("status", "ok") != "ok":
        return None
    e2e, ttft, passes = record.get(FIELD.e2e_ms), record.get(FIELD.ttft_ms), record.get("forward_passes")
    if not (is_present(e2e) and is_present(ttft) and is_present(passes)):
        return None
    prefill = (record.get("forward_passes_by_kind") or {}).get("prefill", 1)  # docs/metrics.md: the prefill is one
    after = float(passes) - float(prefill)
    if after <= 0 or float(e2e) <= float(ttft):
        return None
    return (float(e2e) - float(ttft)) / after


def median_time_per_pass_ms(records: Iterable[dict[str, Any]]) -> float | None:
    """The median of ``time_per_pass_after_prefill_ms`` over records (None when none has one)."""
    times = [t for t in (time_per_pass_after_prefill_ms(r) for r in records) if t is not None]
    return float(np.median(times)) if times else None


def cost_model_speedup(accepted_per_cycle: float, t_fwd_1_ms: float, t_fwd_k_ms: float) -> float:
    """Predicted speedup over AR: (accepted + 1) / 2 x t_fwd(1) / t_fwd(K)."""
    return (accepted_per_cycle + 1) / 2 * t_fwd_1_ms / t_fwd_k_ms


def _is_cost_model_engine(name: Any) -> bool:
    from orthrus.engines import engine_class
    from orthrus.errors import UserInputError

    try:
        return engine_class(str(name)).model_kind == COST_MODEL_KIND
    except UserInputError:  # an engine this version does not know (an old run)
        return False


def cost_model(rows: Iterable[dict[str, Any]], records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Predicted vs measured speedup for every summary row of a dual-view engine with an AR
    counterpart in ``rows``: accepted drafts per cycle (token-weighted), t_fwd(1) and t_fwd(K) from
    the records of the two cells, the cost model's speedup, ``speedup_vs_ar`` as measured (whole
    calls, prefill included) and their ratio. Rows lacking a figure carry None for what follows."""
    rows = list(rows)
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_cell.setdefault(str(record.get("cell_id")), []).append(record)
    out = []
    for row in rows:
        if not _is_cost_model_engine(row.get("engine")):
            continue
        ar = ar_counterpart(row, rows)
        if ar is None:
            continue
        accepted = row.get(COLUMN.acceptance_length_token_weighted)
        t1 = median_time_per_pass_ms(by_cell.get(str(ar.get("cell_id")), []))
        tk = median_time_per_pass_ms(by_cell.get(str(row.get("cell_id")), []))
        measured = row.get(COLUMN.speedup_vs_ar)
        known = is_present(accepted) and t1 is not None and tk is not None and tk > 0
        predicted = cost_model_speedup(float(accepted), t1, tk) if known else None
        out.append(
            {
                "cell_id": row.get("cell_id"),
                "label": row.get("label") if is_present(row.get("label")) else row.get("engine"),
                "engine": row.get("engine"),
                "model": row.get("model"),
                "block_size": row.get("block_size"),
                "context_length": row.get("context_length"),
                "accepted_per_cycle": float(accepted) if is_present(accepted) else None,
                "t_fwd_1_ms": t1,
                "t_fwd_k_ms": tk,
                "t_fwd_k_over_t_fwd_1": tk / t1 if t1 and tk is not None else None,
                "speedup_predicted": predicted,
                "speedup_measured": float(measured) if is_present(measured) else None,
                "measured_over_predicted": float(measured) / predicted if predicted and is_present(measured) else None,
            }
        )
    return out
