"""measure.order: rounds measures repetition r of every cell before repetition r + 1 of any (so the
cells of one run share the machine's load), interleaved also prompt i of every cell before prompt
i + 1 (so the engines compared on a prompt are measured seconds apart); both give the same records,
tokens and identity as cell order; a resumed run in either order measures each (cell, prompt,
repeat) once; bad settings are one sentence and exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from orthrus.models.zoo_index import zoo_path
from orthrus.results.record import record_key
from orthrus.results.rundir import read_records
from orthrus.run_cli import main

pytestmark = pytest.mark.skipif(zoo_path("tiny-draft") is None, reason="needs the zoo model tiny-draft")

SUITE = {
    "name": "order",
    "models": {"base": {"path": "tiny-draft"}},
    "engines": [
        {"engine": "ar", "model": "base"},
        {"engine": "orthrus", "model": "base", "options": {"block_size": 4}},
    ],
    "sweep": {"context_lengths": [32, 48], "max_new_tokens": 8, "include": [{"engine": "orthrus", "batch_size": 2}]},
    "prompts": {"source": "synthetic", "count": 2},
    "measure": {"repetitions": 3, "warmup": 1, "threads": 1},
}
MEASUREMENTS = 3 * 2 * 2 * 3  # (ar, orthrus, orthrus at batch 2) x contexts x prompts x repetitions


def write_suite(tmp_path: Path, **measure) -> Path:
    raw = json.loads(json.dumps(SUITE))
    raw["measure"].update(measure)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("order")
    out = root / "reports"
    runs = {}
    for order in ("cells", "rounds", "interleaved"):
        (root / order).mkdir()
        suite = write_suite(root / order, order=order)
        assert main([str(suite), "--out", str(out), "--run-id", order, "--quiet"]) == 0
        runs[order] = out / "order" / order
    return runs


def in_time_order(run_dir: Path) -> list[dict]:
    return read_records(run_dir / "results.jsonl")  # appended as measured


def test_rounds_measure_every_cell_once_per_round_in_suite_order(both):
    records = in_time_order(both["rounds"])
    assert len(records) == MEASUREMENTS and all(r["status"] == "ok" for r in records)
    repeats = [r["repeat"] for r in records]
    assert repeats == sorted(repeats), "round r + 1 began before round r ended"
    cells_in_round = [[r["cell_id"] for r in records if r["repeat"] == k] for k in range(3)]
    assert cells_in_round[0] == cells_in_round[1] == cells_in_round[2]  # the same order every round
    # the cell order's file is cell-major: a cell's repetitions all come before the next cell
    cell_major = [r["cell_id"] for r in in_time_order(both["cells"])]
    assert cell_major != [r["cell_id"] for r in records]
    assert [c for i, c in enumerate(cell_major) if i == 0 or c != cell_major[i - 1]] == list(dict.fromkeys(cell_major))


def test_interleaved_measures_prompt_i_of_every_cell_before_prompt_i_plus_1(both):
    records = in_time_order(both["interleaved"])
    assert len(records) == MEASUREMENTS and all(r["status"] == "ok" for r in records)
    repeats = [r["repeat"] for r in records]
    assert repeats == sorted(repeats), "round r + 1 began before round r ended"
    openers = set()
    for k in range(3):
        round_ = [r for r in records if r["repeat"] == k]
        solo = [r for r in round_ if r["cell"]["batch_size"] == 1]
        assert round_ == solo + [r for r in round_ if r["cell"]["batch_size"] > 1], "batches after batch 1"
        first, second = solo[:4], solo[4:]  # prompt 0 of each cell, then prompt 1 of each
        assert len({r["cell_id"] for r in first}) == 4 and {r["cell_id"] for r in first} == {r["cell_id"] for r in second}
        assert all(a["prompt_id"] != b["prompt_id"] for a in first for b in second if a["cell_id"] == b["cell_id"])
        openers.update({first[0]["cell_id"], second[0]["cell_id"]})
    assert len(openers) > 1  # the cells take turns going first


@pytest.mark.parametrize("order", ["rounds", "interleaved"])
def test_rounds_give_the_same_records_tokens_and_identity_as_cells(both, order):
    by_order = {
        order: {record_key(r): r for r in read_records(run / "results.jsonl")} for order, run in both.items()
    }
    assert by_order["cells"].keys() == by_order[order].keys()
    for key, record in by_order[order].items():
        other = by_order["cells"][key]
        assert record["tokens"] == other["tokens"], key
        assert record["forward_passes"] == other["forward_passes"], key
        assert record["identity_exact"] is True and other["identity_exact"] is True, key
        if record["cell"]["batch_size"] > 1:
            assert record["identity_vs_batch1_exact"] is True, key
    summary = json.loads((both[order] / "summary.json").read_text())
    assert summary, "a round-order run is summarised like any other"


@pytest.mark.parametrize("order", ["rounds", "interleaved"])
def test_a_round_order_run_killed_midway_resumes_each_measurement_once(both, tmp_path, order):
    run_dir = tmp_path / "order" / "resumed"
    run_dir.parent.mkdir(parents=True)
    shutil.copytree(both[order], run_dir)
    for name in ("summary.json", "summary.csv", "report.html"):
        (run_dir / name).unlink(missing_ok=True)
    info = json.loads((run_dir / "run.json").read_text())
    info["status"] = "running"
    (run_dir / "run.json").write_text(json.dumps(info))
    lines = (run_dir / "results.jsonl").read_bytes().splitlines(keepends=True)
    kept = len(lines) // 2 + 1  # inside round 1
    (run_dir / "results.jsonl").write_bytes(b"".join(lines[:kept]))
    before = {record_key(r): r["timestamp"] for r in read_records(run_dir / "results.jsonl")}

    assert main(["--resume", str(run_dir), "--quiet"]) == 0
    records = read_records(run_dir / "results.jsonl")
    keys = [record_key(r) for r in records]
    assert len(keys) == len(set(keys)) == MEASUREMENTS
    assert all(r["timestamp"] == before[record_key(r)] for r in records if record_key(r) in before)
    assert [r["repeat"] for r in records[kept:]] == sorted(r["repeat"] for r in records[kept:])


@pytest.mark.parametrize(
    ("measure", "words"),
    [
        ({"order": "random"}, "measure.order"),
        ({"order": "rounds", "min_duration_s": 1}, "min_duration_s"),
        ({"order": "interleaved", "min_duration_s": 1}, "min_duration_s"),
    ],
)
def test_bad_order_settings_are_one_sentence_and_write_nothing(tmp_path, capsys, measure, words):
    suite = write_suite(tmp_path, **measure)
    out = tmp_path / "reports"
    assert main([str(suite), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err
    assert not out.exists()
