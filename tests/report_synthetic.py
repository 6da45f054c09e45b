"""Synthetic run directories for the report and gate tests, built from MeasurementRecord objects.

The results files are the contract between the harness and orthrus.report, so building them here
exercises the reports exactly as a real run would, with chosen numbers (a slower engine, a
near-tie divergence, a failed cell, text that must be escaped...).
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from orthrus.results import ENGINE_FACTS, MeasurementRecord
from orthrus.results.summary import SUMMARY_COLUMNS

KV_BYTES_PER_TOKEN = 1024
NEW_TOKENS = 32
SUITE_YAML = """\
name: synthetic
# gates checked by tests/test_gates.py
gates:
  - "n_failed == 0"
  - rule: identity.exact_rate == 1.0
    where: {lossless: true}
  - rule: peak_kv_overhead_bytes <= block_size * kv_bytes_per_token
    where: {engine: orthrus}
  - rule: speedup_vs_ar >= 1.3
    where: {engine: orthrus}
"""


def make_run(
    root: Path,
    run_id: str = "run-a",
    engines: Iterable[str] = ("ar", "orthrus", "dlm"),
    contexts: Iterable[int] = (512, 1024, 2048),
    block_sizes: Iterable[int] = (8,),
    prompts: int = 4,
    repeats: int = 2,
    orthrus_accepted: float = 4.0,  # mean drafts accepted per cycle (lower = a worse diffusion view)
    orthrus_slowdown: float = 1.0,  # multiplies orthrus e2e times
    timing_noise: float = 0.02,
    seed: int = 0,  # drafts accepted per cycle (deterministic in a real run)
    timing_seed: int | None = None,  # timing noise (differs between real runs); default: seed
    near_tie_at: int | None = None,  # context at which one orthrus output diverges on a near-tie
    fail_engine_at: tuple[str, int] | None = None,  # (engine, context) whose measurements all fail
    prompt_text: str | None = "def f(x):\n    return x +",
    extra_kv_blocks: int = 0,  # orthrus holds this many more blocks of K/V than it should
    write_csv: bool = True,
    write_records: bool = True,
    suite_yaml: str = SUITE_YAML,
    memory_sources: Iterable[str] = ("rss_peak_mib",),
    labels: dict[str, str] | None = None,  # engine -> its label in the suite (default: the engine's name)
    # more AR rows: (label, engine "ar" or "hf_generate", options, e2e factor vs the plain ar), e.g. a compiled ar
    ar_variants: Iterable[tuple[str, str, dict[str, Any], float]] = (),
) -> Path:
    rng = random.Random(seed)
    timing_rng = random.Random(seed if timing_seed is None else timing_seed)
    run_dir = root / "synthetic" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    records: list[MeasurementRecord] = []
    rows = [(engine, (labels or {}).get(engine, engine), {}, 1.0) for engine in engines]
    rows += [(engine, label, options, factor) for label, engine, options, factor in ar_variants]
    for context in contexts:
        for engine, label, options, factor in rows:
            for block in block_sizes if engine == "orthrus" else (None,):
                cell = {
                    "engine": engine,
                    "label": label,
                    "engine_options": {"block_size": block, **options} if block else dict(options),
                    "model": "tiny-orthrus",
                    "dtype": "float32",
                    "device": "cpu",
                    "context_length": context,
                    "block_size": block,
                    "temperature": 0.0,
                    "max_new_tokens": NEW_TOKENS,
                }
                cell_id = hashlib.sha1(json.dumps(cell, sort_keys=True).encode()).hexdigest()[:12]
                for p in range(prompts):
                    for r in range(repeats):
                        records.append(
                            _record(
                                run_id,
                                cell_id,
                                cell,
                                p,
                                r,
                                rng,
                                timing_rng,
                                orthrus_accepted,
                                orthrus_slowdown,
                                timing_noise,
                                near_tie_at,
                                fail_engine_at,
                                prompt_text,
                                extra_kv_blocks,
                                tuple(memory_sources),
                                factor,
                            )
                        )
    if write_records:
        with open(run_dir / "results.jsonl", "w") as handle:
            for record in records:
                handle.write(json.dumps(record.to_dict()) + "\n")
    rows = summarise(records)
    (run_dir / "summary.json").write_text(json.dumps(rows, indent=1))
    if write_csv:
        pd.DataFrame(rows).to_csv(run_dir / "summary.csv", index=False)
    (run_dir / "suite.yaml").write_text(suite_yaml)
    env = {
        "run_id": run_id,
        "device": "cpu",
        "device_name": "synthetic CPU",
        "torch": "2.13.0",
        "threads": 1,
        "git_commit": "0" * 40,
        "suite_hash": hashlib.sha256(suite_yaml.encode()).hexdigest(),
    }
    (run_dir / "environment.json").write_text(json.dumps(env))
    return run_dir


def _record(
    run_id,
    cell_id,
    cell,
    p,
    r,
    rng,
    timing_rng,
    accepted,
    slowdown,
    noise,
    near_tie_at,
    fail_at,
    text,
    extra_kv,
    memory_sources,
    factor=1.0,
) -> MeasurementRecord:
    engine, context, block = cell["engine"], cell["context_length"], cell["block_size"]
    autoregressive = engine in ("ar", "hf_generate")
    base = MeasurementRecord(
        run_id=run_id, cell_id=cell_id, cell=cell, prompt_id=f"p{p}", repeat=r, timestamp=1.7e9 + p
    )
    # what the engine says of itself (EngineDescription): a DLM is not lossless
    base.block_size, base.kv_bytes_per_token, base.lossless = block, KV_BYTES_PER_TOKEN, engine != "dlm"
    if fail_at == (engine, context):
        base.status, base.error = "failed", "OutOfMemoryError: CUDA out of memory (synthetic)"
        return base
    jitter = 1 + timing_rng.uniform(-noise, noise)
    ar_step_ms = 10.0 * (1 + context / 4096)
    prefill_ms = 0.05 * context
    if autoregressive:
        forwards, e2e = NEW_TOKENS + 1, (prefill_ms + NEW_TOKENS * ar_step_ms) * factor
        kv = (context + NEW_TOKENS - 1) * KV_BYTES_PER_TOKEN
        accepted_per_cycle = drafted = None
    elif engine == "orthrus":
        per_cycle = [max(0, min(block - 1, round(accepted + rng.uniform(-1, 1)))) for _ in range(64)]
        cycles, made = 0, 0
        while made < NEW_TOKENS:
            made += per_cycle[cycles] + 1
            cycles += 1
        accepted_per_cycle, drafted = per_cycle[:cycles], [block - 1] * cycles
        forwards = 1 + 2 * cycles
        e2e = (prefill_ms + cycles * 2.2 * ar_step_ms) * slowdown
        kv = (context + NEW_TOKENS - 1 + block * (1 + extra_kv)) * KV_BYTES_PER_TOKEN
    else:  # a DLM: fewer forwards, not identical to AR
        forwards, e2e = 12, prefill_ms + 12 * 3 * ar_step_ms
        kv = context * KV_BYTES_PER_TOKEN
        accepted_per_cycle = drafted = None
    e2e *= jitter
    ttft = prefill_ms * jitter + ar_step_ms if engine != "dlm" else e2e * 0.9
    identity = engine != "dlm"
    margin, first = None, None
    if not identity:
        first, margin = 3 + p, 2.5 + p
    if engine == "orthrus" and context == near_tie_at and p == 0:
        identity, first, margin = False, 7, 2e-5
    tokens = [(7 * p + i) % 200 + 3 for i in range(NEW_TOKENS)]
    base.prompt_tokens, base.new_tokens, base.tokens = context, NEW_TOKENS, tokens
    base.e2e_ms, base.ttft_ms = e2e, ttft
    base.tpot_ms = (e2e - ttft) / (NEW_TOKENS - 1)
    base.decode_tokens_per_s = (NEW_TOKENS - 1) / ((e2e - ttft) / 1e3)
    gaps = NEW_TOKENS - 1 if autoregressive else (len(accepted_per_cycle) if accepted_per_cycle else 11)
    base.itl_ms = [(e2e - ttft) / gaps] * gaps + [0.0] * (NEW_TOKENS - 1 - gaps)
    base.forward_passes = forwards
    base.tokens_per_forward = NEW_TOKENS / forwards
    if accepted_per_cycle is not None:
        base.cycles = len(accepted_per_cycle)
        base.accepted_per_cycle, base.drafted_per_cycle = accepted_per_cycle, drafted
        base.acceptance_length = sum(accepted_per_cycle) / len(accepted_per_cycle)
        base.acceptance_by_position = [
            sum(a >= j for a in accepted_per_cycle) / len(accepted_per_cycle) for j in range(1, block)
        ]
    if engine == "dlm":
        base.denoise_steps, base.tokens_per_step = 11, NEW_TOKENS / 11
    base.kv_cache_bytes_peak = kv
    if "rss_peak_mib" in memory_sources:
        base.rss_peak_mib = 400 + context / 100 + (5 if engine == "orthrus" else 0)
    base.reference_engine = "ar"
    base.identity_exact, base.first_divergence, base.divergence_margin = identity, first, margin
    base.match_fraction = 1.0 if identity else (first or 0) / NEW_TOKENS
    base.ar_nll = 1.2 if engine != "dlm" else 2.9
    if text is not None:
        base.extra = {"prompt_text": f"{text} (prompt {p})", "output_text": f"output of {engine}: {text}"}
    return base


def summarise(records: list[MeasurementRecord]) -> list[dict[str, Any]]:
    """A plain re-statement of the summary contract (medians, p90/p99, pooled acceptance, speedup)."""
    by_cell: dict[str, list[MeasurementRecord]] = {}
    for record in records:
        by_cell.setdefault(record.cell_id, []).append(record)
    ar_e2e = {}
    for recs in by_cell.values():
        if recs[0].cell["engine"] == "ar":
            for rec in recs:
                if rec.status == "ok":
                    ar_e2e.setdefault((rec.cell["context_length"], rec.prompt_id), []).append(rec.e2e_ms)
    rows = []
    for recs in by_cell.values():
        ok = [r for r in recs if r.status == "ok"]
        row: dict[str, Any] = dict(recs[0].cell)
        row.update(dict.fromkeys(SUMMARY_COLUMNS))
        row.update({name: getattr(recs[0], name) for name in ENGINE_FACTS})
        row["cell_id"] = recs[0].cell_id
        row["n_ok"], row["n_failed"] = len(ok), len(recs) - len(ok)
        if ok:

            def col(name: str, ok: list[MeasurementRecord] = ok) -> list[float]:
                return [getattr(r, name) for r in ok if getattr(r, name) is not None]

            for name in ("ttft_ms", "tpot_ms", "e2e_ms"):
                values = sorted(col(name))
                row[f"{name}_median"] = statistics.median(values)
                row[f"{name}_p90"] = values[min(len(values) - 1, int(0.9 * len(values)))]
                row[f"{name}_p99"] = values[-1]
                row[f"{name}_n"] = len(values)
            itl = sorted(v for r in ok for v in r.itl_ms)
            row["itl_ms_n"] = len(itl)
            row["itl_ms_p50"], row["itl_ms_p90"], row["itl_ms_p99"] = (
                itl[int(q * (len(itl) - 1))] for q in (0.5, 0.9, 0.99)
            )
            row["new_tokens_median"] = statistics.median(col("new_tokens"))
            row["decode_tokens_per_s_median"] = statistics.median(col("decode_tokens_per_s"))
            row["tokens_per_forward_median"] = statistics.median(col("tokens_per_forward"))
            if col("acceptance_length"):
                row["acceptance_length_mean"] = statistics.mean(col("acceptance_length"))
                pooled = [a for r in ok for a in r.accepted_per_cycle]
                row["acceptance_length_token_weighted"] = sum(pooled) / len(pooled)
                width = max(len(r.acceptance_by_position) for r in ok)
                row["acceptance_by_position"] = [
                    statistics.mean(r.acceptance_by_position[j] for r in ok) for j in range(width)
                ]
            row["identity_exact_rate"] = statistics.mean(float(r.identity_exact) for r in ok)
            row["match_fraction_mean"] = statistics.mean(col("match_fraction"))
            margins = col("divergence_margin")
            row["divergence_margin_median"] = statistics.median(margins) if margins else None
            row["ar_nll_mean"] = statistics.mean(col("ar_nll"))
            row["kv_cache_bytes_peak_max"] = max(col("kv_cache_bytes_peak"))
            row["rss_peak_mib_max"] = max(col("rss_peak_mib")) if col("rss_peak_mib") else None
            if col("tokens_per_step"):
                row["tokens_per_step_median"] = statistics.median(col("tokens_per_step"))
            ratios = [
                statistics.median(ar_e2e[(r.cell["context_length"], r.prompt_id)]) / r.e2e_ms
                for r in ok
                if (r.cell["context_length"], r.prompt_id) in ar_e2e
            ]
            if ratios:
                geo = statistics.geometric_mean(ratios)
                row["speedup_vs_ar"] = geo
                row["speedup_vs_ar_ci_low"], row["speedup_vs_ar_ci_high"] = geo * 0.97, geo * 1.03
        rows.append(row)
    return rows
