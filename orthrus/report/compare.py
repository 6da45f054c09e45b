"""Side-by-side comparison of two runs: per cell and metric, A, B, B/A, and whether the change is
beyond noise.

Cells are matched by series and cell parameters (run ids, cell ids and the device are ignored).
The metrics compared, in order, are the vocabulary's ``compared`` ones. A change is *flagged* when it
is larger than the noise of the metric, judged by one of these rules, chosen from what the vocabulary
says of the metric (``noise_rule``):

- ``identity`` (a deterministic metric marked ``exact``: identity rates, failure counts): any change;
- ``deterministic`` (tokens per forward, accepted length, KV bytes, new tokens): any relative change
  beyond ``DETERMINISTIC_TOLERANCE`` (0.5%): the same code gives the same figure;
- ``ratio`` (a wall-clock ``same_run`` ratio: speedup_vs_ar): the runs' own bootstrap 95% intervals
  (the summary's, over prompts) do not overlap;
- ``latency`` and ``throughput`` (the other wall-clock metrics: TTFT, TPOT, e2e, decode tokens/s): the
  same test on intervals computed here from each run's records, the summary's bootstrap helper over
  the cell's per-prompt medians;
- ``memory`` (RSS/NVML/torch peaks): beyond ``MEMORY_TOLERANCE`` (5%).

A wall-clock figure has no noise estimate when its cell has fewer than two prompts (or batches: the
rows of one batch share one timed call), as in a --quick run: such a change is *not judged*
("cannot judge: ..."), neither flagged nor passed off as within noise. A fixed tolerance would be no better: this host's own swings
between two runs of the same code exceed 10%.

Direction: each metric says whether higher is better, so a flagged change reads as better or worse.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orthrus.errors import UserInputError
from orthrus.report.formatting import fmt
from orthrus.report.rundata import RunData, is_present, load_run, same_cell
from orthrus.results import vocabulary
from orthrus.results.summary import geometric_mean_ci
from orthrus.results.vocabulary import METRIC, Metric

DETERMINISTIC_TOLERANCE = 0.005
MEMORY_TOLERANCE = 0.05
WALL_CLOCK_RULES = ("ratio", "latency", "throughput")
NO_INTERVAL = "cannot judge: no 95% interval (fewer than 2 prompts or batches in a cell)"

Interval = tuple[float, float]


def noise_rule(metric: Metric) -> str:
    """How ``judge`` weighs a change of ``metric``: identity | deterministic | ratio | latency |
    throughput | memory, from the vocabulary's kind and what it says of the metric."""
    if metric.kind == "memory":
        return "memory"
    if metric.kind == "deterministic":
        return "identity" if metric.exact else "deterministic"
    if metric.same_run:
        return "ratio"
    return "latency" if metric.spread else "throughput"


# (column, noise rule, higher is better, p90 column for the spread), in compare's order
COMPARED_METRICS: tuple[tuple[str, str, bool, str | None], ...] = tuple(
    (metric.column, noise_rule(metric), metric.better == "higher", metric.spread)
    for metric in vocabulary.COMPARED_METRICS
)


@dataclass
class MetricChange:
    cell: str
    metric: str
    a: float | None
    b: float | None
    ratio: float | None
    flagged: bool
    direction: str  # "better" | "worse" | "" (not flagged or no direction)
    noise: str  # what the flag was judged against, e.g. "95% intervals overlap" or "tolerance 0.5%"
    judged: bool = True  # False: no noise estimate (a wall-clock figure of a one-prompt cell)


@dataclass
class Comparison:
    run_a: RunData
    run_b: RunData
    changes: list[MetricChange] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[MetricChange]:
        return [c for c in self.changes if c.flagged]

    @property
    def unjudged(self) -> list[MetricChange]:
        return [c for c in self.changes if not c.judged]

    def format_text(self) -> str:
        lines = [f"compare A={self.run_a.run_id} ({self.run_a.path}) B={self.run_b.run_id} ({self.run_b.path})"]
        judged = len(self.changes) - len(self.unjudged)
        lines.append(f"{len(self.changes)} metric values compared: {len(self.flagged)} of {judged} judged beyond noise")
        for c in self.flagged:
            lines.append(
                f"  {(c.direction or 'changed').upper():7} {c.metric:32} {fmt(c.a):>10} -> {fmt(c.b):>10}  "
                f"x{fmt(c.ratio)}  [{c.cell}]  ({c.noise})"
            )
        if self.unjudged:
            metrics = ", ".join(dict.fromkeys(c.metric for c in self.unjudged))
            lines.append(
                f"  cannot judge {len(self.unjudged)} wall-clock values ({metrics}): their cells have fewer than 2 "
                "prompts (or batches), so a run has no spread to judge a change against; measure more to judge them"
            )
        if self.only_a:
            lines.append(f"  only in A: {len(self.only_a)} cells")
        if self.only_b:
            lines.append(f"  only in B: {len(self.only_b)} cells")
        return "\n".join(lines)


def _number(value: Any) -> float | None:
    if not is_present(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def summary_interval(row: dict[str, Any], column: str) -> Interval | None:
    """The summary's bootstrap 95% interval of a same-run ratio (``<column>_ci_low/high``), if any."""
    low, high = _number(row.get(f"{column}_ci_low")), _number(row.get(f"{column}_ci_high"))
    return (low, high) if low is not None and high is not None else None


def records_interval(records: list[dict[str, Any]], cell_id: Any, record_field: str | None) -> Interval | None:
    """A 95% interval of a wall-clock figure of one cell from its ok records: the median per decoded
    batch over its rows and repetitions (a batch of one is one prompt; the rows of a batch share one
    timed call, so they are one sample, not several), then the summary's bootstrap
    (``geometric_mean_ci``) over those medians; None below two (no spread) or for a metric that
    aggregates no record field."""
    if record_field is None:
        return None
    samples: dict[str, list[float]] = {}
    for record in records:
        value = _number(record.get(record_field)) if record.get("cell_id") == cell_id else None
        if value is not None and value > 0 and record.get("status") == "ok":
            batch = record.get("batch_id")
            key = f"batch {batch}" if batch is not None else f"prompt {record.get('prompt_id')}"
            samples.setdefault(key, []).append(value)
    medians = [float(np.median(values)) for values in samples.values()]
    _, low, high = geometric_mean_ci(medians)
    return (low, high) if low is not None and high is not None else None


def judge(
    column: str,
    kind: str,
    higher_better: bool,
    a_row: dict,
    b_row: dict,
    intervals: tuple[Interval | None, Interval | None] = (None, None),
) -> MetricChange | None:
    """One metric of one matched cell: A, B and whether the change is beyond noise by ``kind``'s rule.
    ``intervals``: each run's 95% interval of a wall-clock figure (``records_interval``); a ratio
    takes the summary's own (``summary_interval``)."""
    a, b = _number(a_row.get(column)), _number(b_row.get(column))
    if a is None and b is None:
        return None
    ratio = b / a if a not in (None, 0) and b is not None else None
    change = None if a is None or b is None else (b - a) / abs(a) if a != 0 else (0.0 if b == 0 else math.inf)
    flagged, noise, judged = False, "", True
    if a is None or b is None:
        flagged, noise = True, "measured in one run only"
    elif kind == "identity":
        flagged, noise = not math.isclose(a, b, abs_tol=1e-9), "any change"
    elif kind == "deterministic":
        flagged, noise = abs(change) > DETERMINISTIC_TOLERANCE, f"tolerance {DETERMINISTIC_TOLERANCE:.1%}"
    elif kind in WALL_CLOCK_RULES:
        if kind == "ratio":
            intervals = (summary_interval(a_row, column), summary_interval(b_row, column))
        a_ci, b_ci = intervals
        if a_ci is None or b_ci is None:
            noise, judged = NO_INTERVAL, False
        else:
            apart = a_ci[1] < b_ci[0] or b_ci[1] < a_ci[0]
            noise = f"95% intervals [{fmt(a_ci[0])}, {fmt(a_ci[1])}] and [{fmt(b_ci[0])}, {fmt(b_ci[1])}] " + (
                "do not overlap" if apart else "overlap"
            )
            flagged = apart and a != b
    else:
        flagged, noise = abs(change) > MEMORY_TOLERANCE, f"tolerance {MEMORY_TOLERANCE:.0%}"
    direction = ""
    if flagged and a is not None and b is not None and b != a:
        direction = "better" if (b > a) == higher_better else "worse"
    return MetricChange("", column, a, b, ratio, flagged, direction, noise, judged)


def _describe(row: dict[str, Any], params: list[str]) -> str:
    parts = [str(row["series"])]
    for p in params:
        value = row.get(p)
        if is_present(value):
            parts.append(f"{p}={int(value) if isinstance(value, float) and value.is_integer() else value}")
    return ", ".join(parts)


def compare_runs(run_a: str | Path | RunData, run_b: str | Path | RunData) -> Comparison:
    """Match the two runs' cells and judge each metric. Runs of different suites, or runs with no cell
    in common, are refused (UserInputError): comparing nothing must not read as "nothing got worse"."""
    a = run_a if isinstance(run_a, RunData) else load_run(run_a)
    b = run_b if isinstance(run_b, RunData) else load_run(run_b)
    if a.suite_name and b.suite_name and a.suite_name != b.suite_name:
        raise UserInputError(
            f"{a.path} is a run of suite {a.suite_name!r} and {b.path} of suite {b.suite_name!r}; "
            "compare two runs of the same suite."
        )
    from orthrus.report.html import _varying

    params = sorted((set(_varying(a.summary)) | set(_varying(b.summary))) - {"engine", "series"})
    result = Comparison(a, b)
    b_rows = b.summary.to_dict("records")
    used: set[int] = set()
    for a_row in a.summary.to_dict("records"):
        match = next(
            (i for i, r in enumerate(b_rows) if i not in used and same_cell(a_row, r)),
            None,
        )
        cell = _describe(a_row, params)
        if match is None:
            result.only_a.append(cell)
            continue
        used.add(match)
        b_row = b_rows[match]
        for column, kind, higher_better, _ in COMPARED_METRICS:
            if column not in a.summary.columns and column not in b.summary.columns:
                continue
            intervals: tuple[Interval | None, Interval | None] = (None, None)
            if kind in ("latency", "throughput"):
                record_field = METRIC[column].field
                intervals = (
                    records_interval(a.records, a_row.get("cell_id"), record_field),
                    records_interval(b.records, b_row.get("cell_id"), record_field),
                )
            change = judge(column, kind, higher_better, a_row, b_row, intervals)
            if change is not None:
                change.cell = cell
                result.changes.append(change)
    result.only_b = [_describe(r, params) for i, r in enumerate(b_rows) if i not in used]
    if not used:
        raise UserInputError(
            f"{a.path} and {b.path} have no cell in common ({len(result.only_a)} cells only in A, "
            f"{len(result.only_b)} only in B), so there is nothing to compare; compare runs of the same settings."
        )
    return result


def render_compare(run_a: str | Path, run_b: str | Path, out: str | Path | None = None) -> tuple[Path, Comparison]:
    """Write the side-by-side HTML page; default path ``reports/compare/<A>_vs_<B>.html`` when the
    runs live under ``reports/``, else next to run B."""
    from orthrus.report.html import environment

    comparison = compare_runs(run_a, run_b)
    a, b = comparison.run_a, comparison.run_b
    if out is None:
        parents = b.path.resolve().parents
        root = parents[1] if len(parents) > 1 and parents[1].name == "reports" else b.path.parent
        out = root / "compare" / f"{_safe(a.run_id)}_vs_{_safe(b.run_id)}.html"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cells: dict[str, list[MetricChange]] = {}
    for change in comparison.changes:
        cells.setdefault(change.cell, []).append(change)
    page = (
        environment()
        .get_template("compare.html.j2")
        .render(
            title=f"Compare {a.run_id} vs {b.run_id}",
            a={
                "run_id": a.run_id,
                "suite": a.suite_name,
                "path": str(a.path),
                "device": a.environment.get("device_name") or a.environment.get("device") or "",
            },
            b={
                "run_id": b.run_id,
                "suite": b.suite_name,
                "path": str(b.path),
                "device": b.environment.get("device_name") or b.environment.get("device") or "",
            },
            flagged=comparison.flagged,
            cells=cells,
            only_a=comparison.only_a,
            only_b=comparison.only_b,
            n_changes=len(comparison.changes),
            n_unjudged=len(comparison.unjudged),
            tolerances={"deterministic": DETERMINISTIC_TOLERANCE, "memory": MEMORY_TOLERANCE},
            generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        )
    )
    out.write_text(page, encoding="utf-8")
    return out, comparison


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:80]
