"""The headline a reader takes as the verdict: the geometric mean of Orthrus over the fastest AR row
over every cell of the run, with its bootstrap interval, the number of cells and the scope, coloured
only when the interval excludes 1; the best and worst cells follow with theirs. The runs index shows
the same figure and lists runs newest first by when they started, not by when a file was touched."""

from __future__ import annotations

import json
import math
import os
import re

import pytest

from orthrus.report import render_index, render_run
from orthrus.report.headline import is_ar_row, verdicts
from orthrus.report.html import headlines
from orthrus.report.rundata import load_run
from tests.report_synthetic import make_run

COMPILED = ("ar-compiled", "ar", {"compile": True}, 0.7)  # a compiled ar: 30% faster than the plain one
HF = ("hf_generate", "hf_generate", {}, 1.3)


def several_ar_rows(root, name="many-ar", **kwargs):
    run = make_run(root, name, block_sizes=(4, 8), ar_variants=(COMPILED, HF), **kwargs)
    for file in ("summary.json", "summary.csv"):  # the real summary, from the records
        (run / file).unlink()
    return run


def test_the_headline_divides_by_the_fastest_ar_row_and_names_it(tmp_path):
    run = load_run(several_ar_rows(tmp_path / "reports"))
    rows = run.summary.to_dict("records")
    assert {r["series"] for r in rows if is_ar_row(r)} == {"ar", "ar-compiled", "hf_generate"}
    assert not any(is_ar_row(r) for r in rows if r["engine"] == "dlm")
    (verdict,) = verdicts(run)
    assert verdict.subject == "orthrus" and len(verdict.cells) == 6  # 3 contexts x 2 block sizes
    assert {c.ar["series"] for c in verdict.cells} == {"ar-compiled"}
    assert "(of ar, ar-compiled, hf_generate): ar-compiled in all 6 cells" in verdict.against
    # each cell is compared with the compiled ar: the summary's speedup_vs_ar (over the plain ar) is 1/0.7 higher
    for cell in verdict.cells:
        assert cell.ratio == pytest.approx(cell.row["speedup_vs_ar"] * 0.7, rel=0.05)
        assert cell.low < cell.ratio < cell.high
    assert verdict.ratio == pytest.approx(math.exp(sum(math.log(c.ratio) for c in verdict.cells) / 6))
    assert verdict.low < verdict.ratio < verdict.high
    assert verdict.scope == "orthrus, context 512, 1024, 2048, block 4, 8"


def test_the_first_card_is_the_verdict_with_its_interval_scope_best_and_worst(tmp_path):
    run = load_run(several_ar_rows(tmp_path / "reports"))
    first = headlines(run)[0]
    (verdict,) = verdicts(run)
    assert first.label == "orthrus vs fastest AR, geo. mean of 6 cells"
    assert first.value == f"{verdict.ratio:.2f}x"
    assert f"95% CI {verdict.low:.2f}-{verdict.high:.2f}x" in first.detail
    assert first.tone == "good" and verdict.low > 1 and "excludes 1" in first.detail
    assert first.lines[0] == "scope: orthrus, context 512, 1024, 2048, block 4, 8"
    assert re.match(
        r"best cell: \d\.\d\dx \[\d\.\d\d, \d\.\d\d\] at context \d+, block \d vs ar-compiled", first.lines[2]
    )
    assert first.lines[3].startswith("worst cell: ")
    html = render_run(run.path).read_text()
    assert '<div class="card good wide"><div class="label">orthrus vs fastest AR, geo. mean of 6 cells</div>' in html


def test_an_interval_that_includes_1_is_not_coloured_and_says_so(tmp_path):
    # Orthrus about as fast as AR, with noisy timings: the interval straddles 1
    run = load_run(
        make_run(tmp_path / "reports", "even", engines=("ar", "orthrus"), orthrus_slowdown=2.05, timing_noise=0.45)
    )
    (verdict,) = verdicts(run)
    assert verdict.low < 1 < verdict.high
    first = headlines(run)[0]
    assert first.tone == "" and "the interval includes 1: not distinguishable from AR" in first.detail
    slow = load_run(make_run(tmp_path / "reports", "slow", engines=("ar", "orthrus"), orthrus_slowdown=4.0))
    assert headlines(slow)[0].tone == "bad" and "slower than AR" in headlines(slow)[0].detail


def test_the_index_shows_the_verdict_and_lists_runs_by_when_they_started(tmp_path):
    root = tmp_path / "reports"
    old = several_ar_rows(root, "old")
    new = make_run(root, "new", engines=("ar", "orthrus"))
    for run, started in ((old, 1.70e9), (new, 1.75e9)):
        (run / "run.json").write_text(json.dumps({"status": "finished", "sessions": [{"started": started}]}))
    render_run(new, update_index=False)
    render_run(old, update_index=False)  # re-rendered last: its files are the newest, the run is not
    os.utime(old / "results.jsonl")
    html = render_index(root).read_text()
    assert html.index(">new<") < html.index(">old<")
    (verdict,) = verdicts(load_run(old))
    assert verdict.short() in html and "over 6 cells (orthrus vs fastest AR)" in verdict.short()
    assert "best speedup" not in html
