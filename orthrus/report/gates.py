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

Metric names: every summary column (``orthrus.results.summary.SUMMARY_COLUMNS``) by its own name, plus
these aliases and derived figures:

    identity.exact_rate            -> identity_exact_rate
    identity.match_fraction        -> match_fraction_mean
    identity.divergence_margin     -> divergence_margin_median
    tokens_per_forward             -> tokens_per_forward_median
    acceptance_length              -> acceptance_length_mean
    acceptance_length.token_weighted -> acceptance_length_token_weighted
    speedup_vs_ar.ci_low / .ci_high -> speedup_vs_ar_ci_low / speedup_vs_ar_ci_high
    kv_cache_bytes_peak            -> kv_cache_bytes_peak_max
    ttft_ms, tpot_ms, e2e_ms, decode_tokens_per_s, new_tokens, tokens_per_step -> <name>_median
    ar_nll                         -> ar_nll_mean
    peak_kv_overhead_bytes         =  kv_cache_bytes_peak_max of the cell minus that of the AR cell
                                      with the same context and settings (0 for AR itself;
                                      ``orthrus.results.derived.kv_overhead_bytes``)
    kv_bytes_per_token             =  the summary column: bytes of K and V per position in the
                                      engine's model, as recorded with each measurement
    identity.vs_batch1_rate        -> identity_vs_batch1_rate (rows equal to the same engine at batch 1)
    tokens_per_forward.vs_batch1   -> tokens_per_forward_vs_batch1 (this cell's TPF / the batch-1 cell's)
    batch_tokens_per_s             -> batch_tokens_per_s_median (wall clock: total throughput of a batch)

Batched cells: gate batch invariance within one run, e.g. ``tokens_per_forward_vs_batch1 >= 0.97``
and ``identity_vs_batch1_rate == 1.0`` with ``where: {engine: orthrus, batch_size: 4}``. A cell that
was skipped on purpose (an engine that cannot batch) is never checked: its rules say "skip".

``block_size`` in a rule is the block size the engine actually used (also for a null sweep), and
``where: {lossless: true}`` selects the cells whose engine said it is lossless.

Noise policy. Deterministic figures (identity, tokens per forward, accepted length, KV bytes) can be
gated tightly against a baseline. Wall-clock figures (``*_ms_*``, ``decode_tokens_per_s_*``,
``memory_bandwidth_gb_s_*``) differ between machines and runs, so a rule on them is refused unless
it sets ``allow_wall_clock: true``; gate ``speedup_vs_ar`` (a ratio measured within one run) with a
tolerance instead.

Limits: a rule is at most ``MAX_RULE_CHARS`` characters with at most ``MAX_RULE_DEPTH`` levels of
parentheses and signs; numbers and ``where`` values are finite (no NaN, no infinity).

Outcome: exit code 0 when every check passes, 1 when one fails (a regression), 2 for bad input (a
rule that does not parse, names an unknown metric or cell parameter, selects no cell, or needs a
baseline cell that is not there).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from orthrus.errors import UserInputError
from orthrus.report.outputs import check_output_file, writable
from orthrus.report.rundata import (
    METRIC_COLUMNS,
    VOLATILE_COLUMNS,
    RunData,
    cell_columns,
    is_lossless,
    is_present,
    kv_overhead_bytes,
    load_run,
    same_cell,
    summary_table,
)
from orthrus.results.record import ENGINE_FACTS

BASELINE_FORMAT = "orthrus-baseline"
BASELINE_VERSION = 1
OPERATORS = ("==", "!=", ">=", "<=", ">", "<")
RULE_KEYS = ("rule", "where", "name", "allow_wall_clock")
METRIC_ALIASES = {
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
DERIVED_METRICS = ("peak_kv_overhead_bytes",)
MAX_RULE_CHARS = 500
MAX_RULE_DEPTH = 32
WALL_CLOCK_PREFIXES = (
    "ttft_ms",
    "tpot_ms",
    "itl_ms",
    "e2e_ms",
    "decode_tokens_per_s",
    "memory_bandwidth_gb_s",
    "batch_tokens_per_s_median",
)
_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)"
    r"|(?P<op>==|!=|>=|<=|[<>+\-*/()]))"
)


# ------------------------------------------------------------------------------------------ rules
@dataclass(frozen=True)
class GateRule:
    text: str  # the rule as written, e.g. "tokens_per_forward >= baseline * 0.97"
    metric: str  # the metric as written
    column: str  # the summary column or derived metric it reads
    op: str
    expr: tuple  # parsed right-hand side: ("num", x) | ("name", n) | ("neg", e) | (op, left, right)
    where: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    name: str = ""
    allow_wall_clock: bool = False

    @property
    def uses_baseline(self) -> bool:
        return "baseline" in _names(self.expr)

    @property
    def label(self) -> str:
        return self.name or self.text

    def scope_text(self) -> str:
        return ", ".join(f"{k}={'|'.join(map(str, v))}" for k, v in self.where.items()) or "all cells"


def resolve_metric(name: str) -> str:
    return METRIC_ALIASES.get(name, name)


def is_wall_clock(column: str) -> bool:
    return column.startswith(WALL_CLOCK_PREFIXES)


def parse_rule(entry: Any, where_key: str = "gates[0]") -> GateRule:
    """One rule from a suite / gate file entry: a string, or a mapping with ``rule`` and ``where``.

    Raises UserInputError with one sentence naming the key path."""
    if isinstance(entry, str):
        entry = {"rule": entry}
    if not isinstance(entry, dict):
        raise UserInputError(f"{where_key}: must be a rule string or a mapping with 'rule', got {_short(entry)}.")
    unknown = [k for k in entry if k not in RULE_KEYS]
    if unknown:
        raise UserInputError(f"{where_key}: unknown key {unknown[0]!r}; allowed keys are {', '.join(RULE_KEYS)}.")
    text = entry.get("rule")
    if not isinstance(text, str) or not text.strip():
        raise UserInputError(f"{where_key}.rule: must be a rule such as 'tokens_per_forward >= baseline * 0.97'.")
    text = " ".join(text.split())
    if len(text) > MAX_RULE_CHARS:
        raise UserInputError(
            f"{where_key}.rule: the rule is {len(text):,} characters long, more than {MAX_RULE_CHARS}; write it shorter."
        )
    tokens = _tokenize(text, f"{where_key}.rule")
    if len(tokens) < 3 or tokens[0][0] != "name" or tokens[1] not in (("op", o) for o in OPERATORS):
        raise UserInputError(
            f"{where_key}.rule: {text!r} must read 'METRIC OP EXPR' with OP one of {' '.join(OPERATORS)}."
        )
    metric, op = tokens[0][1], tokens[1][1]
    parser = _ExprParser(tokens[2:], text, f"{where_key}.rule")
    expr = parser.parse()
    column = resolve_metric(metric)
    allow = entry.get("allow_wall_clock", False)
    if not isinstance(allow, bool):
        raise UserInputError(f"{where_key}.allow_wall_clock: must be true or false, got {_short(allow)}.")
    if not allow:
        for used in [column, *(resolve_metric(n) for n in _names(expr))]:
            if is_wall_clock(used):
                raise UserInputError(
                    f"{where_key}.rule: {used!r} is wall-clock time, too noisy to gate across runs; gate "
                    "speedup_vs_ar (a same-run ratio) instead, or set allow_wall_clock: true."
                )
    where = entry.get("where") or {}
    if not isinstance(where, dict):
        raise UserInputError(f"{where_key}.where: must be a mapping such as {{engine: orthrus}}, got {_short(where)}.")
    scoped: dict[str, tuple[Any, ...]] = {}
    for key, value in where.items():
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if not values or any(isinstance(v, (dict, list, set)) for v in values):
            raise UserInputError(f"{where_key}.where.{key}: must be a value or a list of values, got {_short(value)}.")
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise UserInputError(f"{where_key}.where.{key}: must be finite, got {_short(value)}; NaN never matches.")
        scoped[str(key)] = values
    name = entry.get("name", "")
    if not isinstance(name, str):
        raise UserInputError(f"{where_key}.name: must be a string, got {_short(name)}.")
    return GateRule(text, metric, column, op, expr, scoped, name, allow)


def parse_rules(raw: Any, where_key: str = "gates") -> list[GateRule]:
    """A list of rule entries (the suite's ``gates:`` list or its ``rules:`` inside a mapping)."""
    if isinstance(raw, dict):
        raw, where_key = raw.get("rules", []), f"{where_key}.rules"
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise UserInputError(f"{where_key}: must be a list of rules, got {type(raw).__name__}.")
    return [parse_rule(entry, f"{where_key}[{i}]") for i, entry in enumerate(raw)]


def gates_config(raw: Any, where_key: str = "gates") -> tuple[list[GateRule], str | None]:
    """The suite's ``gates:`` section: a list of rules, or ``{baseline: FILE, rules: [...]}``."""
    baseline = None
    if isinstance(raw, dict):
        unknown = [k for k in raw if k not in ("rules", "baseline")]
        if unknown:
            raise UserInputError(f"{where_key}: unknown key {unknown[0]!r}; use 'rules' and 'baseline'.")
        baseline = raw.get("baseline")
        if baseline is not None and not isinstance(baseline, str):
            raise UserInputError(f"{where_key}.baseline: must be a file path, got {baseline!r}.")
        return parse_rules(raw.get("rules", []), f"{where_key}.rules"), baseline
    return parse_rules(raw, where_key), baseline


def load_gate_file(path: str | Path) -> tuple[list[GateRule], str | None]:
    from orthrus.safe_yaml import read_yaml_file

    path = Path(path)
    raw = read_yaml_file(path, "gate file")
    if isinstance(raw, dict) and "gates" in raw:
        raw = raw["gates"]
    return gates_config(raw, f"{path.name}: gates")


def _tokenize(text: str, where_key: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            if not text[pos:].strip():
                break
            raise UserInputError(
                f"{where_key}: cannot read {text[pos:].strip()!r} in {text!r}; a rule reads 'METRIC OP EXPR' with OP "
                f"one of {' '.join(OPERATORS)} and EXPR made of numbers, names, + - * / and parentheses."
            )
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_rule_names(rules: Sequence[GateRule], cell_keys: Iterable[str] | None = None) -> None:
    """Before a run: every metric and threshold name is one the summary will have, and (given the
    cells' parameter names) every ``where`` key is a cell parameter. Raises UserInputError."""
    metrics = set(METRIC_COLUMNS) | set(DERIVED_METRICS)
    params = None if cell_keys is None else {*cell_keys, *ENGINE_FACTS, "lossless", "cell_id", "series"}
    for rule in rules:
        if rule.column not in metrics:
            close = difflib.get_close_matches(rule.metric, [*METRIC_ALIASES, *metrics], n=1)
            hint = f"did you mean {close[0]!r}?" if close else "use a summary column or an alias listed in gates.py."
            raise UserInputError(f"gate {rule.label!r}: unknown metric {rule.metric!r}; {hint}")
        for name in sorted(_names(rule.expr) - {"baseline"}):
            if resolve_metric(name) not in metrics and (params is None or name not in params):
                raise UserInputError(
                    f"gate {rule.label!r}: unknown name {name!r} in the threshold; use a number, 'baseline', "
                    "a metric or a cell parameter such as block_size."
                )
        if params is not None:
            for key in rule.where:
                if key not in params and key not in metrics:
                    close = difflib.get_close_matches(key, sorted(params), n=1)
                    hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(sorted(params))}."
                    raise UserInputError(f"gate {rule.label!r}: where key {key!r} is not a cell parameter; {hint}")


class _ExprParser:
    def __init__(self, tokens: list[tuple[str, str]], text: str, where_key: str) -> None:
        self.tokens, self.pos, self.text, self.where_key = tokens, 0, text, where_key
        self.depth = 0

    def fail(self, what: str) -> UserInputError:
        return UserInputError(
            f"{self.where_key}: {what} in {self.text!r}; the right side must be a number, a name such as "
            "'baseline' or 'block_size', or + - * / of those."
        )

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise self.fail("the expression ends too early")
        self.pos += 1
        return token

    def parse(self) -> tuple:
        expr = self.expr()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()[1]!r}")
        return expr

    def expr(self) -> tuple:
        node = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            node = (self.take()[1], node, self.term())
        return node

    def term(self) -> tuple:
        node = self.factor()
        while self.peek() in (("op", "*"), ("op", "/")):
            node = (self.take()[1], node, self.factor())
        return node

    def factor(self) -> tuple:
        self.depth += 1
        try:
            return self._factor()
        finally:
            self.depth -= 1

    def _factor(self) -> tuple:
        if self.depth > MAX_RULE_DEPTH:
            raise self.fail(f"more than {MAX_RULE_DEPTH} nested parentheses or signs")
        kind, value = self.take()
        if kind == "num":
            number = float(value)
            if not math.isfinite(number):
                raise self.fail(f"the number {value} is too large")
            return ("num", number)
        if kind == "name":
            return ("name", value)
        if (kind, value) == ("op", "-"):
            return ("neg", self.factor())
        if (kind, value) == ("op", "("):
            node = self.expr()
            if self.take() != ("op", ")"):
                raise self.fail("a '(' is not closed")
            return node
        raise self.fail(f"unexpected {value!r}")


def _names(expr: tuple) -> set[str]:
    if expr[0] == "name":
        return {expr[1]}
    if expr[0] == "num":
        return set()
    return set().union(*(_names(e) for e in expr[1:]))


def _evaluate(expr: tuple, lookup: Callable[[str], float | None]) -> float | None:
    kind = expr[0]
    if kind == "num":
        return expr[1]
    if kind == "name":
        return lookup(expr[1])
    if kind == "neg":
        value = _evaluate(expr[1], lookup)
        return None if value is None else -value
    left, right = _evaluate(expr[1], lookup), _evaluate(expr[2], lookup)
    if left is None or right is None:
        return None
    if kind == "+":
        return left + right
    if kind == "-":
        return left - right
    if kind == "*":
        return left * right
    return left / right if right != 0 else None


def _holds(measured: float, op: str, threshold: float) -> bool:
    close = math.isclose(measured, threshold, rel_tol=1e-9, abs_tol=1e-12)
    return {
        "==": close,
        "!=": not close,
        ">=": measured >= threshold or close,
        "<=": measured <= threshold or close,
        ">": measured > threshold and not close,
        "<": measured < threshold and not close,
    }[op]


# --------------------------------------------------------------------------------------- baseline
def save_baseline(run_dir: str | Path, file: str | Path) -> Path:
    """Write the run's summary plus suite hash and provenance as a baseline JSON file."""
    run = load_run(run_dir)
    if run.summary.empty:
        raise UserInputError(f"{run.path} has no summary rows to save as a baseline.")
    rows = json_rows(run.summary.drop(columns=["series"]))
    env = run.environment
    payload = {
        "format": BASELINE_FORMAT,
        "version": BASELINE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_id": run.run_id,
        "run_dir": str(run.path),
        "suite_name": run.suite_name,
        "suite_hash": run.suite_hash,
        "measured_suite_hash": measured_suite_hash(run),
        "git_commit": run.git_commit,
        "device": run.device,
        "environment": {k: env[k] for k in ("cpu", "threads", "python", "dtypes") if k in env},
        "summary": rows,
    }
    out = check_output_file(file, "baseline save: FILE", "baseline.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    return out


def load_baseline(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(source, dict):
        payload = source
        where = "baseline"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise UserInputError(f"baseline file {where!r} does not exist; make one with 'baseline save RUN_DIR FILE'.")
        try:
            payload = json.loads(path.read_text())
        except ValueError as err:
            raise UserInputError(f"baseline file {where!r} is not valid JSON ({err}).") from err
    if not isinstance(payload, dict) or payload.get("format") != BASELINE_FORMAT:
        raise UserInputError(f"{where!r} is not an orthrus baseline; make one with 'baseline save RUN_DIR FILE'.")
    if not isinstance(payload.get("summary"), list):
        raise UserInputError(f"{where!r} has no summary rows; re-save it with 'baseline save RUN_DIR FILE'.")
    return payload


def measured_suite_hash(run: RunData) -> str | None:
    """sha256 of the run's suite without its gates: editing the gates keeps a baseline comparable."""
    if not run.suite:
        return None
    import hashlib

    measured = {k: v for k, v in run.suite.items() if k != "gates"}
    return hashlib.sha256(json.dumps(measured, sort_keys=True, default=str).encode()).hexdigest()


def json_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: NaN becomes null, numpy scalars become Python numbers."""
    return json.loads(frame.to_json(orient="records"))


# ------------------------------------------------------------------------------------- evaluation
@dataclass
class GateResult:
    rule: str
    name: str
    scope: str  # the cell checked, e.g. "series=orthrus, context_length=512"
    measured: float | None
    threshold: float | None
    op: str
    status: str  # "pass" | "fail" | "error" | "skip" (the rule does not apply to this cell)
    message: str = ""


@dataclass
class GateReport:
    run_dir: str
    results: list[GateResult] = field(default_factory=list)
    baseline: dict[str, Any] | None = None  # provenance of the baseline file (no rows)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if any(r.status == "error" for r in self.results):
            return 2
        return 1 if any(r.status == "fail" for r in self.results) else 0

    @property
    def status(self) -> str:
        return {0: "pass", 1: "fail", 2: "error"}[self.exit_code]

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in ("pass", "fail", "error", "skip")}

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "run_dir": self.run_dir,
            "baseline": self.baseline,
            "notes": self.notes,
            "results": [asdict(r) for r in self.results],
        }

    def headline(self) -> str:
        c = self.counts()
        verdict = {"pass": "PASS", "fail": "REGRESSION", "error": "BAD INPUT"}[self.status]
        skipped = f", {c['skip']} not applicable" if c["skip"] else ""
        return f"gates: {verdict} ({c['pass']} passed, {c['fail']} failed, {c['error']} errors{skipped})"

    def rows(self, verbose: bool = False) -> list[GateResult]:
        """The results to show: every check with ``verbose``; else failures and errors one by one,
        the passing cells of a rule folded into one line (scope "N cells", values as ranges) and
        the cells a rule does not apply to left out."""
        if verbose:
            return list(self.results)
        groups: dict[tuple[str, str], list[GateResult]] = {}
        for r in self.results:
            groups.setdefault((r.rule, r.name), []).append(r)
        out: list[GateResult] = []
        for (rule, name), results in groups.items():
            passed = [r for r in results if r.status == "pass"]
            bad = [r for r in results if r.status in ("fail", "error")]
            out += bad
            if len(passed) == 1:
                out.append(passed[0])
            elif passed:
                scope = f"{len(passed)} {'other ' if bad else ''}cells"
                measured = _span([r.measured for r in passed])
                threshold = _span([r.threshold for r in passed])
                out.append(GateResult(rule, name, scope, measured, threshold, passed[0].op, "pass"))
        return out

    def format_table(self, verbose: bool = False) -> str:
        shown = self.rows(verbose)
        header = ("result", "rule", "scope", "measured", "threshold")
        rows = [(r.status.upper(), r.name or r.rule, r.scope, fmt(r.measured), _threshold_text(r)) for r in shown]
        widths = [
            min(60, max(len(h), *(len(row[i]) for row in rows))) if rows else len(h) for i, h in enumerate(header)
        ]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
        lines.append("  ".join("-" * w for w in widths))
        for row, result in zip(rows, shown):
            lines.append("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
            if result.message and result.status != "pass":
                lines.append(f"    -> {result.message}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(self.headline())
        return "\n".join(lines)

    def to_markdown(self, title: str = "Orthrus performance gates", verbose: bool = False) -> str:
        icon = {"pass": "✅", "fail": "❌", "error": "⚠️", "skip": "➖"}
        lines = [f"### {title}: {icon[self.status]} {self.headline()}", ""]
        if self.baseline:
            lines += [f"Baseline: `{self.baseline.get('path') or self.baseline.get('run_id')}`", ""]
        lines += ["| | rule | scope | measured | threshold | note |", "|---|---|---|---|---|---|"]
        for r in self.rows(verbose):
            cells = [icon[r.status], r.name or r.rule, r.scope, fmt(r.measured), _threshold_text(r), r.message]
            lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        lines += [f"\n> {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_junit(self, suite_name: str = "orthrus.gates") -> str:
        counts = self.counts()
        root = ET.Element("testsuites", name="orthrus", tests=str(len(self.results)))
        suite = ET.SubElement(
            root,
            "testsuite",
            name=suite_name,
            tests=str(len(self.results)),
            failures=str(counts["fail"]),
            errors=str(counts["error"]),
            skipped=str(counts["skip"]),
        )
        for r in self.results:
            case = ET.SubElement(suite, "testcase", classname=suite_name, name=f"{r.name or r.rule} [{r.scope}]")
            detail = f"measured {fmt(r.measured)}, threshold {_threshold_text(r)}. {r.message}".strip()
            if r.status == "fail":
                ET.SubElement(case, "failure", message=detail, type="regression").text = detail
            elif r.status == "error":
                ET.SubElement(case, "error", message=detail, type="bad_input").text = detail
            elif r.status == "skip":
                ET.SubElement(case, "skipped", message=r.message)
        ET.indent(root)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def fmt(value: Any) -> str:
    if not is_present(value):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        if float(value).is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.4g}"
    return str(value)


def _span(values: list[float | None]) -> Any:
    present = [v for v in values if is_present(v)]
    if not present:
        return None
    low, high = min(present), max(present)
    return low if math.isclose(low, high, rel_tol=1e-12) else f"{fmt(low)}..{fmt(high)}"


def _threshold_text(r: GateResult) -> str:
    return f"{r.op} {fmt(r.threshold)}"


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


class _Cells:
    """Lookups of metrics, derived figures and cell parameters for one run's summary."""

    def __init__(self, run: RunData) -> None:
        self.run = run
        self.summary = run.summary
        self.rows = run.summary.to_dict("records")
        self.columns = set(run.summary.columns)
        # the parameters that tell cells apart, for the scope column of the results
        params = [c for c in cell_columns(run.summary) if c not in VOLATILE_COLUMNS and c != "engine_options"]
        params = [c for c in params if not c.endswith("_path")]  # the model key names the checkpoint
        self.varying = [c for c in params if run.summary[c].astype(str).nunique() > 1 and c != "engine"]

    def knows(self, name: str) -> bool:
        return name in self.columns or name in DERIVED_METRICS

    def scope(self, row: dict[str, Any]) -> str:
        parts = [f"{'engine' if row['series'] == row.get('engine') else 'series'}={row['series']}"]
        parts += [
            f"{c}={_plain(row[c])}" for c in self.varying if c not in ("series", "label") and is_present(row.get(c))
        ]
        return ", ".join(parts)

    def selects(self, rule: GateRule, row: dict[str, Any]) -> bool:
        for key, allowed in rule.where.items():
            value = is_lossless(row) if key == "lossless" else row.get(key)
            if not any(_scope_equal(value, a) for a in allowed):
                return False
        return True

    def value(self, name: str, row: dict[str, Any]) -> float | None:
        column = resolve_metric(name)
        if column == "peak_kv_overhead_bytes":
            return self.kv_overhead(row)
        value = row.get(column)
        if isinstance(value, bool):
            return float(value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return None if math.isnan(number) else number

    def kv_overhead(self, row: dict[str, Any]) -> float | None:
        return kv_overhead_bytes(self.summary, row)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _scope_equal(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, bool) or isinstance(value, bool):
        return str(value).lower() == str(wanted).lower()
    if value == wanted:
        return True
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return str(value) == str(wanted)


def _match_baseline(rows: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any] | None:
    return next((candidate for candidate in rows if same_cell(candidate, row)), None)


def evaluate_rules(run: RunData, rules: Sequence[GateRule], baseline: dict[str, Any] | None = None) -> GateReport:
    report = GateReport(str(run.path))
    cells = _Cells(run)
    base_rows: list[dict[str, Any]] = []
    if baseline is not None:
        base_rows = summary_table(baseline["summary"]).to_dict("records")
        report.baseline = {
            k: baseline.get(k) for k in ("path", "run_id", "suite_name", "suite_hash", "created", "git_commit")
        }
        ours, theirs = measured_suite_hash(run), baseline.get("measured_suite_hash")
        if ours and theirs and ours != theirs:
            report.notes.append(
                "the baseline was measured with a different suite (models, engines, sweep, prompts or measure "
                "differ); cells are matched by their parameters."
            )
    for rule in rules:
        report.results.extend(_check_rule(rule, cells, base_rows, baseline is not None))
    return report


def _check_rule(
    rule: GateRule, cells: _Cells, base_rows: list[dict[str, Any]], have_baseline: bool
) -> list[GateResult]:
    def error(message: str, scope: str | None = None) -> list[GateResult]:
        return [GateResult(rule.text, rule.name, scope or rule.scope_text(), None, None, rule.op, "error", message)]

    if not cells.knows(rule.column):
        return error(f"unknown metric {rule.metric!r}; use a summary column or one of the aliases in gates.py.")
    for key in rule.where:
        if key not in cells.columns and key != "lossless":
            known = ", ".join(c for c in cell_columns(cells.summary) if c not in VOLATILE_COLUMNS)
            return error(f"where key {key!r} is not a cell parameter of this run (known: {known}).")
    for name in _names(rule.expr) - {"baseline"}:
        if not cells.knows(resolve_metric(name)):
            return error(f"unknown name {name!r} in the threshold; use a number, 'baseline', or a cell column.")
    if rule.uses_baseline and not have_baseline:
        return error("this rule compares with 'baseline'; pass --baseline FILE (or set gates.baseline in the suite).")
    selected = [row for row in cells.rows if cells.selects(rule, row)]
    if not selected:
        return error(f"where {rule.scope_text()} selects no cell of this run.")
    # cell parameters (not metrics) named in the threshold, e.g. block_size
    params = {n for n in _names(rule.expr) if n in cells.columns and n not in METRIC_COLUMNS}
    results = []
    for row in selected:
        scope = cells.scope(row)
        base_row = _match_baseline(base_rows, row) if rule.uses_baseline else None
        if rule.uses_baseline and base_row is None:
            results += error("no cell with these parameters in the baseline; re-save it with 'baseline save'.", scope)
            continue

        def lookup(name: str, row: dict[str, Any] = row, base_row: dict[str, Any] | None = base_row) -> float | None:
            if name == "baseline":
                return cells.value(rule.column, base_row) if base_row is not None else None
            return cells.value(name, row)

        measured = cells.value(rule.column, row)
        if not cells.value("n_ok", row) and cells.value("n_skipped", row):  # not measured on purpose
            message = "the cell was skipped (its engine cannot run it as asked; see its record)."
            results.append(GateResult(rule.text, rule.name, scope, None, None, rule.op, "skip", message))
            continue
        absent = [n for n in sorted(params) if not is_present(row.get(n))]
        if absent:  # e.g. block_size on an AR cell: the rule does not apply here
            message = f"{absent[0]} does not apply to this cell."
            results.append(GateResult(rule.text, rule.name, scope, measured, None, rule.op, "skip", message))
            continue
        threshold = _evaluate(rule.expr, lookup)
        if threshold is None:
            missing = "the baseline's value" if rule.uses_baseline else "a value the threshold needs"
            results.append(
                GateResult(rule.text, rule.name, scope, measured, None, rule.op, "error", f"{missing} is not measured.")
            )
        elif measured is None:
            message = f"{rule.column} was not measured for this cell (failed or missing)."
            results.append(GateResult(rule.text, rule.name, scope, None, threshold, rule.op, "fail", message))
        else:
            ok = _holds(measured, rule.op, threshold)
            message = "" if ok else f"{rule.metric} = {fmt(measured)} does not satisfy {rule.op} {fmt(threshold)}."
            results.append(
                GateResult(rule.text, rule.name, scope, measured, threshold, rule.op, "pass" if ok else "fail", message)
            )
    if results and all(r.status == "skip" for r in results):
        return error(f"where {rule.scope_text()} selects only cells the rule does not apply to ({results[0].message})")
    return results


def evaluate_gates(
    run_dir: str | Path,
    rules: Iterable[GateRule | str | dict[str, Any]] | None = None,
    baseline: str | Path | dict[str, Any] | None = None,
    write: bool = True,
) -> GateReport:
    """Check ``rules`` (default: the run's suite ``gates:`` section) on a run; writes gates.json.

    ``baseline`` is a baseline file path or its loaded dict (default: the suite's gates.baseline).
    Rules that do not parse raise UserInputError; problems found while checking are results with
    status "error" (exit code 2)."""
    run = load_run(run_dir)
    suite_baseline = None
    if rules is None:
        rules, suite_baseline = gates_config(run.suite.get("gates"), "gates")
    parsed = [r if isinstance(r, GateRule) else parse_rule(r, f"gates[{i}]") for i, r in enumerate(rules)]
    if baseline is None and suite_baseline:
        baseline = suite_baseline
    loaded = None
    if baseline is not None:
        loaded = load_baseline(baseline)
        if not isinstance(baseline, dict):
            loaded = {**loaded, "path": str(baseline)}
    report = evaluate_rules(run, parsed, loaded)
    if write and report.results:
        (run.path / "gates.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return report


def run_gates(
    run_dir: str | Path,
    gate_files: Sequence[str | Path] = (),
    baseline: str | Path | None = None,
    junit: str | Path | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
    verbose: bool = False,
) -> int:
    """The whole CI step: evaluate, print the table, write gates.json, the GitHub step summary and
    JUnit XML; returns the exit code (0 pass, 1 regression, 2 bad input)."""
    if junit:  # a folder or a read-only place is refused before anything is evaluated
        check_output_file(junit, "--junit", "gates.xml")
    rules: list[GateRule] | None = None
    if gate_files:
        rules = []
        for file in gate_files:
            file_rules, file_baseline = load_gate_file(file)
            rules += file_rules
            baseline = baseline or file_baseline
    # an archived (read-only) run is still checked; its gates.json is then not rewritten
    report = evaluate_gates(run_dir, rules, baseline, write=writable(Path(run_dir)))
    if not report.results:
        raise UserInputError(f"no gates to check for {run_dir}; add a gates: section to the suite or pass --gate FILE.")
    echo(report.headline() if quiet and report.exit_code == 0 else report.format_table(verbose))
    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        try:
            with open(summary_path, "a", encoding="utf-8") as handle:
                handle.write(report.to_markdown())
        except OSError as err:  # the step summary is a courtesy: the gates still decide the exit code
            print(
                f"warning: the step summary was not written to $GITHUB_STEP_SUMMARY={summary_path} "
                f"({err.strerror or err}); the gate results are above.",
                file=sys.stderr,
            )
    if junit:
        Path(junit).parent.mkdir(parents=True, exist_ok=True)
        Path(junit).write_text(report.to_junit())
    return report.exit_code
