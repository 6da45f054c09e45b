"""What a new user hits after the flagship run, each on a real command line (``python -m orthrus`` /
``run_bench.py`` in a subprocess, or their ``main([...])``): generate on the wrong kind of model,
uncounted forward passes, engine options and a draft model from the command line, the help, the
warm-up, the model-kind check of the harness and evaluate, --quick slices that still batch and keep
every category, the Spec-Bench path, and the per-category table on the terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orthrus.bench.suite.validate import load_suite
from orthrus.cli import main as orthrus_main
from orthrus.engines import engine_class, engine_names
from orthrus.models.zoo_index import ZOO_NAMES, zoo_path
from orthrus.run_cli import main as bench_main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "ORTHRUS_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"}
needs_zoo = pytest.mark.skipif(
    any(zoo_path(name) is None for name in ZOO_NAMES), reason="needs the zoo models (python -m orthrus train all)"
)


def one_error(text: str, *words: str) -> str:
    """The stderr of a refused command: one 'error:' line, no traceback, naming ``words``."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def generate(capsys, *args: str) -> tuple[int, str, str]:
    code = orthrus_main(["generate", "--prompt-ids", "5,6,7,8", "--max-new-tokens", "8", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ generate: the model an engine needs
@needs_zoo
@pytest.mark.parametrize(
    ("model", "engine"), [("tiny-orthrus", "dlm"), ("tiny-orthrus", "fast_dllm"), ("tiny-base", "fast_dllm")]
)
def test_a_diffusion_engine_on_a_causal_model_names_the_diffusion_lm_not_trusting_code(capsys, model, engine):
    for extra in ([], ["--trust-remote-code"]):  # trusting code is never the fix for a zoo model
        code, _, err = generate(capsys, "--model", model, "--engine", engine, *extra)
        line = one_error(err, f"engine {engine!r}", "masked-diffusion LM", "--model tiny-dlm")
        assert code == 2 and "trust" not in line


@needs_zoo
@pytest.mark.parametrize("engine", ["ar", "orthrus", "hf_generate", None])
def test_a_causal_engine_on_a_diffusion_checkpoint_is_refused(capsys, engine):
    code, _, err = generate(capsys, "--model", "tiny-dlm", *(["--engine", engine] if engine else []))
    assert code == 2
    one_error(err, "tiny-dlm is a masked-diffusion LM", "--model tiny-orthrus")


@needs_zoo
def test_a_fresh_view_is_warned_about(capsys):
    code, _, err = generate(capsys, "--model", "tiny-base", "--engine", "orthrus", "--json")
    assert code == 0
    assert "warning: --model tiny-base is a plain causal checkpoint" in err and "fresh diffusion view" in err
    code, _, err = generate(capsys, "--model", "tiny-orthrus", "--engine", "orthrus", "--json")
    assert code == 0 and "warning" not in err


# ------------------------------------------------------------------ generate: what it reports
@needs_zoo
def test_uncounted_forward_passes_are_null_not_an_invented_ratio(capsys):
    code, out, _ = generate(capsys, "--model", "tiny-orthrus", "--engine", "hf_generate", "--json")
    record = json.loads(out)
    assert code == 0 and len(record["tokens"]) == 8
    assert record["tokens_per_forward"] is None and record["forward_passes"] is None
    code, _, err = generate(capsys, "--model", "tiny-orthrus", "--engine", "hf_generate")
    assert code == 0 and "forward passes not counted" in err and "tokens/forward" not in err
    code, out, _ = generate(capsys, "--model", "tiny-orthrus", "--engine", "ar", "--json")
    assert json.loads(out)["tokens_per_forward"] == pytest.approx(8 / 8)  # prefill + 7 decodes, counted


@needs_zoo
def test_the_timed_call_is_warm_or_says_it_is_cold(capsys):
    code, out, err = generate(capsys, "--model", "tiny-orthrus", "--json")
    assert code == 0 and json.loads(out)["warmup_calls"] == 1
    code, _, err = generate(capsys, "--model", "tiny-orthrus")
    assert code == 0 and "after 1 warm-up call" in err and "not a benchmark" in err
    code, _, err = generate(capsys, "--model", "tiny-orthrus", "--warmup", "0")
    assert code == 0 and "cold: the first call" in err


# ------------------------------------------------------------------ generate: engine options, draft model
@needs_zoo
def test_engine_options_come_from_the_command_line(capsys):
    code, out, _ = generate(
        capsys, "--model", "tiny-dlm", "--engine", "dlm", "--option", "steps=2", "--option", "block_length=8", "--json"
    )
    assert code == 0 and json.loads(out)["forward_passes"]["denoise"] == 2  # 8 tokens in 2 passes, as asked
    code, out, _ = generate(
        capsys, "--model", "tiny-dlm", "--engine", "fast_dllm", "--option", "cache=none", "--option", "threshold=null"
    )
    assert code == 0


@needs_zoo
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--engine", "dlm", "--option", "stepz=8"], ["--option stepz", "did you mean 'steps'"]),
        (["--engine", "dlm", "--option", "steps=0"], ["--option steps", ">= 1"]),
        (["--engine", "dlm", "--option", "steps"], ["KEY=VALUE"]),
        (["--engine", "fast_dllm", "--option", "cache=triple"], ["cache must be one of"]),
        (["--engine", "dlm", "--option", "steps=2", "--option", "steps=3"], ["given twice"]),
        (["--engine", "assisted", "--option", "draft_model=tiny-draft"], ["--draft-model PATH"]),
        (["--engine", "ar", "--draft-model", "tiny-draft"], ["--draft-model applies to", "'assisted'"]),
        (["--engine", "orthrus", "--block-size", "4", "--option", "block_size=8"], ["give one of them"]),
    ],
)
def test_bad_engine_options_are_one_sentence(capsys, args, words):
    model = "tiny-dlm" if args[1] in ("dlm", "fast_dllm") else "tiny-orthrus"
    code, _, err = generate(capsys, "--model", model, *args)
    assert code == 2
    one_error(err, *words)


@needs_zoo
def test_assisted_takes_its_draft_model_from_the_command_line(capsys, tmp_path):
    code, out, _ = generate(capsys, "--model", "tiny-orthrus", "--engine", "assisted", "--draft-model", "tiny-draft")
    assert code == 0
    code, out, err = generate(capsys, "--model", "tiny-orthrus", "--engine", "assisted")
    assert code == 0 and "drafts with the zoo's tiny-draft; --draft-model PATH picks another" in err
    code, _, err = generate(capsys, "--model", "tiny-orthrus", "--engine", "assisted", "--draft-model", "tiny-dlm")
    assert code == 2
    one_error(err, "--draft-model tiny-dlm is a masked-diffusion LM")
    own = tmp_path / "my-qwen3"  # not a zoo model: tiny-draft is no default for it
    own.symlink_to(zoo_path("tiny-orthrus"), target_is_directory=True)
    code, _, err = generate(capsys, "--model", str(own), "--engine", "assisted")
    assert code == 2
    one_error(err, "needs a draft model", "--draft-model PATH")


def test_the_help_lists_every_engine_with_its_options_and_defaults():
    help_text = subprocess.run(
        [sys.executable, "-m", "orthrus", "generate", "--help"], capture_output=True, text=True, env=ENV, check=True
    ).stdout
    for name in engine_names():
        assert f"  {name}" in help_text, name
        for option, param in engine_class(name).options().items():
            if option != "draft_model":
                assert option in help_text, (name, option)
                if isinstance(param.default, (int, float)) and not isinstance(param.default, bool):
                    assert f"{option} [{param.default}]" in help_text, (name, option)
    assert "--option KEY=VALUE" in help_text and "--draft-model" in help_text
    assert "(default: 64)" in help_text and "(default: None)" not in help_text
    top = subprocess.run([sys.executable, "-m", "orthrus", "--help"], capture_output=True, text=True, env=ENV).stdout
    assert "bench," not in top and ",bench" not in top and "run_bench.py" in top  # no such subcommand


# ------------------------------------------------------------------ the harness and evaluate: model kinds
def _suite(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@needs_zoo
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_suite_pointing_a_causal_engine_at_a_dlm_is_refused_at_planning(tmp_path, capsys, dry_run):
    raw = {
        "name": "kinds",
        "models": {"dlm": {"path": "tiny-dlm"}},
        "engines": [{"engine": "ar", "model": "dlm"}],
        "sweep": {"context_lengths": [48], "max_new_tokens": 4},
        "prompts": {"source": "synthetic", "count": 1},
        "measure": {"repetitions": 1, "warmup": 0},
    }
    out = tmp_path / "reports"
    code = bench_main([str(_suite(tmp_path, raw)), "--out", str(out), *(["--dry-run"] if dry_run else [])])
    assert code == 2 and not out.exists()
    one_error(capsys.readouterr().err, "models.dlm (tiny-dlm)", "masked-diffusion LM", "engine 'ar'")


@needs_zoo
def test_evaluate_refuses_a_diffusion_lm_and_a_trained_untrained_base(tmp_path, capsys):
    out = tmp_path / "reports"
    assert orthrus_main(["evaluate", "--model", "tiny-dlm", "--out", str(out), "--prompts", "1"]) == 2
    one_error(capsys.readouterr().err, "--model tiny-dlm is a masked-diffusion LM")
    assert orthrus_main(["evaluate", "--untrained-base", "tiny-orthrus", "--out", str(out), "--prompts", "1"]) == 2
    one_error(capsys.readouterr().err, "--untrained-base tiny-orthrus has a diffusion view of its own")
    assert not out.exists()


# ------------------------------------------------------------------ --quick: still batched, every category
SUITES = sorted((ROOT / "suites").glob("*.yaml"))


@pytest.mark.parametrize("suite_file", SUITES, ids=[p.stem for p in SUITES])
def test_a_quick_run_of_every_shipped_suite_still_decodes_full_batches(suite_file, tmp_path):
    raw = yaml.safe_load(suite_file.read_text())
    sets = []
    if any(str(m.get("path", "")).startswith("/models") for m in raw["models"].values()):
        pytest.skip("a suite for local GPU checkpoints")
    if suite_file.stem == "spec_bench":
        sets = [f"prompts[0].path={write_categories(tmp_path, 3, 3)}"]
    suite = load_suite(suite_file, sets, quick=True)
    largest = max(cell.batch_size for cell in suite.cells)
    for source in suite.prompts:
        if source.source == "synthetic":
            assert source.count is not None and source.count % largest == 0 and source.count >= largest


@needs_zoo
def test_a_batch_cell_with_fewer_prompts_than_its_batch_is_refused(capsys, tmp_path):
    out = tmp_path / "reports"
    args = [str(ROOT / "suites" / "batch.yaml"), "--out", str(out), "--set", "prompts[0].count=2"]
    assert bench_main([*args, "--dry-run"]) == 2
    one_error(capsys.readouterr().err, "gives 2 prompt(s)", "batch size 4", "prompts[0].count")
    assert not out.exists()
    assert bench_main([str(ROOT / "suites" / "batch.yaml"), "--quick", "--dry-run"]) == 0
    assert "note:" not in capsys.readouterr().err  # every batch of the quick slice is full


def write_categories(tmp_path: Path, categories: int, per_category: int) -> Path:
    """A Spec-Bench-shaped question.jsonl: ``turns`` and ``category``."""
    path = tmp_path / "question.jsonl"
    lines = [
        json.dumps({"question_id": f"{c}-{i}", "category": f"cat{c}", "turns": [f"def f{c}_{i}(x):\n    return"]})
        for c in range(categories)
        for i in range(per_category)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@needs_zoo
def test_spec_bench_quick_keeps_one_prompt_of_every_category(tmp_path, capsys):
    data = write_categories(tmp_path, 4, 3)
    suite = ROOT / "suites" / "spec_bench.yaml"
    assert bench_main([str(suite), "--quick", "--dry-run", "--set", f"prompts[0].path={data}"]) == 0
    plan_lines = [line for line in capsys.readouterr().out.splitlines() if " question " in line]
    assert plan_lines and all(line.split()[-2] == "4" for line in plan_lines)  # 4 prompts: one per category


def test_spec_bench_without_the_dataset_says_where_it_comes_from_and_how_to_point_at_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_bench.py"), str(ROOT / "suites" / "spec_bench.yaml"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and not list(tmp_path.iterdir())
    line = one_error(proc.stderr, "--set prompts[0].path=", "hemingkx/Spec-Bench", "data/spec_bench/question.jsonl")
    assert "shared" not in line
    assert "shared" not in (ROOT / "suites" / "spec_bench.yaml").read_text()


@needs_zoo
def test_a_per_category_run_prints_its_categories(tmp_path, capsys):
    data = write_categories(tmp_path, 3, 2)
    raw = {
        "name": "categories",
        "models": {"base": {"path": "tiny-orthrus"}},
        "engines": [{"engine": "ar", "model": "base"}, {"engine": "orthrus", "model": "base"}],
        "sweep": {"max_new_tokens": 4, "block_sizes": [4]},
        "prompts": {"source": "jsonl", "path": str(data), "per_category": 2},
        "measure": {"repetitions": 1, "warmup": 0, "threads": 1},
    }
    out = tmp_path / "reports"
    assert bench_main([str(_suite(tmp_path, raw)), "--out", str(out), "--run-id", "c"]) == 0
    text = capsys.readouterr().out
    assert "per category: speedup vs AR" in text
    rows = [line for line in text.splitlines() if line.startswith("cat") and not line.startswith("category")]
    assert [row.split()[0] for row in rows] == ["cat0", "cat1", "cat2"]
    assert all(row.split()[1] == "2" and "TPF" in row for row in rows)  # 2 prompts per category, orthrus's column


# ------------------------------------------------------------------ gate, baseline, compare
TINY = {
    "name": "tinygate",
    "models": {"base": {"path": "tiny-orthrus"}},
    "engines": [{"engine": "ar", "model": "base"}, {"engine": "orthrus", "model": "base"}],
    "sweep": {
        "context_lengths": [48],
        "block_sizes": [4],
        "max_new_tokens": 6,
        "include": [{"engine": "orthrus", "batch_size": 4}],  # as ci.yaml: orthrus batched, AR at batch 1 only
    },
    "prompts": {"source": "synthetic", "count": 4},
    "measure": {"repetitions": 1, "warmup": 0, "threads": 1},
}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """Real runs of one tiny suite: 'a' and 'b' (the same code), 'changed' (another measure.warmup),
    'other' (the same settings under another suite name), 'one_a'/'one_b' (one prompt per cell)."""
    if zoo_path("tiny-orthrus") is None:
        pytest.skip("needs the zoo model tiny-orthrus")
    tmp = tmp_path_factory.mktemp("tiny")
    suite = _suite(tmp, TINY)
    out = tmp / "reports"
    one = ["--set", "prompts.count=1", "--set", "sweep.include=[]"]
    variants = {
        "a": [],
        "b": [],
        "changed": ["--set", "measure.warmup=1"],
        "other": ["--set", "name=othersuite"],
        "one_a": one,
        "one_b": one,
    }
    runs = {}
    for run_id, extra in variants.items():
        assert bench_main([str(suite), "--out", str(out), "--run-id", run_id, "--quiet", *extra]) == 0
        runs[run_id] = out / ("othersuite" if run_id == "other" else "tinygate") / run_id
    return runs


def test_a_speedup_rule_on_cells_without_an_ar_counterpart_is_not_a_regression(tiny_runs, tmp_path, capsys):
    rules = tmp_path / "gates.yaml"
    rules.write_text(yaml.safe_dump({"gates": [{"rule": "speedup_vs_ar >= 0.01", "where": {"engine": "orthrus"}}]}))
    code = bench_main(["gate", str(tiny_runs["a"]), "--gate", str(rules), "--no-report"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "SKIP" in out and "no 'ar' cell at batch_size=4" in out and "not a regression" in out
    assert "REGRESSION" not in out and "1 not applicable" in out


def test_gate_refuses_a_baseline_of_another_suite(tiny_runs, tmp_path, capsys):
    other = tmp_path / "other.json"
    assert bench_main(["baseline", "save", str(tiny_runs["other"]), str(other)]) == 0
    capsys.readouterr()
    rules = tmp_path / "gates.yaml"
    rules.write_text(yaml.safe_dump({"gates": ["tokens_per_forward >= baseline * 0.97"]}))
    assert bench_main(["gate", str(tiny_runs["a"]), "--gate", str(rules), "--baseline", str(other)]) == 2
    one_error(capsys.readouterr().err, "is of suite 'othersuite'", "of suite 'tinygate'", "its own suite")
    out = tmp_path / "reports"  # and before a run: refused before anything is measured
    suite = _suite(tmp_path, TINY)
    assert bench_main([str(suite), "--gate", str(rules), "--baseline", str(other), "--out", str(out)]) == 2
    one_error(capsys.readouterr().err, "is of suite 'othersuite'")
    assert not out.exists()


def test_a_baseline_of_a_changed_suite_names_the_keys_that_differ(tiny_runs, tmp_path, capsys):
    baseline = tmp_path / "base.json"
    assert bench_main(["baseline", "save", str(tiny_runs["a"]), str(baseline)]) == 0
    saved = json.loads(baseline.read_text())
    assert saved["measured_suite"]["measure"]["warmup"] == 0
    rules = tmp_path / "gates.yaml"
    rules.write_text(yaml.safe_dump({"gates": ["tokens_per_forward >= baseline * 0.97"]}))
    capsys.readouterr()
    assert bench_main(["gate", str(tiny_runs["changed"]), "--gate", str(rules), "--baseline", str(baseline)]) == 0
    note = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("note:"))
    assert "measure.warmup: 0 in the baseline, 1 here" in note
    assert bench_main(["gate", str(tiny_runs["b"]), "--gate", str(rules), "--baseline", str(baseline)]) == 0
    assert "note:" not in capsys.readouterr().out  # the same suite: nothing to note


def test_compare_cannot_judge_wall_clock_without_a_spread_and_judges_it_with_one(tiny_runs, tmp_path, capsys):
    code = bench_main(["compare", str(tiny_runs["one_a"]), str(tiny_runs["one_b"]), "--out", str(tmp_path / "c.html")])
    text = capsys.readouterr().out
    assert code == 0
    assert "cannot judge" in text and "fewer than 2" in text
    flagged = [line for line in text.splitlines() if line.lstrip().startswith(("WORSE", "BETTER", "CHANGED"))]
    assert not flagged, text  # the same code: deterministic figures equal, times not judged from one sample
    assert "cannot judge" in (tmp_path / "c.html").read_text()
    bench_main(["compare", str(tiny_runs["a"]), str(tiny_runs["b"]), "--out", str(tmp_path / "d.html")])
    text = capsys.readouterr().out
    assert "cannot judge 4 wall-clock values" in text  # one batch of four is one timed call: the batch-4 cell
    flagged = [line for line in text.splitlines() if line.lstrip().startswith(("WORSE", "BETTER", "CHANGED"))]
    # the same code: deterministic figures stay; times move only beyond both runs' intervals (and the
    # peak RSS of a process that ran the runs before this one)
    assert all("95% intervals" in line or "rss_peak_mib_max" in line for line in flagged), text


def test_the_shipped_ci_baseline_was_measured_with_the_shipped_ci_suite():
    from orthrus.bench.suite.load import read_suite_file
    from orthrus.report.gates import load_baseline
    from orthrus.report.gates.baseline import measured_suite_hash

    raw, _ = read_suite_file(ROOT / "suites" / "ci.yaml")
    baseline = load_baseline(ROOT / "reports" / "baselines" / "ci.json")
    assert baseline["measured_suite_hash"] == measured_suite_hash(raw), (
        "suites/ci.yaml changed what it measures since reports/baselines/ci.json was saved: refresh the baseline "
        "with the procedure in suites/ci.yaml"
    )


# ------------------------------------------------------------------ Ctrl-C, --resume, --shard and merge
def _as_if_interrupted(run_dir: Path, drop_last: int) -> None:
    """What Ctrl-C leaves: run.json 'interrupted', the last records not yet measured, no summary."""
    results = run_dir / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    results.write_text("".join(lines[:-drop_last]))
    for name in ("summary.json", "summary.csv"):
        (run_dir / name).unlink(missing_ok=True)
    info = json.loads((run_dir / "run.json").read_text())
    info["status"] = "interrupted"
    (run_dir / "run.json").write_text(json.dumps(info))


def test_gates_on_an_unfinished_run_never_pass(tiny_runs, tmp_path, capsys):
    import shutil

    run = tmp_path / "cut"
    shutil.copytree(tiny_runs["a"], run)
    _as_if_interrupted(run, drop_last=5)
    rules = tmp_path / "gates.yaml"
    rules.write_text(yaml.safe_dump({"gates": ["n_failed == 0"]}))
    assert bench_main(["gate", str(run), "--gate", str(rules), "--no-report"]) == 2
    captured = capsys.readouterr()
    assert "UNFINISHED RUN" in captured.out and "PASS (" not in captured.out
    assert f"--resume {run}" in captured.err
    assert bench_main(["--resume", str(run), "--quiet"]) == 0  # completed, the same gates pass
    capsys.readouterr()
    assert bench_main(["gate", str(run), "--gate", str(rules), "--no-report"]) == 0


@needs_zoo
def test_merge_gates_the_merged_run_as_a_whole(tmp_path, capsys):
    raw = {**TINY, "name": "shardgate", "gates": ["n_failed == 0", "tokens_per_forward >= 1.0"]}
    suite, out = _suite(tmp_path, raw), tmp_path / "reports"
    shards = []
    for i in range(2):
        argv = [str(suite), "--out", str(out), "--run-id", "s", "--shard", f"{i}/2", "--quiet"]
        assert bench_main(argv) == 0
        shards.append(str(out / "shardgate" / f"s-shard{i}of2"))
    capsys.readouterr()
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "orthrus-baseline", "suite_name": "ci", "summary": []}))
    merged = tmp_path / "merged"
    assert bench_main(["merge", *shards, "--out", str(merged), "--baseline", str(other)]) == 2
    one_error(capsys.readouterr().err, "is of suite 'ci'")
    assert not merged.exists()  # refused before anything was merged
    assert bench_main(["merge", *shards, "--out", str(merged), "--quiet"]) == 0
    assert "gates: PASS (6 passed" in capsys.readouterr().out  # 2 rules x 3 cells of the whole run
    assert json.loads((merged / "gates.json").read_text())["status"] == "pass"


def test_engines_flag_mistakes_name_the_flag(capsys):
    assert bench_main([str(ROOT / "suites" / "ci.yaml"), "--engines", "orthrs", "--dry-run"]) == 2
    one_error(capsys.readouterr().err, "--engines orthrs", "did you mean 'orthrus'")


@needs_zoo
def test_an_interrupted_evaluation_resumes_and_prints_its_table(tmp_path, capsys):
    import shutil

    model = tmp_path / "my-orthrus"
    shutil.copytree(zoo_path("tiny-orthrus"), model)
    tiny = ["--block-sizes", "4", "--prompts", "2", "--max-new-tokens", "8", "--threads", "1", "--quiet"]
    out = tmp_path / "reports"
    assert orthrus_main(["evaluate", "--model", str(model), *tiny, "--out", str(out)]) == 0
    (run,) = (out / "diffusion_view").iterdir()
    first = capsys.readouterr().out
    _as_if_interrupted(run, drop_last=3)
    assert orthrus_main(["evaluate", "--resume", str(run), "--model", "tiny-orthrus"]) == 2
    one_error(capsys.readouterr().err, "--resume continues the evaluation", "drop --model")
    assert orthrus_main(["evaluate", "--resume", str(run), "--quiet", "--write-card"]) == 0
    resumed = capsys.readouterr().out
    assert "| heldout | 4 | 512 | 2/2 |" in first  # both prompts measured and identical to AR
    assert "| heldout | 4 | 512 | 2/2 |" in resumed and "| code | 4 | 512 | 2/2 |" in resumed
    card = (model / "README.md").read_text()
    command = next(line for line in card.splitlines() if line.startswith("Command: `"))
    assert "--resume" not in command  # the command that started the measurement (run.json), not the resume
    assert orthrus_main(["evaluate", "--resume", str(ROOT / "suites")]) == 2
    one_error(capsys.readouterr().err, "not a run directory")


@needs_zoo
def test_a_batched_run_labels_per_row_figures_beside_the_batch_throughput(tmp_path, capsys):
    suite = _suite(tmp_path, TINY)
    assert bench_main([str(suite), "--out", str(tmp_path / "reports"), "--run-id", "t"]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("engine "))
    assert "row e2e ms" in header and "row tok/s" in header
    assert "batch tok/s" in header and "throughput vs AR [95% CI]" in header


def test_a_baseline_is_never_saved_from_part_of_a_run(tiny_runs, tmp_path, capsys):
    import shutil

    from tests.report_synthetic import make_run

    run = tmp_path / "cut"
    shutil.copytree(tiny_runs["a"], run)
    _as_if_interrupted(run, drop_last=2)
    file = tmp_path / "baseline.json"
    assert bench_main(["baseline", "save", str(run), str(file)]) == 2
    one_error(capsys.readouterr().err, "did not finish (status interrupted)", f"--resume {run}")
    failing = make_run(tmp_path / "reports", "oom", fail_engine_at=("orthrus", 1024))
    assert bench_main(["baseline", "save", str(failing), str(file)]) == 2
    one_error(capsys.readouterr().err, "failed measurement(s)")
    assert not file.exists()


@needs_zoo
def test_the_identity_reference_never_decodes_a_diffusion_checkpoint(tmp_path, capsys):
    raw = {
        "name": "dlmonly",
        "models": {"dlm": {"path": "tiny-dlm"}},
        "engines": [{"engine": "dlm", "model": "dlm", "options": {"steps": 4, "block_length": 8}}],
        "sweep": {"context_lengths": [48], "max_new_tokens": 8},
        "prompts": {"source": "synthetic", "count": 1},
        "measure": {"repetitions": 1, "warmup": 0},
    }
    suite = _suite(tmp_path, raw)
    assert load_suite(suite).reference is None  # no causal model: no identity check, not AR on a DLM
    assert bench_main([str(suite), "--dry-run"]) == 0
    capsys.readouterr()
    assert bench_main([str(suite), "--dry-run", "--set", "reference.engine=ar"]) == 2
    one_error(capsys.readouterr().err, "the identity reference's model", "reference: null")


def test_a_speedup_whose_ar_cell_failed_fails_and_says_so(tmp_path, capsys):
    from tests.report_synthetic import make_run

    run = make_run(tmp_path / "reports", "arfail", fail_engine_at=("ar", 1024))
    rules = tmp_path / "gates.yaml"
    rules.write_text(yaml.safe_dump({"gates": [{"rule": "speedup_vs_ar >= 0.1", "where": {"engine": "orthrus"}}]}))
    assert bench_main(["gate", str(run), "--gate", str(rules), "--no-report"]) == 1  # a failure is not "n/a"
    assert "whose measurements failed" in capsys.readouterr().out
