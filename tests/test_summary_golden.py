"""The summary files are the same, byte for byte, as those the summary wrote before its aggregations
were derived from the vocabulary: fixed records in tests/data/summary_golden (see its README)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orthrus.results.rundir import RESULTS_FILE, read_records
from orthrus.results.summary import write_summary

GOLDEN = Path(__file__).resolve().parent / "data" / "summary_golden"


@pytest.mark.parametrize("scenario", ["a", "b"])
def test_the_summary_files_are_those_of_the_old_summary(tmp_path, scenario):
    source = GOLDEN / scenario
    shutil.copy(source / RESULTS_FILE, tmp_path / RESULTS_FILE)
    write_summary(tmp_path, read_records(tmp_path / RESULTS_FILE))
    expected = sorted(p.name for p in source.iterdir() if p.name.startswith("summary"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("summary")) == expected
    for name in expected:
        assert (tmp_path / name).read_bytes() == (source / name).read_bytes(), name
