"""Aggregate results.jsonl into one row per cell (pandas): medians, p90/p99, speedup vs AR, identity.

Definitions are those of METRICS.md:
* latencies: medians and p90/p99 over prompts x repetitions (ok records only);
* ``itl_ms_p*``: pooled over every inter-token gap of every ok record;
* ``acceptance_length_mean``: per-request acceptance lengths averaged; ``..._token_weighted``: all
  cycles of all requests pooled; ``acceptance_by_position``: pooled over all cycles;
* ``speedup_vs_ar``: per prompt, median e2e of the ``ar`` cell with the same prompt source, context,
  sampling, max_new_tokens, batch size, device and dtype / median e2e of this cell; then the
  geometric mean over prompts, with a bootstrap 95% interval over prompts (None below 2 prompts).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orthrus.bench.records import SUMMARY_COLUMNS
from orthrus.bench.store import record_key, write_json

AR_ENGINE = "ar"
# cell parameters an AR counterpart must share with a cell (model and engine settings may differ)
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
)
BOOTSTRAP_SAMPLES = 2000


def dedupe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (cell, prompt, repeat): the first ok one, else the first (merge and resume safety)."""
    chosen: dict[tuple, dict[str, Any]] = {}
    for record in records:
        key = record_key(record)
        if key not in chosen or (chosen[key].get("status") != "ok" and record.get("status") == "ok"):
            chosen[key] = record
    return list(chosen.values())


def _values(records: list[dict[str, Any]], name: str) -> np.ndarray:
    return np.array([r[name] for r in records if r.get(name) is not None], dtype=float)


def _stat(values: np.ndarray, how: str) -> float | None:
    if values.size == 0:
        return None
    if how == "median":
        return float(np.median(values))
    if how == "mean":
        return float(np.mean(values))
    if how == "max":
        return float(np.max(values))
    return float(np.percentile(values, float(how[1:])))


def _per_prompt_e2e(records: list[dict[str, Any]]) -> dict[str, float]:
    by_prompt: dict[str, list[float]] = {}
    for r in records:
        if r.get("status") == "ok" and r.get("e2e_ms"):
            by_prompt.setdefault(str(r["prompt_id"]), []).append(float(r["e2e_ms"]))
    return {p: float(np.median(v)) for p, v in by_prompt.items()}


def geometric_mean_ci(ratios: list[float], seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """Geometric mean of ratios and its bootstrap 95% interval over the ratios (None below 2)."""
    if not ratios:
        return None, None, None
    logs = np.log(np.array(ratios, dtype=float))
    point = float(np.exp(logs.mean()))
    if len(logs) < 2:
        return point, None, None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(logs), size=(BOOTSTRAP_SAMPLES, len(logs)))
    means = np.exp(logs[draws].mean(axis=1))
    return point, float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _acceptance(records: list[dict[str, Any]]) -> tuple[float | None, float | None, list[float] | None]:
    per_request = [r["acceptance_length"] for r in records if r.get("acceptance_length") is not None]
    drafted: list[int] = []
    accepted: list[int] = []
    for r in records:
        if r.get("accepted_per_cycle"):
            accepted.extend(r["accepted_per_cycle"])
            drafted.extend(r.get("drafted_per_cycle") or [max(r["accepted_per_cycle"])] * len(r["accepted_per_cycle"]))
    mean = float(np.mean(per_request)) if per_request else None
    weighted = float(sum(accepted) / len(accepted)) if accepted else None
    by_position = None
    if drafted:
        width = max(drafted)
        by_position = []
        for j in range(1, width + 1):
            tried = sum(1 for d in drafted if d >= j)
            kept = sum(1 for d, a in zip(drafted, accepted) if d >= j and a >= j)
            by_position.append(kept / tried if tried else 0.0)
    return mean, weighted, by_position


def _metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if r.get("status") == "ok"]
    row: dict[str, Any] = {"n_ok": len(ok), "n_failed": len(records) - len(ok)}
    row["new_tokens_median"] = _stat(_values(ok, "new_tokens"), "median")
    for name in ("ttft_ms", "tpot_ms", "e2e_ms"):
        values = _values(ok, name)
        for how in ("median", "p90", "p99"):
            row[f"{name}_{how}"] = _stat(values, how)
    gaps = np.array([g for r in ok for g in (r.get("itl_ms") or [])], dtype=float)
    for how in ("p50", "p90", "p99"):
        row[f"itl_ms_{how}"] = _stat(gaps, how)
    row["decode_tokens_per_s_median"] = _stat(_values(ok, "decode_tokens_per_s"), "median")
    row["tokens_per_forward_median"] = _stat(_values(ok, "tokens_per_forward"), "median")
    mean, weighted, by_position = _acceptance(ok)
    row["acceptance_length_mean"] = mean
    row["acceptance_length_token_weighted"] = weighted
    row["acceptance_by_position"] = by_position
    identity = [bool(r["identity_exact"]) for r in ok if r.get("identity_exact") is not None]
    row["identity_exact_rate"] = float(np.mean(identity)) if identity else None
    row["match_fraction_mean"] = _stat(_values(ok, "match_fraction"), "mean")
    row["divergence_margin_median"] = _stat(_values(ok, "divergence_margin"), "median")
    row["ar_nll_mean"] = _stat(_values(ok, "ar_nll"), "mean")
    for name in (
        "kv_cache_bytes_peak",
        "nvml_device_used_mib",
        "nvml_process_used_mib",
        "torch_max_allocated_mib",
        "torch_max_reserved_mib",
        "rss_peak_mib",
    ):
        row[f"{name}_max"] = _stat(_values(ok, name), "max")
    row["memory_bandwidth_gb_s_median"] = _stat(_values(ok, "memory_bandwidth_gb_s"), "median")
    row["tokens_per_step_median"] = _stat(_values(ok, "tokens_per_step"), "median")
    row["harness_overhead_ms_median"] = _stat(_values(ok, "harness_overhead_ms"), "median")
    return row


def _lossless(records: list[dict[str, Any]]) -> bool | None:
    for r in records:
        value = (r.get("extra") or {}).get("lossless")
        if value is not None:
            return bool(value)
    return None


def _ar_counterpart(cell: dict[str, Any], cells: dict[str, dict[str, Any]]) -> str | None:
    candidates = [
        cid
        for cid, other in cells.items()
        if other.get("engine") == AR_ENGINE and all(other.get(k) == cell.get(k) for k in AR_MATCH_KEYS)
    ]
    same_model = [cid for cid in candidates if cells[cid].get("model") == cell.get("model")]
    return (same_model or candidates or [None])[0]


def summarize(records: list[dict[str, Any]], by_category: bool = False) -> pd.DataFrame:
    """One row per cell (or per cell and category): cell parameters, then SUMMARY_COLUMNS."""
    records = dedupe(records)
    cells: dict[str, dict[str, Any]] = {}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        cells.setdefault(r["cell_id"], r.get("cell") or {})
        key = (r["cell_id"], r.get("category")) if by_category else (r["cell_id"],)
        groups.setdefault(key, []).append(r)
    e2e_by_cell = {cid: _per_prompt_e2e([r for r in records if r["cell_id"] == cid]) for cid in cells}
    rows = []
    for key, group in groups.items():
        cell_id = key[0]
        cell = cells[cell_id]
        row: dict[str, Any] = {"cell_id": cell_id, **cell}
        if by_category:
            row["category"] = key[1]
        row["lossless"] = _lossless(group)
        row.update(_metrics(group))
        ar_id = _ar_counterpart(cell, cells)
        speedup = (None, None, None)
        if ar_id is not None:
            mine = _per_prompt_e2e(group)
            theirs = e2e_by_cell[ar_id]
            ratios = [theirs[p] / mine[p] for p in mine if p in theirs and mine[p] > 0]
            speedup = geometric_mean_ci(ratios)
        row["speedup_vs_ar"], row["speedup_vs_ar_ci_low"], row["speedup_vs_ar_ci_high"] = speedup
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    front = [c for c in frame.columns if c not in SUMMARY_COLUMNS]
    return frame[front + [c for c in SUMMARY_COLUMNS if c in frame.columns]]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return _clean(value.item())
    return value


def frame_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _clean(v) for k, v in row.items()} for row in frame.to_dict("records")]


def write_summary(run_dir: Path, records: list[dict[str, Any]]) -> pd.DataFrame:
    """summary.csv / summary.json (and the per-category pair when prompts have categories)."""
    frame = summarize(records)
    _write_pair(run_dir, "summary", frame)
    if any(r.get("category") is not None for r in records):
        _write_pair(run_dir, "summary_by_category", summarize(records, by_category=True))
    return frame


def _write_pair(run_dir: Path, stem: str, frame: pd.DataFrame) -> None:
    rows = frame_rows(frame)
    write_json(run_dir / f"{stem}.json", rows)
    csv = frame.copy()
    for column in ("engine_options", "acceptance_by_position"):
        if column in csv.columns:
            csv[column] = [json.dumps(_clean_list(v)) if v is not None else "" for v in csv[column]]
    csv.to_csv(run_dir / f"{stem}.csv", index=False)


def _clean_list(value: Any) -> Any:
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return _clean(value)


def overhead_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Harness time outside generate(), per measurement and as a share of the measured time."""
    ok = [r for r in records if r.get("status") == "ok" and r.get("harness_overhead_ms") is not None]
    if not ok:
        return {"measurements": 0, "overhead_ms_median": None, "overhead_pct": None}
    overhead = np.array([r["harness_overhead_ms"] for r in ok], dtype=float)
    e2e = np.array([r["e2e_ms"] for r in ok], dtype=float)
    return {
        "measurements": len(ok),
        "overhead_ms_median": float(np.median(overhead)),
        "overhead_ms_max": float(np.max(overhead)),
        "measured_ms_total": float(e2e.sum()),
        "overhead_ms_total": float(overhead.sum()),
        "overhead_pct": float(100 * overhead.sum() / e2e.sum()) if e2e.sum() > 0 else None,
    }


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_table(frame: pd.DataFrame) -> str:
    """A compact, fixed-width view of the summary for the terminal."""
    if frame.empty:
        return "(no measurements)"
    lines = []
    header = (
        f"{'engine':<16} {'source':<12} {'ctx':>5} {'blk':>4} {'T':>4} {'new':>4} {'ok/n':>6} "
        f"{'e2e ms':>9} {'tok/s':>7} {'TPF':>5} {'acc':>5} {'speedup [95% CI]':>20} {'ident':>5} "
        f"{'KV MiB':>7} {'RSS MiB':>8}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for row in frame_rows(frame):
        n = (row.get("n_ok") or 0) + (row.get("n_failed") or 0)
        speedup = _fmt(row.get("speedup_vs_ar"), ".2f")
        if row.get("speedup_vs_ar_ci_low") is not None:
            speedup += f" [{row['speedup_vs_ar_ci_low']:.2f},{row['speedup_vs_ar_ci_high']:.2f}]"
        kv = row.get("kv_cache_bytes_peak_max")
        lines.append(
            f"{str(row.get('label') or row.get('engine'))[:16]:<16} {str(row.get('prompt_source'))[:12]:<12} "
            f"{_fmt(row.get('context_length'), '.0f'):>5} {_fmt(row.get('block_size'), '.0f'):>4} "
            f"{_fmt(row.get('temperature'), '.1f'):>4} {_fmt(row.get('max_new_tokens'), '.0f'):>4} "
            f"{str(row.get('n_ok') or 0) + '/' + str(n):>6} {_fmt(row.get('e2e_ms_median')):>9} "
            f"{_fmt(row.get('decode_tokens_per_s_median')):>7} {_fmt(row.get('tokens_per_forward_median'), '.2f'):>5} "
            f"{_fmt(row.get('acceptance_length_mean'), '.2f'):>5} {speedup:>20} "
            f"{_fmt(row.get('identity_exact_rate'), '.2f'):>5} "
            f"{_fmt(kv / 2**20 if kv is not None else None, '.2f'):>7} {_fmt(row.get('rss_peak_mib_max'), '.0f'):>8}"
        )
    return "\n".join(lines)
