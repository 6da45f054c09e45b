"""The run directory: the one reader and writer of its files, shared by the harness and the reports.

A run directory ``reports/<suite>/<run-id>/`` holds:
  suite.yaml        the suite as run (after --set overrides), for re-rendering and comparison
  environment.json  package versions, device, CPU, threads, dtype, git commit, suite hash
  results.jsonl     one ``MeasurementRecord`` per line, appended, flushed and fsynced as measured
  summary.json/csv  one row per cell (``orthrus.results.summary``); the report reads the JSON, or
                    rebuilds it from results.jsonl when it is missing
  summary_by_category.json/csv   the same per (cell, prompt category), when prompts have categories
  prompts.jsonl     one line per prompt used: prompt_id, source, category, context_length, text, ids
  run.json          run id, suite name, command line, shard, status counts, harness overhead
  plots/*.png, report.html, gates.json   written by orthrus.report from the files above only

One rule for a JSON-lines file, read or resumed: a line counts only if it ends with a newline and
parses as a JSON object. A run killed at any moment leaves whole lines plus at most one unfinished
last line; the reader does not count that line (even when it looks complete), and the writer, on
reopening for --resume, cuts off exactly that tail, so its measurement is made again: nothing is
lost and nothing is counted twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from orthrus.errors import UserInputError
from orthrus.results.record import MeasurementRecord

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_BY_CATEGORY_FILE = "summary_by_category.json"
ENVIRONMENT_FILE = "environment.json"
RUN_INFO_FILE = "run.json"
PROMPTS_FILE = "prompts.jsonl"
SUITE_FILE = "suite.yaml"
GATES_FILE = "gates.json"


def _counted_length(data: bytes) -> int:
    """Bytes up to and including the last newline: everything after it is an unfinished line."""
    return data.rfind(b"\n") + 1


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, by the one rule (see the module docstring)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows = []
    for line in data[: _counted_length(data)].split(b"\n"):
        try:
            row = json.loads(line)
        except ValueError:  # empty, damaged or not UTF-8: not counted
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_records(path: Path) -> list[dict[str, Any]]:
    """The counted records of a results file, each with every field of the current MeasurementRecord."""
    records = []
    for row in read_jsonl(path):
        try:
            records.append(MeasurementRecord.from_dict(row).to_dict())
        except (ValueError, TypeError):  # a JSON object that is not a measurement: not counted
            continue
    return records


class ResultsWriter:
    """Appends records durably (write, flush, fsync per record) after cutting off what the reader
    does not count at the end of the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _cut_uncounted_tail(path)
        self._handle = path.open("a", encoding="utf-8")

    def append(self, record: MeasurementRecord | dict[str, Any]) -> None:
        data = record.to_dict() if isinstance(record, MeasurementRecord) else record
        self._handle.write(json.dumps(data, separators=(",", ":"), default=_json_default) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cut_uncounted_tail(path: Path) -> None:
    if not path.is_file():
        return
    with path.open("rb+") as handle:
        data = handle.read()
        counted = _counted_length(data)
        if counted < len(data):
            handle.truncate(counted)
            handle.flush()
            os.fsync(handle.fileno())


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def read_json(path: Path) -> Any:
    """A JSON file's content, None when the file is absent; a damaged file is a user error."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise UserInputError(f"{path} is not valid JSON ({err}).") from err


def write_json(path: Path, data: Any) -> None:
    """Write a JSON file atomically (temp file + rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default, allow_nan=False) + "\n")
    os.replace(tmp, path)


def read_summary_rows(run_dir: Path) -> list[dict[str, Any]] | None:
    """summary.json's rows (one object per cell), None when the run has none."""
    path = run_dir / SUMMARY_FILE
    rows = read_json(path)
    if rows is None:
        return None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise UserInputError(f"{path} must hold a list of summary rows (one object per cell).")
    return rows
