"""Metrics derived from records and summary rows, each written once (definitions: METRICS.md).

- ``pooled_acceptance``: acceptance length per request (mean), token-weighted (all cycles of all
  requests pooled) and by position (pooled), over a group of records;
- ``ar_counterpart``: the AR cell measured with the same prompts, context and settings as a cell
  (what ``speedup_vs_ar`` divides by and what KV overhead subtracts);
- ``kv_overhead_bytes``: a cell's peak KV bytes beyond its AR counterpart's (0 for AR itself).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from orthrus.engines.base import GenerationResult

AR_ENGINE = "ar"
# cell parameters an AR counterpart must share with a cell (the model and engine settings may
# differ: a DLM is compared with the AR model); a parameter neither row has is not compared
AR_MATCH_KEYS = (
    "prompt_source",
    "context_length",
    "temperature",
    "top_k",
    "top_p",
    "max_new_tokens",
    "batch_size",
    "device",
    "dtype",
    "seed",
    "stop_at_eos",
    "category",
)


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
        if r.get("acceptance_length") is not None:
            per_request.append(float(r["acceptance_length"]))
        if r.get("accepted_per_cycle"):
            accepted.extend(r["accepted_per_cycle"])
            drafted.extend(r.get("drafted_per_cycle") or [max(r["accepted_per_cycle"])] * len(r["accepted_per_cycle"]))
    mean = float(np.mean(per_request)) if per_request else None
    weighted = float(sum(accepted) / len(accepted)) if accepted else None
    return mean, weighted, acceptance_by_position(drafted, accepted) if drafted else None


def ar_counterpart(row: dict[str, Any], rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The AR row among ``rows`` (cells or summary rows) measured like ``row``; the same model first."""
    candidates = [
        other
        for other in rows
        if other.get("engine") == AR_ENGINE
        and all(values_equal(other.get(k), row.get(k)) for k in AR_MATCH_KEYS if k in other or k in row)
    ]
    same_model = [other for other in candidates if values_equal(other.get("model"), row.get("model"))]
    return (same_model or candidates or [None])[0]


def kv_overhead_bytes(row: dict[str, Any], rows: Iterable[dict[str, Any]]) -> float | None:
    """``kv_cache_bytes_peak_max`` of a summary row minus that of its AR counterpart (0 for AR)."""
    own = row.get("kv_cache_bytes_peak_max")
    if not is_present(own):
        return None
    if row.get("engine") == AR_ENGINE:
        return 0.0
    ar = ar_counterpart(row, rows)
    theirs = ar.get("kv_cache_bytes_peak_max") if ar is not None else None
    return float(own) - float(theirs) if is_present(theirs) else None
