"""Performance regression gates: small rules over a run's summary, checked in CI.

A gate is one rule ``METRIC OP EXPR``, optionally scoped to some cells::

    gates:
      - "n_failed == 0"                                   # every cell
      - rule: identity.exact_rate == 1.0
        where: {lossless: true, temperature: 0, dtype: float32}
      - rule: tokens_per_forward >= baseline * 0.97
        where: {engine: orthrus}
      - rule: speedup_vs_ar >= 1.3
        where: {engine: orthrus, context_length: 512}
      - rule: peak_kv_overhead_bytes <= block_size * kv_bytes_per_token
        where: {engine: orthrus}

Grammar (parsed here, never ``eval``-ed)::

    rule   := METRIC OP expr             OP: == != >= <= > <
    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := NUMBER | NAME | '(' expr ')' | '-' factor

``NAME`` in an expression is ``baseline`` (the same metric in the matching cell of the baseline
file), a cell parameter of the cell being checked (``block_size``, ``context_length``, ...), or any
metric name below evaluated on that cell. A rule applies to every cell its ``where`` selects
(values may be lists: any of them); it passes when it holds for each of those cells.

Metric names: every summary column by its own name, the other names the vocabulary gives a column
(``tokens_per_forward`` for ``tokens_per_forward_median``, ``identity.exact_rate`` for
``identity_exact_rate``, ...) and ``peak_kv_overhead_bytes`` (``kv_cache_bytes_peak_max`` of the cell
minus that of the AR cell with the same context and settings; 0 for AR itself): docs/metrics.md
lists them all, with what each means, generated from ``orthrus.results.vocabulary``.

Batched cells: gate batch invariance within one run, e.g. ``tokens_per_forward_vs_batch1 >= 0.97``
and ``identity_vs_batch1_rate == 1.0`` with ``where: {engine: orthrus, batch_size: 4}``. A cell that
was skipped on purpose (an engine that cannot batch) is never checked: its rules say "skip".

``block_size`` in a rule is the block size the engine actually used (also for a null sweep), and
``where: {lossless: true}`` selects the cells whose engine said it is lossless.

Noise policy. Deterministic figures (identity, tokens per forward, accepted length, KV bytes) can be
gated tightly against a baseline. Wall-clock figures (latencies, tokens per second, bandwidth, the
harness's overhead: the vocabulary's ``is_wall_clock``, "wall-clock" in docs/metrics.md) differ
between machines and runs, so a rule on them is refused unless it sets ``allow_wall_clock: true``;
gate ``speedup_vs_ar`` (a ratio measured within one run) with a tolerance instead.

Limits: a rule is at most ``MAX_RULE_CHARS`` characters with at most ``MAX_RULE_DEPTH`` levels of
parentheses and signs; numbers and ``where`` values are finite (no NaN, no infinity).

Outcome: exit code 0 when every check passes, 1 when one fails (a regression), 2 for bad input (a
rule that does not parse, names an unknown metric or cell parameter, selects no cell, or needs a
baseline cell that is not there).

The parts: ``rules`` (the rule language: parse, resolve names, evaluate an expression),
``baseline`` (the baseline store), ``evaluation`` (rules on a run: ``GateReport``), ``outputs``
(terminal table, Markdown step summary, JUnit XML) and ``ci`` (the whole CI step).
"""

from __future__ import annotations

from orthrus.report.formatting import fmt
from orthrus.report.gates.baseline import (
    BASELINE_FORMAT,
    BASELINE_VERSION,
    json_rows,
    load_baseline,
    measured_suite_hash,
    save_baseline,
)
from orthrus.report.gates.ci import run_gates
from orthrus.report.gates.evaluation import GateReport, GateResult, evaluate_gates, evaluate_rules
from orthrus.report.gates.rules import (
    DERIVED_METRICS,
    MAX_RULE_CHARS,
    MAX_RULE_DEPTH,
    METRIC_ALIASES,
    OPERATORS,
    RULE_KEYS,
    GateRule,
    check_rule_names,
    gates_config,
    is_wall_clock,
    load_gate_file,
    parse_rule,
    parse_rules,
    resolve_metric,
)

__all__ = [
    "BASELINE_FORMAT",
    "BASELINE_VERSION",
    "DERIVED_METRICS",
    "MAX_RULE_CHARS",
    "MAX_RULE_DEPTH",
    "METRIC_ALIASES",
    "OPERATORS",
    "RULE_KEYS",
    "GateReport",
    "GateResult",
    "GateRule",
    "check_rule_names",
    "evaluate_gates",
    "evaluate_rules",
    "fmt",
    "gates_config",
    "is_wall_clock",
    "json_rows",
    "load_baseline",
    "load_gate_file",
    "measured_suite_hash",
    "parse_rule",
    "parse_rules",
    "resolve_metric",
    "run_gates",
    "save_baseline",
]
