"""The summary table on the terminal; the summary itself is built by ``orthrus.results.summary``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from orthrus.results.summary import frame_rows

__all__ = ["format_table", "print_summary"]


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_table(frame: pd.DataFrame) -> str:
    """A compact, fixed-width view of the summary for the terminal."""
    if frame.empty:
        return "(no measurements)"
    lines = []
    header = (
        f"{'engine':<16} {'source':<12} {'ctx':>5} {'blk':>4} {'B':>3} {'T':>4} {'new':>4} {'ok/n':>6} "
        f"{'e2e ms':>9} {'tok/s':>7} {'TPF':>5} {'acc':>5} {'speedup [95% CI]':>20} {'ident':>5} "
        f"{'KV MiB':>7} {'RSS MiB':>8}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for row in frame_rows(frame):
        n = (row.get("n_ok") or 0) + (row.get("n_failed") or 0) + (row.get("n_skipped") or 0)
        speedup = _fmt(row.get("speedup_vs_ar"), ".2f")
        if row.get("speedup_vs_ar_ci_low") is not None:
            speedup += f" [{row['speedup_vs_ar_ci_low']:.2f},{row['speedup_vs_ar_ci_high']:.2f}]"
        kv = row.get("kv_cache_bytes_peak_max")
        lines.append(
            f"{str(row.get('label') or row.get('engine'))[:16]:<16} {str(row.get('prompt_source'))[:12]:<12} "
            f"{_fmt(row.get('context_length'), '.0f'):>5} {_fmt(row.get('block_size'), '.0f'):>4} "
            f"{_fmt(row.get('batch_size'), '.0f'):>3} {_fmt(row.get('temperature'), '.1f'):>4} {_fmt(row.get('max_new_tokens'), '.0f'):>4} "
            f"{str(row.get('n_ok') or 0) + '/' + str(n):>6} {_fmt(row.get('e2e_ms_median')):>9} "
            f"{_fmt(row.get('decode_tokens_per_s_median')):>7} {_fmt(row.get('tokens_per_forward_median'), '.2f'):>5} "
            f"{_fmt(row.get('acceptance_length_mean'), '.2f'):>5} {speedup:>20} "
            f"{_fmt(row.get('identity_exact_rate'), '.2f'):>5} "
            f"{_fmt(kv / 2**20 if kv is not None else None, '.2f'):>7} {_fmt(row.get('rss_peak_mib_max'), '.0f'):>8}"
        )
    return "\n".join(lines)


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
