"""Side-by-side comparison of two runs: per cell and metric, A, B, B/A, and whether the change is
beyond noise.

Cells are matched by series and cell parameters (run ids, cell ids and the device are ignored).
The metrics compared, in order, are the vocabulary's ``compared`` ones. A change is *flagged* when it
is larger than the noise of the metric, judged by one of these rules, chosen from what the vocabulary
says of the metric (``noise_rule``):

- ``identity`` (a deterministic metric marked ``exact``: identity rates, failure counts): any change;
- ``deterministic`` (tokens per forward, accepted length, KV bytes, new tokens): any relative change
  beyond ``DETERMINISTIC_TOLERANCE`` (0.5%);
- ``ratio`` (a wall-clock ``same_run`` ratio: speedup_vs_ar): the two bootstrap 95% intervals do not
  overlap; without intervals, a relative change beyond ``WALL_CLOCK_TOLERANCE``;
- ``latency`` (a wall-clock metric with a ``spread`` column: TTFT, TPOT, e2e medians): a relative
  change beyond the larger of the two runs' relative p90 spread ((p90 - median) / median) and
  ``WALL_CLOCK_TOLERANCE`` (10%);
- ``throughput`` (any other wall-clock metric: decode tokens/s) and ``memory`` (RSS/NVML/torch
  peaks): beyond 10% / 5%.

Direction: each metric says whether higher is better, so a flagged change reads as better or worse.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthrus.errors import UserInputError
from orthrus.report.formatting import fmt
from orthrus.report.rundata import RunData, is_present, load_run, same_cell
from orthrus.results import vocabulary
from orthrus.results.vocabulary import Metric

DETERMINISTIC_TOLERANCE = 0.005
WALL_CLOCK_TOLERANCE = 0.10
MEMORY_TOLERANCE = 0.05


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
    noise: str  # what the flag was judged against, e.g. "95% CIs overlap" or "tolerance 10%"


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

    def format_text(self) -> str:
        lines = [f"compare A={self.run_a.run_id} ({self.run_a.path}) B={self.run_b.run_id} ({self.run_b.path})"]
        lines.append(f"{len(self.changes)} metric values compared, {len(self.flagged)} beyond noise")
        for c in self.flagged:
            lines.append(
                f"  {(c.direction or 'changed').upper():7} {c.metric:32} {fmt(c.a):>10} -> {fmt(c.b):>10}  x{fmt(c.ratio)}  [{c.cell}]"
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


def judge(
    column: str, kind: str, higher_better: bool, p90: str | None, a_row: dict, b_row: dict
) -> MetricChange | None:
    a, b = _number(a_row.get(column)), _number(b_row.get(column))
    if a is None and b is None:
        return None
    ratio = b / a if a not in (None, 0) and b is not None else None
    change = None if a is None or b is None else (b - a) / abs(a) if a != 0 else (0.0 if b == 0 else math.inf)
    flagged, noise = False, ""
    if a is None or b is None:
        flagged, noise = True, "measured in one run only"
    elif kind == "identity":
        flagged, noise = not math.isclose(a, b, abs_tol=1e-9), "any change"
    elif kind == "deterministic":
        flagged, noise = abs(change) > DETERMINISTIC_TOLERANCE, f"tolerance {DETERMINISTIC_TOLERANCE:.1%}"
    elif kind == "ratio":
        intervals = [(_number(r.get(f"{column}_ci_low")), _number(r.get(f"{column}_ci_high"))) for r in (a_row, b_row)]
        if all(lo is not None and hi is not None for lo, hi in intervals):
            (alo, ahi), (blo, bhi) = intervals
            flagged, noise = (
                ahi < blo or bhi < alo,
                "95% CIs " + ("do not overlap" if ahi < blo or bhi < alo else "overlap"),
            )
        else:
            flagged, noise = abs(change) > WALL_CLOCK_TOLERANCE, f"tolerance {WALL_CLOCK_TOLERANCE:.0%}"
    elif kind == "latency":
        spreads = [WALL_CLOCK_TOLERANCE]
        for row, median in ((a_row, a), (b_row, b)):
            high = _number(row.get(p90)) if p90 else None
            if high is not None and median > 0:
                spreads.append((high - median) / median)
        tolerance = max(spreads)
        flagged, noise = abs(change) > tolerance, f"p90 spread / tolerance {tolerance:.0%}"
    else:
        tolerance = MEMORY_TOLERANCE if kind == "memory" else WALL_CLOCK_TOLERANCE
        flagged, noise = abs(change) > tolerance, f"tolerance {tolerance:.0%}"
    direction = ""
    if flagged and a is not None and b is not None and b != a:
        direction = "better" if (b > a) == higher_better else "worse"
    return MetricChange("", column, a, b, ratio, flagged, direction, noise)


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
        for column, kind, higher_better, p90 in COMPARED_METRICS:
            if column not in a.summary.columns and column not in b.summary.columns:
                continue
            change = judge(column, kind, higher_better, p90, a_row, b_rows[match])
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
            tolerances={
                "deterministic": DETERMINISTIC_TOLERANCE,
                "wall_clock": WALL_CLOCK_TOLERANCE,
                "memory": MEMORY_TOLERANCE,
            },
            generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        )
    )
    out.write_text(page, encoding="utf-8")
    return out, comparison


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:80]
