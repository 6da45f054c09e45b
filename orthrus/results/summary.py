"""Aggregate records into one row per cell (pandas): medians, p90/p99, speedup vs AR, identity.

Both the harness (summary.csv/json at the end of a run or a merge) and the report (a run without
summary.json) build summaries here. Definitions are those of METRICS.md:
* latencies: medians and p90/p99 over prompts x repetitions (ok records only);
* ``itl_ms_p*``: pooled over every inter-token gap of every ok record;
* acceptance: ``orthrus.results.derived.pooled_acceptance``;
* ``speedup_vs_ar``: per prompt, median e2e of the AR counterpart cell (``derived.ar_counterpart``)
  / median e2e of this cell; then the geometric mean over prompts, with a bootstrap 95% interval
  over prompts (None below 2 prompts); when records name several nodes, per (node, prompt): only
  times measured on the same node are divided (``derived.counterpart_key``);
* batches (``sweep.batch_sizes``): per-row figures as above (each row is one record); batch figures
  once per decoded batch (``batch_tokens_per_s_median``: total throughput, ...);
  ``identity_vs_batch1_rate``: rows whose tokens equal the same engine's at batch size 1;
  ``tokens_per_forward_vs_batch1`` / ``batch_tokens_per_s_vs_batch1``: this cell over its batch-1
  cell (``derived.batch1_counterpart``); ``throughput_speedup_vs_ar``: per batch, AR batch e2e /
  this batch's e2e (the same prompts, the same batch size), geometric mean with its interval;
* ``n_skipped``: cells not measured on purpose (an engine that cannot batch), never failures;
* the engine's facts (``ENGINE_FACTS``: block size actually used, KV bytes per token, lossless) as
  the records state them; ``block_size`` is the one the engine used, also when the suite said null.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orthrus.results.derived import (
    ar_counterpart,
    batch1_counterpart,
    counterpart_key,
    is_present,
    pooled_acceptance,
    spans_nodes,
)
from orthrus.results.record import ENGINE_FACTS, record_key
from orthrus.results.rundir import SUMMARY_BY_CATEGORY_FILE, SUMMARY_FILE, write_json

# One row per cell in summary.csv / summary.json (cell parameters and engine facts in front of these).
SUMMARY_COLUMNS = (
    "n_ok",
    "n_failed",
    "n_skipped",  # records of a cell skipped on purpose (e.g. the engine cannot batch): not failures
    "new_tokens_median",
    "ttft_ms_median",
    "ttft_ms_p90",
    "ttft_ms_p99",
    "tpot_ms_median",
    "tpot_ms_p90",
    "tpot_ms_p99",
    "itl_ms_p50",
    "itl_ms_p90",
    "itl_ms_p99",
    "e2e_ms_median",
    "e2e_ms_p90",
    "e2e_ms_p99",
    "decode_tokens_per_s_median",
    "tokens_per_forward_median",
    "acceptance_length_mean",  # per request, then averaged
    "acceptance_length_token_weighted",  # pooled over all cycles of all requests
    "acceptance_by_position",  # list, pooled
    "speedup_vs_ar",  # geometric mean over prompts of ar e2e / engine e2e (same run, same settings)
    "speedup_vs_ar_ci_low",
    "speedup_vs_ar_ci_high",  # bootstrap 95% interval
    "identity_exact_rate",
    "match_fraction_mean",
    "divergence_margin_median",
    "ar_nll_mean",
    "kv_cache_bytes_peak_max",
    "kv_bytes_per_token",  # a fact of the engine's model (from the records), for KV gates
    "nvml_device_used_mib_max",
    "nvml_process_used_mib_max",
    "torch_max_allocated_mib_max",
    "torch_max_reserved_mib_max",
    "rss_peak_mib_max",
    "memory_bandwidth_gb_s_median",
    "tokens_per_step_median",
    "harness_overhead_ms_median",  # time per measurement spent outside generate()
    # batching (one record per row; batch figures counted once per decoded batch)
    "batch_rows_median",  # rows per decoded batch (the last batch of a cell may be smaller)
    "batch_tokens_per_s_median",  # total throughput: new tokens of all rows / the batch's e2e
    "batch_tokens_per_forward_median",  # all rows' tokens over all rows' own passes, per batch
    "batch_acceptance_length_median",  # accepted drafts per cycle pooled over a batch's rows
    "wasted_row_pass_fraction_mean",  # row-passes spent on rows that had already finished
    "batch_kv_cache_bytes_peak_max",  # K/V bytes a whole batch held
    "identity_vs_batch1_rate",  # rows identical to the same engine and settings at batch size 1
    "divergence_margin_vs_batch1_median",
    "tokens_per_forward_vs_batch1",  # tokens_per_forward_median / that of the batch-1 cell
    "batch_tokens_per_s_vs_batch1",  # batch_tokens_per_s_median / that of the batch-1 cell
    "throughput_speedup_vs_ar",  # per batch: AR batch e2e / this batch e2e; geometric mean
    "throughput_speedup_vs_ar_ci_low",
    "throughput_speedup_vs_ar_ci_high",  # bootstrap 95% interval over batches
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


def _per_prompt_e2e(records: list[dict[str, Any]], by_node: bool = False) -> dict[str, float]:
    """Median e2e per prompt (per node and prompt when the run spans several nodes)."""
    by_prompt: dict[str, list[float]] = {}
    for r in records:
        if r.get("status") == "ok" and r.get("e2e_ms"):
            by_prompt.setdefault(counterpart_key(r, by_node), []).append(float(r["e2e_ms"]))
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


def _metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if r.get("status") == "ok"]
    skipped = sum(1 for r in records if r.get("status") == "skipped")
    row: dict[str, Any] = {"n_ok": len(ok), "n_failed": len(records) - len(ok) - skipped, "n_skipped": skipped}
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
    mean, weighted, by_position = pooled_acceptance(ok)
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
    batches = list(_batches(ok).values())
    row["batch_rows_median"] = _stat(_values(batches, "batch_rows"), "median")
    row["batch_tokens_per_s_median"] = _stat(_values(batches, "batch_tokens_per_s"), "median")
    row["batch_tokens_per_forward_median"] = _stat(_values(batches, "batch_tokens_per_forward"), "median")
    row["batch_acceptance_length_median"] = _stat(_values(batches, "batch_acceptance_length"), "median")
    row["wasted_row_pass_fraction_mean"] = _stat(_values(batches, "batch_wasted_row_pass_fraction"), "mean")
    row["batch_kv_cache_bytes_peak_max"] = _stat(_values(batches, "batch_kv_cache_bytes_peak"), "max")
    invariant = [bool(r["identity_vs_batch1_exact"]) for r in ok if r.get("identity_vs_batch1_exact") is not None]
    row["identity_vs_batch1_rate"] = float(np.mean(invariant)) if invariant else None
    row["divergence_margin_vs_batch1_median"] = _stat(_values(ok, "divergence_margin_vs_batch1"), "median")
    return row


def _batches(records: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    """One record per decoded batch, keyed (batch_id, repeat): every row of a batch carries its figures."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for r in records:
        if r.get("batch_id") is not None:
            out.setdefault((int(r["batch_id"]), int(r["repeat"])), r)
    return out


def _per_batch_e2e(records: list[dict[str, Any]]) -> dict[int, float]:
    """Median batch e2e per batch_id over repetitions (ok rows)."""
    by_batch: dict[int, list[float]] = {}
    for (batch_id, _), r in _batches([r for r in records if r.get("status") == "ok"]).items():
        if r.get("batch_e2e_ms"):
            by_batch.setdefault(batch_id, []).append(float(r["batch_e2e_ms"]))
    return {b: float(np.median(v)) for b, v in by_batch.items()}


def _ratio(row: dict[str, Any], other: dict[str, Any] | None, column: str) -> float | None:
    mine, theirs = row.get(column), (other or {}).get(column)
    if not (is_present(mine) and is_present(theirs)) or not float(theirs):
        return None
    return float(mine) / float(theirs)


def _engine_facts(cell: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The facts the records state about the engine (ok records first); a cell no engine was built
    for keeps the block size the suite asked for."""
    ordered = [r for r in records if r.get("status") == "ok"] + [r for r in records if r.get("status") != "ok"]
    facts = {name: next((r[name] for r in ordered if r.get(name) is not None), None) for name in ENGINE_FACTS}
    if facts["block_size"] is None:
        facts["block_size"] = cell.get("block_size")
    return facts


def summarize(records: list[dict[str, Any]], by_category: bool = False) -> pd.DataFrame:
    """One row per cell (or per cell and category): cell parameters, then SUMMARY_COLUMNS."""
    records = dedupe(records)
    cells: dict[str, dict[str, Any]] = {}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        cells.setdefault(r["cell_id"], r.get("cell") or {})
        key = (r["cell_id"], r.get("category")) if by_category else (r["cell_id"],)
        groups.setdefault(key, []).append(r)
    by_node = spans_nodes(records)  # speedups divide times measured on the same node
    e2e_by_cell = {cid: _per_prompt_e2e([r for r in records if r["cell_id"] == cid], by_node) for cid in cells}
    batch_e2e_by_cell = {cid: _per_batch_e2e([r for r in records if r["cell_id"] == cid]) for cid in cells}
    prompts_of_batch = {
        (r["cell_id"], int(r["batch_id"])): tuple(r.get("batch_prompt_ids") or ())
        for r in records
        if r.get("batch_id") is not None
    }

    def _same_batches(a: str, b: str, batch_id: int) -> bool:
        """Two cells' batch ``batch_id`` decoded the same prompts (so their times compare)."""
        return prompts_of_batch.get((a, batch_id)) == prompts_of_batch.get((b, batch_id))

    cell_rows = [{**cell, "cell_id": cid} for cid, cell in cells.items()]
    rows = []
    for key, group in groups.items():
        cell_id = key[0]
        cell = cells[cell_id]
        row: dict[str, Any] = {"cell_id": cell_id, **cell}
        if by_category:
            row["category"] = key[1]
        row.update(_engine_facts(cell, [r for r in records if r["cell_id"] == cell_id]))
        row.update(_metrics(group))
        ar = ar_counterpart(cell, cell_rows)
        speedup = (None, None, None)
        if ar is not None:
            mine = _per_prompt_e2e(group, by_node)
            theirs = e2e_by_cell[ar["cell_id"]]
            ratios = [theirs[p] / mine[p] for p in mine if p in theirs and mine[p] > 0]
            speedup = geometric_mean_ci(ratios)
        row["speedup_vs_ar"], row["speedup_vs_ar_ci_low"], row["speedup_vs_ar_ci_high"] = speedup
        throughput = (None, None, None)
        if ar is not None and ar["cell_id"] != cell_id:
            mine_b, theirs_b = _per_batch_e2e(group), batch_e2e_by_cell[ar["cell_id"]]
            same = [b for b in mine_b if b in theirs_b and mine_b[b] > 0 and _same_batches(cell_id, ar["cell_id"], b)]
            throughput = geometric_mean_ci([theirs_b[b] / mine_b[b] for b in same])
        elif ar is not None:
            throughput = (1.0, 1.0, 1.0) if batch_e2e_by_cell[cell_id] else (None, None, None)
        (
            row["throughput_speedup_vs_ar"],
            row["throughput_speedup_vs_ar_ci_low"],
            row["throughput_speedup_vs_ar_ci_high"],
        ) = throughput
        rows.append(row)
    by_key = {(r["cell_id"], r.get("category")): r for r in rows}
    for row in rows:  # ratios to the same engine and settings at batch size 1
        one = batch1_counterpart(cells[row["cell_id"]] | {"cell_id": row["cell_id"]}, cell_rows)
        base = by_key.get((one["cell_id"], row.get("category"))) if one is not None else None
        if base is None and row.get("batch_size") == 1:
            base = row
        row["tokens_per_forward_vs_batch1"] = _ratio(row, base, "tokens_per_forward_median")
        row["batch_tokens_per_s_vs_batch1"] = _ratio(row, base, "batch_tokens_per_s_median")
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
    _write_pair(run_dir, SUMMARY_FILE, frame)
    if any(r.get("category") is not None for r in records):
        _write_pair(run_dir, SUMMARY_BY_CATEGORY_FILE, summarize(records, by_category=True))
    return frame


def _write_pair(run_dir: Path, json_name: str, frame: pd.DataFrame) -> None:
    """The JSON file (what the report reads) and a CSV beside it for spreadsheets."""
    write_json(run_dir / json_name, frame_rows(frame))
    csv = frame.copy()
    for column in ("engine_options", "acceptance_by_position"):
        if column in csv.columns:
            csv[column] = [json.dumps(_clean_list(v)) if v is not None else "" for v in csv[column]]
    csv.to_csv(run_dir / json_name.replace(".json", ".csv"), index=False)


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
