"""Merge shard directories of one run (``--shard I/N`` on several machines) into one run directory.

The shards must cover the suite's cells exactly once: ``merge`` refuses (exit 2, nothing written)
when a shard is missing, given twice or overlaps another input, or when an input has not finished
(killed or still being measured), and names the shards and cells concerned. ``partial=True`` merges
what there is anyway, and the merged run.json says ``status: partial`` with what is missing.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from orthrus.bench.resume import run_shard
from orthrus.bench.schedule import shard
from orthrus.bench.suite.load import parse_yaml
from orthrus.bench.suite.spec import Cell, suite_hash
from orthrus.bench.suite.validate import validate_suite
from orthrus.errors import UserInputError
from orthrus.results.rundir import RESULTS_FILE, ResultsWriter, is_locked, read_json, read_records, write_json
from orthrus.results.summary import dedupe, overhead_stats, write_summary

SHARD_SUFFIX = re.compile(r"-shard\d+of\d+$")


def _load_suite(run_dir: Path) -> dict[str, Any]:
    file = run_dir / "suite.yaml"
    if not file.is_file():
        raise UserInputError(f"{run_dir} has no suite.yaml; pass run directories written by run_bench.py.")
    raw = parse_yaml(file.read_text(), str(file))
    if not isinstance(raw, dict):
        raise UserInputError(f"{file} does not hold a suite mapping.")
    return raw


def merge_runs(
    run_dirs: list[Path], out_dir: Path | None = None, partial: bool = False
) -> tuple[Path, list[dict[str, Any]]]:
    """Write the union of the shards' records (each (cell, prompt, repeat) once) and a fresh summary.

    Inputs that do not cover the suite's cells exactly once, or that have not finished, are refused
    (``UserInputError`` naming the shards and cells) unless ``partial``."""
    if not run_dirs:
        raise UserInputError("merge needs at least one run directory.")
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise UserInputError(f"run directory {str(run_dir)!r} does not exist.")
        if not (run_dir / RESULTS_FILE).is_file():
            raise UserInputError(f"{run_dir} has no {RESULTS_FILE}; pass run directories written by run_bench.py.")
    suites = [_load_suite(d) for d in run_dirs]
    first_hash = suite_hash(suites[0])
    for run_dir, raw in zip(run_dirs[1:], suites[1:]):
        if suite_hash(raw) != first_hash:
            raise UserInputError(f"{run_dir} ran a different suite than {run_dirs[0]}; merge only shards of one run.")
    inputs = [_Input(d, read_records(d / RESULTS_FILE)) for d in run_dirs]
    try:
        cells: list[Cell] | None = validate_suite(suites[0], _suite_path(run_dirs[0])).cells
    except UserInputError:  # its models or data are not on this machine: check what the records tell
        cells = None
    problems = coverage_problems(cells, inputs)
    if problems and not partial:
        raise UserInputError(
            f"merge refused, the inputs are not one complete run: {'; '.join(problems)} "
            "(nothing was written; pass --partial to merge what there is)."
        )
    base_id = SHARD_SUFFIX.sub("", run_dirs[0].name)
    if out_dir is None:
        out_dir = run_dirs[0].parent / f"{base_id}-merged"
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserInputError(f"{out_dir} already exists and is not empty; pass another --out directory.")
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = out_dir.name

    records: list[dict[str, Any]] = []
    for item in inputs:
        for record in item.records:
            record = dict(record, extra={**record["extra"], "shard_run_id": record["run_id"]}, run_id=run_id)
            records.append(record)
    records = dedupe(records)  # each (cell, prompt, repeat) once; an ok record wins over a failed one
    with ResultsWriter(out_dir / RESULTS_FILE) as writer:
        for record in records:
            writer.append(record)

    (out_dir / "suite.yaml").write_text((run_dirs[0] / "suite.yaml").read_text())
    environments = []
    for run_dir in run_dirs:
        file = run_dir / "environment.json"
        environments.append(json.loads(file.read_text()) if file.is_file() else {})
    environment = dict(environments[0])
    environment.update(run_id=run_id, shards=[{"run_dir": str(d), **e} for d, e in zip(run_dirs, environments)])
    write_json(out_dir / "environment.json", environment)
    prompt_lines: dict[str, None] = {}
    for run_dir in run_dirs:
        file = run_dir / "prompts.jsonl"
        if file.is_file():
            for line in file.read_text().splitlines():
                if line.strip():
                    prompt_lines.setdefault(line, None)
    (out_dir / "prompts.jsonl").write_text("".join(line + "\n" for line in prompt_lines))
    write_summary(out_dir, records)
    ok = sum(1 for r in records if r.get("status") == "ok")
    skipped = sum(1 for r in records if r.get("status") == "skipped")
    info = {
        "run_id": run_id,
        "suite_name": suites[0].get("name") or environment.get("suite_name"),
        "suite_sha256": first_hash,
        "merged_from": [str(d) for d in run_dirs],
        "merged_at": time.time(),
        "shard": None,
        "status": "partial" if problems else "finished",
        "problems": problems,
        "records": len(records),
        "ok": ok,
        "skipped": skipped,  # cells an engine cannot run (e.g. a batch it cannot decode): not failures
        "failed": len(records) - ok - skipped,
        "harness_overhead": overhead_stats(records),
    }
    write_json(out_dir / "run.json", info)
    return out_dir, records


class _Input:
    """One run directory given to merge: its shard, whether it finished, what it recorded."""

    def __init__(self, run_dir: Path, records: list[dict[str, Any]]) -> None:
        self.run_dir = run_dir
        self.records = records
        self.shard = run_shard(run_dir)
        info = read_json(run_dir / "run.json")
        self.status = str(info.get("status")) if isinstance(info, dict) else "unknown"
        self.running = is_locked(run_dir)
        self.recorded = {r["cell_id"] for r in records}

    @property
    def name(self) -> str:
        part = f"shard {self.shard[0]}/{self.shard[1]}" if self.shard else "all cells"
        return f"{self.run_dir} ({part})"

    def planned(self, cells: list[Cell]) -> list[Cell]:
        """The cells this input was started for (its shard's slice of the suite's cells)."""
        return shard(cells, *self.shard) if self.shard else list(cells)


def coverage_problems(cells: list[Cell] | None, inputs: list[_Input]) -> list[str]:
    """What keeps ``inputs`` from being the suite's cells measured once each: inputs unfinished, a
    shard given twice or missing, inputs covering the same cells, cells no input measured. Empty
    when complete. ``cells`` None (the suite cannot be expanded here) checks shards and records only."""
    problems = []
    for item in inputs:
        if item.running:
            problems.append(f"{item.name} is still being measured")
        elif item.status != "finished":
            problems.append(
                f"{item.name} did not finish (status {item.status}; resume it with --resume {item.run_dir})"
            )
    by_shard: dict[tuple[int, int] | None, list[_Input]] = {}
    for item in inputs:
        by_shard.setdefault(item.shard, []).append(item)
    for spec, same in by_shard.items():
        if len(same) > 1:
            what = f"shard {spec[0]}/{spec[1]}" if spec else "a run of all cells"
            problems.append(f"{what} is given {len(same)} times ({', '.join(str(i.run_dir) for i in same)})")
    counts = {i.shard[1] for i in inputs if i.shard}
    if len(counts) == 1 and None not in by_shard:
        (count,) = counts
        absent = [f"{k}/{count}" for k in range(count) if (k, count) not in by_shard]
        if absent:
            problems.append(f"shard {', '.join(absent)} is not given")
    by_id = {c.cell_id: c for c in cells or []}
    covered: dict[str, list[_Input]] = {}
    for item in inputs:
        planned = {c.cell_id for c in item.planned(cells)} if cells is not None else set()
        for cell_id in planned | item.recorded:
            covered.setdefault(cell_id, []).append(item)
    overlaps: dict[tuple[str, ...], list[str]] = {}
    for cell_id, items in covered.items():
        if len(items) > 1 and len({i.shard for i in items}) > 1:  # the same shard twice is said above
            overlaps.setdefault(tuple(i.name for i in items), []).append(cell_id)
    for names, cell_ids in overlaps.items():
        problems.append(f"{' and '.join(names)} both cover {_cells_text(cell_ids, by_id)}")
    if cells is not None:
        measured = set().union(*(i.recorded for i in inputs))
        missing = [c.cell_id for c in cells if c.cell_id not in measured]
        if missing:
            problems.append(f"no input measured {_cells_text(missing, by_id)} (of the suite's {len(cells)})")
    return problems


def _cells_text(cell_ids: list[str], by_id: dict[str, Cell], limit: int = 6) -> str:
    def one(cell_id: str) -> str:
        cell = by_id.get(cell_id)
        if cell is None:
            return f"{cell_id} (not in the suite)"
        params = cell.params
        context = f" ctx {params['context_length']}" if params.get("context_length") is not None else ""
        return f"{params['label']}{context} ({cell_id})"

    shown = ", ".join(one(c) for c in cell_ids[:limit])
    more = f" and {len(cell_ids) - limit} more" if len(cell_ids) > limit else ""
    noun = "cell" if len(cell_ids) == 1 else "cells"
    return f"{len(cell_ids)} {noun}: {shown}{more}"


def _suite_path(run_dir: Path) -> Path | None:
    info = read_json(run_dir / "run.json")
    path = info.get("suite_path") if isinstance(info, dict) else None
    return Path(path) if isinstance(path, str) and path else None
