"""Whole runs on the zoo's tiny-draft model: records, summary, failures, identity, resume, shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from orthrus.bench.prompts import PromptFactory
from orthrus.bench.suite.validate import load_suite
from orthrus.engines import ENGINES
from orthrus.engines.ar import AREngine
from orthrus.models import OrthrusForCausalLM
from orthrus.models.zoo_index import zoo_path
from orthrus.results.record import record_key
from orthrus.results.rundir import read_records
from orthrus.run_cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(zoo_path("tiny-draft") is None, reason="needs the zoo model tiny-draft")


def suite(**changes) -> dict:
    raw = {
        "name": "runtest",
        "models": {"base": {"path": "tiny-draft"}},
        "engines": [
            {"engine": "ar", "model": "base"},
            {"engine": "orthrus", "model": "base", "options": {"block_size": 4}},
        ],
        "sweep": {"context_lengths": [48, 96], "max_new_tokens": 8},
        "prompts": {"source": "synthetic", "count": 2},
        "measure": {"repetitions": 2, "warmup": 1, "threads": 1},
    }
    raw.update(changes)
    return raw


def write_suite(tmp_path: Path, raw: dict, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_dir_of(out: Path, run_id: str) -> Path:
    return next(out.glob(f"*/{run_id}"))


def test_dry_run_prints_the_matrix_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "reports"
    assert main([str(write_suite(tmp_path, suite())), "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 cells" in printed and "estimated work: 20 generate calls" in printed
    assert "orthrus" in printed and "nothing was run or written" in printed
    assert not out.exists()


def test_run_writes_complete_records_summary_and_environment(tmp_path, capsys):
    raw = suite(engines=[*suite()["engines"], {"engine": "hf_generate", "model": "base"}])
    out = tmp_path / "reports"
    assert main([str(write_suite(tmp_path, raw)), "--out", str(out), "--run-id", "r1", "--quiet"]) == 0
    run_dir = run_dir_of(out, "r1")
    for name in (
        "suite.yaml",
        "environment.json",
        "results.jsonl",
        "summary.csv",
        "summary.json",
        "prompts.jsonl",
        "run.json",
    ):
        assert (run_dir / name).is_file(), name
    records = read_records(run_dir / "results.jsonl")
    assert len(records) == 3 * 2 * 2 * 2  # engines x contexts x prompts x repetitions
    assert len({record_key(r) for r in records}) == len(records)
    for r in records:
        assert r["status"] == "ok" and r["run_id"] == "r1"
        assert r["prompt_tokens"] == r["cell"]["context_length"] and r["new_tokens"] == 8 == len(r["tokens"])
        for name in ("e2e_ms", "ttft_ms", "tpot_ms", "decode_tokens_per_s", "rss_peak_mib", "harness_overhead_ms"):
            assert r[name] is not None and r[name] >= 0, name
        for name in (
            "nvml_device_used_mib",
            "nvml_process_used_mib",
            "torch_max_allocated_mib",
            "torch_max_reserved_mib",
        ):
            assert r[name] is None, name  # CPU: not measurable, so null (never 0)
        assert r["identity_exact"] is True and r["reference_engine"] == "ar" and r["ar_nll"] is None
        assert r["kv_cache_bytes_peak"] > 0 and len(r["itl_ms"]) == 7
    orthrus = [r for r in records if r["cell"]["engine"] == "orthrus"]
    assert all(r["cycles"] > 0 and r["memory_bandwidth_gb_s"] > 0 for r in orthrus)
    assert all(r["block_size"] == 4 and r["lossless"] is True and r["kv_bytes_per_token"] > 0 for r in orthrus)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary) == 6
    ar_rows = [row for row in summary if row["engine"] == "ar"]
    assert all(row["speedup_vs_ar"] == pytest.approx(1.0) and row["identity_exact_rate"] == 1.0 for row in ar_rows)
    assert all(row["speedup_vs_ar"] is not None and row["speedup_vs_ar_ci_low"] is not None for row in summary)
    assert all(row["lossless"] is True and row["n_ok"] == 4 for row in summary)
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["run_id"] == "r1" and env["suite_name"] == "runtest" and "PATH" not in json.dumps(env)
    stored = yaml.safe_load((run_dir / "suite.yaml").read_text())
    assert stored["engines"][2]["engine"] == "hf_generate"
    prompts = [json.loads(line) for line in (run_dir / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 4 and all(p["text"].endswith("\n") for p in prompts)
    assert "results: " in capsys.readouterr().out


def test_synthetic_contexts_have_exact_lengths_and_end_at_a_line_break():
    spec = load_suite(None, raw=suite(prompts={"source": "synthetic", "count": 3}))
    factory = PromptFactory()
    tokenizer = factory.tokenizer(spec.models["base"].resolved)
    for length in (100, 333, 1024):
        prompts = factory.prompts(spec.prompts[0], spec.models["base"], length)
        assert len(prompts) == 3 and len({p.prompt_id for p in prompts}) == 3
        for prompt in prompts:
            assert len(prompt.ids) == length
            assert tokenizer.decode(prompt.ids[-1:]).endswith("\n")
    again = PromptFactory().prompts(spec.prompts[0], spec.models["base"], 333)
    assert [p.ids for p in again] == [p.ids for p in factory.prompts(spec.prompts[0], spec.models["base"], 333)]


class _FlakyAREngine(AREngine):
    """``ar`` that fails on the prompt starting with token 9: a measurement that planning cannot
    foresee (out-of-vocabulary ids no longer get that far: planning refuses them with exit 2)."""

    name = "ar_flaky"

    def _generate(self, prompt, *args, **kwargs):
        if prompt[0] == 9:
            raise RuntimeError("this prompt breaks the engine")
        return super()._generate(prompt, *args, **kwargs)


class _UnbuildableEngine(AREngine):
    """An engine whose construction fails on the model it is given: its whole cell cannot run (a
    diffusion engine on a causal checkpoint no longer gets that far: planning refuses it with exit 2)."""

    name = "unbuildable"

    def __init__(self, model, **options):
        raise RuntimeError("this model cannot take the engine")


def test_a_failing_cell_and_a_failing_measurement_do_not_stop_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(ENGINES, _FlakyAREngine.name, _FlakyAREngine)
    monkeypatch.setitem(ENGINES, _UnbuildableEngine.name, _UnbuildableEngine)
    raw = suite(
        engines=[
            {"engine": "unbuildable", "model": "base"},  # this cell cannot run
            {"engine": "ar_flaky", "model": "base"},
            {"engine": "ar", "model": "base"},
        ],
        prompts=[{"source": "inline", "prompts": [{"id": "bad", "ids": [9, 5]}, {"id": "good", "ids": [5, 6, 7, 8]}]}],
        measure={"repetitions": 2, "warmup": 0, "threads": 1},
    )
    out = tmp_path / "reports"
    assert main([str(write_suite(tmp_path, raw)), "--out", str(out), "--run-id", "f", "--quiet"]) == 1
    records = read_records(run_dir_of(out, "f") / "results.jsonl")
    broken = [r for r in records if r["cell"]["engine"] == "unbuildable"]
    assert len(broken) == 1 and broken[0]["status"] == "failed" and broken[0]["prompt_id"] == "*"
    assert "cannot take the engine" in broken[0]["error"]
    flaky = [r for r in records if r["cell"]["engine"] == "ar_flaky"]
    bad = [r for r in flaky if r["prompt_id"] == "bad"]
    good = [r for r in flaky if r["prompt_id"] == "good"]
    assert len(bad) == 1 and bad[0]["status"] == "failed" and "this prompt breaks the engine" in bad[0]["error"]
    assert len(good) == 2 and all(r["status"] == "ok" for r in good)
    ar = [r for r in records if r["cell"]["engine"] == "ar"]
    assert len(ar) == 4 and all(r["status"] == "ok" for r in ar)
    assert "failed" in capsys.readouterr().out


def test_identity_divergence_margin_and_nll_of_a_lossy_engine(tmp_path):
    raw = suite(
        engines=[
            {"engine": "ar", "model": "base"},
            {
                "engine": "orthrus",
                "label": "lossy",
                "model": "base",
                "options": {"block_size": 4, "accept_rule": "accept_all"},
            },
        ],
        sweep={"context_lengths": [64], "max_new_tokens": 12},
        prompts={"source": "synthetic", "count": 3},
        measure={"repetitions": 1, "warmup": 0, "threads": 1},
    )
    out = tmp_path / "reports"
    assert main([str(write_suite(tmp_path, raw)), "--out", str(out), "--run-id", "i", "--quiet"]) == 0
    records = read_records(run_dir_of(out, "i") / "results.jsonl")
    reference = {r["prompt_id"]: r["tokens"] for r in records if r["cell"]["engine"] == "ar"}
    prompts = {
        p["prompt_id"]: p["ids"]
        for p in map(json.loads, (run_dir_of(out, "i") / "prompts.jsonl").read_text().splitlines())
    }
    lossy = [r for r in records if r["cell"]["label"] == "lossy"]
    assert lossy and any(r["identity_exact"] is False for r in lossy)
    model = OrthrusForCausalLM.from_base(zoo_path("tiny-draft"), mask_token_id=2, dtype=torch.float32)
    for r in lossy:
        ref, mine = reference[r["prompt_id"]], r["tokens"]
        first = next((i for i, (a, b) in enumerate(zip(ref, mine)) if a != b), None)
        assert r["first_divergence"] == first
        assert r["match_fraction"] == pytest.approx(sum(a == b for a, b in zip(ref, mine)) / len(ref))
        assert r["lossless"] is False and r["ar_nll"] is not None and r["ar_nll"] > 0
        if first is not None:
            with torch.no_grad():
                logits = model(torch.tensor([prompts[r["prompt_id"]] + ref[:first]]))[0, -1]
            top2 = torch.topk(logits.float(), 2).values
            assert r["divergence_margin"] == pytest.approx(float(top2[0] - top2[1]), rel=1e-4, abs=1e-4)
            assert ref[first] == int(logits.argmax())  # the reference took the top-1 token there


def test_resume_after_sigkill_measures_every_cell_prompt_repeat_exactly_once(tmp_path):
    raw = suite(
        sweep={"context_lengths": [96, 192], "max_new_tokens": 24},
        measure={"repetitions": 8, "warmup": 0, "threads": 1},
    )
    suite_file = write_suite(tmp_path, raw)
    out = tmp_path / "reports"
    expected = 2 * 2 * 2 * 8
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "run_bench.py"), str(suite_file), "--out", str(out), "--run-id", "k", "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = out / "runtest" / "k" / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if results.is_file() and results.read_text().count("\n") >= 6:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = read_records(results)
    assert 6 <= len(before) < expected, "the run must be killed midway"
    with results.open("a") as handle:  # as if the kill had landed in the middle of a write
        handle.write('{"run_id": "k", "cell_id": "trunc')
    assert main(["--resume", str(results.parent), "--quiet"]) == 0
    after = read_records(results)
    keys = [record_key(r) for r in after]
    assert len(keys) == len(set(keys)) == expected
    assert [record_key(r) for r in after[: len(before)]] == [record_key(r) for r in before]
    assert all(r["status"] == "ok" for r in after)
    info = json.loads((results.parent / "run.json").read_text())
    assert info["status"] == "finished" and len(info["sessions"]) == 2
    # resuming with a different suite is refused
    other = write_suite(tmp_path, suite(sweep={"context_lengths": [96], "max_new_tokens": 24}), "other.yaml")
    assert main([str(other), "--resume", str(results.parent)]) == 2


def test_shards_merge_into_the_full_run(tmp_path, capsys):
    suite_file = write_suite(tmp_path, suite(measure={"repetitions": 1, "warmup": 0, "threads": 1}))
    out = tmp_path / "reports"
    for index in range(2):
        code = main([str(suite_file), "--out", str(out), "--run-id", "s", "--shard", f"{index}/2", "--quiet"])
        assert code == 0
    shard_dirs = sorted((out / "runtest").glob("s-shard*"))
    assert [d.name for d in shard_dirs] == ["s-shard0of2", "s-shard1of2"]
    parts = [read_records(d / "results.jsonl") for d in shard_dirs]
    assert parts[0] and parts[1] and not {r["cell_id"] for r in parts[0]} & {r["cell_id"] for r in parts[1]}
    assert main(["merge", *map(str, shard_dirs), "--quiet"]) == 0
    merged = out / "runtest" / "s-merged"
    records = read_records(merged / "results.jsonl")
    assert len(records) == 2 * 2 * 2 and {r["run_id"] for r in records} == {"s-merged"}
    summary = json.loads((merged / "summary.json").read_text())
    assert len(summary) == 4 and all(row["speedup_vs_ar"] is not None for row in summary)
    assert main(["merge", str(shard_dirs[0]), str(tmp_path)]) == 2  # not a run directory
    capsys.readouterr()


def test_jsonl_prompts_in_spec_bench_format_with_categories(tmp_path, capsys):
    questions = tmp_path / "question.jsonl"
    rows = [
        {"question_id": 81 + i, "category": category, "turns": [f"Write about {category} number {i}.", "Again."]}
        for i, category in enumerate(["writing", "writing", "math", "coding", "math"])
    ]
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    raw = suite(
        engines=[{"engine": "ar", "model": "base"}],
        prompts={
            "source": "jsonl",
            "path": str(questions),
            "per_category": 1,
            "categories": ["writing", "math"],
            "chat_template": True,
        },
        measure={"repetitions": 1, "warmup": 0, "threads": 1},
    )
    out = tmp_path / "reports"
    assert main([str(write_suite(tmp_path, raw)), "--out", str(out), "--run-id", "j", "--quiet"]) == 0
    assert "has none; using the raw text" in capsys.readouterr().err  # the tiny tokenizer has no chat template
    run_dir = run_dir_of(out, "j")
    records = read_records(run_dir / "results.jsonl")
    assert sorted((r["prompt_id"], r["category"]) for r in records) == [("81", "writing"), ("83", "math")]
    assert {r["cell"]["context_length"] for r in records} == {None}
    by_category = json.loads((run_dir / "summary_by_category.json").read_text())
    assert sorted(row["category"] for row in by_category) == ["math", "writing"]


def test_report_hook_failure_keeps_the_results(tmp_path, capsys, monkeypatch):
    import orthrus.report

    def broken(run_dir):
        raise RuntimeError("no plots today")

    monkeypatch.setattr(orthrus.report, "render_run", broken, raising=False)
    raw = suite(engines=[{"engine": "ar", "model": "base"}], sweep={"context_lengths": [32], "max_new_tokens": 4})
    raw["measure"] = {"repetitions": 1, "warmup": 0, "threads": 1}
    out = tmp_path / "reports"
    assert main([str(write_suite(tmp_path, raw)), "--out", str(out), "--run-id", "h"]) == 0
    captured = capsys.readouterr()
    assert "the report could not be rendered (RuntimeError: no plots today)" in captured.err
    assert "results: " in captured.out and "report: " not in captured.out
    assert (run_dir_of(out, "h") / "summary.csv").is_file()


def test_a_gated_run_gates_then_renders_the_report_once(tmp_path, capsys, monkeypatch):
    import orthrus.report

    rendered = []
    real_render = orthrus.report.render_run

    def counting(run_dir):
        rendered.append(Path(run_dir))
        assert (Path(run_dir) / "gates.json").is_file(), "the report is rendered after the gates"
        return real_render(run_dir)

    monkeypatch.setattr(orthrus.report, "render_run", counting)
    raw = suite(engines=[{"engine": "ar", "model": "base"}], sweep={"context_lengths": [32], "max_new_tokens": 4})
    raw["measure"] = {"repetitions": 1, "warmup": 0, "threads": 1}
    raw["gates"] = [{"rule": "n_failed == 0"}]
    out = tmp_path / "reports"
    assert main([str(write_suite(tmp_path, raw)), "--out", str(out), "--run-id", "g", "--quiet"]) == 0
    assert rendered == [run_dir_of(out, "g")]
    assert f"report: {run_dir_of(out, 'g') / 'report.html'}" in capsys.readouterr().out
