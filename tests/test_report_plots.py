"""Every plot reads: suite labels with '$' are drawn as typed (mathtext stays off) while every tick
label, on log axes too, is a plain number; one colour per engine label across the plots of a report;
a suite's own swept parameter gets its plots; legends sit outside the data."""

from __future__ import annotations

import re

import matplotlib
import pytest

from orthrus.report.plots import PLAIN_TEXT, PLOTS, _colours, make_plots
from orthrus.report.rundata import load_run
from tests.report_synthetic import make_run

LABELS = {"orthrus": "orth$rus$ $K=8$", "dlm": r"$\mathdefault{dlm}$ 5$"}
NUMBER = re.compile(r"^-?\d+(\.\d+)?(e[+-]?\d+)?%?$")


@pytest.fixture(scope="module")
def dollar_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots") / "reports"
    return load_run(make_run(root, "dollars", block_sizes=(4, 8), labels=LABELS, near_tie_at=1024))


def drawn(run):
    """(name, figure) of every plot the run has data for, laid out as when it is saved."""
    out = []
    with matplotlib.rc_context(PLAIN_TEXT):
        for name, _, _, draw in PLOTS:
            fig = draw(run)
            if fig is not None:
                fig.canvas.draw()
                out.append((name, fig))
    return out


def tick_texts(fig):
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for label in [*axis.get_ticklabels(), *axis.get_ticklabels(minor=True)]:
                if label.get_visible() and label.get_text():
                    yield ax, axis, label.get_text()
            if axis.get_offset_text().get_text():
                yield ax, axis, axis.get_offset_text().get_text()


def test_every_tick_label_is_a_number_and_dollar_labels_are_drawn_as_typed(dollar_run):
    figures = drawn(dollar_run)
    assert len(figures) >= 8
    names = set(dollar_run.summary["series"])
    log_axes = 0
    for name, fig in figures:
        for _, axis, text in tick_texts(fig):
            log_axes += axis.get_scale() in ("log", "symlog")
            plain = text.replace("\u2212", "-")
            named = any(text == s or text.startswith(s + " (") for s in names)  # a series (and its setting)
            assert "mathdefault" not in text or named, (name, text)
            assert NUMBER.match(plain) or named, f"{name}: tick label {text!r} is not a number"
    assert log_axes > 0, "the run must exercise log-scaled axes (TTFT, throughput, quality vs speed)"
    legends = [t.get_text() for _, fig in figures for legend in fig.legends for t in legend.get_texts()]
    legends += [
        t.get_text() for _, fig in figures for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()
    ]
    for label in LABELS.values():
        assert any(text == label or text.startswith(label + " (") for text in legends), label


def test_make_plots_draws_every_plot_without_a_warning(dollar_run, tmp_path):
    plots, warnings = make_plots(dollar_run, tmp_path)
    assert warnings == []
    assert {"speedup_vs_context", "speedup_vs_block_size", "tpf_vs_block_size", "acceptance_histogram"} <= {
        p.name for p in plots
    }


def test_one_colour_per_label_in_every_plot(dollar_run):
    colours = _colours(dollar_run)
    seen: dict[str, set] = {}
    for _, fig in drawn(dollar_run):
        for ax in fig.axes:
            for line in ax.get_lines():
                label = line.get_label()
                series = next((s for s in colours if label == s or label.startswith(s + " (")), None)
                if series is not None:
                    seen.setdefault(series, set()).add(matplotlib.colors.to_hex(line.get_color()))
    assert seen and all(len(found) == 1 for found in seen.values()), seen
    assert all(found == {matplotlib.colors.to_hex(colours[s])} for s, found in seen.items())


def test_legends_of_several_panels_go_below_them(dollar_run):
    for name, fig in drawn(dollar_run):
        panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
        inside = [ax for ax in panels if ax.get_legend() is not None]
        if len(panels) > 1:
            assert not inside, f"{name}: a legend inside one of several panels"
