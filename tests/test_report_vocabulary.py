"""The report, compare and the gates read their metric lists from the vocabulary and behave as they
did when each kept its own table: the same summary-table columns in the same order (plus the ITL p99
and the two torch memory columns added since), the same noise
rule and direction for every metric compare judges, the same memory sources, the same gate names,
and the same wall-clock refusals (one more: harness_overhead_ms_median, a clock time). Added since, on
purpose: the draft model's own KV cache (draft_kv_cache_bytes_peak_max) in compare, the report table and
the memory plot, beside the target's."""

from __future__ import annotations

import pytest

from orthrus.errors import UserInputError
from orthrus.report import compare, html, plots
from orthrus.report.gates import METRIC_ALIASES, parse_rule
from orthrus.results.vocabulary import COLUMN, MIB, SUMMARY_COLUMNS

# what compare.COMPARED_METRICS spelled before it was derived: (column, rule, higher is better, spread)
COMPARED_BEFORE = (
    ("speedup_vs_ar", "ratio", True, None),
    ("tokens_per_forward_median", "deterministic", True, None),
    ("acceptance_length_mean", "deterministic", True, None),
    ("acceptance_length_token_weighted", "deterministic", True, None),
    ("identity_exact_rate", "identity", True, None),
    ("match_fraction_mean", "identity", True, None),
    ("ar_nll_mean", "deterministic", False, None),
    ("new_tokens_median", "deterministic", True, None),
    ("decode_tokens_per_s_median", "throughput", True, None),
    ("ttft_ms_median", "latency", False, "ttft_ms_p90"),
    ("tpot_ms_median", "latency", False, "tpot_ms_p90"),
    ("e2e_ms_median", "latency", False, "e2e_ms_p90"),
    ("kv_cache_bytes_peak_max", "deterministic", False, None),
    ("draft_kv_cache_bytes_peak_max", "deterministic", False, None),
    ("rss_peak_mib_max", "memory", False, None),
    ("nvml_process_used_mib_max", "memory", False, None),
    ("torch_max_allocated_mib_max", "memory", False, None),
    ("n_failed", "identity", False, None),
)
TABLE_BEFORE = (
    ("n_ok", "ok"),
    ("n_failed", "failed"),
    ("tokens_per_forward_median", "TPF"),
    ("acceptance_length_mean", "accepted/cycle"),
    ("speedup_vs_ar", "speedup vs AR"),
    ("decode_tokens_per_s_median", "decode tok/s"),
    ("ttft_ms_median", "TTFT ms"),
    ("itl_ms_p90", "ITL p90 ms"),
    ("itl_ms_p99", "ITL p99 ms"),  # added, with its sample count beside it (and "n < 100" below 100 gaps)
    ("e2e_ms_median", "e2e ms"),
    ("identity_exact_rate", "identical"),
    ("match_fraction_mean", "match"),
    ("ar_nll_mean", "AR NLL"),
    ("kv_cache_bytes_peak_max", "KV peak MiB"),
    ("draft_kv_cache_bytes_peak_max", "draft KV MiB"),
    ("rss_peak_mib_max", "RSS MiB"),
    ("torch_max_allocated_mib_max", "torch alloc MiB"),  # added: GPU memory three ways, side by side
    ("torch_max_reserved_mib_max", "torch reserved MiB"),  # added
    ("nvml_process_used_mib_max", "NVML proc MiB"),
)
MEMORY_BEFORE = (
    ("kv_cache_bytes_peak_max", "KV cache held (exact, from tensors)", "MiB", 1 / MIB),
    ("draft_kv_cache_bytes_peak_max", "draft model's own KV cache (exact)", "MiB", 1 / MIB),
    ("nvml_device_used_mib_max", "NVML device used", "MiB", 1.0),
    ("nvml_process_used_mib_max", "NVML this process", "MiB", 1.0),
    ("torch_max_allocated_mib_max", "torch max allocated", "MiB", 1.0),
    ("torch_max_reserved_mib_max", "torch max reserved", "MiB", 1.0),
    ("rss_peak_mib_max", "process peak RSS", "MiB", 1.0),
)
ALIASES_BEFORE = {
    "identity.exact_rate": "identity_exact_rate",
    "identity_exact": "identity_exact_rate",
    "identity.match_fraction": "match_fraction_mean",
    "match_fraction": "match_fraction_mean",
    "identity.divergence_margin": "divergence_margin_median",
    "divergence_margin": "divergence_margin_median",
    "tokens_per_forward": "tokens_per_forward_median",
    "acceptance_length": "acceptance_length_mean",
    "acceptance_length.token_weighted": "acceptance_length_token_weighted",
    "speedup_vs_ar.ci_low": "speedup_vs_ar_ci_low",
    "speedup_vs_ar.ci_high": "speedup_vs_ar_ci_high",
    "kv_cache_bytes_peak": "kv_cache_bytes_peak_max",
    "ttft_ms": "ttft_ms_median",
    "tpot_ms": "tpot_ms_median",
    "e2e_ms": "e2e_ms_median",
    "decode_tokens_per_s": "decode_tokens_per_s_median",
    "new_tokens": "new_tokens_median",
    "tokens_per_step": "tokens_per_step_median",
    "memory_bandwidth_gb_s": "memory_bandwidth_gb_s_median",
    "ar_nll": "ar_nll_mean",
    "identity.vs_batch1_rate": "identity_vs_batch1_rate",
    "tokens_per_forward.vs_batch1": "tokens_per_forward_vs_batch1",
    "batch_tokens_per_s": "batch_tokens_per_s_median",
}
# the summary's columns when the tables were derived (metrics added since are checked by their kind)
COLUMNS_BEFORE = (
    "n_ok",
    "n_failed",
    "n_skipped",  # records of a cell skipped on purpose (e.g. the engine cannot batch): not failures
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
    "kv_bytes_per_token",  # a fact of the engine's model (from the records), for KV gates
    "nvml_device_used_mib_max",
    "nvml_process_used_mib_max",
    "torch_max_allocated_mib_max",
    "torch_max_reserved_mib_max",
    "rss_peak_mib_max",
    "memory_bandwidth_gb_s_median",
    "tokens_per_step_median",
    "harness_overhead_ms_median",  # time per measurement spent outside generate()
    # batching (one record per row; batch figures counted once per decoded batch)
    "batch_rows_median",  # rows per decoded batch (the last batch of a cell may be smaller)
    "batch_tokens_per_s_median",  # total throughput: new tokens of all rows / the batch's e2e
    "batch_tokens_per_forward_median",  # all rows' tokens over all rows' own passes, per batch
    "batch_acceptance_length_median",  # accepted drafts per cycle pooled over a batch's rows
    "wasted_row_pass_fraction_mean",  # row-passes spent on rows that had already finished
    "batch_kv_cache_bytes_peak_max",  # K/V bytes a whole batch held
    "identity_vs_batch1_rate",  # rows identical to the same engine and settings at batch size 1
    "divergence_margin_vs_batch1_median",
    "tokens_per_forward_vs_batch1",  # tokens_per_forward_median / that of the batch-1 cell
    "batch_tokens_per_s_vs_batch1",  # batch_tokens_per_s_median / that of the batch-1 cell
    "throughput_speedup_vs_ar",  # per batch: AR batch e2e / this batch e2e; geometric mean
    "throughput_speedup_vs_ar_ci_low",
    "throughput_speedup_vs_ar_ci_high",  # bootstrap 95% interval over batches
)
WALL_CLOCK_PREFIXES_BEFORE = (
    "ttft_ms",
    "tpot_ms",
    "itl_ms",
    "e2e_ms",
    "decode_tokens_per_s",
    "memory_bandwidth_gb_s",
    "batch_tokens_per_s_median",
)


def test_compare_judges_every_metric_as_before_in_the_same_order():
    assert compare.COMPARED_METRICS == COMPARED_BEFORE


def test_the_report_table_and_the_memory_plot_show_what_they_showed():
    assert html.TABLE_METRICS == TABLE_BEFORE
    assert plots.MEMORY_SOURCES == MEMORY_BEFORE


def test_the_gate_names_are_those_the_gates_had():
    assert {name: METRIC_ALIASES.get(name) for name in ALIASES_BEFORE} == ALIASES_BEFORE
    assert METRIC_ALIASES["draft_kv_cache_bytes_peak"] == COLUMN.draft_kv_cache_bytes_peak_max


@pytest.mark.parametrize("column", [c for c in SUMMARY_COLUMNS if c not in COLUMNS_BEFORE])
def test_a_new_column_is_gated_by_its_kind(column):
    from orthrus.results.vocabulary import is_wall_clock

    if is_wall_clock(column):
        with pytest.raises(UserInputError, match="wall-clock"):
            parse_rule(f"{column} >= 0")
    else:
        assert parse_rule(f"{column} >= 0").column == column


@pytest.mark.parametrize("column", COLUMNS_BEFORE)
def test_a_gate_refuses_a_wall_clock_column_as_before(column):
    refused_before = column.startswith(WALL_CLOCK_PREFIXES_BEFORE) or column == COLUMN.harness_overhead_ms_median
    refused_before = refused_before and not column.endswith("_n")  # a sample count (added since): no clock
    if refused_before:
        with pytest.raises(UserInputError, match="wall-clock"):
            parse_rule(f"{column} >= 0")
        assert parse_rule({"rule": f"{column} >= 0", "allow_wall_clock": True}).column == column
    else:
        assert parse_rule(f"{column} >= 0").column == column
