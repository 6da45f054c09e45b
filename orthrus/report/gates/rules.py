"""The gates' rule language: a rule ``METRIC OP EXPR`` with its scope, parsed by a small grammar
(never ``eval``-ed), the metric names it may use, and the evaluation of its right-hand side.

Grammar::

    rule   := METRIC OP expr             OP: == != >= <= > <
    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := NUMBER | NAME | '(' expr ')' | '-' factor

Metric names are the summary columns, the other names the vocabulary gives them (``GATE_NAMES``,
e.g. ``tokens_per_forward`` for ``tokens_per_forward_median``) and ``DERIVED_METRICS``; all are
listed in docs/metrics.md. Which of them are wall-clock is the vocabulary's ``is_wall_clock``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthrus.errors import UserInputError
from orthrus.results.record import ENGINE_FACTS
from orthrus.results.vocabulary import GATE_NAMES, SUMMARY_COLUMNS, is_wall_clock

__all__ = [
    "DERIVED_METRICS",
    "METRIC_ALIASES",
    "GateRule",
    "check_rule_names",
    "evaluate_expr",
    "gates_config",
    "holds",
    "is_wall_clock",
    "load_gate_file",
    "names_in",
    "parse_rule",
    "parse_rules",
    "resolve_metric",
]

OPERATORS = ("==", "!=", ">=", "<=", ">", "<")
RULE_KEYS = ("rule", "where", "name", "allow_wall_clock")
METRIC_ALIASES = GATE_NAMES  # a gate name -> the summary column it reads (the vocabulary's)
# figures a rule may name that are not summary columns, computed when a rule asks (docs/metrics.md)
DERIVED_METRICS = {
    "peak_kv_overhead_bytes": "kv_cache_bytes_peak_max of the cell minus that of the AR cell with the same context "
    "and settings (0 for AR itself; orthrus.results.derived.kv_overhead_bytes)",
}
MAX_RULE_CHARS = 500
MAX_RULE_DEPTH = 32
_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)"
    r"|(?P<op>==|!=|>=|<=|[<>+\-*/()]))"
)


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
        return "baseline" in names_in(self.expr)

    @property
    def label(self) -> str:
        return self.name or self.text

    def scope_text(self) -> str:
        return ", ".join(f"{k}={'|'.join(map(str, v))}" for k, v in self.where.items()) or "all cells"


def resolve_metric(name: str) -> str:
    return METRIC_ALIASES.get(name, name)


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
        for used in [column, *(resolve_metric(n) for n in names_in(expr))]:
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
    metrics = set(SUMMARY_COLUMNS) | set(DERIVED_METRICS)
    params = None if cell_keys is None else {*cell_keys, *ENGINE_FACTS, "lossless", "cell_id", "series"}
    for rule in rules:
        if rule.column not in metrics:
            close = difflib.get_close_matches(rule.metric, [*METRIC_ALIASES, *metrics], n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else "use a summary column or a gate name listed in docs/metrics.md."
            )
            raise UserInputError(f"gate {rule.label!r}: unknown metric {rule.metric!r}; {hint}")
        for name in sorted(names_in(rule.expr) - {"baseline"}):
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


def names_in(expr: tuple) -> set[str]:
    if expr[0] == "name":
        return {expr[1]}
    if expr[0] == "num":
        return set()
    return set().union(*(names_in(e) for e in expr[1:]))


def evaluate_expr(expr: tuple, lookup: Callable[[str], float | None]) -> float | None:
    kind = expr[0]
    if kind == "num":
        return expr[1]
    if kind == "name":
        return lookup(expr[1])
    if kind == "neg":
        value = evaluate_expr(expr[1], lookup)
        return None if value is None else -value
    left, right = evaluate_expr(expr[1], lookup), evaluate_expr(expr[2], lookup)
    if left is None or right is None:
        return None
    if kind == "+":
        return left + right
    if kind == "-":
        return left - right
    if kind == "*":
        return left * right
    return left / right if right != 0 else None


def holds(measured: float, op: str, threshold: float) -> bool:
    close = math.isclose(measured, threshold, rel_tol=1e-9, abs_tol=1e-12)
    return {
        "==": close,
        "!=": not close,
        ">=": measured >= threshold or close,
        "<=": measured <= threshold or close,
        ">": measured > threshold and not close,
        "<": measured < threshold and not close,
    }[op]
