"""Read one run directory (through ``orthrus.results``) into plain pandas tables.

Everything in ``orthrus.report`` goes through ``load_run``, so a report, a comparison or a gate
can be made from any old run without re-running it. results.jsonl is the truth: the summary is
summary.json when it counts the same measurements, else (a run killed before its summary was
written, or resumed since) rebuilt from results.jsonl with ``orthrus.results.summary``. A run that
has not finished (run.json status running or interrupted, a partial merge) is loaded with a note on
stderr saying so, so that a report, gate or comparison of it is not taken for the whole run. A
directory with no measurement at all is a user error. Missing optional files give empty tables. A
damaged line in results.jsonl (any but the unfinished last one) is an error naming the file and the
line (``orthrus.results.rundir``), unless the command was given ``--skip-damaged``: ``damaged`` then
lists the lines left out, and the report says so at its top.

Conventions used by every plot, table and gate:
- a *series* is what a legend shows: the engine's ``label`` from the suite;
- *cell columns* are the flattened cell parameters and engine facts in front of ``SUMMARY_COLUMNS``;
  ``block_size`` is the block size the engine actually used, ``lossless`` what the engine said of
  itself (both recorded with each measurement).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from orthrus.errors import UserInputError
from orthrus.results import derived
from orthrus.results.derived import is_present, values_equal
from orthrus.results.rundir import (
    ENVIRONMENT_FILE,
    GATES_FILE,
    PROMPTS_FILE,
    RESULTS_FILE,
    RUN_INFO_FILE,
    SUITE_FILE,
    SUMMARY_BY_CATEGORY_FILE,
    is_locked,
    read_json,
    read_jsonl,
    read_records,
    read_summary_rows,
    skipped_lines,
)
from orthrus.results.summary import dedupe, frame_rows, summarize
from orthrus.results.vocabulary import COLUMN, SUMMARY_COLUMNS

LABEL_COLUMN = "label"
# cell parameters that may differ between two runs of the same suite without making cells different
VOLATILE_COLUMNS = frozenset({"run_id", "cell_id", "device", "timestamp", "suite_hash", "shard"})
METRIC_COLUMNS = frozenset(SUMMARY_COLUMNS)  # the vocabulary's metrics: every other column is a cell's


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
    unfinished: str | None = None  # why the run is not whole (killed, still running, partial merge), else None
    damaged: tuple[int, ...] = ()  # lines of results.jsonl left out as damaged (--skip-damaged), else ()
    by_category: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (cell, prompt category)

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
    records = read_records(path / RESULTS_FILE)
    rows = read_summary_rows(path)
    if rows is None or (records and (not _counts_all(rows, records) or _lacks_columns(rows))):
        if not records:
            if (path / RESULTS_FILE).is_file():
                raise UserInputError(
                    f"{str(path)!r} has no finished measurement yet; continue it with "
                    f"python run_bench.py --resume {path} before reporting on it."
                )
            raise UserInputError(
                f"{str(path)!r} has no summary.json or results.jsonl; is it a benchmark run directory?"
            )
        rows = frame_rows(summarize(records))
    environment = read_json(path / ENVIRONMENT_FILE) or {}
    if not isinstance(environment, dict):
        raise UserInputError(
            f"{path / ENVIRONMENT_FILE} must hold one JSON object (package versions, device, ...), not "
            f"{type(environment).__name__}; restore it from a copy, or delete it to report without it."
        )
    suite_text = (path / SUITE_FILE).read_text() if (path / SUITE_FILE).is_file() else ""
    info = read_json(path / RUN_INFO_FILE) or {}
    info = info if isinstance(info, dict) else {}
    prompts = {(str(p.get("source")), str(p.get("prompt_id"))): p for p in read_jsonl(path / PROMPTS_FILE)}
    unfinished = _unfinished(path, info, len(dedupe(records)))
    if unfinished:
        print(f"note: {unfinished}", file=sys.stderr)
    return RunData(
        path,
        summary_table(rows),
        records,
        environment,
        _parse_yaml(suite_text),
        suite_text,
        read_json(path / GATES_FILE),
        info,
        prompts,
        unfinished,
        skipped_lines(path / RESULTS_FILE),
        _by_category(path, records),
    )


def _counts_all(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> bool:
    """summary.json counts every measurement of results.jsonl (it is not from an earlier session)."""
    counted = [
        int(row.get(COLUMN.n_ok) or 0) + int(row.get(COLUMN.n_failed) or 0) for row in rows if COLUMN.n_ok in row
    ]
    return len(counted) < len(rows) or sum(counted) == len(dedupe(records))


def _by_category(path: Path, records: list[dict[str, Any]]) -> pd.DataFrame:
    """summary_by_category: from results.jsonl when its records name categories (the file may be older
    than them), else the file as written (a run copied without its records), else empty."""
    if any(r.get("category") is not None for r in records):
        return summary_table(frame_rows(summarize(records, by_category=True)))
    rows = read_json(path / SUMMARY_BY_CATEGORY_FILE)
    if isinstance(rows, list) and rows and all(isinstance(row, dict) for row in rows):
        return summary_table(rows)
    return pd.DataFrame()


def _lacks_columns(rows: list[dict[str, Any]]) -> bool:
    """summary.json was written before some of today's columns existed (the sample counts...): the
    summary is rebuilt from results.jsonl, so an old run shows every figure a new one does."""
    return bool(rows) and any(column not in rows[0] for column in SUMMARY_COLUMNS)


def _unfinished(path: Path, info: dict[str, Any], measurements: int) -> str | None:
    """A sentence saying that the run is not whole, None when it finished."""
    status = info.get("status")
    if status in (None, "finished") and not (status is None and is_locked(path)):
        return None
    shown = f"what is shown are the {measurements} measurements in results.jsonl so far"
    if is_locked(path):
        return f"{path} is being measured right now; {shown}."
    if status == "partial":
        problems = "; ".join(str(p) for p in info.get("problems") or []) or "inputs incomplete"
        return f"{path} is a partial merge ({problems}); {shown}."
    return f"{path} did not finish (status {status}); {shown}; complete it with python run_bench.py --resume {path}."


def summary_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Summary rows as written by ``orthrus.results.summary`` (summary.json, a baseline) as a table
    with numeric metric columns and a ``series`` column."""
    summary = pd.DataFrame(rows)
    if COLUMN.acceptance_by_position in summary.columns:
        summary[COLUMN.acceptance_by_position] = summary[COLUMN.acceptance_by_position].map(
            lambda v: v if isinstance(v, list) else None
        )
    for column in summary.columns:
        if column in METRIC_COLUMNS and column != COLUMN.acceptance_by_position:
            summary[column] = pd.to_numeric(summary[column], errors="coerce")
    summary["series"] = [series_label(row) for row in summary.to_dict("records")] if len(summary) else []
    return summary.reset_index(drop=True)


def series_label(row: dict[str, Any]) -> str:
    """The legend name of a summary row or a record's cell: the engine's label from the suite."""
    label = row.get(LABEL_COLUMN)
    return str(label) if is_present(label) and str(label) else str(row.get("engine", "?"))


def is_lossless(row: dict[str, Any]) -> bool:
    """The engine said of itself that it is lossless (recorded with each measurement)."""
    value = row.get("lossless")
    return is_present(value) and bool(value)


def is_greedy(row: dict[str, Any]) -> bool:
    temperature = row.get("temperature")
    return not is_present(temperature) or float(temperature) == 0.0


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


def ar_counterpart(summary: pd.DataFrame, row: dict[str, Any]) -> dict[str, Any] | None:
    """The AR cell of ``summary`` measured with the same prompts, context and settings as ``row``."""
    return derived.ar_counterpart(row, summary.to_dict("records"))


def kv_overhead_bytes(summary: pd.DataFrame, row: dict[str, Any]) -> float | None:
    """Peak KV bytes of ``row`` beyond its AR counterpart's (0 for AR itself)."""
    return derived.kv_overhead_bytes(row, summary.to_dict("records"))


# what may change between two runs of "the same cell" that are compared (baseline gates, compare):
# the engine label names the engine; its options, checkpoint paths and self-declared losslessness
# are what a regression changes, so they must not make the cells different
MATCH_IGNORE = frozenset({"engine_options", "model_path", "draft_model_path", "lossless"})


def same_cell(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` and ``b`` (summary rows, possibly of two runs) measure the same engine label and settings."""
    return a.get("series") == b.get("series") and same_cell_except(a, b, set(MATCH_IGNORE))


def _parse_yaml(text: str) -> dict[str, Any]:
    if not text:
        return {}
    from orthrus.safe_yaml import parse_yaml

    try:
        loaded = parse_yaml(text, "suite.yaml")
    except UserInputError:  # a damaged copy of the suite: the report goes on without it
        return {}
    return loaded if isinstance(loaded, dict) else {}
