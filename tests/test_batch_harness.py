"""Batch sweeps through the harness on the zoo's tiny-orthrus: every batched row is the solo AR output
and the batch-1 output, TPF stays flat, records carry their batch, an engine that cannot batch is
recorded as skipped (exit 0), the batch plots and table render, bad batch input is one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from orthrus.models.zoo_index import zoo_path
from orthrus.report.gates import evaluate_gates, parse_rules
from orthrus.results.rundir import read_records
from orthrus.run_cli import main

pytestmark = pytest.mark.skipif(zoo_path("tiny-orthrus") is None, reason="needs the zoo model tiny-orthrus")
BATCH_SIZES = [1, 2, 4]


def suite(**changes) -> dict:
    raw = {
        "name": "batchtest",
        "models": {"base": {"path": "tiny-orthrus"}},
        "engines": [
            {"engine": "ar", "model": "base"},
            {"engine": "orthrus", "model": "base", "options": {"block_size": 4}},
        ],
        "sweep": {"context_lengths": [40], "max_new_tokens": 12, "batch_sizes": BATCH_SIZES},
        "prompts": {"source": "synthetic", "count": 4},
        "measure": {"repetitions": 1, "warmup": 0, "threads": 1},
    }
    raw.update(changes)
    return raw


def write_suite(tmp_path: Path, raw: dict, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory) -> Path:
    """ar and orthrus at batch sizes 1, 2, 4 (4 prompts, 12 new tokens) plus prompt_lookup, which
    cannot batch: its batch-1 cell runs, its batched cells are skipped."""
    tmp = tmp_path_factory.mktemp("batch")
    raw = suite()
    raw["engines"].append({"engine": "prompt_lookup", "model": "base"})
    out = tmp / "reports"
    assert main([str(write_suite(tmp, raw)), "--out", str(out), "--run-id", "b", "--quiet"]) == 0
    return out / "batchtest" / "b"


def _ok(run_dir: Path) -> list[dict]:
    return [r for r in read_records(run_dir / "results.jsonl") if r["status"] == "ok"]


def test_every_batched_row_is_the_solo_ar_and_the_batch1_output(batch_run):
    records = _ok(batch_run)
    for engine in ("ar", "orthrus"):
        for size in BATCH_SIZES:
            rows = [r for r in records if r["cell"]["engine"] == engine and r["cell"]["batch_size"] == size]
            assert len(rows) == 4, (engine, size)
            assert all(r["identity_exact"] is True for r in rows), (engine, size)
            if size > 1:
                assert all(r["identity_vs_batch1_exact"] is True for r in rows), (engine, size)
                assert all(r["first_divergence_vs_batch1"] is None for r in rows)
    # the same tokens for a prompt at every batch size
    by_prompt: dict[str, set] = {}
    for r in records:
        if r["cell"]["engine"] == "orthrus":
            by_prompt.setdefault(r["prompt_id"], set()).add(tuple(r["tokens"]))
    assert len(by_prompt) == 4 and all(len(v) == 1 for v in by_prompt.values())


def test_records_carry_their_batch_and_its_figures(batch_run):
    records = _ok(batch_run)
    prompts = [r["prompt_id"] for r in records if r["cell"]["engine"] == "ar" and r["cell"]["batch_size"] == 1]
    for size in BATCH_SIZES:
        rows = [r for r in records if r["cell"]["engine"] == "orthrus" and r["cell"]["batch_size"] == size]
        for r in rows:  # prompts grouped in order, size at a time
            i = prompts.index(r["prompt_id"])
            assert (r["batch_id"], r["batch_index"], r["batch_rows"]) == (i // size, i % size, size)
            assert r["batch_prompt_ids"] == prompts[i // size * size : i // size * size + size]
            assert r["batch_new_tokens"] == 12 * size and r["batch_e2e_ms"] > 0 and r["batch_tokens_per_s"] > 0
            assert r["batch_forward_passes"] >= 2 and r["batch_tokens_per_forward"] > 0
            assert r["batch_acceptance_length"] is not None and 0 <= r["batch_wasted_row_pass_fraction"] < 1
            assert r["batch_kv_cache_bytes_peak"] > 0 and r["ttft_ms"] > 0 and r["e2e_ms"] > 0
        # one batch's rows share the batch figures
        first = [r for r in rows if r["batch_id"] == 0]
        assert len({r["batch_e2e_ms"] for r in first}) == 1


def test_summary_tpf_is_flat_and_speedup_is_at_the_same_batch_size(batch_run):
    summary = json.loads((batch_run / "summary.json").read_text())
    rows = {(r["engine"], r["batch_size"]): r for r in summary}
    for engine in ("ar", "orthrus"):
        for size in BATCH_SIZES:
            row = rows[(engine, size)]
            assert row["n_ok"] == 4 and row["n_failed"] == 0 and row["n_skipped"] == 0
            assert row["identity_exact_rate"] == 1.0
            assert row["tokens_per_forward_vs_batch1"] == pytest.approx(1.0, abs=1e-9)
            assert row["batch_rows_median"] == size and row["batch_tokens_per_s_median"] > 0
            if size > 1:
                assert row["identity_vs_batch1_rate"] == 1.0
    for size in BATCH_SIZES:  # Orthrus over AR at the same batch size, with an interval
        row = rows[("orthrus", size)]
        assert row["speedup_vs_ar"] > 0 and row["speedup_vs_ar_ci_low"] <= row["speedup_vs_ar_ci_high"]
        assert row["throughput_speedup_vs_ar"] > 0
    assert rows[("orthrus", 1)]["tokens_per_forward_median"] > 0


def test_an_engine_that_cannot_batch_is_skipped_with_its_reason(batch_run):
    records = read_records(batch_run / "results.jsonl")
    mine = [r for r in records if r["cell"]["engine"] == "prompt_lookup"]
    solo = [r for r in mine if r["cell"]["batch_size"] == 1]
    assert len(solo) == 4 and all(r["status"] == "ok" for r in solo)
    skipped = [r for r in mine if r["cell"]["batch_size"] > 1]
    assert sorted(r["cell"]["batch_size"] for r in skipped) == [2, 4]
    assert all(r["status"] == "skipped" and "cannot batch" in r["skip_reason"] for r in skipped)
    assert all(r["tokens"] is None for r in skipped)  # never run at batch 1 under another name
    info = json.loads((batch_run / "run.json").read_text())
    assert info["failed"] == 0 and info["skipped"] == 2
    summary = json.loads((batch_run / "summary.json").read_text())
    row = next(r for r in summary if r["engine"] == "prompt_lookup" and r["batch_size"] == 2)
    assert row["n_skipped"] == 1 and row["n_failed"] == 0 and row["n_ok"] == 0


def test_gates_check_batch_invariance_and_skip_skipped_cells(batch_run):
    rules = parse_rules(
        [
            {"rule": "n_failed == 0"},
            {"rule": "tokens_per_forward_vs_batch1 >= 0.97", "where": {"engine": "orthrus", "batch_size": 4}},
            {"rule": "tokens_per_forward_vs_batch1 <= 1.03", "where": {"engine": "orthrus", "batch_size": 4}},
            {"rule": "identity_vs_batch1_rate == 1.0", "where": {"engine": "orthrus", "batch_size": 4}},
            {"rule": "identity.exact_rate == 1.0", "where": {"batch_size": 4}},
        ]
    )
    report = evaluate_gates(batch_run, rules, None, write=False)
    assert report.exit_code == 0, report.format_table(True)
    skipped = [r for r in report.results if r.status == "skip"]
    assert skipped and all("skipped" in r.message for r in skipped)


def test_batch_plots_and_table_render(batch_run):
    from orthrus.report import render_run

    page = render_run(batch_run, update_index=False)
    html = page.read_text()
    for name in ("batch_identity", "throughput_vs_batch", "speedup_vs_batch", "tpf_vs_batch", "latency_vs_batch"):
        assert (batch_run / "plots" / f"{name}.png").is_file(), name
        assert f'id="plot-{name}"' in html
    assert 'id="batching-table"' in html


def test_a_single_batch_size_draws_no_batch_plots(tmp_path):
    raw = suite(sweep={"context_lengths": [40], "max_new_tokens": 8})
    raw["engines"] = raw["engines"][:1]
    raw["prompts"] = {"source": "synthetic", "count": 2}
    out = tmp_path / "reports"
    assert main([str(write_suite(tmp_path, raw)), "--out", str(out), "--run-id", "one", "--quiet"]) == 0
    plots = out / "batchtest" / "one" / "plots"
    # one batch size, one context: no batch plots, no plot against the context (single points), the
    # per-engine bars instead (nothing is swept)
    assert not (plots / "throughput_vs_batch.png").exists() and not (plots / "tpf_vs_context.png").exists()
    assert (plots / "by_engine.png").exists()


# ----------------------------------------------------------------------------------- bad input
def _one_sentence(text: str) -> None:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text


@pytest.mark.parametrize("sizes", [[0], [1, -2], [1, 2.5]])
def test_batch_sizes_below_one_exit_2_in_one_sentence(tmp_path, capsys, sizes):
    raw = suite(sweep={"context_lengths": [40], "max_new_tokens": 8, "batch_sizes": sizes})
    assert main([str(write_suite(tmp_path, raw)), "--dry-run", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    _one_sentence(err)
    assert "batch_sizes" in err


def test_an_empty_batch_exits_2_in_one_sentence(tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "hello there", "category": "a"}\n')
    raw = suite(prompts={"source": "jsonl", "path": str(data), "categories": ["nothing-here"]})
    assert main([str(write_suite(tmp_path, raw)), "--dry-run", "--out", str(tmp_path / "r")]) == 2
    _one_sentence(capsys.readouterr().err)


def test_a_row_longer_than_the_context_exits_2_in_one_sentence(tmp_path, capsys):
    long_row = {"id": "long", "ids": [5] * 16380}
    raw = suite(prompts={"source": "inline", "prompts": [{"id": "short", "ids": [5, 6, 7]}, long_row]})
    raw["sweep"]["batch_sizes"] = [2]
    assert main([str(write_suite(tmp_path, raw)), "--dry-run", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    _one_sentence(err)
    assert "'long'" in err and "batch size 2" in err


def test_the_engine_refuses_an_empty_batch_in_one_sentence():
    from orthrus.engines import build_engine
    from orthrus.errors import UserInputError
    from orthrus.models import load_causal_lm

    engine = build_engine("ar", load_causal_lm(zoo_path("tiny-orthrus")))
    with pytest.raises(UserInputError, match="empty"):
        engine.generate_batch([], 4)
