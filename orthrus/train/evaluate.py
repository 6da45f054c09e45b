"""The evaluation of a diffusion view, or of a drafter, read from a run of ``suites/diffusion_view.yaml``.

    python -m orthrus evaluate --model tiny-orthrus --block-sizes 4,8,16,32 --prompts 50
    python -m orthrus evaluate --model tiny-base --engine dflash --draft-model tiny-dflash --block-sizes 4,8,16

With ``--engine dflash`` or ``eagle3`` the suite's view under evaluation is replaced by that engine with the
drafter as its draft model (``drafter_sets``): the same prompts, budget and AR reference as a view gets.

The harness measures (``orthrus/cli.py`` runs the suite with ``suite_sets``' overrides); this
module only reads the run directory through ``orthrus.results``: the summary rows (identity,
acceptance, tokens per forward, speedup vs AR) and ``derived.cost_model`` (predicted vs measured
speedup), and formats them as the table printed and written into the model card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orthrus.errors import UserInputError
from orthrus.results.derived import cost_model, is_present
from orthrus.results.rundir import RESULTS_FILE, read_records, read_summary_rows
from orthrus.results.vocabulary import COLUMN

SUITE_FILE = Path(__file__).resolve().parents[2] / "suites" / "diffusion_view.yaml"
VIEW_LABEL = "orthrus"  # the suite's engine label of the view under evaluation
UNTRAINED_LABEL = "untrained_view"  # ... and of the same view untrained
VIEW_INDEX = 1  # the view's entry in the suite's engines list (what drafter_sets replaces)
DRAFTER_ENGINES = ("dflash", "eagle3")  # engines evaluate measures with a drafter instead of the view
# the evaluation's own keys for the speedup over AR: the summary column's, measured and as predicted
SPEEDUP_MEASURED = f"{COLUMN.speedup_vs_ar}_measured"
SPEEDUP_PREDICTED = f"{COLUMN.speedup_vs_ar}_cost_model"


def suite_sets(
    model: str | None = None,
    block_sizes: list[int] | None = None,
    prompts: int | None = None,
    max_new_tokens: int | None = None,
    threads: int | None = None,
    untrained_base: str | None = None,
) -> list[str]:
    """The ``--set key.path=value`` overrides of the suite for evaluate's flags (None: the suite's own)."""
    values: dict[str, Any] = {
        "models.base.path": model,
        "models.untrained.path": untrained_base,
        "sweep.block_sizes": block_sizes,
        "prompts[0].count": prompts,  # held-out text
        "prompts[1].count": prompts,  # code outside the training corpus
        "sweep.max_new_tokens": [max_new_tokens] if max_new_tokens is not None else None,
        "measure.threads": threads,
    }
    return [f"{key}={json.dumps(value)}" for key, value in values.items() if value is not None]  # JSON is YAML


def drafter_sets(engine: str, draft_model: str) -> list[str]:
    """The overrides that put ``engine`` with ``draft_model`` (a drafter directory or zoo name) where the
    suite measures the view: its label is the engine's name."""
    drafter = {"path": draft_model, "dtype": "float32", "device": "cpu"}
    entry = {"engine": engine, "model": "base", "draft_model": "drafter"}
    return [f"models.drafter={json.dumps(drafter)}", f"engines[{VIEW_INDEX}]={json.dumps(entry)}"]


def evaluation(run_dir: Path, label: str = VIEW_LABEL) -> dict[str, Any]:
    """What a run of the suite says about the view (or the engine labelled ``label``), from its summary rows
    and records."""
    rows = read_summary_rows(run_dir)
    if rows is None:
        raise UserInputError(f"{run_dir} has no summary.json; was the run interrupted? Resume it with run_bench.py.")
    records = read_records(run_dir / RESULTS_FILE)
    predicted = {c["cell_id"]: c for c in cost_model(rows, records)}
    views = sorted(
        (r for r in rows if r.get("label") == label),
        key=lambda r: (r.get("prompt_source") or "", r.get("context_length") or 0, r.get("block_size") or 0),
    )
    ok = [r for r in records if r.get("status") == "ok"]
    ar = [r for r in rows if r.get("engine") == "ar"]
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "engine": views[0].get("engine") if views else None,
        "model": views[0].get("model_path") if views else None,
        "draft_model": views[0].get("draft_model_path") if views else None,
        "prompts": {r.get("prompt_source"): _int(r.get(COLUMN.n_ok)) for r in ar},  # per prompt source
        "max_new_tokens": _int(views[0].get("max_new_tokens")) if views else None,
        "prompt_tokens": sorted({r["prompt_tokens"] for r in ok if r.get("prompt_tokens") is not None}),
        "cells": [_cell(row, predicted.get(row["cell_id"], {})) for row in views],
    }
    untrained = sorted((r for r in rows if r.get("label") == UNTRAINED_LABEL), key=lambda r: r.get("prompt_source") or "")
    if untrained:
        report["untrained_view"] = {
            "block_size": _int(untrained[0].get("block_size")),
            "accepted_per_cycle_token_weighted": {
                r.get("prompt_source"): _round(r.get(COLUMN.acceptance_length_token_weighted)) for r in untrained
            },
        }
    return report


def _round(value: Any, digits: int = 3) -> Any:
    return round(float(value), digits) if is_present(value) else None


def _int(value: Any) -> int | None:
    return int(value) if is_present(value) else None  # summary.json keeps integers of a column with gaps as floats


def _cell(row: dict[str, Any], cost: dict[str, Any]) -> dict[str, Any]:
    n_ok, rate = row.get(COLUMN.n_ok), row.get(COLUMN.identity_exact_rate)
    identical = f"{round(rate * n_ok)}/{int(n_ok)}" if is_present(rate) and is_present(n_ok) else None
    return {
        "prompts": row.get("prompt_source"),
        "block_size": _int(row.get("block_size")),
        "context_length": _int(row.get("context_length")),
        "identical_to_ar": identical,
        "accepted_per_cycle_token_weighted": _round(row.get(COLUMN.acceptance_length_token_weighted)),
        "accepted_per_cycle_per_request_mean": _round(row.get(COLUMN.acceptance_length_mean)),
        COLUMN.acceptance_by_position: [_round(v) for v in row.get(COLUMN.acceptance_by_position) or []],
        COLUMN.tokens_per_forward_median: _round(row.get(COLUMN.tokens_per_forward_median)),
        "t_fwd_1_ms": _round(cost.get("t_fwd_1_ms")),
        "t_fwd_k_ms": _round(cost.get("t_fwd_k_ms")),
        "t_fwd_k_over_t_fwd_1": _round(cost.get("t_fwd_k_over_t_fwd_1")),
        SPEEDUP_MEASURED: _round(row.get(COLUMN.speedup_vs_ar)),
        SPEEDUP_PREDICTED: _round(cost.get("speedup_predicted")),
        "measured_over_predicted": _round(cost.get("measured_over_predicted")),
        "extra_parameters": _int(row.get("extra_parameters")),
        "draft_kv_cache_bytes_peak_max": _int(row.get("draft_kv_cache_bytes_peak_max")),
    }


def _show(value: Any, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value}{suffix}"


def format_report(report: dict[str, Any]) -> str:
    """The evaluation as Markdown: one line of settings, the table, draft accuracy by position."""
    lengths = report["prompt_tokens"]
    span = f"{lengths[0]}-{lengths[-1]}" if len(lengths) > 1 else (str(lengths[0]) if lengths else "?")
    counts = " and ".join(f"{_show(n)} {source}" for source, n in report["prompts"].items()) or "no"
    lines = [
        f"{counts} prompts ({span} tokens), {_show(report['max_new_tokens'])} new tokens, "
        f"greedy; t_fwd = (e2e - TTFT) / passes after the prefill, from the same run's records "
        f"(run: `{report['run_dir']}`)",
        "",
        "| prompts | block | context | identical to AR | accepted/cycle | TPF (median) | t_fwd(K)/t_fwd(1) "
        "| speedup measured | cost model | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["cells"]:
        lines.append(
            f"| {c['prompts']} | {c['block_size']} | {c['context_length']} | {_show(c['identical_to_ar'])} | "
            f"{_show(c['accepted_per_cycle_token_weighted'])} | {_show(c[COLUMN.tokens_per_forward_median])} | "
            f"{_show(c['t_fwd_k_over_t_fwd_1'])} | {_show(c[SPEEDUP_MEASURED], 'x')} | "
            f"{_show(c[SPEEDUP_PREDICTED], 'x')} | {_show(c['measured_over_predicted'])} |"
        )
    lines.append("")
    for c in report["cells"]:
        lines.append(f"- draft accuracy by position, {c['prompts']}, block {c['block_size']}: {c[COLUMN.acceptance_by_position]}")
    if "untrained_view" in report:
        u = report["untrained_view"]
        per_source = ", ".join(f"{_show(v)} ({k})" for k, v in u["accepted_per_cycle_token_weighted"].items())
        lines.append(f"- untrained (copied) view, block {u['block_size']}: {per_source} accepted drafts per cycle")
    return "\n".join(lines)


def side_by_side(methods: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> str:
    """The drafters' evaluations as one Markdown comparison: ``methods`` holds (name, evaluation,
    training record) for each, the evaluations of one prompt set and budget (``evaluate --json-out`` or
    a card's ``eval.json``), the training records their ``training.json``. First how each was trained,
    then per prompt set and block, one row per method: identity with AR, accepted drafts per cycle,
    acceptance by draft position (the first four), tokens per forward and the measured speedup over AR."""
    lines = [
        "| method | trained | steps | CPU minutes | wall minutes | parameters added | final loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, report, training in methods:
        t = training.get("phase1", training)  # a two-phase view's record keeps the first phase apart
        added = report["cells"][0].get("extra_parameters") if report["cells"] else None
        lines.append(
            f"| {name} | {t.get('kind', 'orthrus')} from {t.get('base', '?')} | {_show(t.get('steps'))} | "
            f"{_show(t.get('budget_time_min') if t.get('budget_clock') == 'cpu' else None)} | "
            f"{_show(t.get('wall_time_min'))} | {_show(added if added is not None else t.get('diffusion_parameters'))} | "
            f"{_show(t.get('final_loss', t.get('final_kl')))} |"
        )
    keys = sorted({(c["prompts"], c["block_size"]) for _, report, _ in methods for c in report["cells"]})
    lines += [
        "",
        "| prompts | block | method | identical to AR | accepted/cycle | accepted by position (1-4) | TPF | speedup vs AR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for source, block in keys:
        for name, report, _ in methods:
            c = next((c for c in report["cells"] if (c["prompts"], c["block_size"]) == (source, block)), None)
            if c is None:
                continue
            positions = " / ".join(_show(v) for v in (c.get(COLUMN.acceptance_by_position) or [])[:4]) or "n/a"
            lines.append(
                f"| {source} | {block} | {name} | {_show(c.get('identical_to_ar'))} | "
                f"{_show(c.get('accepted_per_cycle_token_weighted'))} | {positions} | "
                f"{_show(c.get(COLUMN.tokens_per_forward_median))} | {_show(c.get(SPEEDUP_MEASURED), 'x')} |"
            )
    return "\n".join(lines)
