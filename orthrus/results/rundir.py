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
  run.lock          held (``fcntl.flock``) by the one process measuring into the directory, for the
                    run's life; the OS releases it when that process ends, however it ends

One rule for a JSON-lines file, read or resumed: a line counts only if it ends with a newline and
parses as a JSON object. A run killed at any moment leaves whole lines plus at most one unfinished
last line; the reader does not count that line (even when it looks complete), and the writer, on
reopening for --resume, cuts off exactly that tail, so its measurement is made again: nothing is
lost and nothing is counted twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

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
LOCK_FILE = "run.lock"


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
        self._handle = path.open("ab", buffering=0)  # unbuffered: nothing is left to flush after a failed write

    def append(self, record: MeasurementRecord | dict[str, Any]) -> None:
        data = record.to_dict() if isinstance(record, MeasurementRecord) else record
        line = (json.dumps(data, separators=(",", ":"), default=_json_default) + "\n").encode("utf-8")
        start = self._handle.seek(0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:
                view = view[self._handle.write(view) :]
            os.fsync(self._handle.fileno())
        except OSError as err:
            # a full disk (ENOSPC, EDQUOT) can cut the line short or lose it at fsync: take it back,
            # so the file holds whole records only and --resume measures this one again
            with contextlib.suppress(OSError):
                self._handle.truncate(start)
            err.filename = err.filename or str(self.path)
            raise

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


class RunLock:
    """An exclusive lock on a run directory, so that one process at a time measures into it.

    ``fcntl.flock`` on ``run.lock`` (never deleted: deleting a lock file lets two processes hold
    locks on two different files); the holder's pid is written into it for the refusal message.
    The lock belongs to the open file, so the OS releases it when the holder exits or is killed.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        try:
            self._handle = (run_dir / LOCK_FILE).open("a+", encoding="utf-8")
        except OSError as err:
            raise UserInputError(
                f"cannot write into run directory {run_dir} ({err.strerror}); check that it exists and is writable."
            ) from None
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.seek(0)
            holder = self._handle.read().strip()
            self._handle.close()
            by = f"process {holder}" if holder.isdigit() else "another process"
            raise UserInputError(
                f"{run_dir} is being measured by {by} right now; wait for it to finish (or stop it) "
                "and then resume, since two processes would measure the same cells twice."
            ) from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"{os.getpid()}\n")
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            self._handle.close()  # closing the file releases the lock

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(run_dir: Path) -> bool:
    """True while a process holds the run directory's lock (it is measuring into it now)."""
    file = run_dir / LOCK_FILE
    if not file.is_file():
        return False
    with file.open("rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


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


# ------------------------------------------------------------------------------ run metadata
def write_suite_copy(run_dir: Path, run_id: str, raw: dict[str, Any]) -> None:
    """suite.yaml: the effective suite of the run (after command-line overrides)."""
    (run_dir / SUITE_FILE).write_text(
        f"# effective suite of run {run_id} (after command-line overrides)\n"
        + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    )


def write_environment(run_dir: Path, environment: dict[str, Any]) -> None:
    """environment.json (written once per run: a resumed run keeps the environment it started with)."""
    write_json(run_dir / ENVIRONMENT_FILE, environment)


def add_node_environment(run_dir: Path, node: str, environment: dict[str, Any]) -> None:
    """environment.json's ``nodes``: the environment of each node that measured (distributed runs)."""
    path = run_dir / ENVIRONMENT_FILE
    data = read_json(path) or {}
    nodes = data.setdefault("nodes", {})
    if nodes.get(node) != environment:
        nodes[node] = environment
        write_json(path, data)


PROMPT_FIELDS = ("prompt_id", "source", "category", "context_length", "prompt_tokens", "text", "ids", "meta")


def write_prompts(run_dir: Path, prompts: Iterable[dict[str, Any]]) -> None:
    """prompts.jsonl: one line per prompt used (the fields of PROMPT_FIELDS)."""
    with (run_dir / PROMPTS_FILE).open("w", encoding="utf-8") as handle:
        for prompt in prompts:
            handle.write(json.dumps({name: prompt.get(name) for name in PROMPT_FIELDS}) + "\n")


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """run.json's content ({} when absent or damaged: the directory's name and files still tell)."""
    try:
        info = json.loads((run_dir / RUN_INFO_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def write_run_info(
    run_dir: Path,
    status: str,
    started: float,
    session: dict[str, Any],
    head: dict[str, Any],
    counts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """run.json: ``head`` (run id, suite, shard), the status, the sessions that measured into the
    directory (this process's, ``session`` plus when it started and finished, added or updated), and
    ``counts`` (records by status, harness overhead, executor)."""
    sessions = read_run_info(run_dir).get("sessions", [])
    session = {
        "started": started,
        "finished": time.time() if status != "running" else None,
        "status": status,
        **session,
    }
    if sessions and sessions[-1].get("started") == started:
        sessions[-1] = session
    else:
        sessions.append(session)
    data = {**head, "status": status, "sessions": sessions, **(counts or {})}
    write_json(run_dir / RUN_INFO_FILE, data)
    return data
