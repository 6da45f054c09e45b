"""The summary files hold the same values as those the summary wrote before its aggregations were
derived from the vocabulary (fixed records in tests/data/summary_golden, see its README): every column
the old summary had, with the same value in every row; metrics added since are new columns only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from orthrus.results.rundir import RESULTS_FILE, read_json, read_records
from orthrus.results.summary import write_summary

GOLDEN = Path(__file__).resolve().parent / "data" / "summary_golden"


@pytest.mark.parametrize("scenario", ["a", "b"])
def test_the_summary_files_are_those_of_the_old_summary(tmp_path, scenario):
    source = GOLDEN / scenario
    shutil.copy(source / RESULTS_FILE, tmp_path / RESULTS_FILE)
    write_summary(tmp_path, read_records(tmp_path / RESULTS_FILE))
    expected = sorted(p.name for p in source.iterdir() if p.name.startswith("summary"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("summary")) == expected
    for name in (n for n in expected if n.endswith(".json")):
        old, new = read_json(source / name), read_json(tmp_path / name)
        assert len(old) == len(new) and all(set(o) <= set(n) for o, n in zip(old, new)), name
        assert [{k: n[k] for k in o} for o, n in zip(old, new)] == old, name
    for name in (n for n in expected if n.endswith(".csv")):
        old, new = pd.read_csv(source / name), pd.read_csv(tmp_path / name)
        pd.testing.assert_frame_equal(new[list(old.columns)], old)
