"""The gates' baseline store: a run's summary saved with its suite hash and provenance as one JSON
file (``baseline save RUN_DIR FILE``), read back and checked to be an orthrus baseline."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from orthrus.errors import UserInputError
from orthrus.report.outputs import check_output_file
from orthrus.report.rundata import RunData, load_run
from orthrus.results.rundir import RUN_INFO_FILE, is_locked, read_json
from orthrus.results.vocabulary import COLUMN

BASELINE_FORMAT = "orthrus-baseline"
BASELINE_VERSION = 1


def save_baseline(run_dir: str | Path, file: str | Path) -> Path:
    """Write the run's summary plus suite hash and provenance as a baseline JSON file."""
    _check_finished(Path(run_dir))
    run = load_run(run_dir)
    if run.summary.empty:
        raise UserInputError(f"{run.path} has no summary rows to save as a baseline.")
    failed = int(pd.to_numeric(run.summary.get(COLUMN.n_failed), errors="coerce").fillna(0).sum())
    if failed:
        raise UserInputError(
            f"baseline save: {run.path} has {failed} failed measurement(s) (see its report); save a baseline "
            "from a run whose every measurement is ok."
        )
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
        "measured_suite": measured_suite(run),  # what the hash covers, so a mismatch can name its keys
        "git_commit": run.git_commit,
        "device": run.device,
        "environment": {k: env[k] for k in ("cpu", "threads", "python", "dtypes") if k in env},
        "summary": rows,
    }
    out = check_output_file(file, "baseline save: FILE", "baseline.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    return out


def _check_finished(run_dir: Path) -> None:
    """A baseline is what later runs must match: never a part of a run (one killed, still measured, or
    a partial merge), said in one sentence before the run is read."""
    info = read_json(run_dir / RUN_INFO_FILE) if run_dir.is_dir() else None
    status = info.get("status") if isinstance(info, dict) else None
    if run_dir.is_dir() and is_locked(run_dir):
        raise UserInputError(
            f"baseline save: {run_dir} is being measured right now; save it once the run has finished."
        )
    if status not in (None, "finished"):
        fix = (
            "merge every shard first"
            if status == "partial"
            else f"complete it with python run_bench.py --resume {run_dir} first"
        )
        raise UserInputError(f"baseline save: {run_dir} did not finish (status {status}); {fix}.")


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


def measured_suite(run: RunData | dict[str, Any]) -> dict[str, Any] | None:
    """The run's suite without its gates (a run, or a suite mapping as read from its file): what was
    measured. Editing the gates keeps a baseline comparable."""
    suite = run if isinstance(run, dict) else run.suite
    if not suite:
        return None
    return json.loads(json.dumps({k: v for k, v in suite.items() if k != "gates"}, default=str))


def measured_suite_hash(run: RunData | dict[str, Any]) -> str | None:
    """sha256 of ``measured_suite``: a baseline of another measured suite is noted by the gates."""
    measured = measured_suite(run)
    if measured is None:
        return None
    return hashlib.sha256(json.dumps(measured, sort_keys=True, default=str).encode()).hexdigest()


def suite_differences(ours: Any, theirs: Any, path: str = "", limit: int = 8) -> list[str]:
    """The key paths where two suite mappings differ, each with both values (``measure.order: rounds in
    the baseline, interleaved here``), at most ``limit``."""
    found: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if len(found) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                walk(a.get(key, _ABSENT), b.get(key, _ABSENT), f"{where}.{key}" if where else str(key))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}[{i}]")
        elif a != b:
            found.append(f"{where or 'the suite'}: {_show(b)} in the baseline, {_show(a)} here")

    walk(ours, theirs, path)
    return found


_ABSENT = object()


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def json_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: NaN becomes null, numpy scalars become Python numbers."""
    return json.loads(frame.to_json(orient="records"))
