"""The report's figures, drawn with matplotlib's Agg canvas from a run's results files only.

Each ``plot_*`` function takes a ``RunData`` and returns a ``Figure`` or ``None`` when the run has no
data for it (a run with only ``ar`` and ``orthrus``, no GPU memory figures, no block-size sweep...).
``make_plots`` saves those that exist to ``<run>/plots/<name>.png``.

Legend entries are series (see ``rundata``); when a series was measured at several values of a
parameter that is not on the x axis (e.g. block_size in a context-length plot), each value gets its
own line, named ``series (block_size=16)``.

Near-ties: a divergence from the reference whose ``divergence_margin`` (the reference model's
top-1 minus top-2 logit there) is below ``NEAR_TIE_MARGIN[dtype]`` (absolute, in logits) is a
numerical near-tie rather than a real disagreement; the identity heat map counts them apart.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from orthrus.report.rundata import (
    LABEL_COLUMN,
    VOLATILE_COLUMNS,
    RunData,
    cell_columns,
    is_present,
    kv_overhead_bytes,
    series_label,
)
from orthrus.results.vocabulary import COLUMN, FIELD, METRICS

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
    LABEL_COLUMN,
    *VOLATILE_COLUMNS,
}
_MARKERS = "osD^vP*Xh<>"
_STYLES = ("-", "--", ":", "-.")


@dataclass
class PlotInfo:
    name: str
    title: str
    caption: str
    path: Path
    wide: bool = False  # three panels or more: shown across the whole page


def near_tie_margin(dtype: Any) -> float:
    return NEAR_TIE_MARGIN.get(str(dtype).replace("torch.", ""), DEFAULT_NEAR_TIE_MARGIN)


# ------------------------------------------------------------------------------------ helpers
def _figure(ncols: int = 1, nrows: int = 1, width: float = 7.5, height: float = 4.3) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * (1 if ncols == 1 else 0.62 * ncols), height * nrows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _has(frame: pd.DataFrame, *columns: str) -> bool:
    return all(c in frame.columns for c in columns) and bool(frame[list(columns)].notna().all(axis=1).any())


def _colours(labels: list[str]) -> dict[str, Any]:
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    ordered = sorted(set(labels), key=lambda s: (s != "ar", s))
    return {label: palette[i % len(palette)] for i, label in enumerate(ordered)}


def _dimensions(frame: pd.DataFrame, x: str) -> list[str]:
    return [c for c in cell_columns(frame) if c not in NOT_DIMENSIONS and c != x]


def _lines(frame: pd.DataFrame, x: str, y: str) -> list[tuple[str, str, int, pd.DataFrame]]:
    """(line name, series, variant index, rows sorted by x) for every line of a y-vs-x plot."""
    frame = frame[frame[x].notna() & frame[y].notna()]
    out = []
    for series in sorted(frame["series"].unique(), key=lambda s: (s != "ar", s)):
        rows = frame[frame["series"] == series]
        dims = [d for d in _dimensions(rows, x) if rows[d].astype(str).nunique() > 1]
        if not dims:
            out.append((series, series, 0, rows.sort_values(x)))
            continue
        keys = [tuple(_short(v) for v in values) for values in rows[dims].itertuples(index=False)]
        for i, key in enumerate(sorted(set(keys), key=lambda k: tuple(_order(v) for v in k))):
            part = rows[[k == key for k in keys]]
            name = series + " (" + ", ".join(f"{d}={v}" for d, v in zip(dims, key)) + ")"
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
    """Log2 axis when values span 4x or more; a discrete axis (context, block size) ticks each value."""
    values = values[values > 0]
    if not len(values):
        return
    if values.max() / values.min() >= 4:
        ax.set_xscale("log", base=2 if discrete else 10)
    if discrete:
        ticks = sorted(set(values.tolist()))
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(_short(t)) for t in ticks])
        ax.minorticks_off()


def _scale_y(ax: Any, values: pd.Series) -> None:
    values = values[values > 0]
    if len(values) and values.max() / values.min() >= 20:
        ax.set_yscale("log")


def _finish(fig: Figure, axes: list, title: str) -> Figure:
    fig.suptitle(title, fontsize=12, fontweight="bold")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=7, loc="best", framealpha=0.8)
    fig.tight_layout()
    return fig


def _line_plot(ax: Any, frame: pd.DataFrame, x: str, y: str, colours: dict[str, Any], scale: float = 1.0) -> bool:
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
        drawn = True
    return drawn


# -------------------------------------------------------------------------------------- plots
def plot_throughput_vs_context(run: RunData) -> Figure | None:
    df = run.summary
    if not _has(df, "context_length", COLUMN.decode_tokens_per_s_median):
        return None
    fig, (ax,) = _figure()
    _line_plot(ax, df, "context_length", COLUMN.decode_tokens_per_s_median, _colours(df["series"].tolist()))
    _scale_x(ax, df["context_length"].dropna())
    _scale_y(ax, df[COLUMN.decode_tokens_per_s_median].dropna())
    ax.set_xlabel("context length (prompt tokens)")
    ax.set_ylabel("decode throughput (tokens/s, median)")
    return _finish(fig, [ax], "Decode throughput vs context length")


def plot_speedup_vs_context(run: RunData) -> Figure | None:
    df = run.summary
    df = df[df["engine"] != "ar"] if "engine" in df.columns else df
    if not _has(df, "context_length", COLUMN.speedup_vs_ar):
        return None
    fig, (ax,) = _figure()
    colours = _colours(run.summary["series"].tolist())
    for name, series, variant, rows in _lines(df, "context_length", COLUMN.speedup_vs_ar):
        colour = colours[series]
        ax.plot(
            rows["context_length"],
            rows[COLUMN.speedup_vs_ar],
            marker=_MARKERS[variant % len(_MARKERS)],
            linestyle=_STYLES[variant % len(_STYLES)],
            color=colour,
            label=name,
            markersize=4,
        )
        if {COLUMN.speedup_vs_ar_ci_low, COLUMN.speedup_vs_ar_ci_high} <= set(rows.columns):
            band = rows[rows[COLUMN.speedup_vs_ar_ci_low].notna() & rows[COLUMN.speedup_vs_ar_ci_high].notna()]
            if len(band):
                ax.fill_between(
                    band["context_length"],
                    band[COLUMN.speedup_vs_ar_ci_low],
                    band[COLUMN.speedup_vs_ar_ci_high],
                    color=colour,
                    alpha=0.15,
                    linewidth=0,
                )
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="AR (1x)")
    _scale_x(ax, df["context_length"].dropna())
    ax.set_xlabel("context length (prompt tokens)")
    ax.set_ylabel("speedup vs AR (x, geometric mean; band = 95% CI)")
    return _finish(fig, [ax], "Speedup over autoregressive decoding vs context length")


def _tpf_acceptance(run: RunData, x: str, xlabel: str, title: str) -> Figure | None:
    df = run.summary
    panels = [
        (c, label)
        for c, label in (
            (COLUMN.tokens_per_forward_median, "tokens per forward pass (median)"),
            (COLUMN.acceptance_length_mean, "accepted drafts per cycle (mean per request)"),
        )
        if _has(df, x, c)
    ]
    if not panels:
        return None
    fig, axes = _figure(ncols=len(panels))
    colours = _colours(df["series"].tolist())
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
                    color=colours[series],
                    alpha=0.7,
                    label=f"{name}, token-weighted",
                )
        _scale_x(ax, df[x].dropna())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
    return _finish(fig, axes, title)


def plot_tpf_vs_context(run: RunData) -> Figure | None:
    if "context_length" not in run.summary.columns:
        return None
    return _tpf_acceptance(
        run,
        "context_length",
        "context length (prompt tokens)",
        "Tokens per forward and accepted length vs context length",
    )


def plot_tpf_vs_block_size(run: RunData) -> Figure | None:
    df = run.summary
    if "block_size" not in df.columns or df["block_size"].dropna().nunique() < 2:
        return None
    return _tpf_acceptance(
        run, "block_size", "block size (draft tokens per cycle)", "Tokens per forward and accepted length vs block size"
    )


def plot_acceptance_by_position(run: RunData) -> Figure | None:
    df = run.summary
    if COLUMN.acceptance_by_position not in df.columns:
        return None
    df = df[df[COLUMN.acceptance_by_position].map(lambda v: isinstance(v, list) and len(v) > 0)]
    if df.empty:
        return None
    group_by = ["series"] + (["block_size"] if "block_size" in df.columns else [])
    fig, (ax,) = _figure()
    colours = _colours(run.summary["series"].tolist())
    for i, (key, rows) in enumerate(df.groupby(group_by, sort=True, dropna=False)):
        key = key if isinstance(key, tuple) else (key,)
        width = max(len(v) for v in rows[COLUMN.acceptance_by_position])
        stack = np.full((len(rows), width), np.nan)
        for r, values in enumerate(rows[COLUMN.acceptance_by_position]):
            stack[r, : len(values)] = [np.nan if v is None else v for v in values]
        mean = np.nanmean(stack, axis=0)
        name = key[0] + (f" (block_size={_short(key[1])})" if len(key) > 1 and is_present(key[1]) else "")
        ax.plot(
            range(1, width + 1),
            mean,
            marker=_MARKERS[i % len(_MARKERS)],
            color=colours[key[0]],
            linestyle=_STYLES[i % len(_STYLES)],
            label=name,
            markersize=4,
        )
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("draft position j in the block (1 = first drafted token)")
    ax.set_ylabel("fraction of cycles accepting position j")
    return _finish(fig, [ax], "Per-position acceptance (mean over the run's cells)")


def plot_memory_vs_context(run: RunData) -> Figure | None:
    df = run.summary
    if "context_length" not in df.columns:
        return None
    sources = [s for s in MEMORY_SOURCES if _has(df, "context_length", s[0])]
    if not sources:
        return None
    if sources[0][0] == COLUMN.kv_cache_bytes_peak_max and "engine" in df.columns and (df["engine"] == "ar").any():
        overhead = [kv_overhead_bytes(df, row) if row.get("engine") != "ar" else None for row in df.to_dict("records")]
        df = df.assign(kv_overhead_bytes=[np.nan if v is None else v for v in overhead])
        if _has(df, "context_length", "kv_overhead_bytes"):
            sources.insert(1, ("kv_overhead_bytes", "KV cache beyond AR's at the same context", "KiB", 1 / 2**10))
    ncols = min(3, len(sources))
    nrows = math.ceil(len(sources) / ncols)
    fig, axes = _figure(ncols=ncols, nrows=nrows, height=3.8)
    colours = _colours(df["series"].tolist())
    for ax, (column, title, unit, scale) in zip(axes, sources):
        _line_plot(ax, df, "context_length", column, colours, scale)
        _scale_x(ax, df["context_length"].dropna())
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("context length (prompt tokens)")
        ax.set_ylabel(f"peak ({unit})")
    for ax in axes[len(sources) :]:
        ax.set_visible(False)
    return _finish(fig, axes[: len(sources)], "Memory vs context length, by source")


def _ok_records(run: RunData) -> list[dict[str, Any]]:
    return [r for r in run.records if r.get("status", "ok") == "ok" and isinstance(r.get("cell"), dict)]


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
    colours = _colours([*ttft, *itl, *run.summary["series"].tolist()])
    for ax, (data, title, xlabel) in zip(axes, panels):
        for series in sorted(data, key=lambda s: (s != "ar", s)):
            values = np.sort(np.asarray(data[series]))
            ax.step(
                values,
                np.arange(1, len(values) + 1) / len(values),
                where="post",
                color=colours[series],
                label=f"{series} (n={len(values)})",
            )
        positive = np.concatenate([np.asarray(v) for v in data.values()])
        positive = positive[positive > 0]
        if len(positive) and positive.max() / positive.min() >= 20 and data is ttft:
            ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction of measurements <= x")
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
    colours = _colours(df["series"].tolist())
    for ax, (column, label) in zip(axes, panels):
        rows = df[df[COLUMN.decode_tokens_per_s_median].notna() & df[column].notna()]
        for i, (series, part) in enumerate(rows.groupby("series", sort=True)):
            ax.scatter(
                part[COLUMN.decode_tokens_per_s_median],
                part[column],
                color=colours[series],
                marker=_MARKERS[i % len(_MARKERS)],
                label=series,
                s=28,
                alpha=0.85,
            )
        _scale_x(ax, rows[COLUMN.decode_tokens_per_s_median], discrete=False)
        ax.set_xlabel("decode throughput (tokens/s, median)")
        ax.set_ylabel(label)
    return _finish(fig, axes, "Quality vs speed (each point is one cell)")


def identity_grid(run: RunData) -> pd.DataFrame | None:
    """One row per (series, context): exact rate, divergences split into near-ties and real ones."""
    df = run.summary
    if not _has(df, COLUMN.identity_exact_rate):
        return None
    has_context = "context_length" in df.columns
    rows = df[df[COLUMN.identity_exact_rate].notna()]
    rows = rows.assign(_context=rows["context_length"] if has_context else 0)
    grid = []
    for (series, context), part in rows.groupby(["series", "_context"], sort=True):
        grid.append(
            {
                "series": series,
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
        )
    index = {(g["series"], g["context"]): g for g in grid}
    counted = set()
    for record in _ok_records(run):
        if record.get(FIELD.identity_exact) is not False:
            continue
        cell = record["cell"]
        key = (series_label(cell), cell.get("context_length", 0) if has_context else 0)
        entry = index.get(key) or _float_key(index, key)
        if entry is None:
            continue
        counted.add(id(entry))
        margin = record.get(FIELD.divergence_margin)
        if not is_present(margin):
            entry["unknown"] += 1
        elif float(margin) < near_tie_margin(cell.get("dtype")):
            entry["near_ties"] += 1
        else:
            entry["real"] += 1
    for entry in grid:  # no per-record data: judge the cell by its median margin
        if id(entry) not in counted and entry["exact_rate"] < 1 and is_present(entry["margin_median"]):
            kind = "near_ties" if entry["margin_median"] < near_tie_margin(entry["dtype"]) else "real"
            entry[kind] = -1  # -1: "some", count unknown
    return pd.DataFrame(grid)


def _float_key(index: dict, key: tuple) -> dict | None:
    for (series, context), entry in index.items():
        try:
            if series == key[0] and float(context) == float(key[1]):
                return entry
        except (TypeError, ValueError):
            continue
    return None


def plot_identity_heatmap(run: RunData) -> Figure | None:
    grid = identity_grid(run)
    if grid is None or grid.empty:
        return None
    series = sorted(grid["series"].unique(), key=lambda s: (s != "ar", s))
    contexts = sorted(grid["context"].unique(), key=lambda c: (str(type(c)), c))
    matrix = np.full((len(series), len(contexts)), np.nan)
    fig, (ax,) = _figure(width=max(6.0, 1.2 * len(contexts) + 3), height=max(2.6, 0.6 * len(series) + 1.8))
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
    ax.set_xticklabels([str(_short(c)) for c in contexts])
    ax.set_yticks(range(len(series)))
    ax.set_yticklabels(series)
    ax.set_xlabel("context length (prompt tokens)")
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
    panels = [(c, label) for c, label in panels if _has(df, "batch_size", c)]
    if not panels:
        return None
    fig, axes = _figure(ncols=len(panels))
    colours = _colours(run.summary["series"].tolist())
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
    colours = _colours(run.summary["series"].tolist())
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
            for x, y, ties, real in zip(
                rows["x"], rows[column], rows[f"near_ties_vs_{prefix}"], rows[f"real_vs_{prefix}"]
            ):
                if ties or real:
                    ax.annotate(
                        f"{ties} tie / {real} real", (x, y), fontsize=7, textcoords="offset points", xytext=(0, -10)
                    )
        ax.set_ylim(-0.05, 1.08)
        _scale_x(ax, table["batch_size"].astype(float))
        ax.set_xlabel("batch size (rows decoded together)")
        ax.set_ylabel(f"rows identical to {what} (fraction)")
    return _finish(fig, axes, "Batched outputs vs solo AR and vs batch 1 (identity)")


def _hatch(x: int, y: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, hatch="///", edgecolor="dimgray", linewidth=0)


PLOTS: tuple[tuple[str, str, str, Callable[[RunData], Figure | None]], ...] = (
    (
        "throughput_vs_context",
        "Throughput vs context length",
        "Median decode tokens/s per engine; the long-context figure.",
        plot_throughput_vs_context,
    ),
    (
        "speedup_vs_context",
        "Speedup vs AR",
        "Geometric mean over prompts of AR end-to-end time / engine end-to-end time, same run; band: bootstrap 95% CI.",
        plot_speedup_vs_context,
    ),
    (
        "tpf_vs_context",
        "Tokens per forward vs context",
        "Tokens per forward pass (TPF) and drafts accepted per cycle; dotted: token-weighted.",
        plot_tpf_vs_context,
    ),
    (
        "tpf_vs_block_size",
        "Tokens per forward vs block size",
        "How far each draft block gets, by block size.",
        plot_tpf_vs_block_size,
    ),
    (
        "acceptance_by_position",
        "Per-position acceptance",
        "How often the j-th drafted token of a block is accepted.",
        plot_acceptance_by_position,
    ),
    (
        "memory_vs_context",
        "Memory vs context",
        "Peak memory by source; sources not measurable on this machine are left out.",
        plot_memory_vs_context,
    ),
    (
        "latency_cdfs",
        "Latency distributions",
        "TTFT and inter-token latency over all prompts and repetitions.",
        plot_latency_cdfs,
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
    (
        "throughput_vs_batch",
        "Throughput vs batch size",
        "New tokens per second over a whole batch (all rows), and relative to the same engine at batch 1.",
        plot_throughput_vs_batch,
    ),
    (
        "speedup_vs_batch",
        "Speedup vs batch size",
        "Orthrus (and every non-AR engine) over AR at the same batch size: per request (row e2e) and per batch "
        "(batch throughput), geometric means with bootstrap 95% intervals.",
        plot_speedup_vs_batch,
    ),
    (
        "tpf_vs_batch",
        "Tokens per forward vs batch size",
        "Tokens per forward per row, its ratio to batch 1 (should stay flat at 1) and the row-passes spent on rows "
        "that had already finished.",
        plot_tpf_vs_batch,
    ),
    (
        "latency_vs_batch",
        "Latency vs batch size",
        "Per-request TTFT, time per output token and end-to-end latency (medians over rows).",
        plot_latency_vs_batch,
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
        made.append(PlotInfo(name, title, caption, path, wide=fig.get_figwidth() > 10))
    return made, warnings


def _first_line(err: BaseException) -> str:
    """``Type: first non-empty line`` (matplotlib's parse errors start with a newline)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
