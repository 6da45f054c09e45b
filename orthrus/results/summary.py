"""Aggregate records into one row per cell (pandas): medians, p90/p99, speedup vs AR, identity.

Both the harness (summary.csv/json at the end of a run or a merge) and the report (a run without
summary.json) build summaries here. The columns and their definitions are the vocabulary's
(``orthrus.results.vocabulary``, written out in docs/metrics.md):
* latencies: medians and p90/p99 over prompts x repetitions (ok records only), and ``*_n``, how many
  values they were taken over (a p99 of fewer than 100 values is their maximum: the report says so);
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
* the engine's facts (``ENGINE_FACTS``: block size actually used, KV bytes per token, lossless, the
  parameters it adds over the base model and their bytes) as
  the records state them; ``block_size`` is the one the engine used, also when the suite said null.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orthrus.results import vocabulary
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
from orthrus.results.vocabulary import COLUMN, FIELD

# One row per cell in summary.csv / summary.json (cell parameters and engine facts in front of these):
# the vocabulary's metrics, in its order (docs/metrics.md says what each one is).
SUMMARY_COLUMNS = vocabulary.SUMMARY_COLUMNS
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
    """The field's values over the records (None left out); a field of lists (``itl_ms``) is pooled."""
    values: list[Any] = []
    for r in records:
        value = r.get(name)
        if isinstance(value, list):
            values.extend(value)
        elif value is not None:
            values.append(value)
    return np.array(values, dtype=float)


def _stat(values: np.ndarray, how: str) -> float | None:
    if how == "n":  # how many values the median and percentiles of the field were taken over
        return int(values.size)
    if values.size == 0:
        return None
    if how == "rate":  # of true values
        return float(np.mean(values.astype(bool)))
    if how == "median":
        return float(np.median(values))
    if how == "mean":
        return float(np.mean(values))
    if how == "max":
        return float(np.max(values))
    return float(np.percentile(values, float(how[1:])))


def per_prompt_median(records: list[dict[str, Any]], field: str, by_node: bool = False) -> dict[str, float]:
    """Median of a record field per prompt (per node and prompt when the run spans several nodes), over
    the ok records where it is positive: what a paired ratio of two cells divides, prompt by prompt."""
    by_prompt: dict[str, list[float]] = {}
    for r in records:
        if r.get("status") == "ok" and is_present(r.get(field)) and float(r[field]) > 0:
            by_prompt.setdefault(counterpart_key(r, by_node), []).append(float(r[field]))
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
    """A cell's figures from its records: the vocabulary's plain aggregations of a record field in one
    loop (over the ok records; a ``batch_`` field once per decoded batch), then what needs more than
    one field: the counts and the pooled acceptance. Cross-cell ratios are left to ``summarize``."""
    ok = [r for r in records if r.get("status") == "ok"]
    skipped = sum(1 for r in records if r.get("status") == "skipped")
    row: dict[str, Any] = {
        COLUMN.n_ok: len(ok),
        COLUMN.n_failed: len(records) - len(ok) - skipped,
        COLUMN.n_skipped: skipped,
    }
    batches = list(_batches(ok).values())
    for metric in vocabulary.AGGREGATED:
        over = batches if metric.field.startswith("batch_") else ok
        row[metric.column] = _stat(_values(over, metric.field), metric.how)
    _, weighted, by_position = pooled_acceptance(ok)  # the per-request mean is one of the aggregations
    row[COLUMN.acceptance_length_token_weighted] = weighted
    row[COLUMN.acceptance_by_position] = by_position
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
    e2e_by_cell = {
        cid: per_prompt_median([r for r in records if r["cell_id"] == cid], FIELD.e2e_ms, by_node) for cid in cells
    }
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
            mine = per_prompt_median(group, FIELD.e2e_ms, by_node)
            theirs = e2e_by_cell[ar["cell_id"]]
            ratios = [theirs[p] / mine[p] for p in mine if p in theirs]  # per_prompt_median keeps positive values only
            speedup = geometric_mean_ci(ratios)
        row[COLUMN.speedup_vs_ar], row[COLUMN.speedup_vs_ar_ci_low], row[COLUMN.speedup_vs_ar_ci_high] = speedup
        throughput = (None, None, None)
        if ar is not None and ar["cell_id"] != cell_id:
            mine_b, theirs_b = _per_batch_e2e(group), batch_e2e_by_cell[ar["cell_id"]]
            same = [b for b in mine_b if b in theirs_b and mine_b[b] > 0 and _same_batches(cell_id, ar["cell_id"], b)]
            throughput = geometric_mean_ci([theirs_b[b] / mine_b[b] for b in same])
        elif ar is not None:
            throughput = (1.0, 1.0, 1.0) if batch_e2e_by_cell[cell_id] else (None, None, None)
        (
            row[COLUMN.throughput_speedup_vs_ar],
            row[COLUMN.throughput_speedup_vs_ar_ci_low],
            row[COLUMN.throughput_speedup_vs_ar_ci_high],
        ) = throughput
        rows.append(row)
    by_key = {(r["cell_id"], r.get("category")): r for r in rows}
    for row in rows:  # ratios to the same engine and settings at batch size 1
        one = batch1_counterpart(cells[row["cell_id"]] | {"cell_id": row["cell_id"]}, cell_rows)
        base = by_key.get((one["cell_id"], row.get("category"))) if one is not None else None
        if base is None and row.get("batch_size") == 1:
            base = row
        row[COLUMN.tokens_per_forward_vs_batch1] = _ratio(row, base, COLUMN.tokens_per_forward_median)
        row[COLUMN.batch_tokens_per_s_vs_batch1] = _ratio(row, base, COLUMN.batch_tokens_per_s_median)
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
    for column in ("engine_options", COLUMN.acceptance_by_position):
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
    ok = [r for r in records if r.get("status") == "ok" and r.get(FIELD.harness_overhead_ms) is not None]
    if not ok:
        return {"measurements": 0, "overhead_ms_median": None, "overhead_pct": None}
    overhead = np.array([r[FIELD.harness_overhead_ms] for r in ok], dtype=float)
    e2e = np.array([r[FIELD.e2e_ms] for r in ok], dtype=float)
    return {
        "measurements": len(ok),
        "overhead_ms_median": float(np.median(overhead)),
        "overhead_ms_max": float(np.max(overhead)),
        "measured_ms_total": float(e2e.sum()),
        "overhead_ms_total": float(overhead.sum()),
        "overhead_pct": float(100 * overhead.sum() / e2e.sum()) if e2e.sum() > 0 else None,
    }
