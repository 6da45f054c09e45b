"""The report, compare and the gates read their metric lists from the vocabulary and behave as they
did when each kept its own table: the same summary-table columns in the same order (plus the ITL p99
and the two torch memory columns added since), the same noise
rule and direction for every metric compare judges, the same memory sources, the same gate names,
and the same wall-clock refusals (one more: harness_overhead_ms_median, a clock time)."""

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
    ("rss_peak_mib_max", "RSS MiB"),
    ("torch_max_allocated_mib_max", "torch alloc MiB"),  # added: GPU memory three ways, side by side
    ("torch_max_reserved_mib_max", "torch reserved MiB"),  # added
    ("nvml_process_used_mib_max", "NVML proc MiB"),
)
MEMORY_BEFORE = (
    ("kv_cache_bytes_peak_max", "KV cache held (exact, from tensors)", "MiB", 1 / MIB),
    ("nvml_device_used_mib_max", "NVML device used", "MiB", 1.0),
    ("nvml_process_used_mib_max", "NVML this process", "MiB", 1.0),
    ("torch_max_allocated_mib_max", "torch max allocated", "MiB", 1.0),
    ("torch_max_reserved_mib_max", "torch max reserved", "MiB", 1.0),
    ("rss_peak_mib_max", "process peak RSS", "MiB", 1.0),
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
    assert METRIC_ALIASES["tokens_per_forward"] == COLUMN.tokens_per_forward_median
    assert METRIC_ALIASES["identity_exact"] == COLUMN.identity_exact_rate
    assert METRIC_ALIASES["memory_bandwidth_gb_s"] == COLUMN.memory_bandwidth_gb_s_median
    assert len(METRIC_ALIASES) == 23


@pytest.mark.parametrize("column", SUMMARY_COLUMNS)
def test_a_gate_refuses_a_wall_clock_column_as_before(column):
    refused_before = column.startswith(WALL_CLOCK_PREFIXES_BEFORE) or column == COLUMN.harness_overhead_ms_median
    refused_before = refused_before and not column.endswith("_n")  # a sample count (added since): no clock
    if refused_before:
        with pytest.raises(UserInputError, match="wall-clock"):
            parse_rule(f"{column} >= 0")
        assert parse_rule({"rule": f"{column} >= 0", "allow_wall_clock": True}).column == column
    else:
        assert parse_rule(f"{column} >= 0").column == column
