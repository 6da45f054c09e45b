"""results.jsonl: one MeasurementRecord per line, appended, flushed and fsynced as it is measured.

A run killed at any moment leaves whole lines plus at most one partial last line; reopening for
--resume cuts that partial line off, so nothing is lost and nothing is duplicated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orthrus.errors import UserInputError

RESULTS_FILE = "results.jsonl"


def read_records(path: Path) -> list[dict[str, Any]]:
    """All complete records of a results file (a partial last line from a kill is skipped)."""
    return list(_iter_records(path))


def _iter_records(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        return
    with path.open("rb") as handle:
        lines = handle.read().split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):  # the unterminated tail of a killed write
                return
            raise UserInputError(
                f"{path} line {number} is not valid JSON ({err.msg}); the results file is damaged."
            ) from err
        if isinstance(record, dict):
            yield record


def record_key(record: dict[str, Any]) -> tuple[str, str, int]:
    return (str(record["cell_id"]), str(record["prompt_id"]), int(record["repeat"]))


class ResultsWriter:
    """Appends records durably: write, flush, fsync per record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _cut_partial_tail(path)
        self._handle = path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, separators=(",", ":"), default=_json_default) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cut_partial_tail(path: Path) -> None:
    """Drop an unterminated last line (left by a kill during a write) before appending."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        handle.truncate(data.rfind(b"\n") + 1)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def write_json(path: Path, data: Any) -> None:
    """Write a JSON file atomically (temp file + rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default, allow_nan=False) + "\n")
    os.replace(tmp, path)
