"""Read one run directory (the contract of ``orthrus.bench.records``) into plain pandas tables.

Everything in ``orthrus.report`` goes through ``load_run``, so a report, a comparison or a gate
can be made from any old run without re-running it. Missing optional files give empty tables;
a directory with neither a summary nor results is a user error.

Conventions used by every plot, table and gate:
- a *series* is what a legend shows: the engine's label (``label`` / ``engine_label`` /
  ``engine_name`` column when the harness writes one, else ``engine`` plus its options);
- *cell columns* are the flattened cell parameters in front of ``SUMMARY_COLUMNS``;
- a cell is *lossless* when the summary says so (``lossless`` column) or, failing that, when its
  engine is one of ``LOSSLESS_ENGINES`` and its options do not switch exactness off
  (``accept_rule`` other than ``exact``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from orthrus.bench.records import SUMMARY_COLUMNS
from orthrus.bench.summary import AR_MATCH_KEYS as SUMMARY_AR_MATCH_KEYS
from orthrus.errors import UserInputError

LOSSLESS_ENGINES = frozenset({"ar", "hf_generate", "orthrus", "assisted", "prompt_lookup"})
LABEL_COLUMNS = ("label", "engine_label", "engine_name")
# cell parameters that may differ between two runs of the same suite without making cells different
VOLATILE_COLUMNS = frozenset({"run_id", "cell_id", "device", "timestamp", "suite_hash", "shard"})
LIST_COLUMNS = ("acceptance_by_position",)
METRIC_COLUMNS = frozenset(SUMMARY_COLUMNS)


@dataclass
class RunData:
    path: Path
    summary: pd.DataFrame  # one row per cell, with a ``series`` column added
    records: list[dict[str, Any]] = field(default_factory=list)  # results.jsonl, one dict per line
    environment: dict[str, Any] = field(default_factory=dict)
    suite: dict[str, Any] = field(default_factory=dict)
    suite_text: str = ""
    gates: dict[str, Any] | None = None  # gates.json when present
    info: dict[str, Any] = field(default_factory=dict)  # run.json: run id, suite, sessions
    prompts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # prompts.jsonl by (source, id)

    @property
    def run_id(self) -> str:
        for source in (self.info, self.environment, self.suite):
            if source.get("run_id"):
                return str(source["run_id"])
        if self.records and self.records[0].get("run_id"):
            return str(self.records[0]["run_id"])
        return self.path.name

    @property
    def suite_name(self) -> str:
        name = self.info.get("suite_name") or self.suite.get("name") or self.environment.get("suite_name")
        return str(name) if name else self.path.parent.name

    @property
    def suite_hash(self) -> str | None:
        for source in (self.info, self.environment):
            for key in ("suite_sha256", "suite_hash"):
                if source.get(key):
                    return str(source[key])
        if self.suite_text:
            import hashlib

            return hashlib.sha256(self.suite_text.encode()).hexdigest()
        return None

    @property
    def device(self) -> str:
        env = self.environment
        if env.get("device_name") or env.get("device"):
            return str(env.get("device_name") or env.get("device"))
        devices = env.get("devices")
        if isinstance(devices, list):
            return "; ".join(f"{d.get('device')}: {d.get('name')}" for d in devices if isinstance(d, dict))
        return ""

    @property
    def git_commit(self) -> str | None:
        git = self.environment.get("git")
        if isinstance(git, dict):
            return git.get("commit")
        return self.environment.get("git_commit")

    def prompt_text(self, source: Any, prompt_id: Any) -> str | None:
        entry = self.prompts.get((str(source), str(prompt_id)))
        if entry is None:  # sources unknown: a prompt id that is unique is enough
            matches = [p for (_, pid), p in self.prompts.items() if pid == str(prompt_id)]
            entry = matches[0] if len(matches) == 1 else None
        text = entry.get("text") if entry else None
        return text if isinstance(text, str) else None

    @property
    def cell_columns(self) -> list[str]:
        return cell_columns(self.summary)

    def failed_records(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") == "failed"]


def cell_columns(summary: pd.DataFrame) -> list[str]:
    return [c for c in summary.columns if c not in METRIC_COLUMNS and c != "series"]


def load_run(run_dir: str | Path) -> RunData:
    path = Path(run_dir)
    if not path.is_dir():
        raise UserInputError(f"run directory {str(path)!r} does not exist; pass a reports/<suite>/<run-id> folder.")
    records = _read_jsonl(path / "results.jsonl")
    summary = read_summary(path)
    if summary is None:
        if not records:
            raise UserInputError(
                f"{str(path)!r} has no summary.json, summary.csv or results.jsonl; is it a benchmark run directory?"
            )
        summary = pd.DataFrame()
    environment = _read_json(path / "environment.json") or {}
    suite_text = (path / "suite.yaml").read_text() if (path / "suite.yaml").is_file() else ""
    suite = _parse_yaml(suite_text)
    gates = _read_json(path / "gates.json")
    info = _read_json(path / "run.json") or {}
    prompts = {(str(p.get("source")), str(p.get("prompt_id"))): p for p in _read_jsonl(path / "prompts.jsonl")}
    return RunData(
        path,
        prepare_summary(summary),
        records,
        environment,
        suite,
        suite_text,
        gates,
        info if isinstance(info, dict) else {},
        prompts,
    )


def read_summary(path: Path) -> pd.DataFrame | None:
    if (path / "summary.json").is_file():
        raw = _read_json(path / "summary.json")
        return summary_frame(raw, path / "summary.json")
    if (path / "summary.csv").is_file():
        try:
            return pd.read_csv(path / "summary.csv")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise UserInputError(f"{path / 'summary.csv'} is not a readable CSV ({err}).") from err
    return None


def summary_frame(raw: Any, where: Path | str = "summary") -> pd.DataFrame:
    """Accepts a list of row dicts, ``{"rows"|"cells"|"summary": [...]}``, or pandas' split orient."""
    if isinstance(raw, dict):
        for key in ("rows", "cells", "summary"):
            if isinstance(raw.get(key), list):
                raw = raw[key]
                break
        else:
            if "columns" in raw and "data" in raw:
                return pd.DataFrame(raw["data"], columns=raw["columns"])
    if not isinstance(raw, list) or not all(isinstance(row, dict) for row in raw):
        raise UserInputError(f"{where} must hold a list of summary rows (one object per cell).")
    return pd.DataFrame([flatten_row(row) for row in raw])


def flatten_row(row: dict[str, Any]) -> dict[str, Any]:
    """A nested ``cell`` mapping (if the summary keeps one) is flattened in front of the metrics."""
    flat: dict[str, Any] = {}
    cell = row.get("cell")
    if isinstance(cell, dict):
        flat.update(cell)
    flat.update({k: v for k, v in row.items() if k != "cell"})
    return flat


def prepare_summary(summary: pd.DataFrame) -> pd.DataFrame:
    summary = summary.copy()
    for column in LIST_COLUMNS:
        if column in summary.columns:
            summary[column] = summary[column].map(_as_list)
    for column in summary.columns:
        if column in METRIC_COLUMNS and column not in LIST_COLUMNS:
            summary[column] = pd.to_numeric(summary[column], errors="coerce")
    if "engine" not in summary.columns:
        summary["engine"] = "?" if len(summary) else pd.Series(dtype=object)
    summary["series"] = [series_label(row) for row in summary.to_dict("records")] if len(summary) else []
    return summary.reset_index(drop=True)


def series_label(row: dict[str, Any]) -> str:
    for column in LABEL_COLUMNS:
        value = row.get(column)
        if is_present(value) and str(value):
            return str(value)
    engine = str(row.get("engine", "?"))
    options = engine_options(row)
    if isinstance(options, dict):
        shown = {k: v for k, v in options.items() if k != "block_size"}
        if shown:
            return engine + " (" + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) + ")"
    return engine


def engine_options(row: dict[str, Any]) -> dict[str, Any] | None:
    """The cell's engine options: a mapping in summary.json, its JSON or Python repr in summary.csv."""
    options = row.get("engine_options")
    if isinstance(options, str):
        import ast

        for parse in (json.loads, ast.literal_eval):  # literal_eval evaluates literals only
            try:
                options = parse(options)
                break
            except (ValueError, SyntaxError):
                continue
    return options if isinstance(options, dict) else None


def is_lossless(row: dict[str, Any]) -> bool:
    if "lossless" in row and is_present(row["lossless"]):
        return bool(row["lossless"]) and str(row["lossless"]).lower() not in ("false", "0")
    if str(row.get("engine")) not in LOSSLESS_ENGINES:
        return False
    options = engine_options(row)
    rule = row.get("accept_rule") if is_present(row.get("accept_rule")) else None
    if isinstance(options, dict):
        rule = options.get("accept_rule", rule)
    return rule in (None, "exact")


def is_greedy(row: dict[str, Any]) -> bool:
    temperature = row.get("temperature")
    return not is_present(temperature) or float(temperature) == 0.0


def is_present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return True


def same_cell_except(a: dict[str, Any], b: dict[str, Any], ignore: set[str]) -> bool:
    """True when every parameter both rows carry (other than ``ignore``) is equal."""
    for key in set(a) & set(b):
        if key in ignore or key in METRIC_COLUMNS or key in VOLATILE_COLUMNS or key == "series":
            continue
        va, vb = a[key], b[key]
        if not is_present(va) or not is_present(vb):
            continue
        if not values_equal(va, vb):
            return False
    return True


# cell parameters an AR counterpart must share with a cell: those orthrus.bench.summary matches
# for speedup_vs_ar, plus the category; the model may differ (a DLM is compared with the AR model)
AR_MATCH_KEYS = (*SUMMARY_AR_MATCH_KEYS, "category")


def ar_counterpart(summary: pd.DataFrame, row: dict[str, Any], engine: str = "ar") -> dict[str, Any] | None:
    """The ``engine`` (AR) cell measured with the same prompts, context and settings as ``row``."""
    if "engine" not in summary.columns:
        return None
    candidates = [
        r
        for r in summary[summary["engine"] == engine].to_dict("records")
        if all(values_equal(r.get(k), row.get(k)) for k in AR_MATCH_KEYS if k in r or k in row)
    ]
    same_model = [r for r in candidates if values_equal(r.get("model"), row.get("model"))]
    return (same_model or candidates or [None])[0]


# what may change between two runs of "the same cell" that are compared (baseline gates, compare):
# the engine label names the engine; its options, checkpoint paths and self-declared losslessness
# are what a regression changes, so they must not make the cells different
MATCH_IGNORE = frozenset({"engine_options", "model_path", "draft_model_path", "lossless"})


def same_cell(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` and ``b`` (summary rows, possibly of two runs) measure the same engine label and settings."""
    return a.get("series") == b.get("series") and same_cell_except(a, b, set(MATCH_IGNORE))


def values_equal(a: Any, b: Any) -> bool:
    if a == b or (not is_present(a) and not is_present(b)):
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _as_list(value: Any) -> list[float] | None:
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        return parsed if isinstance(parsed, list) else None
    return None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise UserInputError(f"{path} is not valid JSON ({err}).") from err


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut off by a killed run; the runner's --resume redoes it
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _parse_yaml(text: str) -> dict[str, Any]:
    if not text:
        return {}
    import yaml

    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}
