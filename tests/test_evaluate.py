"""``python -m orthrus evaluate`` is a front end of the harness: it runs suites/diffusion_view.yaml
on the zoo model, and its table, --json-out and model card come from that run's directory (summary
rows and records, through orthrus.results); bad input is one sentence before anything runs; the
report's cost-model section is the same arithmetic, from the records alone."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest

from orthrus.cli import main
from orthrus.models import resolve_model_path
from orthrus.report import render_run
from orthrus.results.derived import cost_model, cost_model_speedup, time_per_pass_after_prefill_ms
from orthrus.results.rundir import RESULTS_FILE, read_records, read_summary_rows
from orthrus.train.distill import EVALUATION_HEADING
from tests.report_synthetic import make_run

TINY = ["--block-sizes", "4,8", "--prompts", "2", "--max-new-tokens", "16", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One tiny evaluate run of a copy of tiny-orthrus, with --write-card and --json-out."""
    tmp = tmp_path_factory.mktemp("evaluate")
    model = tmp / "my-orthrus"
    shutil.copytree(resolve_model_path("tiny-orthrus"), model)
    card_head = (model / "README.md").read_text().split(EVALUATION_HEADING)[0]
    out, json_out = tmp / "reports", tmp / "evaluation.json"
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["evaluate", "--model", str(model), "--untrained-base", "tiny-base", *TINY]
    argv += ["--out", str(out), "--json-out", str(json_out), "--write-card"]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    assert code == 0, stderr.getvalue()
    (run_dir,) = (out / "diffusion_view").iterdir()
    return {
        "run_dir": run_dir,
        "stdout": stdout.getvalue(),
        "report": json.loads(json_out.read_text()),
        "model": model,
        "card_head": card_head,
    }


def test_the_table_comes_from_the_run_directory(evaluated):
    run_dir, report, text = evaluated["run_dir"], evaluated["report"], evaluated["stdout"]
    assert (run_dir / "report.html").is_file()
    rows = {
        (r["prompt_source"], r["block_size"]): r for r in read_summary_rows(run_dir) if r["label"] == "orthrus"
    }
    assert sorted(rows) == [("code", 4), ("code", 8), ("heldout", 4), ("heldout", 8)]
    assert [(c["prompts"], c["block_size"]) for c in report["cells"]] == sorted(rows)
    records = read_records(run_dir / RESULTS_FILE)
    # per prompt source (held-out text, code): ar, orthrus x 2 blocks, untrained view, 2 prompts each
    assert len([r for r in records if r["status"] == "ok"]) == 2 * 2 * 4
    for cell in report["cells"]:
        row = rows[(cell["prompts"], cell["block_size"])]
        assert cell["identical_to_ar"] == "2/2" and row["identity_exact_rate"] == 1.0  # the engine is lossless
        assert cell["tokens_per_forward_median"] == round(row["tokens_per_forward_median"], 3)
        assert cell["accepted_per_cycle_token_weighted"] == round(row["acceptance_length_token_weighted"], 3)
        assert cell["speedup_vs_ar_measured"] == round(row["speedup_vs_ar"], 3)
        assert cell["speedup_vs_ar_cost_model"] is not None and cell["t_fwd_k_over_t_fwd_1"] > 0
        assert len(cell["acceptance_by_position"]) == cell["block_size"] - 1
        assert (
            f"| {cell['prompts']} | {cell['block_size']} | 512 | 2/2 | {cell['accepted_per_cycle_token_weighted']} | "
            f"{cell['tokens_per_forward_median']} |" in text
        )
    assert report["untrained_view"]["block_size"] == 16
    assert "untrained (copied) view, block 16" in text
    assert set(report["untrained_view"]["accepted_per_cycle_token_weighted"]) == {"code", "heldout"}
    assert "2 heldout and 2 code prompts (512 tokens), 16 new tokens" in text


def test_write_card_replaces_the_evaluation_section(evaluated):
    model = evaluated["model"]
    card = (model / "README.md").read_text()
    head, section = card.split(EVALUATION_HEADING)
    assert head == evaluated["card_head"]  # the training section is kept
    assert "Command: `python" in section  # this process's command line (pytest here)
    assert "| block | context | identical to AR |" in section and "| 4 | 512 | 2/2 |" in section
    assert json.loads((model / "eval.json").read_text()) == evaluated["report"]


def test_the_report_shows_the_cost_model_for_the_orthrus_cells(evaluated):
    html = (evaluated["run_dir"] / "report.html").read_text()
    section = html[html.index('id="cost-model"') : html.index("</section>", html.index('id="cost-model"'))]
    assert "block_size=4" in section and "block_size=8" in section and "untrained_view" in section
    assert ">ar<" not in section  # AR is the counterpart, not a row


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prompts", "0"], "--prompts must be at least 1, got 0."),
        (["--json-out", "{tmp}/missing/eval.json"], "does not exist; create it first."),
        (["--block-sizes", "1,4"], "--block-sizes must be comma-separated integers >= 2"),
        (["--model", "no-such-model"], "is neither a local directory nor a zoo model"),
    ],
)
def test_bad_input_is_one_sentence_before_anything_runs(flags, message, tmp_path, capsys):
    out = tmp_path / "reports"
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    assert main(["evaluate", *TINY, "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not out.exists()


def test_cost_model_arithmetic_and_its_section_on_a_synthetic_run(tmp_path):
    assert cost_model_speedup(3.0, 1.0, 1.0) == 2.0  # 4 tokens per 2 passes as cheap as AR's
    assert cost_model_speedup(1.0, 2.0, 4.0) == 0.5
    record = {"status": "ok", "e2e_ms": 110.0, "ttft_ms": 10.0, "forward_passes": 11}
    assert time_per_pass_after_prefill_ms(record) == 10.0  # the prefill counts as one pass
    assert time_per_pass_after_prefill_ms({**record, "forward_passes": 1}) is None

    run_dir = make_run(tmp_path / "reports", "cost", contexts=(512,), block_sizes=(4, 8))
    rows, records = read_summary_rows(run_dir), read_records(run_dir / RESULTS_FILE)
    predicted = cost_model(rows, records)
    assert sorted(c["block_size"] for c in predicted) == [4, 8]  # orthrus cells only, not ar or dlm
    for c in predicted:
        expected = (c["accepted_per_cycle"] + 1) / 2 * c["t_fwd_1_ms"] / c["t_fwd_k_ms"]
        assert c["speedup_predicted"] == pytest.approx(expected)
        assert c["measured_over_predicted"] == pytest.approx(c["speedup_measured"] / expected)
    html = render_run(run_dir, update_index=False).read_text()
    assert 'id="cost-model"' in html and html.count("block_size=") >= 2
