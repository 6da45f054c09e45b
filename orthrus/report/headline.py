"""The honest headline of a run: Orthrus over the fastest AR decoder, over all of the run's cells.

A single best cell is not a verdict (one flagship run's best cell showed 1.25x whose 95% interval
was 0.88-1.80). The headline is instead:

* per cell of the subject engine (``orthrus``; a run without one: every non-AR engine label), the
  ratio of the *fastest* AR row measured with the same settings (engine ``ar`` or ``hf_generate``,
  ``vocabulary.AR_ENGINES``, that says it is lossless; a compiled ``ar`` is one of them, whatever its
  label) to the cell, per prompt: median AR e2e / median cell e2e, then their geometric mean. The
  fastest row is the one with the lowest median e2e for that cell's settings, and each cell names it;
  the summary's ``speedup_vs_ar`` divides by the plain ``ar`` counterpart instead;
* over the cells: the geometric mean of the cells' ratios (each cell weighs the same), with a
  bootstrap 95% interval that resamples prompts within every cell (the cells are what the suite
  chose, the prompts a sample), the number of cells, and the best and the worst cell with theirs;
* its scope: the subject's label, the batch size (per-request speedups at the smallest batch size
  the subject has with an AR row: batching is reported apart, as throughput at the same batch size)
  and the values of every parameter that varies over the cells (contexts, block sizes...).

A verdict is only "faster" or "slower" when the interval excludes 1.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orthrus.report.rundata import LABEL_COLUMN, VOLATILE_COLUMNS, RunData, cell_columns, is_lossless
from orthrus.results.derived import ar_counterpart, is_present, spans_nodes, values_equal
from orthrus.results.summary import geometric_mean_ci, per_prompt_median
from orthrus.results.vocabulary import AR_ENGINES, AR_MATCH, AXIS, COLUMN, FIELD

SUBJECT_ENGINE = "orthrus"
ALWAYS_SCOPED = ("batch_size", "context_length")  # named in every scope, also when they do not vary
BOOTSTRAP_SAMPLES = 2000
# cell parameters that never make a cell's scope (facts and names rather than settings)
_NOT_SCOPE = {"engine", "engine_options", "lossless", "series", "kv_bytes_per_token", LABEL_COLUMN, *VOLATILE_COLUMNS}


@dataclass
class CellRatio:
    """One subject cell over its fastest AR row: the geometric mean over prompts and its interval."""

    row: dict[str, Any]
    ar: dict[str, Any]
    ratio: float
    low: float | None
    high: float | None
    logs: list[float] = field(default_factory=list)  # per-prompt log ratios (empty: from the summary only)


@dataclass
class Verdict:
    """The headline figure of one subject label."""

    subject: str
    cells: list[CellRatio]
    ratio: float
    low: float | None
    high: float | None
    scope: str  # "orthrus, batch 1, contexts 512, 1024"
    against: str  # "fastest AR per cell: ar (4 cells), hf_generate (1 cell)"

    @property
    def tone(self) -> str:
        """good: the interval is above 1; bad: below 1; "": it includes 1 (or there is none)."""
        if self.low is not None and self.low > 1:
            return "good"
        if self.high is not None and self.high < 1:
            return "bad"
        return ""

    @property
    def interval(self) -> str:
        if self.low is None or self.high is None:
            return "no interval (one prompt per cell)"
        return f"95% CI {self.low:.2f}-{self.high:.2f}x"

    @property
    def reading(self) -> str:
        if self.low is None or self.high is None:
            return "too few prompts to tell"
        if self.tone == "good":
            return "faster than AR: the interval excludes 1"
        if self.tone == "bad":
            return "slower than AR: the interval excludes 1"
        return "the interval includes 1: not distinguishable from AR"

    @property
    def best(self) -> CellRatio:
        return max(self.cells, key=lambda c: c.ratio)

    @property
    def worst(self) -> CellRatio:
        return min(self.cells, key=lambda c: c.ratio)

    def cell_text(self, cell: CellRatio, params: list[str]) -> str:
        interval = f" [{cell.low:.2f}, {cell.high:.2f}]" if cell.low is not None and cell.high is not None else ""
        at = where(cell.row, params)
        return f"{cell.ratio:.2f}x{interval}{' at ' + at if at else ''} vs {cell.ar['series']}"

    def short(self) -> str:
        """One line for the runs index."""
        interval = f" [{self.low:.2f}, {self.high:.2f}]" if self.low is not None and self.high is not None else ""
        noun = "cell" if len(self.cells) == 1 else "cells"
        return f"{self.ratio:.2f}x{interval} over {len(self.cells)} {noun} ({self.subject} vs fastest AR)"


def is_ar_row(row: dict[str, Any]) -> bool:
    """An autoregressive decoder by engine name that says it is lossless (when its facts say anything)."""
    if row.get("engine") not in AR_ENGINES:
        return False
    return not is_present(row.get("lossless")) or is_lossless(row)


def _measured(row: dict[str, Any]) -> bool:
    return is_present(row.get(COLUMN.e2e_ms_median)) and float(row.get(COLUMN.n_ok) or 0) > 0


def _same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(values_equal(a.get(k), b.get(k)) for k in AR_MATCH if k in a or k in b)


def fastest_ar(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The AR row measured with ``row``'s settings (the same model first) with the lowest median e2e."""
    candidates = [r for r in rows if is_ar_row(r) and _measured(r) and _same_settings(r, row)]
    same_model = [r for r in candidates if values_equal(r.get("model"), row.get("model"))]
    candidates = same_model or candidates
    return min(candidates, key=lambda r: float(r[COLUMN.e2e_ms_median])) if candidates else None


def cell_ratios(run: RunData, subject: str) -> list[CellRatio]:
    """Every measured cell of label ``subject`` with an AR row of the same settings, over the fastest one."""
    rows = run.summary.to_dict("records")
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for record in run.records:
        by_cell.setdefault(str(record.get("cell_id")), []).append(record)
    by_node = spans_nodes(run.records)
    out = []
    for row in rows:
        if row.get("series") != subject or is_ar_row(row) or not _measured(row):
            continue
        ar = fastest_ar(row, rows)
        if ar is None:
            continue
        mine = per_prompt_median(by_cell.get(str(row.get("cell_id")), []), FIELD.e2e_ms, by_node)
        theirs = per_prompt_median(by_cell.get(str(ar.get("cell_id")), []), FIELD.e2e_ms, by_node)
        ratios = [theirs[p] / mine[p] for p in mine if p in theirs]
        if ratios:
            point, low, high = geometric_mean_ci(ratios)
            out.append(CellRatio(row, ar, float(point), low, high, [float(np.log(r)) for r in ratios]))
        elif _is_plain_counterpart(ar, row, rows) and is_present(row.get(COLUMN.speedup_vs_ar)):
            low, high = row.get(COLUMN.speedup_vs_ar_ci_low), row.get(COLUMN.speedup_vs_ar_ci_high)
            out.append(
                CellRatio(
                    row,
                    ar,
                    float(row[COLUMN.speedup_vs_ar]),
                    float(low) if is_present(low) else None,
                    float(high) if is_present(high) else None,
                )
            )
        else:  # no records: the ratio of the medians, without an interval
            out.append(
                CellRatio(row, ar, float(ar[COLUMN.e2e_ms_median]) / float(row[COLUMN.e2e_ms_median]), None, None)
            )
    return out


def _is_plain_counterpart(ar: dict[str, Any], row: dict[str, Any], rows: list[dict[str, Any]]) -> bool:
    """``ar`` is the row the summary's speedup_vs_ar divided by (so its interval applies)."""
    plain = ar_counterpart(row, rows)
    return plain is not None and plain.get("cell_id") == ar.get("cell_id")


def overall(cells: list[CellRatio], seed: int = 0) -> tuple[float, float | None, float | None]:
    """Geometric mean over cells of their ratios, and a bootstrap 95% interval resampling each cell's
    prompts (a cell known from its summary alone enters every draw with its point value)."""
    points = np.log([c.ratio for c in cells])
    point = float(np.exp(points.mean()))
    if not any(len(c.logs) > 1 for c in cells):
        return point, None, None
    rng = np.random.default_rng(seed)
    draws = np.zeros(BOOTSTRAP_SAMPLES)
    for c, fixed in zip(cells, points):
        if len(c.logs) > 1:
            logs = np.asarray(c.logs)
            draws += logs[rng.integers(0, len(logs), size=(BOOTSTRAP_SAMPLES, len(logs)))].mean(axis=1)
        else:
            draws += fixed
    means = np.exp(draws / len(cells))
    return point, float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def subjects(run: RunData) -> list[str]:
    """The labels a headline speaks of: those of the orthrus engine, else every non-AR label; never a
    cell with synthetic acceptance (a cost measurement at a set acceptance, not a verdict)."""
    rows = [r for r in run.summary.to_dict("records") if r.get("synthetic") is not True]
    labels = list(dict.fromkeys(r["series"] for r in rows if r.get("engine") == SUBJECT_ENGINE))
    return labels or list(dict.fromkeys(r["series"] for r in rows if not is_ar_row(r)))


def verdicts(run: RunData) -> list[Verdict]:
    """One verdict per subject label that has cells with an AR row of the same settings."""
    out = []
    for subject in subjects(run):
        cells = cell_ratios(run, subject)
        if not cells:
            continue
        batches = sorted({float(c.row["batch_size"]) for c in cells if is_present(c.row.get("batch_size"))})
        if len(batches) > 1:  # per-request speedups at one batch size: the smallest (batching is its own figure)
            cells = [c for c in cells if not is_present(c.row.get("batch_size")) or c.row["batch_size"] == batches[0]]
        ratio, low, high = overall(cells)
        candidates = sorted({str(r["series"]) for r in run.summary.to_dict("records") if is_ar_row(r)})
        rows = [c.row for c in cells]
        out.append(Verdict(subject, cells, ratio, low, high, scope(subject, rows), against(cells, candidates)))
    return out


def scope_params(cells: list[CellRatio]) -> list[str]:
    """The cell parameters whose values differ over ``cells`` (what best and worst are named by)."""
    return varying([c.row for c in cells])


def varying(rows: list[dict[str, Any]]) -> list[str]:
    """The cell parameters whose values differ over ``rows``."""
    params = [c for c in cell_columns(_frame(rows)) if c not in _NOT_SCOPE and not c.endswith("_path")]
    return [p for p in params if len(_values(rows, p)) > 1]


def scope(subject: str, rows: list[dict[str, Any]]) -> str:
    """``orthrus, batch 1, context 512, 1024, block 16``: the label, the batch sizes and contexts
    (always, where the cells have them), then every other parameter that varies over ``rows``."""
    parts = [subject]
    for param in ALWAYS_SCOPED:
        values = _values(rows, param)
        if values:
            parts.append(f"{_label(param)} {', '.join(str(v) for v in values)}")
    frame = _frame(rows)
    for param in cell_columns(frame):
        if param in _NOT_SCOPE or param in ALWAYS_SCOPED or param.endswith("_path"):
            continue
        values = _values(rows, param)
        if len(values) > 1:
            parts.append(f"{_label(param)} {', '.join(str(v) for v in values)}")
    return ", ".join(parts)


def _values(rows: list[dict[str, Any]], param: str) -> list[Any]:
    return sorted({_plain(r.get(param)) for r in rows if is_present(r.get(param))}, key=_order)


def against(cells: list[CellRatio], candidates: list[str]) -> str:
    """Which AR rows were compared and which one was the fastest, per cell."""
    counts = Counter(str(c.ar["series"]) for c in cells)
    among = f" (of {', '.join(candidates)})" if len(candidates) > 1 else ""
    if len(counts) == 1:
        (name,) = counts
        return f"the fastest AR row of the same settings{among}: {name}" + (
            f" in all {len(cells)} cells" if len(candidates) > 1 and len(cells) > 1 else ""
        )
    shown = ", ".join(f"{name} ({n} {'cell' if n == 1 else 'cells'})" for name, n in counts.most_common())
    return f"the fastest AR row of the same settings, per cell{among}: {shown}"


def _frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows)


def where(row: dict[str, Any], params: list[str]) -> str:
    """``context 1024, block 16``: a cell named by the values of ``params``."""
    return ", ".join(f"{_label(p)} {_plain(row.get(p))}" for p in params if is_present(row.get(p)))


def _label(param: str) -> str:
    axis = AXIS.get(param)
    return axis.label if axis is not None else param


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _order(value: Any) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))
