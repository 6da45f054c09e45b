"""The gates' outputs: the terminal table, the Markdown of a GitHub step summary and JUnit XML, each
from a ``GateReport`` (passing cells of a rule folded into one line unless verbose)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, Protocol

from orthrus.report.formatting import fmt


class GateReport(Protocol):
    """What an output reads of ``evaluation.GateReport`` (named here, not imported: the evaluation
    uses these outputs, so they must not import it back). Its results are ``GateResult`` objects."""

    results: list[Any]
    notes: list[str]
    baseline: dict[str, Any] | None

    @property
    def status(self) -> str: ...

    def counts(self) -> dict[str, int]: ...

    def headline(self) -> str: ...

    def rows(self, verbose: bool = False) -> list[Any]: ...


ICONS = {"pass": "✅", "fail": "❌", "error": "⚠️", "skip": "➖"}


def table(report: GateReport, verbose: bool = False) -> str:
    """The terminal table: one line per shown result, a note line per note, the verdict last."""
    shown = report.rows(verbose)
    header = ("result", "rule", "scope", "measured", "threshold")
    rows = [(r.status.upper(), r.name or r.rule, r.scope, fmt(r.measured), _threshold_text(r)) for r in shown]
    widths = [min(60, max(len(h), *(len(row[i]) for row in rows))) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for row, result in zip(rows, shown):
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
        if result.message and result.status != "pass":
            lines.append(f"    -> {result.message}")
    lines += [f"note: {n}" for n in report.notes]
    lines.append(report.headline())
    return "\n".join(lines)


def markdown(report: GateReport, title: str = "Orthrus performance gates", verbose: bool = False) -> str:
    """The Markdown of a GitHub step summary: the verdict as a heading, then the results as a table."""
    icon = ICONS
    lines = [f"### {title}: {icon[report.status]} {report.headline()}", ""]
    if report.baseline:
        lines += [f"Baseline: `{report.baseline.get('path') or report.baseline.get('run_id')}`", ""]
    lines += ["| | rule | scope | measured | threshold | note |", "|---|---|---|---|---|---|"]
    for r in report.rows(verbose):
        cells = [icon[r.status], r.name or r.rule, r.scope, fmt(r.measured), _threshold_text(r), r.message]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    lines += [f"\n> {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def junit(report: GateReport, suite_name: str = "orthrus.gates") -> str:
    """JUnit XML: one test case per checked cell (failure: a regression; error: bad input)."""
    counts = report.counts()
    root = ET.Element("testsuites", name="orthrus", tests=str(len(report.results)))
    suite = ET.SubElement(
        root,
        "testsuite",
        name=suite_name,
        tests=str(len(report.results)),
        failures=str(counts["fail"]),
        errors=str(counts["error"]),
        skipped=str(counts["skip"]),
    )
    for r in report.results:
        case = ET.SubElement(suite, "testcase", classname=suite_name, name=f"{r.name or r.rule} [{r.scope}]")
        detail = f"measured {fmt(r.measured)}, threshold {_threshold_text(r)}. {r.message}".strip()
        if r.status == "fail":
            ET.SubElement(case, "failure", message=detail, type="regression").text = detail
        elif r.status == "error":
            ET.SubElement(case, "error", message=detail, type="bad_input").text = detail
        elif r.status == "skip":
            ET.SubElement(case, "skipped", message=r.message)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _threshold_text(r: Any) -> str:
    if r.threshold is None and r.status == "skip":
        return "-"
    return f"{r.op} {fmt(r.threshold)}"


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
