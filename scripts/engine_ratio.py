"""One engine over another within one run, paired by prompt: how much does compiling buy AR, or what
does one engine's setting change against another's? (A run's speedup_vs_ar divides by AR only.)

    python scripts/engine_ratio.py RUN_DIR ar-compiled ar                      # decode tokens/s
    python scripts/engine_ratio.py RUN_DIR orthrus-compiled orthrus --field e2e_ms

For each cell setting the two labels share (context, block, batch, temperature, ...), the ratio
A / B of a record field, per prompt (the median over its repetitions), then the geometric mean over
prompts with its bootstrap 95% interval (the summary's own: orthrus.results.summary.geometric_mean_ci).
For a field where lower is better (the vocabulary's ``better``: e2e_ms, ttft_ms, ...) the ratio is B / A,
so above 1 always means A is better. Pairing by prompt is the summary's own (per_prompt_median).
Reads results.jsonl only; measures nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from orthrus.errors import UserInputError
from orthrus.results.derived import spans_nodes
from orthrus.results.rundir import read_records
from orthrus.results.summary import geometric_mean_ci, per_prompt_median
from orthrus.results.vocabulary import FIELD, MATRIX_AXES, METRICS

# the cell parameters a suite sweeps, but the engine: rows of A and B are paired when these agree
SETTINGS = tuple(name for name in MATRIX_AXES if name != "engine")


def lower_is_better(field: str) -> bool:
    """Whether a smaller value of this record field is the better one (the vocabulary's ``better``)."""
    if field not in FIELD:
        raise UserInputError(f"{field!r} is not a record field of a metric; give one of: {', '.join(sorted(FIELD))}.")
    return any(metric.field == field and metric.better == "lower" for metric in METRICS)


def ratios(records: list[dict[str, Any]], a: str, b: str, field: str) -> list[dict[str, Any]]:
    """Per shared setting: the geometric mean over prompts of A / B (B / A where lower is better)."""
    lower = lower_is_better(field)
    by_node = spans_nodes(records)
    by: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for record in records:
        cell = record.get("cell", {})
        if cell.get("label") in (a, b):
            by.setdefault(tuple(cell.get(key) for key in SETTINGS), {a: [], b: []})[cell["label"]].append(record)
    rows = []
    for setting, sides in sorted(by.items(), key=lambda item: [(v is None, -1 if v is None else v) for v in item[0]]):
        mine, theirs = (per_prompt_median(sides[label], field, by_node) for label in (a, b))
        shared = sorted(set(mine) & set(theirs))
        if not shared:
            continue
        point, low, high = geometric_mean_ci(
            [(theirs[p] / mine[p]) if lower else (mine[p] / theirs[p]) for p in shared]
        )
        rows.append({**dict(zip(SETTINGS, setting)), "prompts": len(shared), "ratio": point, "low": low, "high": high})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("a", help="engine label of the numerator (the engine judged)")
    parser.add_argument("b", help="engine label it is divided by")
    parser.add_argument("--field", default="decode_tokens_per_s", help="record field (default decode_tokens_per_s)")
    args = parser.parse_args(argv)
    results = args.run_dir / "results.jsonl"
    try:
        if not results.is_file():
            raise UserInputError(f"{results} does not exist; give a run directory (reports/<suite>/<run-id>).")
        rows = ratios(read_records(results), args.a, args.b, args.field)
        if not rows:
            raise UserInputError(
                f"no setting of {args.run_dir} has ok records of both {args.a!r} and {args.b!r} with {args.field!r}; "
                f"check the engine labels in its summary.csv."
            )
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{args.a} / {args.b}, {args.field} ({'B / A: above 1 means A is better' if lower_is_better(args.field) else 'A / B'})"
    )
    for row in rows:
        where = ", ".join(f"{k} {row[k]}" for k in SETTINGS if row[k] is not None)
        interval = "no interval (one prompt)" if row["low"] is None else f"[{row['low']:.2f}, {row['high']:.2f}]"
        print(f"  {where}: {row['ratio']:.2f} {interval} over {row['prompts']} prompts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
