"""The summary table on the terminal; the summary itself is built by ``orthrus.results.summary``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from orthrus.results.summary import frame_rows
from orthrus.results.vocabulary import COLUMN

__all__ = ["format_table", "print_summary"]


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


def format_table(frame: pd.DataFrame) -> str:
    """A compact, fixed-width view of the summary for the terminal. A run that batched shows the
    batch's own throughput and its speedup over AR at the same batch size too (per-row tokens/s of a
    batch read low by design: a row shares each pass with the others)."""
    if frame.empty:
        return "(no measurements)"
    rows = frame_rows(frame)
    columns = [*SETTINGS, *FIGURES]
    if any((row.get("batch_size") or 1) > 1 for row in rows):
        columns += BATCH_FIGURES

    def line(texts: list[str]) -> str:
        return " ".join(f"{t:<{-w}}" if w < 0 else f"{t:>{w}}" for t, (_, w, _) in zip(texts, columns))

    header = line([name for name, _, _ in columns])
    return "\n".join([header, "-" * len(header), *(line([text(r) for _, _, text in columns]) for r in rows)])


def print_summary(run_dir: Path, frame: Any, records: list[dict[str, Any]], info: dict[str, Any], quiet: bool) -> None:
    """The summary table, harness overhead and failures (unless quiet), then where the files are."""
    failed = [r for r in records if r.get("status") not in ("ok", "skipped")]
    skipped = [r for r in records if r.get("status") == "skipped"]
    overhead = info.get("harness_overhead") or {}
    if not quiet:
        print(format_table(frame))
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
