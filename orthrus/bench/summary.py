"""The summary table on the terminal; the summary itself is built by ``orthrus.results.summary``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from orthrus.results.summary import frame_rows, summarize
from orthrus.results.vocabulary import AR_ENGINE, COLUMN

__all__ = ["format_category_table", "format_table", "print_summary"]


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _speedup(row: dict[str, Any], column: str) -> str:
    """A same-run ratio with its bootstrap interval: 1.05 [0.98,1.12]."""
    text = _fmt(row.get(column), ".2f")
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    return text + (f" [{low:.2f},{high:.2f}]" if low is not None and high is not None else "")


def _mib(value: Any) -> Any:
    return value / 2**20 if value is not None else None


# (header, width, the text of a summary row); the batch columns appear when the run batched
SETTINGS = (
    ("engine", -16, lambda r: str(r.get("label") or r.get("engine"))[:16]),
    ("source", -12, lambda r: str(r.get("prompt_source"))[:12]),
    ("ctx", 5, lambda r: _fmt(r.get("context_length"), ".0f")),
    ("blk", 4, lambda r: _fmt(r.get("block_size"), ".0f")),
    ("B", 3, lambda r: _fmt(r.get("batch_size"), ".0f")),
    ("T", 4, lambda r: _fmt(r.get("temperature"), ".1f")),
    ("new", 4, lambda r: _fmt(r.get("max_new_tokens"), ".0f")),
)
FIGURES = (
    ("ok/n", 6, lambda r: f"{r.get(COLUMN.n_ok) or 0}/{sum(r.get(c) or 0 for c in COUNTS)}"),
    ("e2e ms", 9, lambda r: _fmt(r.get(COLUMN.e2e_ms_median))),
    ("tok/s", 7, lambda r: _fmt(r.get(COLUMN.decode_tokens_per_s_median))),
    ("TPF", 5, lambda r: _fmt(r.get(COLUMN.tokens_per_forward_median), ".2f")),
    ("acc", 5, lambda r: _fmt(r.get(COLUMN.acceptance_length_mean), ".2f")),
    ("speedup [95% CI]", 20, lambda r: _speedup(r, COLUMN.speedup_vs_ar)),
    ("ident", 5, lambda r: _fmt(r.get(COLUMN.identity_exact_rate), ".2f")),
    ("KV MiB", 7, lambda r: _fmt(_mib(r.get(COLUMN.kv_cache_bytes_peak_max)), ".2f")),
    ("RSS MiB", 8, lambda r: _fmt(r.get(COLUMN.rss_peak_mib_max), ".0f")),
)
BATCH_FIGURES = (
    ("batch tok/s", 11, lambda r: _fmt(r.get(COLUMN.batch_tokens_per_s_median))),
    ("throughput vs AR [95% CI]", 25, lambda r: _speedup(r, COLUMN.throughput_speedup_vs_ar)),
)
COUNTS = (COLUMN.n_ok, COLUMN.n_failed, COLUMN.n_skipped)
# the headers of per-row figures in a run that batched (a row shares each pass with the other rows)
PER_ROW = {"e2e ms": "row e2e ms", "tok/s": "row tok/s"}


def _renamed(column: tuple[str, int, Any], header: str) -> tuple[str, int, Any]:
    """A column under another header, widened to fit it (negative widths align left)."""
    name, width, text = column
    return header, -max(-width, len(header)) if width < 0 else max(width, len(header)), text


def format_table(frame: pd.DataFrame) -> str:
    """A compact, fixed-width view of the summary for the terminal. A run that batched shows the
    batch's own throughput and its speedup over AR at the same batch size too (per-row tokens/s of a
    batch read low by design: a row shares each pass with the others)."""
    if frame.empty:
        return "(no measurements)"
    rows = frame_rows(frame)
    columns = [*SETTINGS, *FIGURES]
    if any((row.get("batch_size") or 1) > 1 for row in rows):  # per-row figures say so beside the batch's own
        columns = [_renamed(column, PER_ROW.get(column[0], column[0])) for column in columns]
        columns += BATCH_FIGURES

    def line(texts: list[str]) -> str:
        return " ".join(f"{t:<{-w}}" if w < 0 else f"{t:>{w}}" for t, (_, w, _) in zip(texts, columns))

    header = line([name for name, _, _ in columns])
    return "\n".join([header, "-" * len(header), *(line([text(r) for _, _, text in columns]) for r in rows)])


def format_category_table(records: list[dict[str, Any]]) -> str | None:
    """Per prompt category (Spec-Bench's writing, coding, math, ...), each engine's speedup over AR with
    its bootstrap interval (none from one prompt) and its tokens per forward: the question of a
    per-category suite, on the terminal (summary_by_category.csv holds every column). The AR cells
    themselves (1.00 by definition) are left out. None when the prompts have no categories."""
    if not any(r.get("category") is not None for r in records):
        return None
    frame = summarize(records, by_category=True)
    rows = [r for r in frame_rows(frame) if r.get("category") is not None]
    rows = [r for r in rows if r.get("engine") != AR_ENGINE] or rows
    cells: dict[str, str] = {}  # cell_id -> its column header (the label, numbered when it has several cells)
    labels = [(r["cell_id"], str(r.get("label") or r.get("engine"))) for r in rows]
    for cell_id, label in labels:
        if cell_id not in cells:
            same = sorted({c for c, other in labels if other == label})
            cells[cell_id] = label if len(same) == 1 else f"{label}#{same.index(cell_id) + 1}"
    categories = sorted({str(r["category"]) for r in rows})
    prompts: dict[str, set[str]] = {}
    for r in records:
        if r.get("category") is not None and r.get("status") == "ok":
            prompts.setdefault(str(r["category"]), set()).add(str(r.get("prompt_id")))
    width = max(12, *(len(c) for c in categories))
    by_key = {(r["cell_id"], str(r["category"])): r for r in rows}

    def entry(row: dict[str, Any] | None) -> str:
        if row is None:
            return "-"
        return f"{_speedup(row, COLUMN.speedup_vs_ar)} TPF {_fmt(row.get(COLUMN.tokens_per_forward_median), '.2f')}"

    widths = {cid: max(len(name), 28) for cid, name in cells.items()}
    header = f"{'category':<{width}} {'prompts':>7} " + " ".join(
        f"{name:<{widths[cid]}}" for cid, name in cells.items()
    )
    lines = [
        "per category: speedup vs AR [95% CI over its prompts; none from one prompt] and tokens per forward "
        "(all columns: summary_by_category.csv)",
        header.rstrip(),
        "-" * len(header.rstrip()),
    ]
    for category in categories:
        texts = [f"{entry(by_key.get((cid, category))):<{widths[cid]}}" for cid in cells]
        lines.append(f"{category:<{width}} {len(prompts.get(category, ())):>7} " + " ".join(texts).rstrip())
    return "\n".join(lines)


def print_summary(run_dir: Path, frame: Any, records: list[dict[str, Any]], info: dict[str, Any], quiet: bool) -> None:
    """The summary table, harness overhead and failures (unless quiet), then where the files are."""
    failed = [r for r in records if r.get("status") not in ("ok", "skipped")]
    skipped = [r for r in records if r.get("status") == "skipped"]
    overhead = info.get("harness_overhead") or {}
    if not quiet:
        print(format_table(frame))
        by_category = format_category_table(records)
        if by_category:
            print(by_category)
        pct = overhead.get("overhead_pct_with_writes", overhead.get("overhead_pct"))
        if overhead.get("measurements"):
            print(
                f"harness overhead: median {overhead['overhead_ms_median']:.2f} ms per measurement, "
                f"{pct:.2f}% of the measured time ({overhead['measurements']} measurements)"
            )
        for record in failed[:10]:
            print(f"failed: {record['cell'].get('label')} {record['prompt_id']}: {record.get('error')}")
        if len(failed) > 10:
            print(f"... and {len(failed) - 10} more failed records (see results.jsonl)")
        for record in skipped[:10]:
            print(
                f"skipped: {record['cell'].get('label')} batch {record['cell'].get('batch_size')}: {record.get('skip_reason')}"
            )
    skipped_text = f", {info['skipped']} skipped" if info.get("skipped") else ""
    print(f"results: {run_dir} ({info.get('ok', 0)} ok, {info.get('failed', 0)} failed{skipped_text})")
    print(f"summary: {run_dir / 'summary.csv'}")
