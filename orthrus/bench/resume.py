"""``--resume RUN_DIR``: the suite and shard a run started with, so that it continues unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from orthrus.bench.suite.load import parse_yaml
from orthrus.bench.suite.spec import Suite
from orthrus.bench.suite.validate import load_suite, validate_suite
from orthrus.errors import UserInputError

SHARD_NAME = re.compile(r"-shard(\d+)of(\d+)$")  # the run-id suffix of a --shard run (runner._make_run_dir)


def resumed_suite(
    run_dir: Path,
    suite_path: str | None = None,
    sets: list[str] | None = None,
    quick: bool = False,
    device: str | None = None,
    engines: list[str] | None = None,
    shard: tuple[int, int] | None = None,
) -> tuple[Suite, tuple[int, int] | None]:
    """The run's own suite (its suite.yaml) and shard. Suite options given again must produce the
    same suite, and a shard given again must be the run's (also "no shard" for a run of all cells);
    anything else is refused before the run directory is touched."""
    stored_file = run_dir / "suite.yaml"
    if not stored_file.is_file():
        raise UserInputError(f"--resume {run_dir}: not a run directory (no suite.yaml); pass reports/<suite>/<run-id>.")
    stored = parse_yaml(stored_file.read_text(), str(stored_file))
    info = _run_info(run_dir)
    stored_suite = validate_suite(stored, Path(info["suite_path"]) if info.get("suite_path") else None)
    suite = stored_suite
    if suite_path or sets or engines or quick or device:
        suite = load_suite(suite_path, sets, quick, device, engines, raw=None if suite_path else stored)
        if suite.sha256 != stored_suite.sha256:
            raise UserInputError(
                f"--resume {run_dir}: the suite and options given differ from the ones this run started with; "
                "resume with the same ones (or none) or start a new run."
            )
    stored_shard = run_shard(run_dir, info)
    if shard is not None and shard != stored_shard:
        started = f"shard {stored_shard[0]}/{stored_shard[1]}" if stored_shard else "without --shard (all cells)"
        raise UserInputError(
            f"--resume {run_dir}: this run was started {started}, not with --shard {shard[0]}/{shard[1]}; "
            "resume it without --shard (it keeps its own), or start a new run for another shard."
        )
    return suite, stored_shard


def run_shard(run_dir: Path, info: dict[str, Any] | None = None) -> tuple[int, int] | None:
    """The shard a run directory was started with (run.json, else its -shardIofN name), None for all cells."""
    info = _run_info(run_dir) if info is None else info
    if "shard" in info:
        value = info["shard"]
        try:
            return (int(value[0]), int(value[1])) if value else None
        except (TypeError, ValueError, IndexError, KeyError):
            pass  # a damaged run.json: the directory's name still tells
    match = SHARD_NAME.search(run_dir.name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _run_info(run_dir: Path) -> dict[str, Any]:
    file = run_dir / "run.json"
    if not file.is_file():
        return {}
    try:
        info = json.loads(file.read_text())
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}
