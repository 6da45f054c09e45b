"""No measurement lost, duplicated or hidden: real small runs killed, resumed, resumed twice at once,
resumed with another shard, merged incomplete; every cell measured exactly once, with the tokens of
a run that was never interrupted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orthrus.models.zoo_index import zoo_path
from orthrus.report.rundata import load_run
from orthrus.results.record import record_key
from orthrus.results.rundir import LOCK_FILE, read_records
from orthrus.run_cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(zoo_path("tiny-draft") is None, reason="needs the zoo model tiny-draft")

SUITE = {
    "name": "safety",
    "models": {"base": {"path": "tiny-draft"}},
    "engines": [
        {"engine": "ar", "model": "base"},
        {"engine": "orthrus", "model": "base", "options": {"block_size": 4}},
    ],
    "sweep": {"context_lengths": [32, 48], "max_new_tokens": 8},
    "prompts": {"source": "synthetic", "count": 2},
    "measure": {"repetitions": 2, "warmup": 0, "threads": 1},
}
CELLS = 4
MEASUREMENTS = CELLS * 2 * 2  # cells x prompts x repetitions


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted run and the two shards of the same suite, measured once for the module."""
    root = tmp_path_factory.mktemp("safety")
    suite_file = root / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    out = root / "reports"
    assert main([str(suite_file), "--out", str(out), "--run-id", "full", "--quiet"]) == 0
    for index in range(2):
        assert main([str(suite_file), "--out", str(out), "--run-id", "s", "--shard", f"{index}/2", "--quiet"]) == 0
    base = out / "safety"
    return {
        "suite": suite_file,
        "out": out,
        "full": base / "full",
        "shard0": base / "s-shard0of2",
        "shard1": base / "s-shard1of2",
    }


def tokens_by_key(run_dir: Path) -> dict[tuple, list[int]]:
    records = read_records(run_dir / "results.jsonl")
    assert all(r["status"] == "ok" for r in records)
    return {record_key(r): r["tokens"] for r in records}


def assert_each_once_with_reference_tokens(run_dir: Path, reference: Path) -> None:
    records = read_records(run_dir / "results.jsonl")
    keys = [record_key(r) for r in records]
    assert len(keys) == len(set(keys)) == MEASUREMENTS, "every (cell, prompt, repeat) exactly once"
    assert tokens_by_key(run_dir) == tokens_by_key(reference)


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def copy_run(source: Path, name: str) -> Path:
    target = source.parent / name
    shutil.copytree(source, target)
    return target


def as_if_killed_before_summary(run_dir: Path, drop_last_records: int = 0) -> None:
    """What SIGKILL leaves between the last record and the summary: no summary, run.json 'running'."""
    for name in ("summary.json", "summary.csv", "report.html"):
        (run_dir / name).unlink(missing_ok=True)
    info = json.loads((run_dir / "run.json").read_text())
    info["status"] = "running"
    (run_dir / "run.json").write_text(json.dumps(info))
    if drop_last_records:
        lines = (run_dir / "results.jsonl").read_bytes().splitlines(keepends=True)
        (run_dir / "results.jsonl").write_bytes(b"".join(lines[:-drop_last_records]))


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_killed_run_refuses_a_concurrent_resume_then_resumes_exactly_once(runs, tmp_path, capsys):
    """SIGKILL of a real run after N records, its last newline lost; a resume while it still holds
    the run directory is refused; the resume after the kill measures every cell exactly once."""
    out = tmp_path / "reports"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "run_bench.py"), str(runs["suite"]), "--out", str(out), "--run-id", "k"]
    process = subprocess.Popen([*command, "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = out / "safety" / "k"
    results = run_dir / "results.jsonl"
    try:
        wait_for(lambda: results.is_file() and results.read_bytes().count(b"\n") >= 3, process, "3 records")
        process.send_signal(signal.SIGSTOP)  # hold it mid-run, lock held, so the timing is not a race
        assert (run_dir / LOCK_FILE).read_text().strip() == str(process.pid)
        before = results.read_bytes()
        assert before.count(b"\n") < MEASUREMENTS, "the run must be stopped midway"

        capsys.readouterr()
        assert main(["--resume", str(run_dir), "--quiet"]) == 2  # the second measurer is refused
        err = capsys.readouterr().err
        assert f"is being measured by process {process.pid} right now" in err and err.count("\n") == 1
        assert results.read_bytes() == before, "the refused resume must not touch the results"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    # the kill cut the last write right after its closing brace: a complete-looking record, no newline
    assert before.endswith(b"}\n")
    results.write_bytes(before[:-1])
    killed = read_records(results)
    assert len(killed) == before.count(b"\n") - 1, "an unterminated record is not counted"

    assert main(["--resume", str(run_dir), "--quiet"]) == 0  # the OS released the killed run's lock
    assert_each_once_with_reference_tokens(run_dir, runs["full"])
    after = read_records(results)
    assert [record_key(r) for r in after[: len(killed)]] == [record_key(r) for r in killed]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["shard"] is None and len(info["sessions"]) == 2


def test_killed_before_summary_reports_gates_and_resumes(runs, capsys):
    """A run killed after its records but before its summary: report, gate and compare read every
    cell from results.jsonl and say the run is unfinished; the resume measures nothing twice."""
    run_dir = copy_run(runs["full"], "nosummary")
    as_if_killed_before_summary(run_dir, drop_last_records=1)
    capsys.readouterr()
    run = load_run(run_dir)
    assert len(run.summary) == CELLS and run.summary["n_ok"].sum() == MEASUREMENTS - 1
    assert run.unfinished and "did not finish (status running)" in run.unfinished
    assert f"--resume {run_dir}" in capsys.readouterr().err
    assert load_run(runs["full"]).unfinished is None

    # a summary.json that does not count every record (written before the run was resumed) is not used
    stale = copy_run(runs["full"], "stale")
    shutil.copy(runs["shard0"] / "summary.json", stale / "summary.json")
    assert len(json.loads((stale / "summary.json").read_text())) == CELLS // 2
    assert len(load_run(stale).summary) == CELLS

    assert main(["--resume", str(run_dir), "--quiet"]) == 0
    assert_each_once_with_reference_tokens(run_dir, runs["full"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary) == CELLS and sum(row["n_ok"] for row in summary) == MEASUREMENTS
    assert load_run(run_dir).unfinished is None


def test_resume_with_another_shard_is_refused_and_plain_resume_keeps_the_shard(runs, capsys):
    full = copy_run(runs["full"], "full-copy")
    shard1 = copy_run(runs["shard1"], "s2-shard1of2")
    for run_dir, wrong in ((full, "0/2"), (shard1, "0/2"), (shard1, "1/3")):
        before = snapshot(run_dir)
        capsys.readouterr()
        assert main(["--resume", str(run_dir), "--shard", wrong, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"not with --shard {wrong}" in err and err.count("\n") == 1
        assert snapshot(run_dir) == before, "a refused resume changes nothing on disk"

    # a plain --resume of a killed shard continues that shard, and only it
    as_if_killed_before_summary(shard1, drop_last_records=2)
    assert main(["--resume", str(shard1), "--quiet"]) == 0
    records = read_records(shard1 / "results.jsonl")
    assert sorted(map(record_key, records)) == sorted(map(record_key, read_records(runs["shard1"] / "results.jsonl")))
    assert json.loads((shard1 / "run.json").read_text())["shard"] == [1, 2]


def test_merge_says_what_is_missing_or_duplicated(runs, tmp_path, capsys):
    shard0, shard1, full = runs["shard0"], runs["shard1"], runs["full"]
    twin0 = copy_run(shard0, "twin-shard0of2")
    killed1 = copy_run(shard1, "killed-shard1of2")
    as_if_killed_before_summary(killed1, drop_last_records=1)
    refused = [
        ([shard0], ["shard 1/2 is not given", "no input measured 2 cells"]),
        ([shard0, twin0], ["shard 0/2 is given 2 times", "shard 1/2 is not given"]),
        ([shard0, shard1, full], ["(all cells) both cover"]),
        ([shard0, killed1], [f"{killed1} (shard 1/2) did not finish (status running"]),
    ]
    for inputs, phrases in refused:
        out = tmp_path / "merged"
        capsys.readouterr()
        assert main(["merge", *map(str, inputs), "--out", str(out), "--quiet"]) == 2, phrases
        err = capsys.readouterr().err
        assert err.startswith("error: merge refused") and err.count("\n") == 1
        for phrase in phrases:
            assert phrase in err, (phrase, err)
        assert not out.exists(), "a refused merge writes nothing"

    assert main(["merge", str(shard0), str(shard1), "--out", str(tmp_path / "whole"), "--quiet"]) == 0
    assert_each_once_with_reference_tokens(tmp_path / "whole", full)
    assert json.loads((tmp_path / "whole" / "run.json").read_text())["status"] == "finished"

    capsys.readouterr()
    assert main(["merge", str(shard0), "--out", str(tmp_path / "half"), "--partial", "--quiet"]) == 1
    assert "is a partial run: shard 1/2 is not given" in capsys.readouterr().err
    info = json.loads((tmp_path / "half" / "run.json").read_text())
    assert info["status"] == "partial" and info["records"] == MEASUREMENTS // 2
    assert load_run(tmp_path / "half").unfinished.startswith(f"{tmp_path / 'half'} is a partial merge")
