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
    assert flagged[("orthrus, context_length=1024", "speedup_vs_ar")].noise == "95% CIs do not overlap"
    assert not any(cell.startswith(("ar", "dlm")) for cell, _ in flagged)  # other engines unchanged


def test_small_and_big_changes_per_metric_kind():
    def change(column, kind, a, b, **extra):
        return judge(
            column,
            kind,
            True,
            extra.pop("p90", None),
            {column: a, **extra.get("a", {})},
            {column: b, **extra.get("b", {})},
        )

    assert not change("tokens_per_forward_median", "deterministic", 2.0, 2.005).flagged
    assert change("tokens_per_forward_median", "deterministic", 2.0, 2.05).flagged
    assert change("identity_exact_rate", "identity", 1.0, 0.99).direction == "worse"
    noisy = {"a": {"e2e_ms_p90": 150.0}, "b": {"e2e_ms_p90": 170.0}}
    assert not judge(
        "e2e_ms_median",
        "latency",
        False,
        "e2e_ms_p90",
        {"e2e_ms_median": 100.0, **noisy["a"]},
        {"e2e_ms_median": 130.0, **noisy["b"]},
    ).flagged  # within a 50% p90 spread
    assert (
        judge("e2e_ms_median", "latency", False, None, {"e2e_ms_median": 100.0}, {"e2e_ms_median": 130.0}).direction
        == "worse"
    )
    overlap = {"speedup_vs_ar_ci_low": 1.5, "speedup_vs_ar_ci_high": 2.5}
    assert not judge(
        "speedup_vs_ar", "ratio", True, None, {"speedup_vs_ar": 2.0, **overlap}, {"speedup_vs_ar": 1.7, **overlap}
    ).flagged


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
