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

One rule for a JSON-lines file, read or resumed, by every command (report, gate, compare, merge,
--resume, project): a line counts only if it ends with a newline and parses as a JSON object (in
results.jsonl: a measurement record). A run killed at any moment leaves whole lines plus at most one
unfinished last line; the reader does not count that line (even when it looks complete), and the
writer, on reopening for --resume, cuts off exactly that tail, so its measurement is made again:
nothing is lost and nothing is counted twice. Any other line that is not a complete record (not
blank, not the unfinished tail) was damaged after it was written (an edit, a bad copy, a disk
error): reading the file is then an error naming the file and the line (``DamagedLinesError``, a
user error: exit 2), since going on would drop a measurement without a word. A command given
``--skip-damaged`` reads inside ``skipping_damaged()``: the damaged lines are left out and a note on
stderr says how many and which (``skipped_lines`` tells the report, which says it too).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from orthrus.errors import UserInputError

if TYPE_CHECKING:
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


class DamagedLinesError(UserInputError):
    """A JSON-lines file holds lines, other than its unfinished last one, that are not complete records."""

    def __init__(self, path: Path, damaged: list[tuple[int, str]]) -> None:
        self.path = path
        self.lines = [number for number, _ in damaged]
        first, why = damaged[0]
        more = f" and {len(damaged) - 1} more (lines {_line_list(self.lines[1:])})" if len(damaged) > 1 else ""
        super().__init__(
            f"{path} line {first} is damaged ({why}){more}: a killed run leaves at most its last line "
            "unfinished, so this was damaged after it was written; restore the file from a copy, or pass "
            "--skip-damaged to go on without the damaged line(s) and their measurements."
        )


# set by a command given --skip-damaged (``skipping_damaged``): damaged lines are left out, and said
# once per file and command (the files already said, with their lines); None: a damaged line is an error
_SKIP_DAMAGED: ContextVar[dict[Path, tuple[int, ...]] | None] = ContextVar("skip_damaged", default=None)
_SKIPPED: dict[Path, tuple[int, ...]] = {}  # file -> the damaged lines its last read left out


@contextlib.contextmanager
def skipping_damaged(skip: bool = True) -> Iterator[None]:
    """Inside: a damaged line is left out (and said once on stderr) instead of being an error."""
    token = _SKIP_DAMAGED.set({} if skip else None)
    try:
        yield
    finally:
        _SKIP_DAMAGED.reset(token)


def skipped_lines(path: Path) -> tuple[int, ...]:
    """The damaged lines of ``path`` that its last read (under ``skipping_damaged()``) left out."""
    return _SKIPPED.get(path.absolute(), ())


def _line_list(numbers: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (f", ... ({len(numbers)} in all)" if len(numbers) > limit else "")


def _why(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def _read_lines(path: Path, parse: Callable[[dict[str, Any]], Any]) -> list[Any]:
    """``parse(object)`` for every counted line of a JSON-lines file, by the one rule (module docstring):
    the unfinished tail is not counted, blank lines are nothing, any other line that is not a JSON
    object ``parse`` accepts is damaged: an error, or left out with a note under ``skipping_damaged``."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows, damaged = [], []
    for number, line in enumerate(data[: _counted_length(data)].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:  # cut short, garbled or not UTF-8
            damaged.append((number, _why(f"not JSON: {err}")))
            continue
        if not isinstance(row, dict):
            damaged.append((number, f"a JSON {type(row).__name__}, not an object"))
            continue
        try:
            rows.append(parse(row))
        except (ValueError, TypeError, KeyError) as err:
            damaged.append((number, _why(f"not a complete record: {err}")))
    _SKIPPED.pop(path.absolute(), None)
    if damaged:
        said = _SKIP_DAMAGED.get()
        if said is None:
            raise DamagedLinesError(path, damaged)
        lines = _SKIPPED[path.absolute()] = tuple(number for number, _ in damaged)
        if said.get(path.absolute()) != lines:  # said once per command, however often the file is read
            said[path.absolute()] = lines
            noun = "line" if len(lines) == 1 else "lines"
            print(
                f"note: skipped {len(lines)} damaged {noun} of {path} (--skip-damaged): line "
                f"{_line_list(list(lines))}; what is shown lacks their measurements.",
                file=sys.stderr,
            )
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, by the one rule (see the module docstring)."""
    return _read_lines(path, lambda row: row)


def _record(row: dict[str, Any]) -> dict[str, Any]:
    from orthrus.results.record import MeasurementRecord  # torch: loaded when records are read, not on import

    return MeasurementRecord.from_dict(row).to_dict()


def read_records(path: Path) -> list[dict[str, Any]]:
    """The counted records of a results file, each with every field of the current MeasurementRecord;
    a line that is not one (but the unfinished last) is damaged: see the module docstring."""
    return _read_lines(path, _record)


class ResultsWriter:
    """Appends records durably (write, flush, fsync per record) after cutting off what the reader
    does not count at the end of the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _cut_uncounted_tail(path)
        self._handle = path.open("ab", buffering=0)  # unbuffered: nothing is left to flush after a failed write

    def append(self, record: MeasurementRecord | dict[str, Any]) -> None:
        data = record if isinstance(record, dict) else record.to_dict()
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
