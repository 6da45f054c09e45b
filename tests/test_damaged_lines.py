"""One rule for a damaged line of results.jsonl, on real run directories, for every command that
reads one: a line that is not a complete record anywhere but at the very end is an error naming the
file and the line (exit 2, nothing written), for report, gate, compare, merge and --resume alike;
``--skip-damaged`` goes on without it and says how many lines it left out. The unfinished last line
a kill leaves is not counted, as before, and is no error."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from orthrus.models.zoo_index import zoo_path
from orthrus.report import render_index
from orthrus.results.record import record_key
from orthrus.results.rundir import RESULTS_FILE, read_records
from orthrus.run_cli import main

pytestmark = pytest.mark.skipif(zoo_path("tiny-draft") is None, reason="needs the zoo model tiny-draft")

SUITE = {
    "name": "damage",
    "models": {"base": {"path": "tiny-draft"}},
    "engines": [
        {"engine": "ar", "model": "base"},
        {"engine": "orthrus", "model": "base", "options": {"block_size": 4}},
    ],
    "sweep": {"context_lengths": [32], "max_new_tokens": 8},
    "prompts": {"source": "synthetic", "count": 2},
    "measure": {"repetitions": 2, "warmup": 0, "threads": 1},
    "gates": [{"rule": "n_failed == 0"}],
}
MEASUREMENTS = 2 * 2 * 2  # cells x prompts x repetitions
DAMAGED_LINE = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A whole run and the two shards of the same suite, measured once for the module."""
    root = tmp_path_factory.mktemp("damage")
    suite_file = root / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    out = root / "reports"
    assert main([str(suite_file), "--out", str(out), "--run-id", "whole", "--quiet"]) == 0
    for index in range(2):
        assert main([str(suite_file), "--out", str(out), "--run-id", "s", "--shard", f"{index}/2", "--quiet"]) == 0
    base = out / "damage"
    return {"whole": base / "whole", "shard0": base / "s-shard0of2", "shard1": base / "s-shard1of2"}


def damaged_copy(source: Path, name: str, line: int = DAMAGED_LINE) -> tuple[Path, bytes]:
    """A copy of a run whose results.jsonl has line ``line`` cut short in the middle of the file
    (as an edit or a bad copy would leave it, never a kill): returns the copy and the damaged file."""
    target = source.parent / name
    shutil.copytree(source, target)
    results = target / RESULTS_FILE
    lines = results.read_bytes().splitlines(keepends=True)
    assert len(lines) > line, "the damage must be in the middle"
    lines[line - 1] = lines[line - 1][:40] + b"\n"
    results.write_bytes(b"".join(lines))
    return target, results.read_bytes()


def refused(capsys, argv: list[str], results: Path, data: bytes) -> str:
    """The command exits 2 with one sentence naming the file and the line, and leaves results.jsonl alone."""
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert f"{results} line {DAMAGED_LINE} is damaged" in err and "--skip-damaged" in err, err
    assert results.read_bytes() == data, "a refused command must not touch the results"
    return err


def skipped_note(err: str, results: Path) -> None:
    assert re.search(rf"note: skipped 1 damaged line of {re.escape(str(results))} .*line {DAMAGED_LINE}\b", err), err


def test_report_refuses_a_damaged_line_and_skips_it_when_told(runs, capsys):
    run, data = damaged_copy(runs["whole"], "report-damaged")
    results = run / RESULTS_FILE
    (run / "report.html").unlink()
    refused(capsys, ["report", str(run)], results, data)
    assert not (run / "report.html").exists()
    (run / "summary.json").unlink()  # the summary counts the record the damaged line held: rebuilt without it
    assert main(["report", str(run), "--skip-damaged"]) == 0
    skipped_note(capsys.readouterr().err, results)
    html = (run / "report.html").read_text()
    assert f"1 damaged line(s) of results.jsonl (line {DAMAGED_LINE}) were left out" in html


def test_gate_refuses_a_damaged_line_and_skips_it_when_told(runs, capsys):
    run, data = damaged_copy(runs["whole"], "gate-damaged")
    results = run / RESULTS_FILE
    refused(capsys, ["gate", str(run), "--quiet", "--no-report"], results, data)
    assert main(["gate", str(run), "--quiet", "--no-report", "--skip-damaged"]) == 0
    skipped_note(capsys.readouterr().err, results)


def test_compare_refuses_a_damaged_line_and_skips_it_when_told(runs, capsys, tmp_path):
    run, data = damaged_copy(runs["whole"], "compare-damaged")
    results = run / RESULTS_FILE
    out = tmp_path / "compare.html"
    refused(capsys, ["compare", str(runs["whole"]), str(run), "--out", str(out)], results, data)
    assert not out.exists()
    assert main(["compare", str(runs["whole"]), str(run), "--out", str(out), "--skip-damaged"]) == 0
    skipped_note(capsys.readouterr().err, results)
    assert out.is_file()


def test_merge_refuses_a_damaged_line_and_skips_it_when_told(runs, capsys, tmp_path):
    shard1, data = damaged_copy(runs["shard1"], "m-shard1of2")
    results = shard1 / RESULTS_FILE
    out = tmp_path / "merged"
    refused(capsys, ["merge", str(runs["shard0"]), str(shard1), "--out", str(out), "--quiet"], results, data)
    assert not out.exists(), "a refused merge writes nothing"
    assert main(["merge", str(runs["shard0"]), str(shard1), "--out", str(out), "--quiet", "--skip-damaged"]) == 0
    skipped_note(capsys.readouterr().err, results)
    assert len(read_records(out / RESULTS_FILE)) == MEASUREMENTS - 1  # merged without the damaged measurement


def test_resume_refuses_a_damaged_line_and_measures_it_again_when_told(runs, capsys):
    run, data = damaged_copy(runs["whole"], "resume-damaged")
    results = run / RESULTS_FILE
    lost = record_key(json.loads(runs["whole"].joinpath(RESULTS_FILE).read_bytes().splitlines()[DAMAGED_LINE - 1]))
    refused(capsys, ["--resume", str(run), "--quiet"], results, data)
    assert main(["--resume", str(run), "--quiet", "--skip-damaged"]) == 0
    skipped_note(capsys.readouterr().err, results)
    with pytest.raises(ValueError, match=f"line {DAMAGED_LINE} is damaged"):
        read_records(results)  # the damaged line is kept as it was: the file is never rewritten behind the user
    capsys.readouterr()
    assert main(["report", str(run), "--skip-damaged"]) == 0
    from orthrus.results.rundir import skipping_damaged

    with skipping_damaged():
        keys = [record_key(r) for r in read_records(results)]
    assert len(keys) == len(set(keys)) == MEASUREMENTS and keys[-1] == lost  # measured again, once


def test_the_unfinished_last_line_of_a_killed_run_is_no_error(runs, capsys):
    target = runs["whole"].parent / "killed"
    shutil.copytree(runs["whole"], target)
    results = target / RESULTS_FILE
    results.write_bytes(results.read_bytes()[:-25])  # the kill cut the last record short: no newline
    capsys.readouterr()
    assert main(["report", str(target)]) == 0
    assert main(["gate", str(target), "--quiet", "--no-report"]) in (0, 1)
    assert "damaged" not in capsys.readouterr().err
    assert len(read_records(results)) == MEASUREMENTS - 1


def test_the_index_names_a_damaged_run_and_lists_the_others(runs, tmp_path):
    damaged_copy(runs["whole"], "index-damaged")
    html = render_index(runs["whole"].parents[1]).read_text()
    assert f"line {DAMAGED_LINE} is damaged" in html and "whole" in html


def test_skip_damaged_on_a_new_run_is_refused(capsys):
    assert main(["suites/ci.yaml", "--skip-damaged", "--dry-run"]) == 2
    assert "--skip-damaged applies to --resume RUN_DIR" in capsys.readouterr().err
