"""The gates' evaluation: each rule checked on every cell its ``where`` selects, against the
baseline's matching cell when it names ``baseline``; the results as a ``GateReport`` (gates.json)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orthrus.errors import UserInputError
from orthrus.report.formatting import fmt
from orthrus.report.gates import outputs
from orthrus.report.gates.baseline import load_baseline, measured_suite, measured_suite_hash, suite_differences
from orthrus.report.gates.rules import (
    DERIVED_METRICS,
    GateRule,
    evaluate_expr,
    gates_config,
    holds,
    names_in,
    parse_rule,
    resolve_metric,
)
from orthrus.report.rundata import (
    METRIC_COLUMNS,
    VOLATILE_COLUMNS,
    RunData,
    ar_counterpart,
    cell_columns,
    is_lossless,
    is_present,
    kv_overhead_bytes,
    load_run,
    same_cell,
    summary_table,
)
from orthrus.results.derived import batch1_counterpart
from orthrus.results.vocabulary import AR_ENGINE, AR_MATCH, COLUMN, EXACTNESS_COLUMNS

# figures a cell has only when the run measured its counterpart: the AR cell with the same settings,
# or the same engine at batch size 1 (docs/metrics.md); without it the rule does not apply to the cell
VS_AR = frozenset(
    {
        COLUMN.speedup_vs_ar,
        COLUMN.speedup_vs_ar_ci_low,
        COLUMN.speedup_vs_ar_ci_high,
        COLUMN.throughput_speedup_vs_ar,
        COLUMN.throughput_speedup_vs_ar_ci_low,
        COLUMN.throughput_speedup_vs_ar_ci_high,
    }
)
VS_BATCH1 = frozenset(
    {
        COLUMN.tokens_per_forward_vs_batch1,
        COLUMN.batch_tokens_per_s_vs_batch1,
        COLUMN.identity_vs_batch1_rate,
        COLUMN.divergence_margin_vs_batch1_median,
    }
)


@dataclass
class GateResult:
    rule: str
    name: str
    scope: str  # the cell checked, e.g. "series=orthrus, context_length=512"
    measured: float | None
    threshold: float | None
    op: str
    status: str  # "pass" | "fail" | "error" | "skip" (the rule does not apply to this cell)
    message: str = ""


@dataclass
class GateReport:
    run_dir: str
    results: list[GateResult] = field(default_factory=list)
    baseline: dict[str, Any] | None = None  # provenance of the baseline file (no rows)
    notes: list[str] = field(default_factory=list)
    unfinished: str | None = None  # why the run is not whole: its gates see only part of it

    @property
    def exit_code(self) -> int:
        if any(r.status == "error" for r in self.results) or self.unfinished:
            return 2  # a part of a run never passes: what was not measured was not checked
        return 1 if any(r.status == "fail" for r in self.results) else 0

    @property
    def status(self) -> str:
        return {0: "pass", 1: "fail", 2: "error"}[self.exit_code]

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in ("pass", "fail", "error", "skip")}

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "run_dir": self.run_dir,
            "baseline": self.baseline,
            "notes": self.notes,
            "unfinished": self.unfinished,
            "results": [asdict(r) for r in self.results],
        }

    def headline(self) -> str:
        c = self.counts()
        verdict = {"pass": "PASS", "fail": "REGRESSION", "error": "BAD INPUT"}[self.status]
        if self.unfinished and not any(r.status == "error" for r in self.results):
            verdict = "UNFINISHED RUN, NOT CHECKED WHOLE"
        skipped = f", {c['skip']} not applicable" if c["skip"] else ""
        return f"gates: {verdict} ({c['pass']} passed, {c['fail']} failed, {c['error']} errors{skipped})"

    def rows(self, verbose: bool = False) -> list[GateResult]:
        """The results to show: every check with ``verbose``; else failures and errors one by one,
        the passing cells of a rule folded into one line (scope "N cells", values as ranges) and
        the cells a rule does not apply to folded into one line per reason."""
        if verbose:
            return list(self.results)
        groups: dict[tuple[str, str], list[GateResult]] = {}
        for r in self.results:
            groups.setdefault((r.rule, r.name), []).append(r)
        out: list[GateResult] = []
        for (rule, name), results in groups.items():
            passed = [r for r in results if r.status == "pass"]
            bad = [r for r in results if r.status in ("fail", "error")]
            out += bad
            if len(passed) == 1:
                out.append(passed[0])
            elif passed:
                scope = f"{len(passed)} {'other ' if bad else ''}cells"
                measured = _span([r.measured for r in passed])
                threshold = _span([r.threshold for r in passed])
                out.append(GateResult(rule, name, scope, measured, threshold, passed[0].op, "pass"))
            skipped: dict[str, list[GateResult]] = {}
            for r in results:
                if r.status == "skip":
                    skipped.setdefault(r.message, []).append(r)
            for message, group in skipped.items():  # why a rule did not apply, once per reason
                scope = group[0].scope if len(group) == 1 else f"{len(group)} cells"
                out.append(GateResult(rule, name, scope, None, None, group[0].op, "skip", message))
        return out

    def format_table(self, verbose: bool = False) -> str:
        return outputs.table(self, verbose)

    def to_markdown(self, title: str = "Orthrus performance gates", verbose: bool = False) -> str:
        return outputs.markdown(self, title, verbose)

    def to_junit(self, suite_name: str = "orthrus.gates") -> str:
        return outputs.junit(self, suite_name)


def _span(values: list[float | None]) -> Any:
    present = [v for v in values if is_present(v)]
    if not present:
        return None
    low, high = min(present), max(present)
    return low if math.isclose(low, high, rel_tol=1e-12) else f"{fmt(low)}..{fmt(high)}"


class _Cells:
    """Lookups of metrics, derived figures and cell parameters for one run's summary."""

    def __init__(self, run: RunData) -> None:
        self.run = run
        self.summary = run.summary
        self.rows = run.summary.to_dict("records")
        self.columns = set(run.summary.columns)
        # the parameters that tell cells apart, for the scope column of the results
        params = [c for c in cell_columns(run.summary) if c not in VOLATILE_COLUMNS and c != "engine_options"]
        params = [c for c in params if not c.endswith("_path")]  # the model key names the checkpoint
        self.varying = [c for c in params if run.summary[c].astype(str).nunique() > 1 and c != "engine"]

    def knows(self, name: str) -> bool:
        return name in self.columns or name in DERIVED_METRICS

    def scope(self, row: dict[str, Any]) -> str:
        parts = [f"{'engine' if row['series'] == row.get('engine') else 'series'}={row['series']}"]
        parts += [
            f"{c}={_plain(row[c])}" for c in self.varying if c not in ("series", "label") and is_present(row.get(c))
        ]
        return ", ".join(parts)

    def selects(self, rule: GateRule, row: dict[str, Any]) -> bool:
        for key, allowed in rule.where.items():
            value = is_lossless(row) if key == "lossless" else row.get(key)
            if not any(_scope_equal(value, a) for a in allowed):
                return False
        return True

    def value(self, name: str, row: dict[str, Any]) -> float | None:
        column = resolve_metric(name)
        if column == "peak_kv_overhead_bytes":
            return self.kv_overhead(row)
        value = row.get(column)
        if isinstance(value, bool):
            return float(value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return None if math.isnan(number) else number

    def kv_overhead(self, row: dict[str, Any]) -> float | None:
        return kv_overhead_bytes(self.summary, row)

    def no_counterpart(self, metric: str, column: str, row: dict[str, Any]) -> str | None:
        """Why ``column`` is not defined for ``row`` when it is a ratio to a cell this run did not
        measure (the AR cell with the same settings, the same engine at batch size 1); else None."""
        if column in VS_AR and ar_counterpart(self.summary, row) is None:
            ars = [r for r in self.rows if r.get("engine") == AR_ENGINE]
            if not ars:
                return f"{metric} divides by an {AR_ENGINE!r} cell with the same settings, and this run measured none."
            differing = min(
                (
                    [k for k in AR_MATCH if is_present(row.get(k)) and str(_plain(r.get(k))) != str(_plain(row[k]))]
                    for r in ars
                ),
                key=len,
            )
            at = ", ".join(f"{k}={_plain(row[k])}" for k in differing) or "these settings"
            return (
                f"{metric} divides by the {AR_ENGINE!r} cell with the same settings, and this run has no "
                f"{AR_ENGINE!r} cell at {at}: not measured here, not a regression."
            )
        if column in VS_BATCH1:
            cells = [{k: v for k, v in r.items() if k not in METRIC_COLUMNS and k != "series"} for r in self.rows]
            own = {k: v for k, v in row.items() if k not in METRIC_COLUMNS and k != "series"}
            if not is_present(row.get("batch_size")) or int(row["batch_size"]) == 1:
                return f"{metric} compares a batched cell with batch size 1, and this cell is at batch size 1."
            if batch1_counterpart(own, cells) is None:
                return f"{metric} divides by the same engine at batch size 1, and this run has no such cell."
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _scope_equal(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, bool) or isinstance(value, bool):
        return str(value).lower() == str(wanted).lower()
    if value == wanted:
        return True
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return str(value) == str(wanted)


def _match_baseline(rows: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any] | None:
    return next((candidate for candidate in rows if same_cell(candidate, row)), None)


def evaluate_rules(run: RunData, rules: Sequence[GateRule], baseline: dict[str, Any] | None = None) -> GateReport:
    report = GateReport(str(run.path), unfinished=run.unfinished)
    if run.unfinished:
        report.notes.append(f"{run.unfinished} Its gates cover only those, so they cannot pass.")
    cells = _Cells(run)
    base_rows: list[dict[str, Any]] = []
    if baseline is not None:
        base_rows = summary_table(baseline["summary"]).to_dict("records")
        report.baseline = {
            k: baseline.get(k) for k in ("path", "run_id", "suite_name", "suite_hash", "created", "git_commit")
        }
        ours, theirs = measured_suite_hash(run), baseline.get("measured_suite_hash")
        if ours and theirs and ours != theirs:
            stored = baseline.get("measured_suite")
            if isinstance(stored, dict):
                differences = "; ".join(suite_differences(measured_suite(run), stored)) or "key order only"
            else:
                differences = "which keys differ is unknown: the baseline file predates recording its suite"
            report.notes.append(
                f"the baseline was measured with a different suite ({differences}); cells are matched by their "
                "parameters; after an intended change, re-save the baseline from a run of this suite."
            )
    for rule in rules:
        report.results.extend(_check_rule(rule, cells, base_rows, baseline is not None))
    return report


def _check_rule(
    rule: GateRule, cells: _Cells, base_rows: list[dict[str, Any]], have_baseline: bool
) -> list[GateResult]:
    def error(message: str, scope: str | None = None) -> list[GateResult]:
        return [GateResult(rule.text, rule.name, scope or rule.scope_text(), None, None, rule.op, "error", message)]

    if not cells.knows(rule.column):
        return error(f"unknown metric {rule.metric!r}; use a summary column or a gate name listed in docs/metrics.md.")
    for key in rule.where:
        if key not in cells.columns and key != "lossless":
            known = ", ".join(c for c in cell_columns(cells.summary) if c not in VOLATILE_COLUMNS)
            return error(f"where key {key!r} is not a cell parameter of this run (known: {known}).")
    for name in names_in(rule.expr) - {"baseline"}:
        if not cells.knows(resolve_metric(name)):
            return error(f"unknown name {name!r} in the threshold; use a number, 'baseline', or a cell column.")
    if rule.uses_baseline and not have_baseline:
        return error("this rule compares with 'baseline'; pass --baseline FILE (or set gates.baseline in the suite).")
    selected = [row for row in cells.rows if cells.selects(rule, row)]
    if not selected:
        return error(f"where {rule.scope_text()} selects no cell of this run.")
    # cell parameters (not metrics) named in the threshold, e.g. block_size
    params = {n for n in names_in(rule.expr) if n in cells.columns and n not in METRIC_COLUMNS}
    results = []
    for row in selected:
        scope = cells.scope(row)
        base_row = _match_baseline(base_rows, row) if rule.uses_baseline else None
        if rule.uses_baseline and base_row is None:
            results += error("no cell with these parameters in the baseline; re-save it with 'baseline save'.", scope)
            continue

        def lookup(name: str, row: dict[str, Any] = row, base_row: dict[str, Any] | None = base_row) -> float | None:
            if name == "baseline":
                return cells.value(rule.column, base_row) if base_row is not None else None
            return cells.value(name, row)

        measured = cells.value(rule.column, row)
        if not cells.value(COLUMN.n_ok, row) and cells.value(COLUMN.n_skipped, row):  # not measured on purpose
            message = "the cell was skipped (its engine cannot run it as asked; see its record)."
            results.append(GateResult(rule.text, rule.name, scope, None, None, rule.op, "skip", message))
            continue
        if rule.column in EXACTNESS_COLUMNS and row.get("synthetic") is True:
            message = "synthetic acceptance: a cost measurement whose output is not meant to be AR's."
            results.append(GateResult(rule.text, rule.name, scope, None, None, rule.op, "skip", message))
            continue
        absent = [n for n in sorted(params) if not is_present(row.get(n))]
        if absent:  # e.g. block_size on an AR cell: the rule does not apply here
            message = f"{absent[0]} does not apply to this cell."
            results.append(GateResult(rule.text, rule.name, scope, measured, None, rule.op, "skip", message))
            continue
        failed = cells.value(COLUMN.n_failed, row)
        why = cells.no_counterpart(rule.metric, rule.column, row) if measured is None and not failed else None
        if why:  # a ratio to a cell the run has not got: the rule does not apply, nothing regressed
            results.append(GateResult(rule.text, rule.name, scope, None, None, rule.op, "skip", why))
            continue
        threshold = evaluate_expr(rule.expr, lookup)
        if threshold is None:
            missing = "the baseline's value" if rule.uses_baseline else "a value the threshold needs"
            results.append(
                GateResult(rule.text, rule.name, scope, measured, None, rule.op, "error", f"{missing} is not measured.")
            )
        elif measured is None:
            ar = ar_counterpart(cells.summary, row) if rule.column in VS_AR else None
            if failed:
                message = f"{rule.column} was not measured for this cell: {int(failed)} of its measurements failed."
            elif ar is not None and not cells.value(COLUMN.n_ok, ar):
                message = f"{rule.column} divides by the {AR_ENGINE!r} cell with the same settings, whose measurements failed."
            else:
                message = f"{rule.column} is not reported for this cell, although its measurements are ok."
            results.append(GateResult(rule.text, rule.name, scope, None, threshold, rule.op, "fail", message))
        else:
            ok = holds(measured, rule.op, threshold)
            message = "" if ok else f"{rule.metric} = {fmt(measured)} does not satisfy {rule.op} {fmt(threshold)}."
            results.append(
                GateResult(rule.text, rule.name, scope, measured, threshold, rule.op, "pass" if ok else "fail", message)
            )
    if results and all(r.status == "skip" for r in results):
        return error(f"where {rule.scope_text()} selects only cells the rule does not apply to ({results[0].message})")
    return results


def check_baseline_suite(baseline: dict[str, Any], suite_name: str, run: str, path: str | None) -> None:
    """A baseline of another suite is refused, as compare refuses runs of different suites: its cells
    would be matched by parameters alone, and a rule against them would pass or fail by accident."""
    theirs = baseline.get("suite_name")
    if theirs and suite_name and str(theirs) != suite_name:
        where = f"baseline {path}" if path else "the baseline"
        raise UserInputError(
            f"{where} is of suite {theirs!r} and {run} of suite {suite_name!r}; gate a run against a baseline of "
            "its own suite (make one with 'baseline save RUN_DIR FILE')."
        )


def evaluate_gates(
    run_dir: str | Path,
    rules: Iterable[GateRule | str | dict[str, Any]] | None = None,
    baseline: str | Path | dict[str, Any] | None = None,
    write: bool = True,
) -> GateReport:
    """Check ``rules`` (default: the run's suite ``gates:`` section) on a run; writes gates.json.

    ``baseline`` is a baseline file path or its loaded dict (default: the suite's gates.baseline).
    Rules that do not parse raise UserInputError; problems found while checking are results with
    status "error" (exit code 2)."""
    run = load_run(run_dir)
    suite_baseline = None
    if rules is None:
        rules, suite_baseline = gates_config(run.suite.get("gates"), "gates")
    parsed = [r if isinstance(r, GateRule) else parse_rule(r, f"gates[{i}]") for i, r in enumerate(rules)]
    if baseline is None and suite_baseline:
        baseline = suite_baseline
    loaded = None
    if baseline is not None:
        loaded = load_baseline(baseline)
        check_baseline_suite(
            loaded, run.suite_name, str(run.path), str(baseline) if not isinstance(baseline, dict) else None
        )
        if not isinstance(baseline, dict):
            loaded = {**loaded, "path": str(baseline)}
    report = evaluate_rules(run, parsed, loaded)
    if write and report.results:
        (run.path / "gates.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return report
