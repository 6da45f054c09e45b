"""docs/metrics.md says what the vocabulary says: its tables are generated from
orthrus/results/vocabulary.py, and the committed page must be what they generate today."""

from __future__ import annotations

from orthrus.report import docs
from orthrus.results.vocabulary import AXES, METRICS


def test_the_committed_metrics_page_is_what_the_vocabulary_generates():
    text = docs.DOC.read_text(encoding="utf-8")
    assert docs.render(text) == text, "docs/metrics.md is out of date: run python -m orthrus.report.docs"


def test_every_metric_gate_name_and_axis_is_on_the_page():
    page = docs.generated()
    for metric in METRICS:
        assert f"| `{metric.column}` |" in page
        for name in metric.gate:
            assert f"`{name}`" in page
    for axis in AXES:
        assert f"| `{axis.name}` |" in page


def test_the_check_command_fails_on_a_stale_page(tmp_path, capsys):
    stale = tmp_path / "metrics.md"
    stale.write_text(docs.DOC.read_text(encoding="utf-8").replace("| `n_ok` |", "| `n_okay` |"))
    assert docs.main(["--check", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert docs.main([str(stale)]) == 0 and docs.main(["--check", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == docs.DOC.read_text(encoding="utf-8")
