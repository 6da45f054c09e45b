"""The vocabulary's tables hold together: every metric names a real record field, its kind, unit and
direction are from the fixed lists, the report's and compare's places are unique, and every
``COLUMN.x`` / ``FIELD.x`` the package reads is a name of the tables."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest

from orthrus.results import vocabulary
from orthrus.results.record import MeasurementRecord
from orthrus.results.vocabulary import (
    COLUMN,
    FIELD,
    GATE_NAMES,
    KINDS,
    METRIC,
    METRICS,
    SUMMARY_COLUMNS,
    WALL_CLOCK_COLUMNS,
    is_wall_clock,
    metric_kind,
)

PACKAGE = Path(__file__).resolve().parents[1] / "orthrus"
HOWS = {*vocabulary.AGGREGATIONS, "count", "fact", "other"}


def test_every_metric_is_one_column_with_a_known_kind_aggregation_and_direction():
    assert len(SUMMARY_COLUMNS) == len(set(SUMMARY_COLUMNS))
    record_fields = {f.name for f in fields(MeasurementRecord)}
    for metric in METRICS:
        assert metric.kind in KINDS, metric.column
        assert metric.how in HOWS, metric.column
        assert metric.better in ("higher", "lower", None), metric.column
        assert metric.field is None or metric.field in record_fields, metric.column
        assert (metric.how in vocabulary.AGGREGATIONS) <= (metric.field is not None), metric.column
        assert metric.spread is None or metric.spread in METRIC, metric.column
        assert not metric.exact or metric.kind == "deterministic", metric.column
        assert metric.label and metric.unit is not None


def test_gate_names_are_unique_and_never_shadow_a_column():
    names = [name for metric in METRICS for name in metric.gate]
    assert len(names) == len(set(names))
    assert not set(names) & set(SUMMARY_COLUMNS)


def test_the_report_table_and_compare_each_have_one_place_per_metric():
    table = [m.table_rank for m in METRICS if m.table]
    assert sorted(table) == list(range(1, len(table) + 1))
    assert all(m.table_rank == 0 for m in METRICS if not m.table)
    compared = [m.compare_rank for m in METRICS if m.compared]
    assert sorted(compared) == list(range(1, len(compared) + 1))
    assert all(m.compare_rank == 0 for m in METRICS if not m.compared)
    assert all(m.better for m in METRICS if m.compared)  # a flagged change reads as better or worse


def test_wall_clock_is_a_clock_figure_that_is_not_a_same_run_ratio():
    """What a gate refuses without allow_wall_clock: the clock's figures that hold on one machine only.
    The gates' old prefix list said the same for every column but harness_overhead_ms_median (a time
    per measurement outside generate(): wall-clock, which the prefixes missed); compile_s_max came later."""
    old_prefixes = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "decode_tokens_per_s", "memory_bandwidth_gb_s")
    old = {c for c in SUMMARY_COLUMNS if c.startswith(old_prefixes)} | {COLUMN.batch_tokens_per_s_median}
    old -= {c for c in old if c.endswith("_n")}  # the sample counts added since: a count, not a clock
    added = {COLUMN.compile_s_max, COLUMN.chosen_block_median}  # clock figures added since
    assert WALL_CLOCK_COLUMNS == old | {COLUMN.harness_overhead_ms_median} | added
    assert not is_wall_clock(COLUMN.speedup_vs_ar) and metric_kind(COLUMN.speedup_vs_ar) == "wall_clock"
    same_run_clock = {m.column for m in METRICS if m.kind == "wall_clock" and m.same_run}
    assert same_run_clock == {
        COLUMN.speedup_vs_ar,
        COLUMN.speedup_vs_ar_ci_low,
        COLUMN.speedup_vs_ar_ci_high,
        COLUMN.batch_tokens_per_s_vs_batch1,
        COLUMN.throughput_speedup_vs_ar,
        COLUMN.throughput_speedup_vs_ar_ci_low,
        COLUMN.throughput_speedup_vs_ar_ci_high,
    }
    exact_kv = {COLUMN.kv_cache_bytes_peak_max, COLUMN.draft_kv_cache_bytes_peak_max}  # counted from tensors
    assert all(METRIC[c].kind == "memory" for c in vocabulary.MEMORY_COLUMNS if c not in exact_kv)
    assert all(METRIC[c].kind == "deterministic" for c in exact_kv)


def test_names_give_their_own_string_and_refuse_others():
    assert COLUMN.tokens_per_forward_median == "tokens_per_forward_median"
    assert FIELD.tokens_per_forward == "tokens_per_forward"
    assert list(COLUMN) == list(SUMMARY_COLUMNS)
    with pytest.raises(AttributeError, match="not a summary column"):
        COLUMN.tokens_per_forwrd_median  # noqa: B018
    with pytest.raises(AttributeError):
        COLUMN.n_ok = "x"


def _uses(tree: ast.AST, namespace: str) -> set[str]:
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == namespace
    }


def test_every_name_the_package_reads_through_column_or_field_exists():
    for file in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(file.read_text(), str(file))
        assert _uses(tree, "COLUMN") <= set(COLUMN), file
        assert _uses(tree, "FIELD") <= set(FIELD), file


def test_gate_names_resolve_to_columns():
    assert set(GATE_NAMES.values()) <= set(SUMMARY_COLUMNS)
