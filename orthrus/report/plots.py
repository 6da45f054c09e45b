r"""The report's figures, drawn with matplotlib's Agg canvas from a run's results files only.

Each ``plot_*`` function takes a ``RunData`` and returns a ``Figure`` or ``None`` when the run has no
data for it (a run with only ``ar`` and ``orthrus``, no GPU memory figures, no block-size sweep...).
``make_plots`` saves those that exist to ``<run>/plots/<name>.png``.

Legend entries are series (see ``rundata``); when a series was measured at several values of a
parameter that is not on the x axis (e.g. block_size in a context-length plot), each value gets its
own line, named ``series (block 16)``. A series keeps one colour in every plot of a report.

A report plots its suite's own question: a line plot against every swept parameter that takes two
values or more (context length, block size, temperature, top-p, top-k, new tokens, batch size), and
per-engine bars when nothing is swept. Text from suites (labels, options) is drawn as typed: mathtext
is off for every figure, and log axes get a plain number formatter (matplotlib's own writes mathtext,
which would then show as ``$\mathdefault{10^{2}}$``). Legends with more than a few entries go below
the panels, never over the data; layouts are constrained, so titles and labels are not clipped.

Near-ties: a divergence from the reference whose ``divergence_margin`` (the reference model's
top-1 minus top-2 logit there) is below ``NEAR_TIE_MARGIN[dtype]`` (absolute, in logits) is a
numerical near-tie rather than a real disagreement; the identity heat map counts them apart.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from orthrus.report.rundata import (
    LABEL_COLUMN,
    VOLATILE_COLUMNS,
    RunData,
    ar_counterpart,
    cell_columns,
    is_present,
    kv_overhead_bytes,
    series_label,
)
from orthrus.results.vocabulary import AR_ENGINE, AXIS, COLUMN, FIELD, METRICS

# absolute logit margins below which a divergence counts as a numerical near-tie, by dtype
NEAR_TIE_MARGIN = {"float32": 1e-3, "float64": 1e-6, "float16": 0.05, "bfloat16": 0.25}
DEFAULT_NEAR_TIE_MARGIN = 1e-3
# labels come from suites (engine labels, options): drawn as typed, never as TeX or mathtext ("a$b$c")
PLAIN_TEXT = {"text.usetex": False, "text.parse_math": False}
# summary column, panel title, unit label, scale to that unit: the vocabulary's memory sources
MEMORY_SOURCES = tuple((metric.column, metric.plot, metric.unit, metric.scale) for metric in METRICS if metric.plot)
NOT_DIMENSIONS = {
    "engine",
    "engine_options",
    "lossless",
    "series",
    "kv_overhead_bytes",
    "extra_kv_bytes",
    "extra_total_bytes",
    LABEL_COLUMN,
    *VOLATILE_COLUMNS,
}
_MARKERS = "osD^vP*Xh<>"
_STYLES = ("-", "--", ":", "-.")
_HATCHES = ("", "//", "..", "xx", "\\\\", "++", "--", "oo")


@dataclass
class PlotInfo:
    name: str
    title: str
    caption: str
    path: Path
    wide: bool = False  # two panels or more: shown across the whole page


def near_tie_margin(dtype: Any) -> float:
    return NEAR_TIE_MARGIN.get(str(dtype).replace("torch.", ""), DEFAULT_NEAR_TIE_MARGIN)


# ------------------------------------------------------------------------------------ helpers
def _figure(ncols: int = 1, nrows: int = 1, width: float = 7.5, height: float = 4.3) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * (1 if ncols == 1 else 0.62 * ncols), height * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _has(frame: pd.DataFrame, *columns: str) -> bool:
    return all(c in frame.columns for c in columns) and bool(frame[list(columns)].notna().all(axis=1).any())


def series_order(label: str) -> tuple[bool, str]:
    """AR first, then by name: the order of legends and colours."""
    return (label != AR_ENGINE, label)


def _colours(run: RunData) -> dict[str, Any]:
    """One colour per series of the run (its summary and its records), the same in every plot."""
    labels = set(run.summary["series"]) if "series" in run.summary.columns else set()
    labels |= {series_label(r["cell"]) for r in run.records if isinstance(r.get("cell"), dict)}
    ordered = sorted(labels, key=series_order)
    palette = matplotlib.colormaps["tab10" if len(ordered) <= 10 else "tab20"].colors
    return defaultdict(lambda: "gray", {label: palette[i % len(palette)] for i, label in enumerate(ordered)})


class PlainLogFormatter(ticker.LogFormatter):
    r"""Log-axis tick labels as plain numbers (``100``, ``0.5``), never mathtext: with mathtext off (labels
    from suites are drawn as typed) matplotlib's default log formatter would print ``$\mathdefault{10^{2}}$``."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:g}"


def plain_tick_labels(fig: Figure) -> None:
    """Give every log or symlog axis of ``fig`` (colour bars too) plain-number tick labels."""
    mathtext = (ticker.LogFormatterSciNotation, ticker.LogFormatterMathtext)
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() not in ("log", "symlog"):
                continue
            base = getattr(axis.get_transform(), "base", 10)
            if axis.get_scale() == "symlog":  # signed values: the decades, their signs kept
                if isinstance(axis.get_major_formatter(), mathtext):
                    axis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
                if isinstance(axis.get_minor_formatter(), mathtext):
                    axis.set_minor_formatter(ticker.NullFormatter())
                continue
            if isinstance(axis.get_major_formatter(), mathtext):
                axis.set_major_formatter(PlainLogFormatter(base, labelOnlyBase=False))
            if isinstance(axis.get_minor_formatter(), mathtext):
                axis.set_minor_formatter(PlainLogFormatter(base, labelOnlyBase=False))


def _wrap(text: str, width: int = 48) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _dimensions(frame: pd.DataFrame, x: str) -> list[str]:
    return [c for c in cell_columns(frame) if c not in NOT_DIMENSIONS and c != x]


def axis_label(param: str) -> str:
    """The vocabulary's short label of a cell parameter (``context``, ``block``, ``T``...)."""
    axis = AXIS.get(param)
    return axis.label if axis is not None else param


def _lines(frame: pd.DataFrame, x: str, y: str) -> list[tuple[str, str, int, pd.DataFrame]]:
    """(line name, series, variant index, rows sorted by x) for every line of a y-vs-x plot."""
    frame = frame[frame[x].notna() & frame[y].notna()]
    out = []
    for series in sorted(frame["series"].unique(), key=series_order):
        rows = frame[frame["series"] == series]
        dims = [d for d in _dimensions(rows, x) if rows[d].astype(str).nunique() > 1]
        if not dims:
            out.append((series, series, 0, rows.sort_values(x)))
            continue
        keys = [tuple(_short(v) for v in values) for values in rows[dims].itertuples(index=False)]
        for i, key in enumerate(sorted(set(keys), key=lambda k: tuple(_order(v) for v in k))):
            part = rows[[k == key for k in keys]]
            name = series + " (" + ", ".join(f"{axis_label(d)} {v}" for d, v in zip(dims, key)) + ")"
            out.append((name, series, i, part.sort_values(x)))
    return out


def _order(value: Any) -> tuple[int, float, str]:
    """Sort numbers numerically, then everything else as text."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _short(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _scale_x(ax: Any, values: pd.Series, discrete: bool = True) -> None:
    """Log2 axis when values are all positive and span 4x or more; a discrete axis (context, block size,
    temperature) ticks each value, 0 included."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if not len(values):
        return
    if (values > 0).all() and values.max() / values.min() >= 4:
        ax.set_xscale("log", base=2 if discrete else 10)
    if discrete:
        ticks = sorted(set(values.tolist()))
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{_short(t):g}" if isinstance(t, float) else str(t) for t in ticks])
        ax.minorticks_off()


def _scale_y(ax: Any, values: pd.Series) -> None:
    values = values[values > 0]
    if len(values) and values.max() / values.min() >= 20:
        ax.set_yscale("log")


INSIDE_LEGEND = 3  # a single panel's legend of at most this many entries stays inside it ("best" place)


def _finish(fig: Figure, axes: list, title: str) -> Figure:
    """Title, grids, legends (one, below the panels, when there are several panels or many entries,
    so that no legend covers data), plain log-axis tick labels."""
    fig.suptitle(_wrap(title, int(fig.get_figwidth() * 100 / 9.5)), fontsize=12, fontweight="bold")
    entries: dict[str, Any] = {}
    for ax in axes:
        ax.grid(True, alpha=0.3)
        panel = ax.get_position().width * fig.get_figwidth()  # inches
        ax.set_ylabel(_wrap(ax.get_ylabel(), 40), fontsize=ax.yaxis.label.get_fontsize())
        if ax.get_title():
            ax.set_title(_wrap(ax.get_title(), max(24, int(panel * 100 / 7))), fontsize=ax.title.get_fontsize())
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        if len(axes) == 1 and len(entries) <= INSIDE_LEGEND:
            axes[0].legend(fontsize=8, loc="best", framealpha=0.85)
        else:
            ncols = min(len(entries), 4 if max(len(label) for label in entries) < 30 else 2)
            fig.legend(
                list(entries.values()),
                list(entries),
                loc="outside lower center",
                ncols=ncols,
                fontsize=8,
                frameon=False,
            )
    plain_tick_labels(fig)
    return fig


def _line_plot(
    ax: Any, frame: pd.DataFrame, x: str, y: str, colours: dict[str, Any], scale: float = 1.0, band: bool = False
) -> bool:
    """One line per series (and setting); with ``band``, the column's bootstrap 95% interval shaded."""
    drawn = False
    for name, series, variant, rows in _lines(frame, x, y):
        ax.plot(
            rows[x],
            rows[y] * scale,
            marker=_MARKERS[variant % len(_MARKERS)],
            linestyle=_STYLES[variant % len(_STYLES)],
            color=colours[series],
            label=name,
            markersize=4,
        )
        low, high = f"{y}_ci_low", f"{y}_ci_high"
        if band and {low, high} <= set(rows.columns):
            shown = rows[rows[low].notna() & rows[high].notna()]
            if len(shown):
                ax.fill_between(
                    shown[x], shown[low] * scale, shown[high] * scale, color=colours[series], alpha=0.15, lw=0
                )
        drawn = True
    return drawn


# ----------------------------------------------------------------------------- the swept axes
# the parameters a suite sweeps that a line plot can take as its x axis (batch size has its own plots),
# with the x label; a plot against one is drawn when the run measured two values of it or more
SWEEP_X = (
    ("context_length", "context length (prompt tokens)"),
    ("block_size", "block size K (tokens drafted and verified per cycle)"),
    ("temperature", "sampling temperature T (0 = greedy)"),
    ("top_p", "top-p (nucleus) filter (1 = off)"),
    ("top_k", "top-k filter (0 = off)"),
    ("max_new_tokens", "new tokens per request (generation budget)"),
)
_NUMERIC_AXES = frozenset(name for name, _ in SWEEP_X) | {"batch_size"}


def swept(frame: pd.DataFrame, param: str) -> bool:
    """The run measured two or more values of ``param`` (a question the report must plot)."""
    return param in frame.columns and pd.to_numeric(frame[param], errors="coerce").dropna().nunique() > 1


def _numeric(frame: pd.DataFrame, param: str) -> pd.DataFrame:
    return frame.assign(**{param: pd.to_numeric(frame[param], errors="coerce")})


def _non_ar(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["engine"] != AR_ENGINE] if "engine" in frame.columns else frame


def _along(frame: pd.DataFrame, x: str, y: str) -> bool:
    """Some line of a y-vs-x plot has two points or more (else ``x`` varies only together with another
    parameter, e.g. top-p with the temperature, and a plot against it would be single points)."""
    return any(rows[x].nunique() > 1 for *_, rows in _lines(frame, x, y))


def _speedup_vs(run: RunData, x: str, xlabel: str) -> Figure | None:
    df = _non_ar(run.summary)
    if not swept(df, x) or not _has(df, x, COLUMN.speedup_vs_ar):
        return None
    df = _numeric(df, x)
    if not _along(df, x, COLUMN.speedup_vs_ar):
        return None
    fig, (ax,) = _figure()
    _line_plot(ax, df, x, COLUMN.speedup_vs_ar, _colours(run), band=True)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="AR (1x)")
    _scale_x(ax, df[x].dropna())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("speedup vs AR (x, geometric mean over prompts; band: 95% CI)")
    return _finish(fig, [ax], f"Speedup over autoregressive decoding vs {xlabel.split(' (')[0]}")


def _tpf_acceptance(run: RunData, x: str, xlabel: str) -> Figure | None:
    df = run.summary
    if not swept(df, x):
        return None
    df = _numeric(df, x)
    panels = [
        (c, label)
        for c, label in (
            (COLUMN.tokens_per_forward_median, "tokens per forward pass (median)"),
            (COLUMN.acceptance_length_mean, "accepted drafts per cycle (mean per request)"),
        )
        if _has(df, x, c) and _along(df, x, c)
    ]
    if not panels:
        return None
    fig, axes = _figure(ncols=len(panels))
    colours = _colours(run)
    for ax, (column, label) in zip(axes, panels):
        _line_plot(ax, df, x, column, colours)
        few_lines = len(_lines(df, x, column)) <= 4
        if (
            column == COLUMN.acceptance_length_mean
            and few_lines
            and _has(df, x, COLUMN.acceptance_length_token_weighted)
        ):
            for name, series, _, rows in _lines(df, x, COLUMN.acceptance_length_token_weighted):
                ax.plot(
                    rows[x],
                    rows[COLUMN.acceptance_length_token_weighted],
                    linestyle=":",
                    linewidth=2.2,
                    color=colours[series],
                    alpha=0.7,
                    label=f"{name}, token-weighted",
                )
        _scale_x(ax, df[x].dropna())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
    return _finish(fig, axes, f"Tokens per forward and accepted drafts vs {xlabel.split(' (')[0]}")


# -------------------------------------------------------------------------------------- plots
def plot_throughput_vs_context(run: RunData) -> Figure | None:
    df = run.summary
    if not swept(df, "context_length") or not _has(df, "context_length", COLUMN.decode_tokens_per_s_median):
        return None
    fig, (ax,) = _figure()
    _line_plot(ax, df, "context_length", COLUMN.decode_tokens_per_s_median, _colours(run))
    _scale_x(ax, df["context_length"].dropna())
    _scale_y(ax, df[COLUMN.decode_tokens_per_s_median].dropna())
    ax.set_xlabel("context length (prompt tokens)")
    ax.set_ylabel("decode throughput (tokens/s, median)")
    return _finish(fig, [ax], "Decode throughput vs context length")


def plot_by_engine(run: RunData) -> Figure | None:
    """Nothing swept (one setting per engine, e.g. a dataset suite): speedup and TPF per engine."""
    df = run.summary
    if any(swept(df, param) for param in _NUMERIC_AXES) or "series" not in df.columns:
        return None
    panels = [
        (c, label)
        for c, label in (
            (COLUMN.speedup_vs_ar, "speedup vs AR (x, geometric mean over prompts; bars: 95% CI)"),
            (COLUMN.tokens_per_forward_median, "tokens per forward pass (median)"),
        )
        if _has(df, c)
    ]
    if not panels:
        return None
    fig, axes = _figure(ncols=len(panels))
    colours = _colours(run)
    for ax, (column, label) in zip(axes, panels):
        rows = df[df[column].notna()].copy()
        rows["_order"] = [series_order(s) for s in rows["series"]]
        rows = rows.sort_values("_order")
        names = [f"{s} ({i})" if list(rows["series"]).count(s) > 1 else s for i, s in enumerate(rows["series"])]
        values = rows[column].to_numpy(dtype=float)
        ax.barh(names, values, color=[colours[s] for s in rows["series"]])
        low, high = f"{column}_ci_low", f"{column}_ci_high"
        if {low, high} <= set(rows.columns):
            lows, highs = rows[low].to_numpy(dtype=float), rows[high].to_numpy(dtype=float)
            known = ~(np.isnan(lows) | np.isnan(highs))
            errors = np.vstack([np.where(known, values - lows, 0), np.where(known, highs - values, 0)])
            ax.errorbar(values, names, xerr=errors, fmt="none", ecolor="black", capsize=3, linewidth=1)
        if column == COLUMN.speedup_vs_ar:
            ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
        ax.invert_yaxis()
        ax.set_xlabel(label)
    return _finish(fig, axes, "Speedup and tokens per forward by engine (one setting, nothing swept)")


def _position_counts(records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled over the records' cycles, for each draft position j (index j-1): cycles that drafted j,
    those that accepted j (a >= j), and those that reached j (drafted j and accepted j-1: a >= j-1)."""
    drafted_all: list[int] = []
    accepted_all: list[int] = []
    for r in records:
        accepted = r.get("accepted_per_cycle") or []
        drafted = r.get("drafted_per_cycle") or [max(accepted, default=0)] * len(accepted)
        drafted_all.extend(int(d) for d in drafted)
        accepted_all.extend(int(a) for a in accepted)
    width = max(drafted_all, default=0)
    d, a = np.asarray(drafted_all), np.asarray(accepted_all)
    tried = np.array([np.sum(d >= j) for j in range(1, width + 1)])
    kept = np.array([np.sum((d >= j) & (a >= j)) for j in range(1, width + 1)])
    reached = np.array([np.sum((d >= j) & (a >= j - 1)) for j in range(1, width + 1)])
    return tried, kept, reached


def _drafting_groups(run: RunData) -> dict[str, list[dict[str, Any]]]:
    """The ok records of drafting engines, one group per series and setting (every cell parameter that
    varies over the run but the context: block size, temperature, top-p...), pooled over contexts."""
    records = [r for r in _ok_records(run) if r.get("accepted_per_cycle")]
    if not records:
        return {}
    cells = pd.DataFrame([r["cell"] for r in records])
    params = [
        c
        for c in cells.columns
        if c not in NOT_DIMENSIONS and c != "context_length" and cells[c].astype(str).nunique() > 1
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    order: dict[str, tuple] = {}
    for r in records:
        series = series_label(r["cell"])
        setting = ", ".join(
            f"{axis_label(p)} {_short(r['cell'].get(p))}" for p in params if is_present(r["cell"].get(p))
        )
        name = f"{series} ({setting})" if setting else series
        groups.setdefault(name, []).append(r)
        order[name] = (series_order(series), *(_order(r["cell"].get(p)) for p in params))
    return dict(sorted(groups.items(), key=lambda item: order[item[0]]))


FEW_CYCLES = 10  # a per-position rate over fewer cycles is drawn hollow: hardly an estimate


def plot_acceptance_by_position(run: RunData) -> Figure | None:
    groups = _drafting_groups(run)
    if not groups:
        return None
    fig, axes = _figure(ncols=2)
    colours = _colours(run)
    contexts = sorted({_short(r["cell"].get("context_length")) for g in groups.values() for r in g}, key=_order)
    for i, (name, records) in enumerate(groups.items()):
        tried, kept, reached = _position_counts(records)
        positions = np.arange(1, len(tried) + 1)
        colour = colours[series_label(records[0]["cell"])]
        for ax, rate, counts in (
            (axes[0], kept / np.maximum(tried, 1), tried),
            (axes[1], kept / np.maximum(reached, 1), reached),
        ):
            shown = counts > 0
            style = {"color": colour, "linestyle": _STYLES[i % len(_STYLES)], "markersize": 4}
            ax.plot(positions[shown], rate[shown], marker=_MARKERS[i % len(_MARKERS)], label=name, **style)
            few = shown & (counts < FEW_CYCLES)
            if few.any():
                ax.plot(positions[few], rate[few], "o", mfc="white", color=colour, markersize=6)
    scope = ", ".join(str(c) for c in contexts if is_present(c))
    axes[0].set_title("unconditional u_j = P(a >= j): cycles accepting j / cycles drafting j", fontsize=10)
    axes[1].set_title("conditional c_j = P(a >= j | a >= j-1): given draft j-1 was accepted", fontsize=10)
    for ax in axes:
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("draft position j in the block (1 = first drafted token)")
        ax.set_ylabel("acceptance (fraction of cycles)")
    title = "Per-position acceptance, pooled over every cycle of the run"
    title += f" (contexts {scope})" if len(contexts) > 1 else ""
    return _finish(fig, axes, title + f"; hollow: fewer than {FEW_CYCLES} cycles")


MAX_HISTOGRAMS = 20
HISTOGRAM_COLUMNS = 5


def plot_acceptance_histogram(run: RunData) -> Figure | None:
    """Per cell of a drafting engine: how many drafts each cycle accepted (0 .. K-1), as a fraction of
    the cell's cycles, with the per-request means' spread and the counts it stands on. One row of
    panels per series, one panel per setting (context, block size, temperature...)."""
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for r in _ok_records(run):
        if r.get("accepted_per_cycle"):
            by_cell.setdefault(str(r.get("cell_id")), []).append(r)
    if not by_cell:
        return None
    cells_frame = pd.DataFrame([records[0]["cell"] for records in by_cell.values()])
    varying = [
        c
        for c in cells_frame.columns
        if c not in NOT_DIMENSIONS and not c.endswith("_path") and cells_frame[c].astype(str).nunique() > 1
    ]
    by_series: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for records in by_cell.values():
        by_series[series_label(records[0]["cell"])].append(records)
    layout: list[list[list[dict[str, Any]]]] = []  # rows of panels
    for series in sorted(by_series, key=series_order):
        cells = sorted(by_series[series], key=lambda rs: tuple(_order(rs[0]["cell"].get(p)) for p in varying))
        layout += [cells[i : i + HISTOGRAM_COLUMNS] for i in range(0, len(cells), HISTOGRAM_COLUMNS)]
    shown = 0
    rows_kept = []
    for row in layout:
        if shown + len(row) > MAX_HISTOGRAMS:
            break
        rows_kept.append(row)
        shown += len(row)
    ncols = max(len(row) for row in rows_kept)
    width = max(9.0, 2.7 * ncols) / (0.62 * ncols) if ncols > 1 else 6.0  # across the page: small panels read
    fig, axes = _figure(ncols=ncols, nrows=len(rows_kept), width=width, height=2.5)
    grid = [axes[i * ncols : (i + 1) * ncols] for i in range(len(rows_kept))]
    colours = _colours(run)
    used = []
    for panel_row, row in zip(grid, rows_kept):
        for column, (ax, records) in enumerate(zip(panel_row, row)):
            cell = records[0]["cell"]
            accepted = np.array([a for r in records for a in r["accepted_per_cycle"]], dtype=int)
            block = records[0].get("block_size") or cell.get("block_size")
            width = int(block) if is_present(block) else int(accepted.max()) + 1
            counts = np.bincount(accepted, minlength=width)
            ax.bar(np.arange(len(counts)), counts / counts.sum(), color=colours[series_label(cell)], width=0.85)
            per_request = [float(np.mean(r["accepted_per_cycle"])) for r in records]
            ax.axvline(float(accepted.mean()), color="black", linewidth=1, linestyle="--")
            where = ", ".join(f"{axis_label(p)} {_short(cell.get(p))}" for p in varying if is_present(cell.get(p)))
            ax.set_title(where or series_label(cell), fontsize=9)
            ax.text(
                0.97,
                0.96,
                f"{len(accepted)} cycles, {len(records)} requests\nmean {accepted.mean():.2f}, "
                f"per request {min(per_request):.2f}-{max(per_request):.2f}",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=7,
            )
            ax.set_xlabel("drafts accepted in a cycle", fontsize=8)
            ax.set_ylabel(f"{series_label(cell)}: fraction of cycles" if column == 0 else "", fontsize=8)
            ax.set_ylim(0, 1.2)
            used.append(ax)
        for ax in panel_row[len(row) :]:
            ax.set_visible(False)
    more = f" (the first {shown} of {len(by_cell)} cells)" if shown < len(by_cell) else ""
    return _finish(fig, used, f"Drafts accepted per cycle, per cell; dashed: the cell's mean{more}")


def plot_chosen_blocks(run: RunData) -> Figure | None:
    """block_size: auto: per cell, the fraction of steps at each K it chose (1: a plain AR step), and the
    mean K chosen against batch size (one line per context), so "does K follow the load" is seen."""
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for r in _ok_records(run):
        if r.get(FIELD.chosen_blocks):
            by_cell.setdefault(str(r.get("cell_id")), []).append(r)
    if not by_cell:
        return None
    cells = []
    for records in by_cell.values():
        cell = records[0]["cell"]
        blocks = np.array([k for r in records for k in r[FIELD.chosen_blocks]], dtype=int)
        cells.append((cell, blocks))
    cells.sort(
        key=lambda c: (
            series_order(series_label(c[0])),
            _order(c[0].get("batch_size")),
            _order(c[0].get("context_length")),
        )
    )
    values = sorted({int(k) for _, blocks in cells for k in blocks})
    fig, (left, right) = _figure(ncols=2, width=12.0, height=max(3.5, 0.32 * len(cells) + 1.5))
    cmap = matplotlib.colormaps["viridis"].resampled(max(len(values), 2))
    names = []
    for y, (cell, blocks) in enumerate(cells):
        start = 0.0
        for i, k in enumerate(values):
            share = float(np.mean(blocks == k))
            left.barh(y, share, left=start, color=cmap(i), label=f"K = {k}" if y == 0 else None, height=0.8)
            start += share
        names.append(
            f"{series_label(cell)}, B {_short(cell.get('batch_size'))}, ctx {_short(cell.get('context_length'))}"
        )
    left.set_yticks(range(len(cells)), [_wrap(n, 34) for n in names], fontsize=7)
    left.invert_yaxis()
    left.set_xlabel("fraction of steps")
    left.set_xlim(0, 1)
    left.set_title("K chosen per step (K = 1: a plain AR step)", fontsize=9)
    contexts = sorted({c.get("context_length") for c, _ in cells}, key=_order)
    for i, context in enumerate(contexts):
        points = sorted(
            (float(c.get("batch_size") or 1), float(blocks.mean()))
            for c, blocks in cells
            if c.get("context_length") == context
        )
        right.plot(
            [x for x, _ in points],
            [y for _, y in points],
            marker="o",
            label=f"context {_short(context)}",
            color=matplotlib.colormaps["tab10"](i % 10),
        )
    right.set_xscale("log", base=2)
    right.set_xlabel("batch size")
    right.set_ylabel("mean K chosen per step")
    right.set_title("The chosen K against batch size and context", fontsize=9)
    return _finish(fig, [left, right], "Block size chosen by block_size: auto")


def _kv_overhead(df: pd.DataFrame) -> pd.DataFrame:
    """``kv_overhead_bytes`` for the rows measured on the model of their AR counterpart (the same model:
    a DLM's cache of another model is not an overhead over AR's), NaN elsewhere and for AR itself."""
    rows = df.to_dict("records")
    values = []
    for row in rows:
        ar = ar_counterpart(df, row) if row.get("engine") != AR_ENGINE else None
        same_model = ar is not None and (not is_present(row.get("model")) or row.get("model") == ar.get("model"))
        value = kv_overhead_bytes(df, row) if same_model else None
        values.append(np.nan if value is None else value)
    return df.assign(kv_overhead_bytes=values)


def _zero_lines(ax: Any, df: pd.DataFrame, column: str, scale: float) -> str:
    """A panel of overheads where a few lines are far above the rest: a symlog axis, so that the small
    ones (Orthrus's 0) are not flattened onto one another; returns a note naming the series that are 0
    everywhere (for the panel's title: a note inside the panel could cover a line)."""
    rows = df[df[column].notna()]
    values = (rows[column] * scale).abs()
    nonzero = values[values > 0]
    if len(nonzero) and (values == 0).any() and nonzero.max() / max(nonzero.min(), 1e-9) >= 20:
        ax.set_yscale("symlog", linthresh=10 ** math.floor(math.log10(max(float(nonzero.min()), 1.0))))
    zero = [name for name, part in rows.groupby("series") if (part[column] == 0).all()]
    return "0 at every context: " + ", ".join(sorted(zero, key=series_order)) if zero else ""


def plot_extra_memory(run: RunData) -> Figure | None:
    """Memory each method adds beyond AR on the same model, against context: the weights it adds
    (Orthrus's diffusion view, a drafter, a draft model) plus the K/V it holds beyond AR's (its target
    cache's excess and a drafter's own cache). Left: weights + K/V; right: the K/V part alone, where
    "O(1) in the context" against "grows with the context" is seen, not asserted."""
    df = run.summary
    if not swept(df, "context_length") or "engine" not in df.columns or not (df["engine"] == AR_ENGINE).any():
        return None
    if not _has(df, "context_length", COLUMN.extra_parameter_bytes):
        return None
    df = _kv_overhead(df)
    kv = df["kv_overhead_bytes"]
    draft = df[COLUMN.draft_kv_cache_bytes_peak_max] if COLUMN.draft_kv_cache_bytes_peak_max in df.columns else 0.0
    kv_extra = kv + pd.Series(draft, index=df.index).fillna(0.0)
    df = df.assign(extra_kv_bytes=kv_extra, extra_total_bytes=kv_extra + df[COLUMN.extra_parameter_bytes])
    df = df[(df["engine"] != AR_ENGINE) & df["extra_total_bytes"].notna()]
    if df.empty:
        return None
    fig, (left, right) = _figure(ncols=2, width=12.0, height=4.0)
    colours = _colours(run)
    for ax, column, title in (
        (left, "extra_total_bytes", "weights added + K/V beyond AR's"),
        (right, "extra_kv_bytes", "K/V beyond AR's (target cache + a drafter's own)"),
    ):
        _line_plot(ax, df, "context_length", column, colours, 1 / 2**20)
        _scale_x(ax, df["context_length"].dropna())
        note = _zero_lines(ax, df, column, 1 / 2**20)
        ax.set_title(f"{title}\n{note}" if note else title, fontsize=10)
        ax.set_xlabel("context length (prompt tokens)")
        ax.set_ylabel("extra memory (MiB)")
    return _finish(fig, [left, right], "Extra memory beyond AR, per method (exact: from tensors and weights)")


def plot_memory_vs_context(run: RunData) -> Figure | None:
    df = run.summary
    if not swept(df, "context_length"):
        return None
    sources = [s for s in MEMORY_SOURCES if _has(df, "context_length", s[0])]
    if not sources:
        return None
    if sources[0][0] == COLUMN.kv_cache_bytes_peak_max and "engine" in df.columns and (df["engine"] == AR_ENGINE).any():
        df = _kv_overhead(df)
        if _has(df, "context_length", "kv_overhead_bytes"):
            title = "KV cache beyond AR's at the same context (engines on AR's model)"
            sources.insert(1, ("kv_overhead_bytes", title, "KiB", 1 / 2**10))
    ncols = min(3, len(sources))
    nrows = math.ceil(len(sources) / ncols)
    fig, axes = _figure(ncols=ncols, nrows=nrows, height=3.8)
    colours = _colours(run)
    for ax, (column, title, unit, scale) in zip(axes, sources):
        _line_plot(ax, df, "context_length", column, colours, scale)
        _scale_x(ax, df["context_length"].dropna())
        note = _zero_lines(ax, df, column, scale) if column == "kv_overhead_bytes" else ""
        ax.set_title(f"{title}\n{note}" if note else title, fontsize=10)
        ax.set_xlabel("context length (prompt tokens)")
        ax.set_ylabel(f"peak ({unit})")
    for ax in axes[len(sources) :]:
        ax.set_visible(False)
    return _finish(fig, axes[: len(sources)], "Memory vs context length, by source (each over the timed region only)")


def _ok_records(run: RunData) -> list[dict[str, Any]]:
    return [r for r in run.records if r.get("status", "ok") == "ok" and isinstance(r.get("cell"), dict)]


LINEAR_MS = 1.0  # the ITL axis is linear below this many ms (the zeros of a block committed at once) and log above


def plot_latency_cdfs(run: RunData) -> Figure | None:
    ttft: dict[str, list[float]] = defaultdict(list)
    itl: dict[str, list[float]] = defaultdict(list)
    for record in _ok_records(run):
        series = series_label(record["cell"])
        if is_present(record.get(FIELD.ttft_ms)):
            ttft[series].append(float(record[FIELD.ttft_ms]))
        if isinstance(record.get(FIELD.itl_ms), list):
            itl[series].extend(float(v) for v in record[FIELD.itl_ms] if is_present(v))
    panels = [
        (d, t, x)
        for d, t, x in (
            (ttft, "time to first token", "TTFT (ms)"),
            (itl, "inter-token latency (0 = committed with the previous token)", "ITL (ms)"),
        )
        if d
    ]
    if not panels:
        return None
    fig, axes = _figure(ncols=len(panels))
    colours = _colours(run)
    for ax, (data, title, xlabel) in zip(axes, panels):
        for series in sorted(data, key=series_order):
            values = np.sort(np.asarray(data[series]))
            ax.step(
                values,
                np.arange(1, len(values) + 1) / len(values),
                where="post",
                color=colours[series],
                label=series,
            )
        pooled = np.concatenate([np.asarray(v) for v in data.values()])
        positive = pooled[pooled > 0]
        wide = len(positive) and positive.max() / max(np.median(positive), 1e-9) >= 20
        if data is ttft and len(positive) and positive.max() / positive.min() >= 20:
            ax.set_xscale("log")
        elif data is itl and wide:  # one engine's long gaps would flatten every other engine to a vertical line
            ax.set_xscale("symlog", linthresh=LINEAR_MS, linscale=0.5)
            xlabel = f"{xlabel}, log scale above {LINEAR_MS:g} ms"
        sizes = {len(v) for v in data.values()}
        counts = (
            f"{sizes.pop():,} per engine"
            if len(sizes) == 1
            else ", ".join(f"{s} {len(data[s]):,}" for s in sorted(data, key=series_order))
        )
        ax.set_title(f"{title}; n = {counts}", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction of values <= x")
        ax.set_ylim(0, 1.02)
    return _finish(fig, axes, "Latency distributions (CDF over prompts and repetitions)")


def plot_quality_vs_speed(run: RunData) -> Figure | None:
    df = run.summary
    panels = [
        (c, label)
        for c, label in (
            (COLUMN.identity_exact_rate, "identical to reference (fraction)"),
            (COLUMN.match_fraction_mean, "matching tokens (fraction)"),
            (COLUMN.ar_nll_mean, "AR-model NLL of output (nats/token)"),
        )
        if _has(df, COLUMN.decode_tokens_per_s_median, c)
    ]
    if not panels:
        return None
    fig, axes = _figure(ncols=len(panels))
    colours = _colours(run)
    for ax, (column, label) in zip(axes, panels):
        rows = df[df[COLUMN.decode_tokens_per_s_median].notna() & df[column].notna()]
        for series, part in sorted(rows.groupby("series", sort=True), key=lambda item: series_order(item[0])):
            ax.scatter(
                part[COLUMN.decode_tokens_per_s_median],
                part[column],
                color=colours[series],
                marker=_MARKERS[sorted(colours, key=series_order).index(series) % len(_MARKERS)],
                label=series,
                s=28,
                alpha=0.85,
            )
        _scale_x(ax, rows[COLUMN.decode_tokens_per_s_median], discrete=False)
        ax.set_xlabel("decode throughput (tokens/s, median)")
        ax.set_ylabel(label)
    return _finish(fig, axes, "Quality vs speed (each point is one cell)")


def heatmap_x(df: pd.DataFrame) -> str:
    """The identity heat map's columns: the context when it is swept, else the first swept parameter."""
    for param, _ in SWEEP_X:
        if swept(df, param):
            return param
    return "context_length"


def _row_names(rows: pd.DataFrame, x: str) -> list[str]:
    """Per summary row, its series and the settings that vary within that series besides ``x``
    (``orthrus (T 0.7, top-p 0.95)``): a heat map row never averages settings together."""
    names = []
    dims_of = {
        series: [d for d in _dimensions(part, x) if part[d].astype(str).nunique() > 1]
        for series, part in rows.groupby("series")
    }
    for row in rows.to_dict("records"):
        dims = dims_of[row["series"]]
        setting = ", ".join(f"{axis_label(d)} {_short(row.get(d))}" for d in dims if is_present(row.get(d)))
        names.append(f"{row['series']} ({setting})" if setting else str(row["series"]))
    return names


def identity_grid(run: RunData) -> pd.DataFrame | None:
    """One row per (series and setting, x): exact rate, divergences split into near-ties and real
    ones. ``x`` is ``heatmap_x`` (the context, unless another parameter is swept and the context is
    not); the column is called ``context`` for either, and is "-" for a cell without that parameter
    (AR in a block-size sweep). ``series`` is the row's name: the label, plus any other setting that
    varies within that label (block size, temperature...), so that no two settings are averaged."""
    df = run.summary
    if not _has(df, COLUMN.identity_exact_rate):
        return None
    x = heatmap_x(df)
    rows = df[df[COLUMN.identity_exact_rate].notna()]
    values = rows[x].map(lambda v: v if is_present(v) else "-") if x in rows.columns else pd.Series(0, rows.index)
    rows = rows.assign(_context=values, _name=_row_names(rows, x))
    grid = []
    by_cell: dict[str, dict[str, Any]] = {}
    for (name, context), part in rows.groupby(["_name", "_context"], sort=True):
        entry = {
            "series": name,
            "context": context,
            "exact_rate": float(part[COLUMN.identity_exact_rate].mean()),
            "near_ties": 0,
            "real": 0,
            "unknown": 0,
            "margin_median": part[COLUMN.divergence_margin_median].median()
            if COLUMN.divergence_margin_median in part.columns
            else np.nan,
            "dtype": part["dtype"].iloc[0] if "dtype" in part.columns else None,
        }
        grid.append(entry)
        for cell_id in part["cell_id"] if "cell_id" in part.columns else ():
            by_cell[str(cell_id)] = entry
    counted = set()
    for record in _ok_records(run):
        if record.get(FIELD.identity_exact) is not False:
            continue
        entry = by_cell.get(str(record.get("cell_id")))
        if entry is None:
            continue
        counted.add(id(entry))
        margin = record.get(FIELD.divergence_margin)
        if not is_present(margin):
            entry["unknown"] += 1
        elif float(margin) < near_tie_margin(record["cell"].get("dtype")):
            entry["near_ties"] += 1
        else:
            entry["real"] += 1
    for entry in grid:  # no per-record data: judge the cell by its median margin
        if id(entry) not in counted and entry["exact_rate"] < 1 and is_present(entry["margin_median"]):
            kind = "near_ties" if entry["margin_median"] < near_tie_margin(entry["dtype"]) else "real"
            entry[kind] = -1  # -1: "some", count unknown
    return pd.DataFrame(grid)


def plot_identity_heatmap(run: RunData) -> Figure | None:
    grid = identity_grid(run)
    if grid is None or grid.empty:
        return None
    series = sorted(grid["series"].unique(), key=series_order)
    contexts = sorted(grid["context"].unique(), key=_order)
    matrix = np.full((len(series), len(contexts)), np.nan)
    longest = max(len(str(name)) for name in series)
    width = max(6.0, 0.9 * len(contexts) + 3 + 0.06 * max(0, longest - 12))
    fig, (ax,) = _figure(width=width, height=max(2.6, 0.55 * len(series) + 1.8))
    for entry in grid.to_dict("records"):
        matrix[series.index(entry["series"]), contexts.index(entry["context"])] = entry["exact_rate"]
    image = ax.imshow(matrix, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for entry in grid.to_dict("records"):
        i, j = series.index(entry["series"]), contexts.index(entry["context"])
        text = f"{entry['exact_rate']:.0%}"
        ties, real = entry["near_ties"], entry["real"]
        if ties or real or entry["unknown"]:
            text += "\n" + " ".join(
                part
                for part in (
                    f"{'some' if ties < 0 else ties} near-tie" if ties else "",
                    f"{'some' if real < 0 else real} real" if real else "",
                    f"{entry['unknown']} ?" if entry["unknown"] else "",
                )
                if part
            )
        if (ties and not real and not entry["unknown"]) and entry["exact_rate"] < 1:
            ax.add_patch(_hatch(j, i))
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black")
    ax.set_xticks(range(len(contexts)))
    ax.set_xticklabels([f"{_short(c):g}" if isinstance(c, float) else str(_short(c)) for c in contexts])
    ax.set_yticks(range(len(series)))
    ax.set_yticklabels(series)
    ax.set_xlabel(dict(SWEEP_X).get(heatmap_x(run.summary), "context length (prompt tokens)"))
    cbar = fig.colorbar(image, ax=ax)
    cbar.set_label("identical to reference (fraction)")
    ax.set_title("hatched: every divergence is a numerical near-tie", fontsize=9)
    return _finish(fig, [], "Output identity vs the reference engine")


# ------------------------------------------------------------------------------ batch sweeps
def _batched(run: RunData) -> pd.DataFrame | None:
    """The summary rows with a batch size, when the run has more than one batch size (else None)."""
    df = run.summary
    if "batch_size" not in df.columns or COLUMN.n_ok not in df.columns:
        return None
    df = df[df["batch_size"].notna() & (df[COLUMN.n_ok].fillna(0) > 0)]
    return df if df["batch_size"].nunique() > 1 else None


def _panels_vs_batch(
    run: RunData, panels: list[tuple[str, str]], title: str, reference_line: float | None = None
) -> Figure | None:
    """One panel per (column, y label) against batch size; each line one series (and setting)."""
    df = _batched(run)
    if df is None:
        return None
    panels = [(c, label) for c, label in panels if _has(df, "batch_size", c) and _along(df, "batch_size", c)]
    if not panels:
        return None
    fig, axes = _figure(ncols=len(panels))
    colours = _colours(run)
    for ax, (column, label) in zip(axes, panels):
        for name, series, variant, rows in _lines(df, "batch_size", column):
            ax.plot(
                rows["batch_size"],
                rows[column],
                marker=_MARKERS[variant % len(_MARKERS)],
                linestyle=_STYLES[variant % len(_STYLES)],
                color=colours[series],
                label=name,
                markersize=4,
            )
            low, high = f"{column}_ci_low", f"{column}_ci_high"
            if {low, high} <= set(rows.columns):
                band = rows[rows[low].notna() & rows[high].notna()]
                if len(band):
                    ax.fill_between(band["batch_size"], band[low], band[high], color=colours[series], alpha=0.15, lw=0)
        if reference_line is not None:
            ax.axhline(reference_line, color="black", linewidth=1, linestyle="--")
        _scale_x(ax, df["batch_size"].dropna())
        ax.set_xlabel("batch size (rows decoded together)")
        ax.set_ylabel(label)
    return _finish(fig, axes, title)


def plot_throughput_vs_batch(run: RunData) -> Figure | None:
    return _panels_vs_batch(
        run,
        [
            (COLUMN.batch_tokens_per_s_median, "total throughput (new tokens/s over the batch, median)"),
            (COLUMN.batch_tokens_per_s_vs_batch1, "throughput / the same engine at batch 1"),
        ],
        "Throughput vs batch size",
    )


def plot_speedup_vs_batch(run: RunData) -> Figure | None:
    df = _batched(run)
    if df is None or "engine" not in df.columns or (df["engine"] != "ar").sum() == 0:
        return None
    return _panels_vs_batch(
        dataclasses.replace(run, summary=run.summary[run.summary["engine"] != "ar"]),
        [
            (COLUMN.speedup_vs_ar, "speedup vs AR per request (geo. mean; band = 95% CI)"),
            (COLUMN.throughput_speedup_vs_ar, "speedup vs AR per batch (throughput; band = 95% CI)"),
        ],
        "Speedup over AR at the same batch size",
        reference_line=1.0,
    )


def plot_tpf_vs_batch(run: RunData) -> Figure | None:
    return _panels_vs_batch(
        run,
        [
            (COLUMN.tokens_per_forward_median, "tokens per forward pass (median per row)"),
            (COLUMN.tokens_per_forward_vs_batch1, "TPF / the same engine at batch 1 (flat = 1)"),
            (COLUMN.wasted_row_pass_fraction_mean, "row-passes wasted on finished rows (fraction)"),
        ],
        "Tokens per forward vs batch size (batching must not change acceptance)",
    )


def plot_latency_vs_batch(run: RunData) -> Figure | None:
    return _panels_vs_batch(
        run,
        [
            (COLUMN.ttft_ms_median, "TTFT per request (ms, median)"),
            (COLUMN.tpot_ms_median, "time per output token per request (ms, median)"),
            (COLUMN.e2e_ms_median, "end-to-end per request (ms, median)"),
        ],
        "Per-request latency vs batch size",
    )


def batch_identity_table(run: RunData) -> pd.DataFrame | None:
    """Per batched cell: identity against solo AR and against the same engine at batch 1, with every
    divergence judged by the reference's top-1 minus top-2 logit margin (near-tie or real)."""
    df = _batched(run)
    if df is None:
        return None
    out = []
    records = [r for r in _ok_records(run) if r.get("batch_id") is not None]
    for row in df.to_dict("records"):
        mine = [r for r in records if r.get("cell_id") == row.get("cell_id")]
        entry = {
            "series": row["series"],
            "context": row.get("context_length"),
            "batch_size": int(row["batch_size"]),
            "rows": len(mine),
            "identical_to_ar": row.get(COLUMN.identity_exact_rate),
            "identical_to_batch1": row.get(COLUMN.identity_vs_batch1_rate),
        }
        for prefix, exact, margin in (
            ("ar", FIELD.identity_exact, FIELD.divergence_margin),
            ("batch1", FIELD.identity_vs_batch1_exact, FIELD.divergence_margin_vs_batch1),
        ):
            ties = real = unknown = 0
            for r in mine:
                if r.get(exact) is not False:
                    continue
                value = r.get(margin)
                if not is_present(value):
                    unknown += 1
                elif float(value) < near_tie_margin(r["cell"].get("dtype")):
                    ties += 1
                else:
                    real += 1
            entry[f"near_ties_vs_{prefix}"], entry[f"real_vs_{prefix}"], entry[f"unjudged_vs_{prefix}"] = (
                ties,
                real,
                unknown,
            )
        out.append(entry)
    frame = pd.DataFrame(out)
    return frame.sort_values(["series", "context", "batch_size"], key=lambda c: c.map(_order)) if len(frame) else None


def plot_batch_identity(run: RunData) -> Figure | None:
    table = batch_identity_table(run)
    if table is None or not table[["identical_to_ar", "identical_to_batch1"]].notna().any().any():
        return None
    fig, axes = _figure(ncols=2)
    colours = _colours(run)
    for ax, (column, what, prefix) in zip(
        axes,
        (("identical_to_ar", "solo AR", "ar"), ("identical_to_batch1", "the same engine at batch 1", "batch1")),
    ):
        frame = table.rename(columns={"batch_size": "x"})
        for i, ((series, context), rows) in enumerate(frame.groupby(["series", "context"], sort=True, dropna=False)):
            rows = rows[rows[column].notna()].sort_values("x")
            if not len(rows):
                continue
            ax.plot(
                rows["x"],
                rows[column],
                marker=_MARKERS[i % len(_MARKERS)],
                linestyle=_STYLES[i % len(_STYLES)],
                color=colours.get(series),
                label=f"{series} (context {_short(context)})",
                markersize=4,
            )
            low, high = table["batch_size"].min(), table["batch_size"].max()
            for x, y, ties, real in zip(
                rows["x"], rows[column], rows[f"near_ties_vs_{prefix}"], rows[f"real_vs_{prefix}"]
            ):
                if ties or real:  # above the point, kept inside the panel at its edges
                    ax.annotate(
                        f"{ties} near-tie, {real} real",
                        (x, y),
                        fontsize=7,
                        textcoords="offset points",
                        xytext=(0, 5),
                        ha="left" if x == low else "right" if x == high else "center",
                        va="bottom",
                    )
        ax.set_ylim(-0.05, 1.12)
        _scale_x(ax, table["batch_size"].astype(float))
        ax.set_xlabel("batch size (rows decoded together)")
        ax.set_ylabel(f"rows identical to {what} (fraction)")
    return _finish(fig, axes, "Batched outputs vs solo AR and vs batch 1 (identity)")


def _hatch(x: int, y: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, hatch="///", edgecolor="dimgray", linewidth=0)


def category_groups(frame: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(name, series, rows indexed by category) for every series and setting of a per-category summary
    (a run of several contexts or batch sizes has one group per value, named ``orthrus (context 512)``)."""
    frame = frame[frame["category"].notna()]
    out = []
    for series in sorted(frame["series"].unique(), key=series_order):
        rows = frame[frame["series"] == series]
        dims = [d for d in _dimensions(rows, "category") if rows[d].astype(str).nunique() > 1]
        keys = [tuple(_short(v) for v in values) for values in rows[dims].itertuples(index=False)] if dims else None
        for key in sorted(set(keys), key=lambda k: tuple(_order(v) for v in k)) if keys else [()]:
            part = rows[[k == key for k in keys]] if keys else rows
            name = series + (" (" + ", ".join(f"{axis_label(d)} {v}" for d, v in zip(dims, key)) + ")" if key else "")
            out.append((name, series, part.drop_duplicates("category").set_index(part["category"].astype(str))))
    return out


def plot_by_category(run: RunData) -> Figure | None:
    """Per prompt category (Spec-Bench's, from summary_by_category): each engine's speedup over AR with
    its 95% interval, and its tokens per forward."""
    df = run.by_category
    if df.empty or "category" not in df.columns or not df["category"].notna().any():
        return None
    df = _non_ar(df[df["category"].notna()])
    panels = [
        (c, label)
        for c, label in (
            (COLUMN.speedup_vs_ar, "speedup vs AR (x, geometric mean over the category's prompts; bars: 95% CI)"),
            (COLUMN.tokens_per_forward_median, "tokens per forward pass (median)"),
        )
        if _has(df, c)
    ]
    if not panels:
        return None
    categories = sorted(df["category"].astype(str).unique())
    groups = category_groups(df)
    height = max(3.0, 0.22 * len(categories) * len(groups) + 1.6)
    fig, axes = _figure(ncols=len(panels), height=height, width=6.5)
    colours = _colours(run)
    step = 0.8 / len(groups)

    def column_of(rows: pd.DataFrame, column: str) -> np.ndarray:
        if column not in rows.columns:
            return np.full(len(categories), np.nan)
        return np.array([float(rows[column][c]) if c in rows.index else np.nan for c in categories])

    for ax, (column, label) in zip(axes, panels):
        variants: dict[str, int] = defaultdict(int)
        for i, (name, series, rows) in enumerate(groups):
            values = column_of(rows, column)
            places = np.arange(len(categories)) + i * step - 0.4 + step / 2
            hatch = _HATCHES[variants[series] % len(_HATCHES)]  # a series' settings told apart by hatching
            variants[series] += 1
            ax.barh(places, values, height=step * 0.9, color=colours[series], label=name, hatch=hatch)
            lows, highs = column_of(rows, f"{column}_ci_low"), column_of(rows, f"{column}_ci_high")
            known = ~(np.isnan(lows) | np.isnan(highs) | np.isnan(values))
            if known.any():
                errors = np.vstack([(values - lows)[known], (highs - values)[known]])
                ax.errorbar(values[known], places[known], xerr=errors, fmt="none", ecolor="black", capsize=2, lw=0.8)
        if column == COLUMN.speedup_vs_ar:
            ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
        ax.set_yticks(np.arange(len(categories)))
        ax.set_yticklabels(categories, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(_wrap(label, 60))
    return _finish(fig, axes, "By prompt category (summary_by_category)")


def _sweep_plots() -> tuple[tuple[str, str, str, Callable[[RunData], Figure | None]], ...]:
    """A speedup plot and a tokens-per-forward plot against every swept parameter (SWEEP_X), each
    drawn only when the run measured two values of it or more."""
    short = {"context_length": "context"}
    out: list[tuple[str, str, str, Callable[[RunData], Figure | None]]] = []
    for param, xlabel in SWEEP_X:
        name = short.get(param, param)
        what = xlabel.split(" (")[0]
        out.append(
            (
                f"speedup_vs_{name}",
                f"Speedup vs AR by {what}",
                f"Geometric mean over prompts of AR end-to-end time / engine end-to-end time, same run, against "
                f"the AR cell of the same {what} and settings; band: bootstrap 95% CI.",
                lambda run, param=param, xlabel=xlabel: _speedup_vs(run, param, xlabel),
            )
        )
        out.append(
            (
                f"tpf_vs_{name}",
                f"Tokens per forward vs {what}",
                "Tokens per forward pass (TPF) and drafts accepted per cycle (mean per request); dotted: "
                "token-weighted (every cycle pooled).",
                lambda run, param=param, xlabel=xlabel: _tpf_acceptance(run, param, xlabel),
            )
        )
    return tuple(out)


_SWEEP_PLOTS = {name: entry for name, *entry in _sweep_plots()}


def _sweep(name: str) -> tuple[str, str, str, Callable[[RunData], Figure | None]]:
    return (name, *_SWEEP_PLOTS[name])  # type: ignore[return-value]


# in reading order: the suite's question first (speedup and throughput against what it sweeps)
PLOTS: tuple[tuple[str, str, str, Callable[[RunData], Figure | None]], ...] = (
    (
        "throughput_vs_context",
        "Throughput vs context length",
        "Median decode tokens/s per engine; the long-context figure.",
        plot_throughput_vs_context,
    ),
    _sweep("speedup_vs_context"),
    _sweep("speedup_vs_block_size"),
    _sweep("speedup_vs_temperature"),
    _sweep("speedup_vs_top_p"),
    _sweep("speedup_vs_top_k"),
    _sweep("speedup_vs_max_new_tokens"),
    (
        "speedup_vs_batch",
        "Speedup vs batch size",
        "Orthrus (and every non-AR engine) over AR at the same batch size: per request (row e2e) and per batch "
        "(batch throughput), geometric means with bootstrap 95% intervals.",
        plot_speedup_vs_batch,
    ),
    (
        "throughput_vs_batch",
        "Throughput vs batch size",
        "New tokens per second over a whole batch (all rows), and relative to the same engine at batch 1.",
        plot_throughput_vs_batch,
    ),
    (
        "by_engine",
        "By engine",
        "Nothing is swept in this run: each engine's speedup over AR (bars: bootstrap 95% CI) and its tokens per "
        "forward.",
        plot_by_engine,
    ),
    (
        "by_category",
        "By prompt category",
        "Each engine per prompt category (summary_by_category.json): speedup over AR with its bootstrap 95% "
        "interval over the category's prompts, and tokens per forward.",
        plot_by_category,
    ),
    _sweep("tpf_vs_context"),
    _sweep("tpf_vs_block_size"),
    _sweep("tpf_vs_temperature"),
    _sweep("tpf_vs_top_p"),
    _sweep("tpf_vs_top_k"),
    _sweep("tpf_vs_max_new_tokens"),
    (
        "tpf_vs_batch",
        "Tokens per forward vs batch size",
        "Tokens per forward per row, its ratio to batch 1 (should stay flat at 1) and the row-passes spent on rows "
        "that had already finished.",
        plot_tpf_vs_batch,
    ),
    (
        "acceptance_by_position",
        "Per-position acceptance",
        "Left: unconditional u_j, the fraction of cycles drafting position j that accepted it; right: conditional "
        "c_j, the fraction of cycles that reached j (drafted it and accepted j-1) that accepted it "
        "(docs/metric_conventions.md). Pooled over every cycle of the run, one line per engine and setting "
        "(block size, temperature...), never averaged across settings; hollow points stand on fewer than "
        f"{FEW_CYCLES} cycles.",
        plot_acceptance_by_position,
    ),
    (
        "acceptance_histogram",
        "Accepted drafts per cycle",
        "Per cell: the distribution of drafts accepted per draft-verify cycle (0 to K-1), over every cycle of "
        "every request; with the number of cycles and requests, the mean, and the range of the per-request means.",
        plot_acceptance_histogram,
    ),
    (
        "chosen_blocks",
        "Block size chosen by block_size: auto",
        "Per cell of an engine choosing its block size per cycle: the fraction of steps at each K (1: a plain AR "
        "step), chosen from its measured acceptance and the measured cost of a cycle at that batch size and "
        "context; right: the mean K against batch size, one line per context.",
        plot_chosen_blocks,
    ),
    (
        "extra_memory",
        "Extra memory beyond AR",
        "What each method adds over AR on the same model, against context: the weights it adds (Orthrus's *_diff "
        "projections, a DFlash or EAGLE-3 drafter, assisted's draft model) plus the K/V it holds beyond AR's peak "
        "(its target cache's excess and a drafter's own cache); right: the K/V part alone. Exact figures, from "
        "tensors and weights, not from an allocator.",
        plot_extra_memory,
    ),
    (
        "memory_vs_context",
        "Memory vs context",
        "Peak memory by source, each sampled between the start and the end of the timed region only; sources not "
        "measurable on this machine are left out. KV beyond AR's: engines on the AR cell's model only.",
        plot_memory_vs_context,
    ),
    (
        "latency_cdfs",
        "Latency distributions",
        "TTFT and inter-token latency over all prompts and repetitions; n: values per engine.",
        plot_latency_cdfs,
    ),
    (
        "latency_vs_batch",
        "Latency vs batch size",
        "Per-request TTFT, time per output token and end-to-end latency (medians over rows).",
        plot_latency_vs_batch,
    ),
    (
        "quality_vs_speed",
        "Quality vs speed",
        "Identity, matching fraction and AR-model NLL of the output against decode throughput.",
        plot_quality_vs_speed,
    ),
    (
        "identity_heatmap",
        "Identity heat map",
        "Fraction of outputs identical to the reference; divergences where the reference's top-1 minus top-2 logit is "
        "below the dtype's near-tie margin (" + ", ".join(f"{k} < {v:g}" for k, v in NEAR_TIE_MARGIN.items()) + ") are "
        "counted as near-ties, apart from real ones.",
        plot_identity_heatmap,
    ),
    (
        "batch_identity",
        "Batch identity",
        "Fraction of batched rows identical to solo AR and to the same engine at batch size 1; each "
        "divergence is judged by the reference's top-1 minus top-2 logit margin (near-tie below the dtype's margin, "
        "else real). In fp32 both must be 1.",
        plot_batch_identity,
    ),
)


def make_plots(run: RunData, out_dir: Path | None = None) -> tuple[list[PlotInfo], list[str]]:
    """Draw every plot the run has data for; returns the plots and one warning per plot that failed."""
    out_dir = out_dir or run.path / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    made, warnings = [], []
    for name, title, caption, draw in PLOTS:
        path = out_dir / f"{name}.png"
        try:
            with matplotlib.rc_context(PLAIN_TEXT):  # text is created and laid out inside draw and savefig
                fig = draw(run)
                if fig is not None:
                    fig.savefig(path, format="png")
        except OSError:
            raise  # the folder is not writable or the disk is full: the caller says so once
        except Exception as err:  # a broken plot must not cost the user the rest of the report
            warnings.append(f"plot {name!r} could not be drawn: {_first_line(err)}")
            fig = None
        if fig is None:
            path.unlink(missing_ok=True)  # a stale figure from an earlier render would mislead
            continue
        made.append(PlotInfo(name, title, caption, path, wide=fig.get_figwidth() > 8))  # two panels or more
    return made, warnings


def _first_line(err: BaseException) -> str:
    """``Type: first non-empty line`` (matplotlib's parse errors start with a newline)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
