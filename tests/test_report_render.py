"""report.html and the plots, made from the results files alone: complete runs, runs with missing
columns / engines / files, escaping of prompt and output text, the runs index, the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from orthrus.report import render_index, render_run
from orthrus.report.commands import cmd_report
from orthrus.report.plots import PLOTS, identity_grid
from orthrus.report.rundata import load_run
from tests.report_synthetic import make_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# what the full synthetic run sweeps (contexts and block sizes) gets its plots; the batch-sweep plots
# (one batch size here: tests/test_batch_harness.py renders them on a real run), the plots against
# temperature, top-p, top-k or new tokens (not swept), the per-engine bars (drawn when nothing is
# swept) and the per-category ones (no categories) do not apply to it
FULL_RUN_PLOTS = {
    "throughput_vs_context",
    "speedup_vs_context",
    "speedup_vs_block_size",
    "tpf_vs_context",
    "tpf_vs_block_size",
    "acceptance_by_position",
    "acceptance_histogram",
    "memory_vs_context",
    "latency_cdfs",
    "quality_vs_speed",
    "identity_heatmap",
}
SINGLE_BATCH_PLOTS = [p for p in PLOTS if p[0] in FULL_RUN_PLOTS]
HOSTILE = "<script>alert('pwned')</script> & <img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("render") / "reports"
    return make_run(
        root, "full", block_sizes=(4, 8), near_tie_at=2048, fail_engine_at=("dlm", 2048), prompt_text=HOSTILE
    )


@pytest.fixture(scope="module")
def full_report(full_run):
    return render_run(full_run)


def test_full_run_draws_every_plot_and_embeds_them(full_run, full_report):
    html = full_report.read_text()
    for name, *_ in SINGLE_BATCH_PLOTS:
        png = full_run / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC, name
        assert f'id="plot-{name}"' in html, name
    assert html.count('src="data:image/png;base64,') == len(SINGLE_BATCH_PLOTS)
    assert {p.stem for p in (full_run / "plots").glob("*.png")} == FULL_RUN_PLOTS
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<link" not in html
    assert "default-src 'none'" in html


def test_headlines_come_first_and_say_the_key_numbers(full_report):
    html = full_report.read_text()
    order = [html.index(f'id="{section}"') for section in ("headlines", "plots", "summary", "failed", "environment")]
    assert order == sorted(order)
    for label in (
        "orthrus vs fastest AR, geo. mean of 6 cells",
        "Tokens per forward, mean of 6 cells",
        "Identity of lossless engines",
        "KV memory overhead vs AR",
    ):
        assert label in html
    assert "+8.0 KiB" in html  # one block of 8 tokens x 1 KiB, the largest overhead
    assert "near-tie" in html  # the orthrus divergence at 2048 is a near-tie, and the report says so


def test_failed_cells_show_their_errors(full_report):
    html = full_report.read_text()
    failed = html[html.index('id="failed"') : html.index('id="environment"')]
    assert "OutOfMemoryError: CUDA out of memory (synthetic)" in failed and "context_length=2048" in failed


def test_prompt_and_output_text_is_escaped(full_report):
    html = full_report.read_text()
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script>alert(" not in html and "<img src=x" not in html
    # the only scripts are the page's own two inline ones
    assert html.count("<script>") == 2


def test_identity_grid_tells_near_ties_from_real_divergences(full_run):
    grid = identity_grid(load_run(full_run)).set_index(["series", "context"])
    for block in (4, 8):  # one row per block size: settings are never averaged together
        orthrus = grid.loc[(f"orthrus (block {block})", 2048)]
        assert orthrus["near_ties"] > 0 and orthrus["real"] == 0 and orthrus["exact_rate"] == 0.75
    assert grid.loc[("dlm", 512), "real"] > 0 and grid.loc[("dlm", 512), "near_ties"] == 0
    assert grid.loc[("ar", 512), "exact_rate"] == 1.0


def test_summary_table_is_sortable_and_complete(full_run, full_report):
    html = full_report.read_text()
    assert 'class="sortable" id="summary-table"' in html and "data-sort=" in html
    rows = html[html.index('id="summary-table"') :].split("</table>")[0].count("<tr>") - 1
    assert rows == len(json.loads((full_run / "summary.json").read_text()))


def test_run_with_only_ar_and_orthrus_and_no_records(tmp_path):
    run = make_run(
        tmp_path / "reports",
        "small",
        engines=("ar", "orthrus"),
        contexts=(256,),
        prompts=1,
        repeats=1,
        write_records=False,
        memory_sources=(),
    )
    (run / "summary.csv").unlink()  # summary.json alone is enough; the CSV is for spreadsheets
    report = render_run(run).read_text()
    drawn = {p.stem for p in (run / "plots").glob("*.png")}
    # need records / a block-size sweep / two contexts
    assert {"latency_cdfs", "tpf_vs_block_size", "speedup_vs_context", "memory_vs_context"}.isdisjoint(drawn)
    assert {"by_engine", "identity_heatmap"} <= drawn  # one setting: each engine's speedup and TPF as bars
    assert "could not be drawn" not in report and "orthrus vs fastest AR, geo. mean of 1 cell" in report
    assert "no interval" in report  # one prompt: a ratio of medians, said to have no interval


def test_run_with_columns_missing_and_all_null(tmp_path):
    # no results.jsonl: the summary is all there is (with records it would be rebuilt, every column back)
    run = make_run(tmp_path / "reports", "sparse", engines=("ar", "orthrus"), contexts=(128, 256), write_records=False)
    summary = pd.read_json(run / "summary.json")
    summary = summary.drop(
        columns=[
            "speedup_vs_ar_ci_low",
            "speedup_vs_ar_ci_high",
            "acceptance_by_position",
            "context_length",
            "kv_cache_bytes_peak_max",
        ]
    )
    summary["identity_exact_rate"] = None
    (run / "summary.json").write_text(summary.to_json(orient="records"))
    (run / "summary.csv").unlink()
    (run / "environment.json").unlink()
    (run / "suite.yaml").unlink()
    report = render_run(run).read_text()
    assert "could not be drawn" not in report and "No environment.json" in report
    assert not (run / "plots" / "identity_heatmap.png").exists()


def test_stale_plots_are_removed_on_re_render(tmp_path):
    run = make_run(tmp_path / "reports", "stale", engines=("ar", "orthrus"), contexts=(128,))
    (run / "plots").mkdir()
    (run / "plots" / "tpf_vs_block_size.png").write_bytes(PNG_MAGIC)
    render_run(run)
    assert not (run / "plots" / "tpf_vs_block_size.png").exists()


def test_index_lists_runs_and_links_their_reports(tmp_path):
    root = tmp_path / "reports"
    first = make_run(root, "2024-01-01_a", engines=("ar", "orthrus"), contexts=(128,))
    second = make_run(root, "2024-01-02_<b>", engines=("ar", "orthrus"), contexts=(128,))
    render_run(first)  # renders the index as the run lies under reports/
    index = (root / "index.html").read_text()
    assert 'href="synthetic/2024-01-01_a/report.html"' in index
    assert "2024-01-02_&lt;b&gt;" in index and "synthetic/2024-01-02_%3Cb%3E" in index  # linked to its folder
    render_run(second, update_index=False)
    assert "2024-01-02_%3Cb%3E/report.html" in render_index(root).read_text()


def test_report_command(full_run, tmp_path, capsys):
    assert cmd_report([str(full_run), "--index", str(full_run.parent.parent)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"report: {full_run / 'report.html'}" and out[1].startswith("index: ")
    assert cmd_report([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cmd_report([str(empty)]) == 2
    assert "no summary.json or results.jsonl" in capsys.readouterr().err


def test_old_run_re_renders_from_a_copy(full_run, tmp_path):
    """Reports read only the results files: a copied run directory renders the same sections."""
    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(full_run, copy, ignore=shutil.ignore_patterns("plots", "report.html"))
    html = render_run(copy).read_text()
    assert html.count('src="data:image/png;base64,') == len(SINGLE_BATCH_PLOTS) == len(FULL_RUN_PLOTS)


def test_percentiles_carry_their_sample_counts_and_too_few_values_say_so(full_run, full_report):
    html = full_report.read_text()
    table = html[html.index('id="summary-table"') :].split("</table>")[0]
    headers = re.findall(r"<th>([^<]*)</th>", table)
    assert headers[headers.index("ITL p90 ms") : headers.index("ITL p90 ms") + 3] == ["ITL p90 ms", "ITL p99 ms", "n"]
    assert 'data-sticky="' in table  # the engine and its parameters stay in view when the table scrolls
    full = html[html.index('id="full-summary-table"') :].split("</table>")[0]
    # 8 measurements per cell (4 prompts x 2 repetitions): no p90 (fewer than 10) and no p99 (fewer than 100)
    assert full.count(">n &lt; 100<") >= 3 * 6 and full.count(">n &lt; 10<") >= 3 * 6
    assert 'title="only 8 values: not a p99"' in full


def test_an_old_summary_without_todays_columns_is_rebuilt_from_the_records(tmp_path):
    run = make_run(tmp_path / "reports", "old", engines=("ar", "orthrus"), contexts=(128, 256))
    rows = json.loads((run / "summary.json").read_text())
    for row in rows:
        del row["itl_ms_n"]  # written before the sample counts existed
    (run / "summary.json").write_text(json.dumps(rows))
    summary = load_run(run).summary
    assert summary["itl_ms_n"].notna().all() and (summary["ttft_ms_n"] == 8).all()


def test_per_category_results_are_shown(tmp_path):
    """Spec-Bench style runs write summary_by_category: the report shows it as a table and a plot."""
    run = tmp_path / "reports" / "cats" / "run"
    run.mkdir(parents=True)
    golden = Path(__file__).resolve().parent / "data" / "summary_golden" / "a"
    shutil.copy(golden / "results.jsonl", run / "results.jsonl")
    rows = json.loads((golden / "summary_by_category.json").read_text())
    categories = sorted({r["category"] for r in rows if r["category"] is not None})
    html = render_run(run, update_index=False).read_text()
    section = html[html.index('id="categories"') :].split("</section>")[0]
    assert all(f">{c}<" in section for c in categories) and "speedup vs AR" in section
    assert 'id="plot-by_category"' in html and (run / "plots" / "by_category.png").is_file()
    assert "could not be drawn" not in html
