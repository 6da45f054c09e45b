"""The two lists a benchmark is built on, written once: what is varied (axes) and what is measured
(metrics). Everything that needs one of these names derives it from here: the suite's sweep keys and
their defaults and checks, which settings an AR counterpart must share, the summary's columns, the
report's table, ``compare``'s metric list, the gate names and which of them are wall-clock, the
memory sources of the plots, and ``docs/metrics.md`` (tested against these tables).

An axis is a cell parameter: a value of it is part of what a cell *is* (its ``cell_id`` hashes them).
A metric is one summary column: the aggregation of a record field over a cell's measurements (or a
figure derived from several cells, such as a speedup), with its kind:

* ``deterministic``: the same code on the same inputs gives the same figure on any machine (tokens,
  tokens per forward, acceptance, identity, exact KV bytes, failure counts); gated exactly;
* ``wall_clock``: a time or a rate from the clock; meaningful on one machine, and across runs only as
  a ratio measured within one run (``speedup_vs_ar``);
* ``memory``: a figure read from the allocator, the driver or the kernel (NVML, torch, RSS): it moves
  with the machine, less than a time does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

KINDS = ("deterministic", "wall_clock", "memory")


# ---------------------------------------------------------------------------------------- axes
@dataclass(frozen=True)
class ValueRule:
    """How a suite value of an axis is checked: ``kind`` int | number | text, the lower bound (exclusive
    when ``exclusive``), an upper bound, and whether null is allowed (it then means a default)."""

    kind: str
    minimum: float | None = None
    exclusive: bool = False
    maximum: float | None = None
    nullable: bool = False


@dataclass(frozen=True)
class Axis:
    """One cell parameter. ``sweep_key``: its key under ``sweep`` (None: not swept there; set by the
    engine list, the prompt sources, a model or ``measure``); ``default``: the sweep's default list;
    ``ar_match``: the AR cell a speedup divides by must have the same value (a parameter neither cell
    has is not compared)."""

    name: str
    label: str
    sweep_key: str | None = None
    default: tuple[Any, ...] = ()
    rule: ValueRule | None = None
    ar_match: bool = False
    description: str = ""


AXES: tuple[Axis, ...] = (
    Axis("engine", "engine", description="the engine's registry name (its label names the cell in reports)"),
    Axis("prompt_source", "prompts", ar_match=True, description="the name of the prompt source"),
    Axis(
        "context_length",
        "context",
        "context_lengths",
        (512,),
        ValueRule("int", 1),
        ar_match=True,
        description="prompt tokens of synthetic prompts (null for datasets, whose prompts have their own length)",
    ),
    Axis(
        "block_size",
        "block",
        "block_sizes",
        (None,),
        ValueRule("int", 1, nullable=True),
        description="K, the block an engine drafts and verifies (null: the model's own; engines without one: null)",
    ),
    Axis(
        "temperature",
        "T",
        "temperatures",
        (0.0,),
        ValueRule("number", 0.0),
        ar_match=True,
        description="sampling temperature (0: greedy)",
    ),
    Axis("top_k", "top-k", "top_k", (0,), ValueRule("int", 0), ar_match=True, description="top-k filter (0: off)"),
    Axis(
        "top_p",
        "top-p",
        "top_p",
        (1.0,),
        ValueRule("number", 0.0, exclusive=True, maximum=1.0),
        ar_match=True,
        description="nucleus filter (1: off)",
    ),
    Axis(
        "max_new_tokens",
        "new tokens",
        "max_new_tokens",
        (64,),
        ValueRule("int", 1),
        ar_match=True,
        description="the generation budget per prompt",
    ),
    Axis(
        "batch_size",
        "batch",
        "batch_sizes",
        (1,),
        ValueRule("int", 1),
        ar_match=True,
        description="prompts decoded together by one generate_batch call",
    ),
    Axis("device", "device", ar_match=True, description="where the model runs (a model setting)"),
    Axis("dtype", "dtype", ar_match=True, description="the weights' dtype (a model setting)"),
    Axis("seed", "seed", ar_match=True, description="the sampling seed (measure.seed)"),
    Axis("stop_at_eos", "stop at EOS", ar_match=True, description="whether generation stops at EOS (measure)"),
    Axis("category", "category", ar_match=True, description="a dataset prompt's category (per-category summaries)"),
)
AXIS = {axis.name: axis for axis in AXES}
SWEPT_AXES = tuple(axis for axis in AXES if axis.sweep_key is not None)
# the axes an include/exclude entry of the sweep may name: the swept ones plus the engine and prompt source
MATRIX_AXES = ("engine", "prompt_source", *(axis.name for axis in SWEPT_AXES))
AR_MATCH = tuple(axis.name for axis in AXES if axis.ar_match)
AR_ENGINE = "ar"
# the engines that decode autoregressively, one token per target pass (the project's own loop and
# transformers' generate()): a headline compares Orthrus with the fastest lossless one of them
AR_ENGINES = (AR_ENGINE, "hf_generate")


# ------------------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Metric:
    """One summary column.

    ``field``: the record field it aggregates (None: derived from several cells or records);
    ``how``: median | mean | max | p50 | p90 | p99 | rate (of true values) | n (how many values) |
    count (of records) | fact (the
    engine's, as its records state it) | other (computed by the summary itself); the summary computes
    every metric with a field and a plain aggregation (median ... rate) in one loop, over the ok
    records, or once per decoded batch for a ``batch_`` field; a field of lists (``itl_ms``) is pooled;
    ``kind``: deterministic | wall_clock | memory; ``better``: higher | lower |
    None; ``gate``: other names a gate rule may use for it (the column name always works);
    ``table``: its header in the report's summary table (None: not shown there), at place
    ``table_rank``; ``compared``: in ``compare``'s side-by-side, at place ``compare_rank``, with
    ``spread`` the column compare reads its noise from;
    ``plot``: a memory panel's title in the report's memory figure (memory sources);
    ``same_run``: a ratio of two cells measured in the same run (vs AR, vs batch 1): a wall-clock one
    is still comparable across runs, since the machine divides out, so gates take it without
    ``allow_wall_clock`` and ``compare`` judges it by its bootstrap interval when it has one;
    ``exact``: a deterministic figure of which any change is news (identity, failure counts):
    ``compare`` flags any change, not only one beyond its deterministic tolerance;
    ``samples``: the column holding how many values a percentile was taken over, shown beside it;
    ``min_samples``: below that many values the percentile is no estimate (with fewer than 100
    values a p99 is the maximum, and with fewer than 10 a p90 is): the report shows "n < min" instead.
    """

    column: str
    label: str
    kind: str
    unit: str = ""
    field: str | None = None
    how: str = "other"
    better: str | None = None
    gate: tuple[str, ...] = ()
    table: str | None = None
    compared: bool = False
    spread: str | None = None
    plot: str | None = None
    scale: float = 1.0  # to the unit shown (bytes are shown in MiB)
    description: str = ""
    same_run: bool = False
    exact: bool = False
    table_rank: int = 0
    compare_rank: int = 0
    samples: str | None = None
    min_samples: int = 0


# the fewest values a percentile needs to be more than the largest (or second largest) of them
MIN_SAMPLES = {"p50": 1, "p90": 10, "p99": 100}


def _samples(name: str, label: str) -> Metric:
    """How many values the percentiles of ``name`` were taken over (shown beside each of them)."""
    return Metric(
        f"{name}_n",
        f"{label} samples",
        "deterministic",
        "values",
        name,
        "n",
        description=f"how many values of {name} the median and percentiles were taken over",
    )


def _latency(
    name: str, label: str, unit: str = "ms", table_median: str | None = None, table_rank: int = 0, compare_rank: int = 0
):
    """median / p90 / p99 of a per-request latency, the median gated and compared (p90 as its spread)."""
    compared = compare_rank > 0
    return (
        Metric(
            f"{name}_median",
            f"{label} (median)",
            "wall_clock",
            unit,
            name,
            "median",
            "lower",
            (name,),
            table_median,
            compared,
            f"{name}_p90" if compared else None,
            description=f"median over prompts x repetitions of {name}",
            table_rank=table_rank,
            compare_rank=compare_rank,
        ),
        Metric(f"{name}_p90", f"{label} p90", "wall_clock", unit, name, "p90", "lower", **_percentile(name, "p90")),
        Metric(f"{name}_p99", f"{label} p99", "wall_clock", unit, name, "p99", "lower", **_percentile(name, "p99")),
        _samples(name, label),
    )


def _percentile(name: str, how: str) -> dict[str, Any]:
    return {"samples": f"{name}_n", "min_samples": MIN_SAMPLES[how]}


MIB = 2.0**20
METRICS: tuple[Metric, ...] = (
    Metric("n_ok", "measurements ok", "deterministic", "", how="count", better="higher", table="ok", table_rank=1),
    Metric(
        "n_failed",
        "measurements failed",
        "deterministic",
        "",
        how="count",
        better="lower",
        table="failed",
        compared=True,
        exact=True,
        table_rank=2,
        compare_rank=18,
    ),
    Metric(
        "n_skipped",
        "cells skipped on purpose",
        "deterministic",
        "",
        how="count",
        description="records of a cell not measured on purpose (e.g. an engine that cannot batch): not failures",
    ),
    Metric(
        "new_tokens_median",
        "new tokens",
        "deterministic",
        "tokens",
        "new_tokens",
        "median",
        "higher",
        ("new_tokens",),
        compared=True,
        compare_rank=8,
    ),
    *_latency("ttft_ms", "TTFT", table_median="TTFT ms", table_rank=7, compare_rank=10),
    *_latency("tpot_ms", "TPOT", compare_rank=11),
    Metric(
        "itl_ms_p50",
        "ITL p50",
        "wall_clock",
        "ms",
        "itl_ms",
        "p50",
        "lower",
        description="pooled inter-token gaps",
        **_percentile("itl_ms", "p50"),
    ),
    Metric(
        "itl_ms_p90",
        "ITL p90",
        "wall_clock",
        "ms",
        "itl_ms",
        "p90",
        "lower",
        table="ITL p90 ms",
        table_rank=8,
        **_percentile("itl_ms", "p90"),
    ),
    Metric(
        "itl_ms_p99",
        "ITL p99",
        "wall_clock",
        "ms",
        "itl_ms",
        "p99",
        "lower",
        table="ITL p99 ms",
        table_rank=9,
        **_percentile("itl_ms", "p99"),
    ),
    _samples("itl_ms", "ITL"),
    *_latency("e2e_ms", "end to end", table_median="e2e ms", table_rank=10, compare_rank=12),
    Metric(
        "decode_tokens_per_s_median",
        "decode tokens/s",
        "wall_clock",
        "tokens/s",
        "decode_tokens_per_s",
        "median",
        "higher",
        ("decode_tokens_per_s",),
        "decode tok/s",
        compared=True,
        table_rank=6,
        compare_rank=9,
    ),
    Metric(
        "tokens_per_forward_median",
        "tokens per forward",
        "deterministic",
        "tokens",
        "tokens_per_forward",
        "median",
        "higher",
        ("tokens_per_forward",),
        "TPF",
        compared=True,
        description="new tokens / forward passes incl. the prefill (per cycle of Orthrus: (accepted + 1) / 2)",
        table_rank=3,
        compare_rank=2,
    ),
    Metric(
        "acceptance_length_mean",
        "accepted drafts per cycle (per request)",
        "deterministic",
        "tokens",
        "acceptance_length",
        "mean",
        "higher",
        ("acceptance_length",),
        "accepted/cycle",
        compared=True,
        description="mean over requests of each request's mean accepted drafts per cycle",
        table_rank=4,
        compare_rank=3,
    ),
    Metric(
        "acceptance_length_token_weighted",
        "accepted drafts per cycle (pooled)",
        "deterministic",
        "tokens",
        better="higher",
        gate=("acceptance_length.token_weighted",),
        compared=True,
        description="accepted drafts over all cycles of all requests, pooled",
        compare_rank=4,
    ),
    Metric(
        "acceptance_by_position",
        "acceptance by position",
        "deterministic",
        "fraction",
        description="list: fraction of cycles drafting position j in which draft j was accepted, pooled",
    ),
    Metric(
        "speedup_vs_ar",
        "speedup vs AR",
        "wall_clock",
        "x",
        better="higher",
        table="speedup vs AR",
        compared=True,
        description="geometric mean over prompts of AR e2e / engine e2e, measured in the same run",
        same_run=True,
        table_rank=5,
        compare_rank=1,
    ),
    Metric(
        "speedup_vs_ar_ci_low",
        "speedup vs AR, 95% low",
        "wall_clock",
        "x",
        gate=("speedup_vs_ar.ci_low",),
        same_run=True,
        description="bootstrap 95% interval over prompts (null below 2 prompts)",
    ),
    Metric(
        "speedup_vs_ar_ci_high",
        "speedup vs AR, 95% high",
        "wall_clock",
        "x",
        gate=("speedup_vs_ar.ci_high",),
        same_run=True,
        description="bootstrap 95% interval over prompts (null below 2 prompts)",
    ),
    Metric(
        "identity_exact_rate",
        "identical to the reference",
        "deterministic",
        "fraction",
        "identity_exact",
        "rate",
        "higher",
        ("identity.exact_rate", "identity_exact"),
        "identical",
        compared=True,
        description="fraction of outputs whose tokens equal the reference engine's (same prompt and settings)",
        exact=True,
        table_rank=11,
        compare_rank=5,
    ),
    Metric(
        "match_fraction_mean",
        "matching tokens",
        "deterministic",
        "fraction",
        "match_fraction",
        "mean",
        "higher",
        ("identity.match_fraction", "match_fraction"),
        "match",
        compared=True,
        description="mean over requests of the fraction of positions whose token equals the reference's",
        exact=True,
        table_rank=12,
        compare_rank=6,
    ),
    Metric(
        "divergence_margin_median",
        "top-1 minus top-2 logit at a divergence",
        "deterministic",
        "logit",
        "divergence_margin",
        "median",
        None,
        ("identity.divergence_margin", "divergence_margin"),
        description="the reference's top-1 minus top-2 logit at the first divergence: small means a near-tie",
    ),
    Metric(
        "ar_nll_mean",
        "AR NLL of the output",
        "deterministic",
        "nats/token",
        "ar_nll",
        "mean",
        "lower",
        ("ar_nll",),
        "AR NLL",
        compared=True,
        description="mean negative log-likelihood of the output under the AR model, per token",
        table_rank=13,
        compare_rank=7,
    ),
    Metric(
        "kv_cache_bytes_peak_max",
        "KV cache held (exact)",
        "deterministic",
        "MiB",
        "kv_cache_bytes_peak",
        "max",
        "lower",
        ("kv_cache_bytes_peak",),
        "KV peak MiB",
        compared=True,
        plot="KV cache held (exact, from tensors)",
        scale=1 / MIB,
        description="the largest total size of the target model's K/V tensors the engine held at once (bytes)",
        table_rank=14,
        compare_rank=13,
    ),
    Metric(
        "draft_kv_cache_bytes_peak_max",
        "draft model's own KV cache held (exact)",
        "deterministic",
        "MiB",
        "draft_kv_cache_bytes_peak",
        "max",
        "lower",
        ("draft_kv_cache_bytes_peak",),
        "draft KV MiB",
        compared=True,
        plot="draft model's own KV cache (exact)",
        scale=1 / MIB,
        description="the largest total size of K/V tensors a draft model (assisted's, a DFlash or EAGLE-3 drafter) "
        "held beside the target's at once (bytes; null: the engine keeps none)",
        table_rank=15,
        compare_rank=14,
    ),
    Metric(
        "kv_bytes_per_token",
        "KV bytes per token",
        "deterministic",
        "bytes",
        "kv_bytes_per_token",
        "fact",
        description="bytes of K and V one position occupies in the engine's model cache (a fact, for KV gates)",
    ),
    Metric(
        "extra_parameters",
        "parameters added over the base model",
        "deterministic",
        "parameters",
        "extra_parameters",
        "fact",
        better="lower",
        description="weights the method adds over the base model it decodes for (Orthrus's *_diff projections and "
        "norms, a drafter's own weights, assisted's draft model; 0: none; null: it runs a model of its own)",
    ),
    Metric(
        "extra_parameter_bytes",
        "bytes of the added parameters",
        "deterministic",
        "MiB",
        "extra_parameter_bytes",
        "fact",
        better="lower",
        scale=1 / MIB,
        description="bytes of extra_parameters in the dtype they run in",
    ),
    Metric(
        "nvml_device_used_mib_max",
        "NVML device used",
        "memory",
        "MiB",
        "nvml_device_used_mib",
        "max",
        "lower",
        plot="NVML device used",
    ),
    Metric(
        "nvml_process_used_mib_max",
        "NVML this process",
        "memory",
        "MiB",
        "nvml_process_used_mib",
        "max",
        "lower",
        table="NVML proc MiB",
        compared=True,
        plot="NVML this process",
        table_rank=19,
        compare_rank=16,
    ),
    Metric(
        "torch_max_allocated_mib_max",
        "torch max allocated",
        "memory",
        "MiB",
        "torch_max_allocated_mib",
        "max",
        "lower",
        table="torch alloc MiB",
        compared=True,
        plot="torch max allocated",
        table_rank=17,
        compare_rank=17,
    ),
    Metric(
        "torch_max_reserved_mib_max",
        "torch max reserved",
        "memory",
        "MiB",
        "torch_max_reserved_mib",
        "max",
        "lower",
        table="torch reserved MiB",
        plot="torch max reserved",
        table_rank=18,
    ),
    Metric(
        "rss_peak_mib_max",
        "process peak RSS",
        "memory",
        "MiB",
        "rss_peak_mib",
        "max",
        "lower",
        table="RSS MiB",
        compared=True,
        plot="process peak RSS",
        table_rank=16,
        compare_rank=15,
    ),
    Metric(
        "memory_bandwidth_gb_s_median",
        "weight bandwidth",
        "wall_clock",
        "GB/s",
        "memory_bandwidth_gb_s",
        "median",
        "higher",
        ("memory_bandwidth_gb_s",),
        description="weight bytes per forward x forwards per second",
    ),
    Metric(
        "tokens_per_step_median",
        "tokens per denoising step",
        "deterministic",
        "tokens",
        "tokens_per_step",
        "median",
        "higher",
        ("tokens_per_step",),
    ),
    Metric(
        "harness_overhead_ms_median",
        "harness overhead",
        "wall_clock",
        "ms",
        "harness_overhead_ms",
        "median",
        "lower",
        description="time per measurement spent outside generate()",
    ),
    Metric(
        "chosen_block_median",
        "chosen block size",
        "wall_clock",
        "tokens",
        "chosen_blocks",
        "median",
        None,
        ("chosen_block",),
        description="block_size: auto: the median K chosen per step (1: a plain AR step), pooled over a cell's"
        " steps; a choice made from measured costs, so it moves with the machine",
    ),
    Metric(
        "compile_s_max",
        "compile time",
        "wall_clock",
        "s",
        "compile_s",
        "max",
        "lower",
        ("compile_s",),
        description="a compiled engine's seconds spent compiling its graphs (before the clock of the calls that"
        " needed them: never in e2e, TTFT, ITL or tokens/s); None for an eager engine",
    ),
    Metric(
        "compiled_graphs_max",
        "compiled graphs",
        "deterministic",
        "graphs",
        "compiled_graphs",
        "max",
        "lower",
        ("compiled_graphs",),
        description="graphs a compiled engine built for the cell (one per batch size, block and cache capacity"
        " of each step kind); a step that recompiled per token would show here",
    ),
    # batching: one record per row; batch figures counted once per decoded batch
    Metric(
        "batch_rows_median",
        "rows per batch",
        "deterministic",
        "rows",
        "batch_rows",
        "median",
        description="rows per decoded batch (the last batch of a cell may be smaller)",
    ),
    Metric(
        "batch_tokens_per_s_median",
        "batch throughput",
        "wall_clock",
        "tokens/s",
        "batch_tokens_per_s",
        "median",
        "higher",
        ("batch_tokens_per_s",),
        description="new tokens of all rows / the batch's e2e",
    ),
    Metric(
        "batch_tokens_per_forward_median",
        "batch tokens per forward",
        "deterministic",
        "tokens",
        "batch_tokens_per_forward",
        "median",
        "higher",
    ),
    Metric(
        "batch_acceptance_length_median",
        "batch accepted drafts per cycle",
        "deterministic",
        "tokens",
        "batch_acceptance_length",
        "median",
        "higher",
    ),
    Metric(
        "wasted_row_pass_fraction_mean",
        "wasted row-passes",
        "deterministic",
        "fraction",
        "batch_wasted_row_pass_fraction",
        "mean",
        "lower",
        description="row-passes spent on rows that had already finished",
    ),
    Metric(
        "batch_kv_cache_bytes_peak_max",
        "KV cache of a batch",
        "deterministic",
        "MiB",
        "batch_kv_cache_bytes_peak",
        "max",
        "lower",
        scale=1 / MIB,
    ),
    Metric(
        "identity_vs_batch1_rate",
        "identical to batch 1",
        "deterministic",
        "fraction",
        "identity_vs_batch1_exact",
        "rate",
        "higher",
        ("identity.vs_batch1_rate",),
    ),
    Metric(
        "divergence_margin_vs_batch1_median",
        "margin at a divergence from batch 1",
        "deterministic",
        "logit",
        "divergence_margin_vs_batch1",
        "median",
    ),
    Metric(
        "tokens_per_forward_vs_batch1",
        "tokens per forward vs batch 1",
        "deterministic",
        "x",
        better="higher",
        gate=("tokens_per_forward.vs_batch1",),
        description="tokens_per_forward_median / that of the same engine and settings at batch size 1",
        same_run=True,
    ),
    Metric(
        "batch_tokens_per_s_vs_batch1",
        "batch throughput vs batch 1",
        "wall_clock",
        "x",
        better="higher",
        description="batch_tokens_per_s_median / that of the same engine and settings at batch size 1",
        same_run=True,
    ),
    Metric(
        "throughput_speedup_vs_ar",
        "throughput speedup vs AR",
        "wall_clock",
        "x",
        better="higher",
        description="per batch: AR batch e2e / this batch's e2e (same prompts, same batch size); geometric mean",
        same_run=True,
    ),
    Metric(
        "throughput_speedup_vs_ar_ci_low",
        "throughput speedup, 95% low",
        "wall_clock",
        "x",
        same_run=True,
        description="bootstrap 95% interval over batches",
    ),
    Metric(
        "throughput_speedup_vs_ar_ci_high",
        "throughput speedup, 95% high",
        "wall_clock",
        "x",
        same_run=True,
        description="bootstrap 95% interval over batches",
    ),
)
METRIC = {metric.column: metric for metric in METRICS}
SUMMARY_COLUMNS = tuple(metric.column for metric in METRICS)
# a gate or compare name -> the summary column it reads
GATE_NAMES = {name: metric.column for metric in METRICS for name in metric.gate}
# the figures that hold on one machine only: a gate on one must say allow_wall_clock (a same-run
# ratio such as speedup_vs_ar is wall-clock in kind, but the machine divides out: not among them)
WALL_CLOCK_COLUMNS = frozenset(
    metric.column for metric in METRICS if metric.kind == "wall_clock" and not metric.same_run
)
MEMORY_COLUMNS = tuple(metric.column for metric in METRICS if metric.plot)
# what says whether an output is the reference's: never asked of synthetic acceptance (not AR's by design)
EXACTNESS_FIELDS = (
    "identity_exact",
    "match_fraction",
    "divergence_margin",
    "identity_vs_batch1_exact",
    "divergence_margin_vs_batch1",
)
EXACTNESS_COLUMNS = frozenset(metric.column for metric in METRICS if metric.field in EXACTNESS_FIELDS)
# the plain aggregations the summary computes in one loop (record field -> summary column)
AGGREGATIONS = ("median", "mean", "max", "p50", "p90", "p99", "rate", "n")
AGGREGATED = tuple(metric for metric in METRICS if metric.field is not None and metric.how in AGGREGATIONS)
# the report's summary table and compare's side-by-side, each in its own order
TABLE_METRICS = tuple(sorted((metric for metric in METRICS if metric.table), key=lambda metric: metric.table_rank))
COMPARED_METRICS = tuple(
    sorted((metric for metric in METRICS if metric.compared), key=lambda metric: metric.compare_rank)
)


def metric_kind(column: str) -> str | None:
    """deterministic | wall_clock | memory for a summary column (None: not a metric)."""
    metric = METRIC.get(column)
    return metric.kind if metric is not None else None


def is_wall_clock(column: str) -> bool:
    return column in WALL_CLOCK_COLUMNS


class Names:
    """Attribute access to a fixed set of names: ``COLUMN.speedup_vs_ar == "speedup_vs_ar"``.

    Code that reads one particular summary column or record field names it through ``COLUMN`` or
    ``FIELD`` rather than spelling the string, so that every metric name is written in this module
    only, and a misspelt one is an AttributeError (tests/test_vocabulary.py checks every use)."""

    __slots__ = ("_names", "_what")

    def __init__(self, what: str, names: Iterable[str]) -> None:
        object.__setattr__(self, "_what", what)
        object.__setattr__(self, "_names", tuple(dict.fromkeys(names)))

    def __getattr__(self, name: str) -> str:
        if name in self._names:
            return name
        raise AttributeError(f"{name!r} is not a {self._what} of orthrus.results.vocabulary")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"the {self._what} names are fixed")

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __dir__(self) -> list[str]:
        return list(self._names)


# every summary column, and every record field a metric aggregates, by attribute
COLUMN = Names("summary column", SUMMARY_COLUMNS)
FIELD = Names("record field of a metric", (metric.field for metric in METRICS if metric.field is not None))
