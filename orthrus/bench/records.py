"""The results-file contract between the runner (writes) and reports / gates (read).

A run directory ``reports/<suite>/<run-id>/`` holds:
  suite.yaml        the suite as run (after --set overrides), for re-rendering and comparison
  environment.json  package versions, device, CPU, threads, dtype, git commit, suite hash
  results.jsonl     one ``MeasurementRecord`` per line, appended and flushed as measured
  summary.csv/json  one row per cell (aggregated with pandas), see ``SUMMARY_COLUMNS``
  summary_by_category.csv/json   the same per (cell, prompt category), when prompts have categories
  prompts.jsonl     one line per prompt used: prompt_id, source, category, context_length, text, ids
  run.json          run id, suite name, command line, shard, status counts, harness overhead
  plots/*.png, report.html   written by orthrus.report from the files above only

Metric names and meanings are those of METRICS.md; memory fields carry their source in the name
and are null (None) when they could not be measured, never 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RECORD_VERSION = 1


@dataclass
class MeasurementRecord:
    # identity of the measurement
    run_id: str
    cell_id: str  # stable hash of ``cell``; --resume skips (cell_id, prompt_id, repeat) already present
    cell: dict[str, Any]  # engine, engine_options, model, dtype, device, context_length, block_size,
    # temperature, top_k, top_p, max_new_tokens, prompt_source, batch_size, ...
    prompt_id: str
    repeat: int  # 0-based among the measured (non-warm-up) repetitions
    status: str = "ok"  # "ok" | "failed"
    error: str | None = None  # one line: exception type and message (e.g. "OutOfMemoryError: ...")
    category: str | None = None  # e.g. Spec-Bench category
    # what was generated
    prompt_tokens: int | None = None
    new_tokens: int | None = None
    tokens: list[int] | None = None
    stop_reason: str | None = None
    # latency (ms) and throughput
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    itl_ms: list[float] | None = None
    e2e_ms: float | None = None
    decode_tokens_per_s: float | None = None
    # work
    forward_passes: int | None = None
    forward_passes_by_kind: dict[str, int] | None = None
    tokens_per_forward: float | None = None
    cycles: int | None = None
    drafted_per_cycle: list[int] | None = None
    accepted_per_cycle: list[int] | None = None
    acceptance_length: float | None = None  # per request mean of accepted_per_cycle
    acceptance_by_position: list[float] | None = None
    denoise_steps: int | None = None  # DLM engines
    tokens_per_step: float | None = None  # DLM engines
    memory_bandwidth_gb_s: float | None = None  # weight bytes per forward x forwards per second
    # memory, labelled by source (None = not measurable here)
    kv_cache_bytes_peak: int | None = None
    nvml_device_used_mib: float | None = None
    nvml_process_used_mib: float | None = None
    torch_max_allocated_mib: float | None = None
    torch_max_reserved_mib: float | None = None
    rss_peak_mib: float | None = None
    # identity against the reference engine for the same prompt and settings
    reference_engine: str | None = None
    identity_exact: bool | None = None
    first_divergence: int | None = None
    match_fraction: float | None = None
    divergence_margin: float | None = None  # reference top-1 minus top-2 logit at first_divergence
    ar_nll: float | None = None
    # harness bookkeeping
    harness_overhead_ms: float | None = None  # time per measurement spent outside generate()
    timestamp: float | None = None
    version: int = RECORD_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


# One row per cell in summary.csv / summary.json (cell parameters are flattened in front of these).
SUMMARY_COLUMNS = (
    "n_ok",
    "n_failed",
    "new_tokens_median",
    "ttft_ms_median",
    "ttft_ms_p90",
    "ttft_ms_p99",
    "tpot_ms_median",
    "tpot_ms_p90",
    "tpot_ms_p99",
    "itl_ms_p50",
    "itl_ms_p90",
    "itl_ms_p99",
    "e2e_ms_median",
    "e2e_ms_p90",
    "e2e_ms_p99",
    "decode_tokens_per_s_median",
    "tokens_per_forward_median",
    "acceptance_length_mean",  # per request, then averaged
    "acceptance_length_token_weighted",  # pooled over all cycles of all requests
    "acceptance_by_position",  # list, pooled
    "speedup_vs_ar",  # geometric mean over prompts of ar e2e / engine e2e (same run, same settings)
    "speedup_vs_ar_ci_low",
    "speedup_vs_ar_ci_high",  # bootstrap 95% interval
    "identity_exact_rate",
    "match_fraction_mean",
    "divergence_margin_median",
    "ar_nll_mean",
    "kv_cache_bytes_peak_max",
    "nvml_device_used_mib_max",
    "nvml_process_used_mib_max",
    "torch_max_allocated_mib_max",
    "torch_max_reserved_mib_max",
    "rss_peak_mib_max",
    "memory_bandwidth_gb_s_median",
    "tokens_per_step_median",
    "harness_overhead_ms_median",  # time per measurement spent outside generate()
)
