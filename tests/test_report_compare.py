"""compare RUN_A RUN_B: a big change is flagged, a change within noise is not, the page is written
where the last line says."""

from __future__ import annotations

from pathlib import Path

import pytest

from orthrus.report.commands import cmd_compare
from orthrus.report.compare import compare_runs, judge
from tests.report_synthetic import make_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare") / "reports"
    a = make_run(root, "before", seed=0, timing_noise=0.01)
    same = make_run(root, "rerun", timing_seed=1, timing_noise=0.01)  # same engines, other timing noise
    worse = make_run(root, "after", timing_seed=2, timing_noise=0.01, orthrus_accepted=1.5)
    return a, same, worse


def test_a_rerun_within_noise_flags_nothing(runs):
    a, same, _ = runs
    comparison = compare_runs(a, same)
    assert comparison.changes and not comparison.flagged
    assert not comparison.only_a and not comparison.only_b


def test_a_worse_diffusion_view_is_flagged_as_worse(runs):
    a, _, worse = runs
    flagged = {(c.cell, c.metric): c for c in compare_runs(a, worse).flagged}
    tpf = flagged[("orthrus, context_length=1024", "tokens_per_forward_median")]
    assert tpf.direction == "worse" and tpf.ratio < 0.9
    assert flagged[("orthrus, context_length=1024", "speedup_vs_ar")].noise.endswith("do not overlap")
    # the other engines' deterministic figures are unchanged (their times are judged by their intervals)
    assert not any(
        cell.startswith(("ar", "dlm")) for (cell, _), c in flagged.items() if c.noise.startswith(("any", "tol"))
    )


def test_small_and_big_changes_per_metric_kind():
    def change(column, kind, a, b, a_extra=None, b_extra=None, intervals=(None, None)):
        return judge(column, kind, True, {column: a, **(a_extra or {})}, {column: b, **(b_extra or {})}, intervals)

    assert not change("tokens_per_forward_median", "deterministic", 2.0, 2.005).flagged
    assert change("tokens_per_forward_median", "deterministic", 2.0, 2.05).flagged
    assert change("identity_exact_rate", "identity", 1.0, 0.99).direction == "worse"
    # wall-clock: judged against the runs' own 95% intervals, never a fixed tolerance
    overlapping = change("e2e_ms_median", "latency", 100.0, 130.0, intervals=((90.0, 125.0), (110.0, 150.0)))
    assert overlapping.judged and not overlapping.flagged and "overlap" in overlapping.noise
    apart = change("e2e_ms_median", "latency", 100.0, 130.0, intervals=((95.0, 105.0), (120.0, 140.0)))
    assert apart.flagged and apart.direction == "better"  # higher_better=True in this helper
    one_prompt = change("e2e_ms_median", "latency", 100.0, 151.0)  # no interval: one sample, no noise estimate
    assert not one_prompt.flagged and not one_prompt.judged and one_prompt.noise.startswith("cannot judge")
    overlap = {"speedup_vs_ar_ci_low": 1.5, "speedup_vs_ar_ci_high": 2.5}
    assert not change("speedup_vs_ar", "ratio", 2.0, 1.7, overlap, overlap).flagged
    apart_ci = change(
        "speedup_vs_ar",
        "ratio",
        2.0,
        1.2,
        overlap,
        {"speedup_vs_ar_ci_low": 1.1, "speedup_vs_ar_ci_high": 1.3},
    )
    assert apart_ci.flagged and apart_ci.direction == "worse"
    assert not change("speedup_vs_ar", "ratio", 1.0, 1.51).judged  # a ratio without intervals
    assert change("rss_peak_mib_max", "memory", 100.0, 106.0).flagged


def test_compare_command_prints_the_page_path_last(runs, capsys):
    a, _, worse = runs
    assert cmd_compare([str(a), str(worse)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("compare report: ")
    page = Path(lines[-1].removeprefix("compare report: "))
    assert page.is_file() and page.parent.name == "compare" and page.parent.parent.name == "reports"
    html = page.read_text()
    assert 'id="flagged-table"' in html and "tokens_per_forward_median" in html and 'class="text worse"' in html
    assert cmd_compare([str(a), str(worse), "--fail-on-worse", "--out", str(page.parent / "x.html")]) == 1
    assert cmd_compare([str(a)]) == 2
