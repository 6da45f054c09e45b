"""Self-contained HTML pages from the results files: one run's report, the runs index, a comparison.

Pages are rendered from Jinja2 templates in ``templates/`` with autoescaping on, so prompt and
output text, labels and error messages show as text. Images are embedded as base64 data URIs; CSS
and the small sort script are inline, and a Content-Security-Policy forbids any network access, so
a page opens from disk anywhere. Each page's inline script marks ``<body>`` with
``data-report-ready``, ``data-broken-images`` and ``data-js-errors`` once loaded (the browser test
reads these).
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import pandas as pd
from markupsafe import Markup

from orthrus.report.formatting import fmt
from orthrus.report.gates import GateReport, GateResult
from orthrus.report.headline import scope, scope_params, subjects, varying, verdicts, where
from orthrus.report.plots import PlotInfo, batch_identity_table, category_groups, make_plots, near_tie_margin
from orthrus.report.rundata import (
    LABEL_COLUMN,
    VOLATILE_COLUMNS,
    RunData,
    cell_columns,
    is_greedy,
    is_lossless,
    is_present,
    kv_overhead_bytes,
    load_run,
    series_label,
)
from orthrus.results import vocabulary
from orthrus.results.derived import cost_model
from orthrus.results.vocabulary import AR_ENGINE, COLUMN, FIELD

TEMPLATES = Path(__file__).parent / "templates"
# record.extra keys shown as sample text; the prompt's text also comes from prompts.jsonl
SAMPLE_TEXT_KEYS = (("prompt_text", "prompt"), ("output_text", "output"))
SAMPLE_PROMPT_CHARS = 800  # the end of a long prompt is what the output continues
SAMPLE_OUTPUT_CHARS = 1500
TABLE_METRICS = tuple((metric.column, metric.table) for metric in vocabulary.TABLE_METRICS)  # (column, header)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    env.filters["sortkey"] = sort_key
    return env


def sort_key(value: Any) -> str:
    """The data-sort attribute of a table cell: a number when it is one, else the text."""
    if isinstance(value, bool) or not is_present(value):
        return "" if not is_present(value) else str(value)
    if isinstance(value, (int, float)):
        return repr(float(value))
    return str(value)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


@dataclass
class Headline:
    label: str
    value: str
    detail: str = ""
    tone: str = ""  # "good" | "bad" | ""
    lines: list[str] = field(default_factory=list)  # secondary lines under the detail
    wide: bool = False  # spans two card widths (the verdict, with its scope and best and worst cells)


# ----------------------------------------------------------------------------- headline numbers
def headlines(run: RunData) -> list[Headline]:
    df = run.summary
    out: list[Headline] = []
    rows = df.to_dict("records")
    non_ar = [r for r in rows if r.get("engine") != "ar"]

    for verdict in verdicts(run):  # the first card: Orthrus over the fastest AR, over every cell, with its interval
        params = scope_params(verdict.cells)
        noun = "cell" if len(verdict.cells) == 1 else "cells"
        lines = [f"scope: {verdict.scope}", f"against {verdict.against}"]
        if len(verdict.cells) > 1:
            lines += [
                f"best cell: {verdict.cell_text(verdict.best, params)}",
                f"worst cell: {verdict.cell_text(verdict.worst, params)}",
            ]
        out.append(
            Headline(
                f"{verdict.subject} vs fastest AR, geo. mean of {len(verdict.cells)} {noun}",
                f"{verdict.ratio:.2f}x",
                f"{verdict.interval}; {verdict.reading}",
                verdict.tone,
                lines,
                wide=True,
            )
        )
    out += batch_headlines(run)

    subject = (subjects(run) or [None])[0]
    with_tpf = [r for r in rows if r.get("series") == subject and is_present(r.get(COLUMN.tokens_per_forward_median))]
    if with_tpf:
        values = [float(r[COLUMN.tokens_per_forward_median]) for r in with_tpf]
        best = max(with_tpf, key=lambda r: r[COLUMN.tokens_per_forward_median])
        worst = min(with_tpf, key=lambda r: r[COLUMN.tokens_per_forward_median])
        noun = "cell" if len(values) == 1 else "cells"
        lines = [f"scope: {scope(str(subject), with_tpf)}"]
        if len(values) > 1 and f"{max(values):.2f}" == f"{min(values):.2f}":
            lines.append("the same in every cell")
        elif len(values) > 1:
            lines += [
                f"highest: {best[COLUMN.tokens_per_forward_median]:.2f} at {where(best, varying(with_tpf))}",
                f"lowest: {worst[COLUMN.tokens_per_forward_median]:.2f} at {where(worst, varying(with_tpf))}",
            ]
        out.append(
            Headline(
                f"Tokens per forward, mean of {len(values)} {noun}",
                f"{sum(values) / len(values):.2f}",
                "median per cell over prompts and repetitions (AR: 1)",
                lines=lines,
            )
        )

    lossless = [
        r
        for r in rows
        if is_lossless(r) and is_greedy(r) and r.get("engine") != "ar" and is_present(r.get(COLUMN.identity_exact_rate))
    ]
    if lossless:
        worst = min(lossless, key=lambda r: r[COLUMN.identity_exact_rate])
        names = ", ".join(sorted({r["series"] for r in lossless}))
        if worst[COLUMN.identity_exact_rate] >= 1:
            out.append(
                Headline(
                    "Identity of lossless engines",
                    "100% exact",
                    f"{names}; {len(lossless)} greedy {'cell' if len(lossless) == 1 else 'cells'}",
                    "good",
                )
            )
        else:
            ties = _near_tie_note(run, worst)
            out.append(
                Headline(
                    "Identity of lossless engines",
                    f"{worst[COLUMN.identity_exact_rate]:.1%} lowest",
                    f"{_where(worst, df)}{ties}",
                    "bad",
                )
            )

    overheads = []
    for r in non_ar:
        if r.get("engine") != "orthrus" or not is_present(r.get(COLUMN.kv_cache_bytes_peak_max)):
            continue
        extra = kv_overhead_bytes(df, r)
        if extra is not None and r[COLUMN.kv_cache_bytes_peak_max] > extra:
            overheads.append((extra, r[COLUMN.kv_cache_bytes_peak_max] - extra, r))
    if overheads:
        extra, base, r = max(overheads, key=lambda o: o[0])
        out.append(
            Headline(
                "KV memory overhead vs AR",
                f"{_bytes(extra)}",
                f"largest over {len(overheads)} cells, {extra / base:.1%} of AR's {_bytes(base)[1:]} at {_where(r, df)}",
            )
        )

    failed = int(df[COLUMN.n_failed].fillna(0).sum()) if COLUMN.n_failed in df.columns else len(run.failed_records())
    if failed:
        out.append(Headline("Failed measurements", str(failed), "see 'Failed cells' below", "bad"))
    if run.gates:
        status = run.gates.get("status", "?")
        counts = run.gates.get("counts", {})
        out.append(
            Headline(
                "Gates",
                str(status).upper(),
                f"{counts.get('pass', 0)} passed, {counts.get('fail', 0)} failed, {counts.get('error', 0)} errors",
                "good" if status == "pass" else "bad",
            )
        )
    return out


def batch_headlines(run: RunData) -> list[Headline]:
    """A run of several batch sizes: each subject's throughput over AR's at the largest batch size
    both decoded (the same prompts in the same batches), with its interval and its batch throughput."""
    df = run.summary
    if "batch_size" not in df.columns or df["batch_size"].dropna().nunique() < 2:
        return []
    out = []
    rows = df.to_dict("records")
    for subject in subjects(run):
        mine = [
            r
            for r in rows
            if r.get("series") == subject
            and r.get("engine") != "ar"
            and is_present(r.get(COLUMN.throughput_speedup_vs_ar))
            and is_present(r.get("batch_size"))
            and float(r["batch_size"]) > 1
        ]
        if not mine:
            continue
        largest = max(float(r["batch_size"]) for r in mine)
        cells = [r for r in mine if float(r["batch_size"]) == largest]
        ratios = [float(r[COLUMN.throughput_speedup_vs_ar]) for r in cells]
        value = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
        if len(cells) == 1:
            low, high = (
                cells[0].get(COLUMN.throughput_speedup_vs_ar_ci_low),
                cells[0].get(COLUMN.throughput_speedup_vs_ar_ci_high),
            )
        else:
            low = high = None
        tone = ""
        detail = "one batch only: no interval"
        if is_present(low) and is_present(high):
            detail = f"95% CI {low:.2f}-{high:.2f}x over batches"
            tone = "good" if low > 1 else "bad" if high < 1 else ""
        elif len(cells) > 1:
            detail = f"geo. mean of {len(cells)} cells, {min(ratios):.2f}-{max(ratios):.2f}x"
        throughput = [r.get(COLUMN.batch_tokens_per_s_median) for r in cells]
        lines = [f"scope: {scope(subject, cells)}"]
        if all(is_present(t) for t in throughput):
            lines.append(f"batch throughput {', '.join(f'{t:.0f}' for t in throughput)} tokens/s")
        lines.append("AR batch e2e / this batch's e2e, the same prompts in the same batches")
        out.append(
            Headline(f"{subject} throughput vs AR at batch {_plain(largest)}", f"{value:.2f}x", detail, tone, lines)
        )
    return out


def _where(row: dict[str, Any], df: pd.DataFrame) -> str:
    """``orthrus, context 1024``: a row named by its label and the parameters that vary over the run."""
    at = where(row, [c for c in _varying(df) if c not in ("engine", "series")])
    return f"{row['series']}, {at}" if at else str(row["series"])


def _varying(df: pd.DataFrame) -> list[str]:
    skip = {"engine_options", "lossless", LABEL_COLUMN, *VOLATILE_COLUMNS}
    params = [c for c in cell_columns(df) if c not in skip and not c.endswith("_path")]  # the model key says it
    return [c for c in params if df[c].astype(str).nunique() > 1]


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _bytes(value: float) -> str:
    sign = "-" if value < 0 else "+"
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    return f"{sign}{value}"


def _near_tie_note(run: RunData, row: dict[str, Any]) -> str:
    margin = row.get(COLUMN.divergence_margin_median)
    if not is_present(margin):
        return ""
    tie = margin < near_tie_margin(row.get("dtype"))
    return f"; median divergence margin {margin:.3g} ({'near-tie' if tie else 'real divergence'})"


# --------------------------------------------------------------------------------- page content
def summary_table(df: pd.DataFrame) -> dict[str, Any]:
    """The report's main table: the varying cell parameters, then the vocabulary's table metrics that
    this run measured, in the unit shown (KV bytes in MiB), with a same-run ratio's 95% interval; a
    percentile is followed by its sample count, and is "n < 100" (p99) or "n < 10" (p90) below it."""
    params = [c for c in _varying(df) if c not in ("engine", "series")]
    metrics = [(c, h) for c, h in TABLE_METRICS if c in df.columns and df[c].notna().any()]
    columns: list[tuple[str, str]] = []  # (summary column, header), sample counts after their percentiles
    for i, (column, header) in enumerate(metrics):
        columns.append((column, header))
        samples = vocabulary.METRIC[column].samples
        following = vocabulary.METRIC[metrics[i + 1][0]].samples if i + 1 < len(metrics) else None
        if samples and samples != following:
            columns.append((samples, "n"))
    header = ["engine"] + [vocabulary.AXIS[p].label if p in vocabulary.AXIS else p for p in params]
    header += [h for _, h in columns]
    body = []
    for row in df.to_dict("records"):
        cells = [{"value": row["series"], "text": str(row["series"])}]
        cells += [{"value": _plain(row.get(p)), "text": fmt(_plain(row.get(p)))} for p in params]
        cells += [metric_cell(row, column) for column, _ in columns]
        body.append(cells)
    return {"header": header, "rows": body, "sticky": 1 + len(params)}


def metric_cell(row: dict[str, Any], column: str) -> dict[str, Any]:
    """One figure of a summary row as the page shows it: in the unit shown, a same-run ratio with its
    interval, a percentile over too few values as "n < min" (sorted last), a sample count as an integer."""
    value = row.get(column)
    metric = vocabulary.METRIC.get(column)
    if metric is None:
        return {"value": value, "text": _cell_text(value)}
    if metric.samples and is_present(value):
        n = row.get(metric.samples)
        if is_present(n) and n < metric.min_samples:
            return {
                "value": None,
                "text": f"n < {metric.min_samples}",
                "title": f"only {int(n)} values: not a p{metric.how[1:]}",
            }
    if metric.how == "n":
        return {"value": value, "text": fmt(int(value)) if is_present(value) else "n/a"}
    if metric.scale != 1.0 and is_present(value):
        value = value * metric.scale
    low, high = f"{column}_ci_low", f"{column}_ci_high"  # a bootstrap interval, where it has one
    if is_present(value) and is_present(row.get(low)):
        return {"value": value, "text": f"{value:.3g} [{row[low]:.3g}, {row.get(high, float('nan')):.3g}]"}
    return {"value": value, "text": fmt(value)}


def full_table(df: pd.DataFrame) -> dict[str, Any]:
    columns = [c for c in df.columns if c != "series"]
    rows = []
    for row in df.to_dict("records"):
        cells = []
        for c in columns:
            metric = vocabulary.METRIC.get(c)
            if metric is not None and (metric.samples or metric.how == "n"):
                cells.append(metric_cell(row, c))  # the sample rule of the main table
            else:
                cells.append({"value": row.get(c), "text": _cell_text(row.get(c))})
        rows.append(cells)
    return {"header": columns, "rows": rows, "sticky": 1}


def _cell_text(value: Any) -> str:
    if isinstance(value, (list, dict)):
        text = json.dumps(value if not isinstance(value, list) else [_round(v) for v in value])
        return text if len(text) < 120 else text[:117] + "..."
    return fmt(value)


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def samples(run: RunData, limit: int = 12) -> list[dict[str, Any]]:
    """One prompt/output pair per series (its smallest context first), when the records carry text."""
    seen: set[str] = set()
    out = []
    records = [r for r in run.records if isinstance(r.get("extra"), dict) and isinstance(r.get("cell"), dict)]
    records.sort(key=lambda r: (_num(r["cell"].get("context_length")), str(r.get("prompt_id")), r.get("repeat", 0)))
    for record in records:
        extra = record["extra"]
        texts = {label: extra.get(key) for key, label in SAMPLE_TEXT_KEYS if isinstance(extra.get(key), str)}
        if "prompt" not in texts and texts:
            prompt_text = run.prompt_text(record["cell"].get("prompt_source"), record.get("prompt_id"))
            if prompt_text is not None:
                texts["prompt"] = prompt_text
        series = series_label(record["cell"])
        if not texts or series in seen:
            continue
        seen.add(series)
        prompt = texts.get("prompt", "")
        if len(prompt) > SAMPLE_PROMPT_CHARS:
            prompt = "..." + prompt[-SAMPLE_PROMPT_CHARS:]
        output = texts.get("output", "")
        if len(output) > SAMPLE_OUTPUT_CHARS:
            output = output[:SAMPLE_OUTPUT_CHARS] + "..."
        out.append(
            {
                "series": series,
                "prompt_id": record.get("prompt_id"),
                "context_length": record["cell"].get("context_length"),
                "prompt": prompt,
                "output": output,
                FIELD.identity_exact: record.get(FIELD.identity_exact),
                "first_divergence": record.get("first_divergence"),
            }
        )
        if len(out) >= limit:
            break
    return out


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.inf


def failed_cells(run: RunData) -> list[dict[str, Any]]:
    """Failed measurements grouped by cell: parameters, how many failed, the distinct errors."""
    groups: dict[str, dict[str, Any]] = {}
    for record in run.failed_records():
        cell = record.get("cell") if isinstance(record.get("cell"), dict) else {}
        key = str(record.get("cell_id") or json.dumps(cell, sort_keys=True, default=str))
        entry = groups.setdefault(
            key, {"series": series_label(cell), "params": _cell_params(cell), "count": 0, "errors": []}
        )
        entry["count"] += 1
        error = str(record.get("error") or "unknown error")
        if error not in entry["errors"]:
            entry["errors"].append(error)
    if not groups and COLUMN.n_failed in run.summary.columns:  # no records: say at least which cells failed
        for row in run.summary.to_dict("records"):
            if is_present(row.get(COLUMN.n_failed)) and row[COLUMN.n_failed] > 0:
                groups[str(len(groups))] = {
                    "series": row["series"],
                    "params": _where(row, run.summary),
                    "count": int(row[COLUMN.n_failed]),
                    "errors": ["(results.jsonl not available)"],
                }
    return list(groups.values())


def _cell_params(cell: dict[str, Any]) -> str:
    keep = ("context_length", "block_size", "temperature", "dtype", "device", "model", "max_new_tokens")
    return ", ".join(f"{k}={cell[k]}" for k in keep if is_present(cell.get(k)))


def _projection_markup(run_dir: Path) -> Markup | None:
    """The "projected on <device>" sections from the run's projection.json (``run_bench.py project``)."""
    from orthrus.profile.report import projection_section

    section = projection_section(run_dir)
    return Markup(section[0]) if section is not None else None  # autoescaped by its own template


def batch_rows(run: RunData) -> list[dict[str, Any]]:
    """The batching section: per batched cell, identity against solo AR and against the same engine
    at batch 1 (divergences judged near-tie or real by margin), TPF vs batch 1, throughput, speedup."""
    table = batch_identity_table(run)
    if table is None:
        return []
    summary = {str(r.get("cell_id")): r for r in run.summary.to_dict("records")}
    by_key = {}
    for row in summary.values():
        if is_present(row.get("batch_size")):
            by_key[(row.get("series"), row.get("context_length"), int(row["batch_size"]))] = row
    rows = []
    for t in table.to_dict("records"):
        row = by_key.get((t["series"], t["context"], t["batch_size"]), {})

        def divergences(prefix: str, t: dict[str, Any] = t) -> str:
            parts = [
                f"{t[f'{kind}_vs_{prefix}']} {label}"
                for kind, label in (("near_ties", "near-tie"), ("real", "real"), ("unjudged", "unjudged"))
                if t[f"{kind}_vs_{prefix}"]
            ]
            return ", ".join(parts) or "none"

        rows.append(
            {
                "series": str(t["series"]),
                "context": _plain(t["context"]) if is_present(t["context"]) else "-",
                "batch_size": t["batch_size"],
                "rows": t["rows"],
                "identical_to_ar": fmt(t["identical_to_ar"]),
                "divergences_vs_ar": divergences("ar"),
                "identical_to_batch1": fmt(t["identical_to_batch1"]) if t["batch_size"] > 1 else "(itself)",
                "divergences_vs_batch1": divergences("batch1") if t["batch_size"] > 1 else "",
                "tpf": fmt(row.get(COLUMN.tokens_per_forward_median)),
                "tpf_vs_batch1": fmt(row.get(COLUMN.tokens_per_forward_vs_batch1)),
                "tokens_per_s": fmt(row.get(COLUMN.batch_tokens_per_s_median)),
                "speedup": fmt(row.get(COLUMN.speedup_vs_ar))
                + (
                    f" [{fmt(row[COLUMN.speedup_vs_ar_ci_low])}, {fmt(row[COLUMN.speedup_vs_ar_ci_high])}]"
                    if is_present(row.get(COLUMN.speedup_vs_ar_ci_low))
                    else ""
                ),
                "throughput_speedup": _with_interval(row, COLUMN.throughput_speedup_vs_ar),
                "wasted": fmt(row.get(COLUMN.wasted_row_pass_fraction_mean)),
            }
        )
    return rows


def _with_interval(row: dict[str, Any], column: str) -> str:
    """``1.23 [1.1, 1.4]``: a same-run ratio with its bootstrap 95% interval, where it has one."""
    text = fmt(row.get(column))
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    return text + (f" [{fmt(low)}, {fmt(high)}]" if is_present(low) and is_present(high) else "")


def category_table(run: RunData) -> dict[str, Any] | None:
    """Per prompt category (summary_by_category): for each engine other than AR, its speedup over AR
    with the interval over the category's prompts, its tokens per forward and accepted drafts per cycle."""
    df = run.by_category
    if df.empty or "category" not in df.columns or not df["category"].notna().any():
        return None
    groups = [g for g in category_groups(df) if (g[2]["engine"] != AR_ENGINE).any()] or category_groups(df)
    columns = [
        (COLUMN.speedup_vs_ar, "speedup vs AR"),
        (COLUMN.tokens_per_forward_median, "TPF"),
        (COLUMN.acceptance_length_mean, "accepted/cycle"),
    ]
    columns = [(c, h) for c, h in columns if c in df.columns and df[c].notna().any()]
    header = ["category", "prompts"] + [f"{name}: {h}" for name, _, _ in groups for _, h in columns]
    body = []
    for category in sorted(df["category"].dropna().astype(str).unique()):
        rows = df[df["category"].astype(str) == category]
        prompts = int(rows[COLUMN.n_ok].max()) if COLUMN.n_ok in rows.columns else None
        cells = [{"value": category, "text": category}, {"value": prompts, "text": fmt(prompts)}]
        for _, _, part in groups:
            mine = part.loc[[category]].to_dict("records") if category in part.index else []
            for column, _ in columns:
                cells.append(metric_cell(mine[0], column) if mine else {"value": None, "text": "-"})
        body.append(cells)
    return {"header": header, "rows": body, "sticky": 1}


def cost_model_rows(run: RunData) -> list[dict[str, Any]]:
    """The cost-model section: per Orthrus cell, predicted (orthrus.results.derived.cost_model, from
    this run's records) vs measured speedup over AR, formatted for the template."""
    rows = []
    for c in cost_model(run.summary.to_dict("records"), run.records):
        rows.append(
            {
                "series": str(c["label"]),
                "params": ", ".join(
                    f"{k}={_plain(c[k])}" for k in ("context_length", "block_size", "model") if is_present(c.get(k))
                ),
                "accepted": fmt(c["accepted_per_cycle"]),
                "t_fwd_1_ms": fmt(c["t_fwd_1_ms"]),
                "t_fwd_k_ms": fmt(c["t_fwd_k_ms"]),
                "ratio_k_1": fmt(c["t_fwd_k_over_t_fwd_1"]),
                "predicted": fmt(c["speedup_predicted"]),
                "measured": fmt(c["speedup_measured"]),
                "measured_over_predicted": fmt(c["measured_over_predicted"]),
            }
        )
    return rows


def node_breakdown(run: RunData) -> tuple[list[dict[str, Any]], str | None]:
    """Per (node, engine) figures and a warning, when the records were measured on several kinds of
    device (distributed executors name each record's node; environment.json's ``nodes`` says what
    each node measured with); ([], None) otherwise."""
    nodes = run.environment.get("nodes") if isinstance(run.environment.get("nodes"), dict) else {}
    kinds = {
        node: str((nodes.get(node) or {}).get("device_kind") or "unknown device")
        for node in {r.get("node") for r in run.records if r.get("node") is not None}
    }
    if len(set(kinds.values())) < 2:
        return [], None
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in run.records:
        if r.get("node") is not None:
            label = str((r.get("cell") or {}).get("label") or (r.get("cell") or {}).get("engine"))
            groups.setdefault((str(r["node"]), label), []).append(r)
    rows = []
    for (node, label), records in sorted(groups.items()):
        ok = [r for r in records if r.get("status") == "ok"]
        e2e = [float(r[FIELD.e2e_ms]) for r in ok if is_present(r.get(FIELD.e2e_ms))]
        tpf = [float(r[FIELD.tokens_per_forward]) for r in ok if is_present(r.get(FIELD.tokens_per_forward))]
        rows.append(
            {
                "node": node,
                "device": kinds[node],
                "engine": label,
                "cells": len({r.get("cell_id") for r in records}),
                "ok": len(ok),
                "failed": sum(1 for r in records if r.get("status") == "failed"),
                COLUMN.e2e_ms_median: fmt(float(pd.Series(e2e).median())) if e2e else "-",
                COLUMN.tokens_per_forward_median: fmt(float(pd.Series(tpf).median())) if tpf else "-",
            }
        )
    devices = "; ".join(f"{node}: {kind}" for node, kind in sorted(kinds.items()))
    warning = (
        f"This run was measured on {len(set(kinds.values()))} kinds of device ({devices}): times and speedups "
        "measured on different devices are not comparable. Each speedup divides times measured on the same "
        "node; see the per-node breakdown."
    )
    return rows, warning


def environment_items(env: dict[str, Any]) -> list[tuple[str, str]]:
    items = []
    for key, value in env.items():
        text = value if isinstance(value, str) else json.dumps(value, indent=1, default=str)
        items.append((str(key), text))
    return items


def gate_rows(gates: dict[str, Any] | None, verbose: bool = False) -> list[Any]:
    """gates.json's checks; unless ``verbose``, a rule's passing cells are folded into one row."""
    if not gates:
        return []
    results = []
    for r in gates.get("results", []):
        try:
            results.append(GateResult(**r))
        except TypeError:
            continue  # written by another version: skip what we cannot read
    return GateReport("", results).rows(verbose)


def _started(run: RunData) -> float:
    """When the run started measuring (seconds since the epoch), for "newest first": run.json's first
    session, else environment.json's time, else its earliest record; never when a file was last
    touched (re-rendering an old run must not make it new). 0 when nothing says."""
    sessions = run.info.get("sessions")
    if isinstance(sessions, list) and sessions and isinstance(sessions[0], dict):
        started = sessions[0].get("started")
        if isinstance(started, (int, float)):
            return float(started)
    for key in ("timestamp", "started", "created", "start_time"):
        if isinstance(run.environment.get(key), (int, float)):
            return float(run.environment[key])
    stamps = [float(r["timestamp"]) for r in run.records if isinstance(r.get("timestamp"), (int, float))]
    if stamps:
        return min(stamps)
    if isinstance(run.info.get("merged_at"), (int, float)):
        return float(run.info["merged_at"])
    return 0.0


def _created(run: RunData) -> str:
    sessions = run.info.get("sessions")
    candidates = (
        [sessions[0].get("started")]
        if isinstance(sessions, list) and sessions and isinstance(sessions[0], dict)
        else []
    )
    candidates += [run.environment.get(k) for k in ("timestamp", "started", "created", "start_time")]
    for value in candidates:
        if isinstance(value, (int, float)):
            return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
        if isinstance(value, str) and value:
            return value
    for name in ("results.jsonl", "summary.json", "summary.csv"):
        if (run.path / name).is_file():
            return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((run.path / name).stat().st_mtime))
    return ""


# ---------------------------------------------------------------------------------------- pages
def render_run(run_dir: str | Path, update_index: bool = True, out_dir: str | Path | None = None) -> Path:
    """Draw the plots and write ``<run_dir>/report.html``; returns its path.

    With ``update_index``, also rewrites ``reports/index.html`` when the run lies in
    ``reports/<suite>/<run-id>``. With ``out_dir``, the page and its plots go there instead (the run
    directory is only read: an archived, read-only run) and the index is left alone."""
    run = load_run(run_dir)
    target = run.path if out_dir is None else Path(out_dir)  # elsewhere: a read-only (archived) run
    if out_dir is not None:
        target.mkdir(parents=True, exist_ok=True)
    plots, warnings = make_plots(run, target / "plots")
    notices = [run.unfinished] if run.unfinished else []
    if run.damaged:
        lines = ", ".join(str(n) for n in run.damaged)
        notices.append(
            f"{len(run.damaged)} damaged line(s) of results.jsonl (line {lines}) were left out (--skip-damaged): "
            "their measurements are missing from every figure below."
        )
    nodes, node_warning = node_breakdown(run)
    if node_warning:
        warnings = [node_warning, *warnings]
    page = (
        environment()
        .get_template("report.html.j2")
        .render(
            title=f"{run.suite_name} / {run.run_id}",
            run_id=run.run_id,
            suite_name=run.suite_name,
            created=_created(run),
            device=run.device,
            n_cells=len(run.summary),
            n_records=len(run.records),
            notices=notices,
            headlines=headlines(run),
            plots=[_plot_entry(p) for p in plots],
            warnings=warnings,
            table=summary_table(run.summary) if len(run.summary) else None,
            full_table=full_table(run.summary) if len(run.summary) else None,
            cost_model=cost_model_rows(run),
            batching=batch_rows(run),
            categories=category_table(run),
            nodes=nodes,
            projection=_projection_markup(run.path),
            samples=samples(run),
            failed=failed_cells(run),
            gates=run.gates,
            gate_rows=gate_rows(run.gates),
            gate_rows_all=gate_rows(run.gates, verbose=True),
            environment=environment_items(run.environment),
            suite_text=run.suite_text,
            generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        )
    )
    out = target / "report.html"
    out.write_text(page, encoding="utf-8")
    root = run.path.resolve().parents[1] if len(run.path.resolve().parents) > 1 else None
    if update_index and out_dir is None and root is not None and root.name == "reports":
        render_index(root)
    return out


def _plot_entry(plot: PlotInfo) -> dict[str, str]:
    return {
        "name": plot.name,
        "title": plot.title,
        "caption": plot.caption,
        "src": data_uri(plot.path),
        "file": f"plots/{plot.path.name}",
        "wide": plot.wide,
    }


def find_runs(root: Path) -> list[Path]:
    markers = ("summary.json", "summary.csv", "results.jsonl")
    return sorted({p.parent for m in markers for p in root.glob(f"*/*/{m}")})


def render_index(root: str | Path = "reports") -> Path:
    """Write ``<root>/index.html`` listing every run under ``<root>/<suite>/<run-id>/``."""
    root = Path(root)
    rows = []
    for path in find_runs(root):
        try:
            run = load_run(path)
        except Exception as err:  # one unreadable run must not hide the others
            rows.append(
                {
                    "suite": path.parent.name,
                    "run_id": path.name,
                    "created": "",
                    "device": "",
                    "cells": "",
                    "failed": "",
                    "speedup": "",
                    "speedup_sort": "",
                    "speedup_tone": "",
                    "gates": f"unreadable: {err}",
                    "href": "",
                    "sort": 0.0,
                }
            )
            continue
        df = run.summary
        found = verdicts(run)  # the report's first card: geometric mean over cells vs the fastest AR, its interval
        report = path / "report.html"
        rows.append(
            {
                "suite": run.suite_name,
                "run_id": run.run_id,
                "created": _created(run),
                "device": run.device,
                "cells": len(df),
                "failed": int(df[COLUMN.n_failed].fillna(0).sum())
                if COLUMN.n_failed in df.columns
                else len(run.failed_records()),
                "speedup": "; ".join(v.short() for v in found),
                "speedup_sort": found[0].ratio if found else "",
                "speedup_tone": found[0].tone if found else "",
                "gates": (run.gates or {}).get("status", ""),
                "href": quote(os.path.relpath(report if report.is_file() else path, root)),
                "sort": _started(run),
            }
        )
    rows.sort(key=lambda r: r["sort"], reverse=True)
    compares = [{"name": p.stem, "href": quote(os.path.relpath(p, root))} for p in sorted(root.glob("compare/*.html"))]
    page = (
        environment()
        .get_template("index.html.j2")
        .render(
            title="Orthrus benchmark runs", runs=rows, compares=compares, generated=time.strftime("%Y-%m-%d %H:%M:%S")
        )
    )
    root.mkdir(parents=True, exist_ok=True)
    out = root / "index.html"
    out.write_text(page, encoding="utf-8")
    return out
