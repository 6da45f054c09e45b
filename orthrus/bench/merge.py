"""Merge shard directories of one run (``--shard I/N`` on several machines) into one run directory."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from orthrus.bench.suite.load import parse_yaml
from orthrus.bench.suite.spec import suite_hash
from orthrus.errors import UserInputError
from orthrus.results.rundir import RESULTS_FILE, ResultsWriter, read_records, write_json
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


def merge_runs(run_dirs: list[Path], out_dir: Path | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Write the union of the shards' records (each (cell, prompt, repeat) once) and a fresh summary."""
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
    base_id = SHARD_SUFFIX.sub("", run_dirs[0].name)
    if out_dir is None:
        out_dir = run_dirs[0].parent / f"{base_id}-merged"
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserInputError(f"{out_dir} already exists and is not empty; pass another --out directory.")
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = out_dir.name

    records: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        for record in read_records(run_dir / RESULTS_FILE):
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
    info = {
        "run_id": run_id,
        "suite_name": suites[0].get("name") or environment.get("suite_name"),
        "suite_sha256": first_hash,
        "merged_from": [str(d) for d in run_dirs],
        "merged_at": time.time(),
        "status": "finished",
        "records": len(records),
        "ok": ok,
        "failed": len(records) - ok,
        "harness_overhead": overhead_stats(records),
    }
    write_json(out_dir / "run.json", info)
    return out_dir, records
