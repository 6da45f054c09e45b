"""Suite validation: every malformed suite stops before anything runs, with one sentence naming the key."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from orthrus.bench.suite.overrides import split_key_path
from orthrus.bench.suite.validate import load_suite
from orthrus.errors import UserInputError
from orthrus.run_cli import main

BASE = {
    "name": "schema_test",
    "models": {"base": {"path": "tiny-draft"}, "draft": {"path": "tiny-draft"}},
    "engines": [
        {"engine": "ar", "model": "base"},
        {"engine": "orthrus", "model": "base", "options": {"block_size": 4}},
        {"engine": "assisted", "model": "base", "draft_model": "draft"},
    ],
    "sweep": {"context_lengths": [64, 128], "temperatures": [0.0], "max_new_tokens": 8},
    "prompts": {"source": "synthetic", "count": 1},
    "measure": {"repetitions": 1, "warmup": 0, "threads": 1},
}

_DELETE = object()


def _edit(path: str, value: object) -> dict:
    raw = copy.deepcopy(BASE)
    node = raw
    parts = split_key_path(path)
    for part in parts[:-1]:
        node = node[part]
    if value is _DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return raw


CASES = [
    ("engines[1].options.block_size", 0, "engines[1].options.block_size: must be >= 1, got 0."),
    ("sweeps", {}, "sweeps: unknown key; did you mean 'sweep'?"),
    ("engines[0].modle", "base", "engines[0].modle: unknown key; did you mean 'model'?"),
    ("engines[1].engine", "orthus", "engines[1].engine: unknown engine 'orthus'; did you mean 'orthrus'?"),
    ("engines[0].model", "bse", "engines[0].model: no model has the key 'bse'; did you mean 'base'?"),
    ("sweep.context_lengths", "512", "sweep.context_lengths: must be an integer, got a string ('512')."),
    ("sweep.temperatures", [0.0, -0.5], "sweep.temperatures[1]: must be >= 0, got -0.5."),
    ("sweep.top_p", 1.5, "sweep.top_p: must be in (0, 1], got 1.5."),
    ("sweep.context_lengths", [64, 64], "sweep.context_lengths: 64 is listed twice; list each value once."),
    (
        "models.base.path",
        "/nonexistent/ckpt",
        "models.base.path: '/nonexistent/ckpt' is neither a checkpoint directory nor a zoo model",
    ),
    ("models.base.dtype", "float8", "models.base.dtype: 'float8' is not supported"),
    (
        "models.base.trust_remote_code",
        "yes",
        "models.base.trust_remote_code: must be true or false, got a string ('yes').",
    ),
    ("prompts", {"source": "jsonl", "path": "/nonexistent/q.jsonl"}, "prompts.path: '/nonexistent/q.jsonl' not found"),
    ("prompts", {"source": "synthetic", "cout": 2}, "prompts.cout: unknown key; did you mean 'count'?"),
    ("prompts", {"source": "websearch"}, "prompts.source: 'websearch' is not supported"),
    (
        "engines[1].label",
        "ar",
        "engines[1].label: 'ar' is already used by engines[0]; give each engine a distinct label.",
    ),
    ("engines[2].draft_model", _DELETE, "engines[2].draft_model: missing; engine 'assisted' needs a draft model"),
    ("engines[0].draft_model", "draft", "engines[0].draft_model: engine 'ar' takes no draft model"),
    (
        "engines[1].options.blok_size",
        4,
        "engines[1].options.blok_size: engine 'orthrus' takes no option 'blok_size' (did you mean 'block_size'?); "
        "its options are block_size, cache, accept_rule, compile, profile, synthetic_acceptance_length, synthetic_rates.",
    ),
    (
        "engines[1].options",
        {"draft_len": 8},
        "engines[1].options.draft_len: engine 'orthrus' takes no option 'draft_len'; "
        "its options are block_size, cache, accept_rule, compile, profile, synthetic_acceptance_length, synthetic_rates.",
    ),
    ("engines[0].options", {"cache": "static", "steps": 4}, "engines[0].options.steps: engine 'ar' takes no option"),
    ("engines[2].options", {"draft_model": "draft"}, "name the draft model with the engine's draft_model key"),
    (
        "models.base.attn_implementation",
        "flash_attention_2",
        "models.base.attn_implementation: 'flash_attention_2' is not an attention implementation these models run; "
        "use one of sdpa, eager.",
    ),
    ("engines[1].options.cache", 5, "engines[1].options.cache: must be a non-empty string, got an integer (5)."),
    ("sweep.exclude", [{"context": 64}], "sweep.exclude[0].context: unknown key; did you mean 'context_length'?"),
    (
        "sweep.exclude",
        [{"context_length": 8192}],
        "sweep.exclude[0].context_length: 8192 is not in sweep.context_lengths [64, 128], so it excludes nothing.",
    ),
    (
        "sweep.include",
        [{"engine": "orthrus", "context_length": 8192, "max_new_tokens": 16384}],
        "exceeds the 16384 positions of model 'base'",
    ),
    (
        "sweep.exclude",
        [{"context_length": 64}, {"context_length": 128}],
        "sweep: the matrix is empty after exclude/include and select",
    ),
    ("measure.repetitions", 0, "measure.repetitions: must be >= 1, got 0."),
    (
        "measure.min_duration_s",
        "1e-3",
        "measure.min_duration_s: must be a number, got the string '1e-3'; write it with a decimal point",
    ),
    ("measure.max_repetitions", 0, "measure.max_repetitions: must be >= 1, got 0."),
    ("gates", {"identity": 1.0}, "gates.identity: unknown key; expected one of rules, baseline."),
    ("gates", 1.0, "gates: must be a list of gate rules (strings or mappings with 'rule'), got a number."),
    ("gates", [["n_failed == 0"]], "gates[0]: must be a rule string or a mapping with 'rule', got a list"),
    ("reference", {"engine": "dlm"}, "reference.engine: 'dlm' cannot be the identity reference"),
    ("models", _DELETE, "models: missing; name at least one model"),
    ("engines", [], "engines: must be a non-empty list of engines, got a list."),
    ("name", "my suite!", "name: 'my suite!' must be letters, digits"),
]


@pytest.mark.parametrize(("path", "value", "message"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_malformed_suite_is_one_sentence_exit_2_and_writes_nothing(tmp_path, capsys, path, value, message):
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(_edit(path, value)))
    out = tmp_path / "reports"
    code = main([str(suite_file), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_refused(tmp_path, capsys):
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(_edit("models.base.device", "cuda")))
    assert main([str(suite_file), "--out", str(tmp_path / "r")]) == 2
    assert "models.base.device: 'cuda' was asked for but this machine has no CUDA GPU" in capsys.readouterr().err
    suite_file.write_text(yaml.safe_dump(BASE))
    assert main([str(suite_file), "--device", "cuda:0", "--dry-run"]) == 2
    assert "--device: 'cuda:0' was asked for but this machine has no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [\n  a: 1\n", "invalid YAML at line"),
        ("models: {base: {path: tiny-draft}}\nmodels: {}\n", "the key 'models' is given twice"),
        ("", "the suite is empty"),
        ("- engines\n", "a suite must be a mapping"),
    ],
)
def test_unreadable_files(tmp_path, capsys, text, message):
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(text)
    assert main([str(suite_file), "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err


def test_command_line_overrides_are_validated_too(tmp_path, capsys):
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(BASE))
    cases = [
        (["--set", "engines[1].options.block_size=0"], "engines[1].options.block_size: must be >= 1, got 0."),
        (["--set", "engines[7].model=base"], "--set engines[7].model: engines has only 3 entries"),
        (["--set", "sweep.context_lengths"], "write it as key.path=value"),
        (["--engines", "ar,orthus"], "--engines orthus: no engine of this suite is labelled so; did you mean 'orthrus'?"),
        (["--shard", "2/2"], "--shard '2/2': I must be in 0..N-1"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--resume", str(tmp_path / "nope")], "not a run directory"),
    ]
    for args, message in cases:
        assert main([str(suite_file), "--dry-run", *args]) == 2, args
        assert message in capsys.readouterr().err, args
    assert main(["missing.yaml"]) == 2
    assert "suite file 'missing.yaml' not found" in capsys.readouterr().err


def test_valid_suite_gets_its_defaults(tmp_path):
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(BASE))
    suite = load_suite(suite_file, sets=["sweep.context_lengths=[32, 64]", "measure.seed=3"])
    assert suite.sweep.axes["context_length"] == [32, 64]
    assert suite.measure.seed == 3 and suite.measure.repetitions == 1 and suite.measure.stop_at_eos is False
    assert suite.reference is not None and (suite.reference.engine, suite.reference.model) == ("ar", "base")
    assert [e.label for e in suite.engines] == ["ar", "orthrus", "assisted"]
    assert suite.models["base"].max_positions == 16384
    quick = load_suite(suite_file, quick=True)
    assert quick.measure.repetitions == 1 and quick.prompts[0].count == 1


def test_narrowing_the_sweep_on_the_command_line_drops_the_file_excludes_it_leaves_empty(tmp_path):
    """An exclude the suite file wrote for a value that --set (or --quick) took out of the sweep has
    nothing left to exclude: it is dropped, so `--set sweep.context_lengths=[256]` works on a suite that
    excludes an engine at 1024. An exclude the command line writes itself, or one naming a value the
    file's sweep never had, is still refused with the sentence naming it."""
    from pathlib import Path

    ci = Path(__file__).resolve().parents[1] / "suites" / "ci.yaml"
    suite = load_suite(ci, ["sweep.context_lengths=[256]"])
    assert suite.sweep.exclude == []
    labels = {c.engine.engine for c in suite.cells}
    assert {"dflash", "eagle3"} <= labels  # at 256 the rivals still run
    assert len(load_suite(ci).sweep.exclude) == 2  # the file as written keeps both
    with pytest.raises(UserInputError, match=r"4096 is not in sweep.context_lengths \[256\], so it excludes nothing"):
        load_suite(ci, ["sweep.context_lengths=[256]", "sweep.exclude=[{engine: dflash, context_length: 4096}]"])
    raw = yaml.safe_load(ci.read_text())
    raw["sweep"]["exclude"].append({"engine": "ar", "context_length": 8192})
    written = tmp_path / "suite.yaml"
    written.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserInputError, match="8192 is not in sweep.context_lengths"):
        load_suite(written, ["measure.repetitions=1"])
