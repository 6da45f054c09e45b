"""orthrus.results: one completeness rule for results.jsonl (reader, writer, resume, report), and
the engine facts each record carries (block size actually used, KV bytes per token, lossless)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orthrus.errors import UserInputError
from orthrus.models.zoo_index import zoo_path
from orthrus.report.gates import evaluate_gates
from orthrus.report.rundata import load_run
from orthrus.results import RESULTS_FILE, MeasurementRecord, ResultsWriter, read_records, record_key
from orthrus.results.rundir import DamagedLinesError, skipping_damaged

ROOT = Path(__file__).resolve().parents[1]


def _record(prompt_id: str, repeat: int = 0) -> dict:
    return MeasurementRecord(
        run_id="r", cell_id="c", cell={"engine": "ar"}, prompt_id=prompt_id, repeat=repeat
    ).to_dict()


def _lines(*records: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def test_a_complete_looking_last_record_without_its_newline_is_not_counted_and_is_cut_on_resume(tmp_path):
    path = tmp_path / RESULTS_FILE
    tail = json.dumps(_record("p2")).encode()  # parses as JSON, but its write never finished
    path.write_bytes(_lines(_record("p0"), _record("p1")) + tail)
    assert [r["prompt_id"] for r in read_records(path)] == ["p0", "p1"]
    with ResultsWriter(path) as writer:  # reopening for --resume drops exactly what was not counted
        assert path.read_bytes() == _lines(_record("p0"), _record("p1"))
        writer.append(_record("p2"))
    assert [r["prompt_id"] for r in read_records(path)] == ["p0", "p1", "p2"]
    assert path.read_bytes().endswith(b"\n")


def test_a_damaged_line_is_an_error_naming_it_unless_skipped_and_the_unfinished_tail_is_not(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    path = run / RESULTS_FILE
    path.write_bytes(
        _lines(_record("p0")) + b'{"run_id": "r", "cell_\n' + b"[1, 2]\n\n" + _lines(_record("p1")) + b'{"x"'
    )
    with pytest.raises(DamagedLinesError, match=r"results.jsonl line 2 is damaged \(not JSON.*and 1 more \(lines 3\)"):
        read_records(path)
    with pytest.raises(UserInputError, match="line 2 is damaged"):
        load_run(run)  # the report reads by the same rule
    with skipping_damaged():
        counted = [record_key(r) for r in read_records(path)]
        assert counted == [("c", "p0", 0), ("c", "p1", 0)]  # blank lines are nothing, the tail is not counted
        assert [record_key(r) for r in load_run(run).records] == counted
        assert load_run(run).damaged == (2, 3)
    with ResultsWriter(path):
        pass
    assert path.read_bytes().endswith(_lines(_record("p1")))  # only the unfinished tail was cut
    path.write_bytes(_lines(_record("p0"), {"run_id": "r"}))  # a JSON object that is not a record
    with pytest.raises(
        DamagedLinesError, match="line 2 is damaged \\(not a complete record: a measurement record needs"
    ):
        read_records(path)


def test_a_version_1_record_reads_with_its_facts_as_fields():
    old = {**_record("p0"), "version": 1, "extra": {"lossless": False, "engine_block_size": 8, "call_ms": 3.0}}
    for name in ("block_size", "kv_bytes_per_token", "lossless"):
        del old[name]
    record = MeasurementRecord.from_dict(old)
    assert (record.lossless, record.block_size, record.extra) == (False, 8, {"call_ms": 3.0})
    assert MeasurementRecord.from_dict(record.to_dict()) == record


# ------------------------------------------------------------------------------- a real tiny run
def _bench(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "run_bench.py"), *argv], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.skipif(zoo_path("tiny-draft") is None, reason="needs the zoo model tiny-draft")
def test_records_carry_the_engine_facts_and_an_unfinished_last_record_is_measured_again(tmp_path):
    raw = {
        "name": "facts",
        "models": {"base": {"path": "tiny-draft"}},
        "engines": [
            {"engine": "ar", "model": "base"},
            {"engine": "orthrus", "model": "base"},  # block size from the null sweep: the engine's default
            {"engine": "orthrus", "label": "lossy", "model": "base", "options": {"accept_rule": "accept_all"}},
        ],
        "sweep": {"context_lengths": [48], "block_sizes": [None], "max_new_tokens": 8},
        "prompts": {"source": "synthetic", "count": 1},
        "measure": {"repetitions": 2, "warmup": 0, "threads": 1},
        "gates": [
            {"rule": "peak_kv_overhead_bytes <= block_size * kv_bytes_per_token", "where": {"engine": "orthrus"}}
        ],
    }
    suite = tmp_path / "facts.yaml"
    suite.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "reports"
    done = _bench(str(suite), "--out", str(out), "--run-id", "f", "--quiet")
    assert done.returncode == 0, done.stderr
    run = out / "facts" / "f"
    records = read_records(run / RESULTS_FILE)
    by_label = {label: [r for r in records if r["cell"]["label"] == label] for label in ("ar", "orthrus", "lossy")}
    used = by_label["orthrus"][0]["block_size"]
    assert isinstance(used, int) and used > 1  # the block size the engine actually used, though the suite said null
    assert all(r["cell"]["block_size"] is None for r in records)
    assert all(r["block_size"] is None and r["lossless"] is True for r in by_label["ar"])
    assert all(r["block_size"] == used and r["lossless"] is True for r in by_label["orthrus"])
    assert all(r["lossless"] is False and r["ar_nll"] is not None for r in by_label["lossy"])
    assert len({r["kv_bytes_per_token"] for r in records}) == 1 and records[0]["kv_bytes_per_token"] > 0
    summary = {row["label"]: row for row in json.loads((run / "summary.json").read_text())}
    assert summary["orthrus"]["block_size"] == used and summary["ar"]["block_size"] is None
    assert (summary["ar"]["lossless"], summary["orthrus"]["lossless"], summary["lossy"]["lossless"]) == (
        True,
        True,
        False,
    )
    # the gate reads the block size used (a null block size would make the rule not apply)
    report = evaluate_gates(run, write=False)
    assert report.exit_code == 0 and {r.status for r in report.results} == {"pass"} and len(report.results) == 2
    assert {r.threshold for r in report.results} == {used * records[0]["kv_bytes_per_token"]}

    # the last record loses its newline, as if the kill landed just before it: it is measured again
    results = run / RESULTS_FILE
    data = results.read_bytes()
    results.write_bytes(data[:-1])
    last = record_key(json.loads(data.splitlines()[-1]))
    assert last not in {record_key(r) for r in read_records(results)}
    done = _bench("--resume", str(run), "--quiet")
    assert done.returncode == 0, done.stderr
    after = read_records(results)
    keys = [record_key(r) for r in after]
    assert len(keys) == len(set(keys)) == len(records) and keys[-1] == last
    assert results.read_bytes().count(b"\n") == len(records)
