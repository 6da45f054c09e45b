"""Hostile and unlucky input to the suite schema, the gate grammar, planning, compare and report
--index (issue 10, sections 3 and 4): each is refused quickly with one sentence and exit 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orthrus.bench.suite.load import parse_yaml
from orthrus.report import gates
from orthrus.report.commands import cmd_compare, cmd_report
from orthrus.run_cli import main
from tests.report_synthetic import make_run

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "name": "hostile",
    "models": {"base": {"path": "tiny-base"}},
    "engines": [{"engine": "ar", "model": "base"}],
    "sweep": {"context_lengths": [64], "max_new_tokens": [8]},
    "prompts": [{"source": "inline", "prompts": [{"ids": [5, 6, 7]}]}],
    "measure": {"repetitions": 1, "warmup": 0},
}


def _bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines)


def _dry_run(tmp_path: Path, capsys, suite: dict | str, *extra: str) -> tuple[int, str]:
    file = tmp_path / "suite.yaml"
    file.write_text(suite if isinstance(suite, str) else yaml.safe_dump(suite, sort_keys=False))
    code = main([str(file), "--dry-run", *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------- 3. exhausting input
def test_alias_bomb_in_an_engine_option_is_refused_under_a_memory_cap(tmp_path):
    """The whole CLI in a process limited to 6 GB of address space and 120 s: a 900-byte bomb that
    expands to 9^9 (387 million) strings is refused in about a second."""
    bomb = _bomb()
    suite = yaml.safe_dump({k: v for k, v in SMALL.items() if k != "engines"}, sort_keys=False)
    text = bomb + "\n" + suite + "engines:\n  - {engine: ar, model: base, options: {cache: *a8}}\n"
    assert len(bomb) < 900
    file = tmp_path / "bomb.yaml"
    file.write_text(text)
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (6 * 1024**3, resource.RLIM_INFINITY));"
        "from orthrus.run_cli import main; sys.exit(main(sys.argv[1:]))"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script, str(file), "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr
    assert "expands to more than" in _one_error(done.stderr)
    assert time.monotonic() - started < 120


def test_alias_bomb_is_refused_at_parse_time_in_milliseconds():
    started = time.monotonic()
    with pytest.raises(Exception, match="expands to more than 100,000 values"):
        parse_yaml(_bomb(), "suite.yaml")
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("what", ["gate file", "acceptance file"])
def test_alias_bombs_in_other_yaml_inputs_are_refused_too(tmp_path, what):
    """Gate files (--gate) and published-acceptance tables (project --acceptance) go through the same
    bounded reader as suites: one sentence, in well under a second."""
    from orthrus.errors import UserInputError
    from orthrus.profile.project import acceptance_from_yaml

    file = tmp_path / "bomb.yaml"
    file.write_text(_bomb() + "\ngates: *a8\n" if what == "gate file" else _bomb() + "\nentries: *a8\n")
    started = time.monotonic()
    with pytest.raises(UserInputError, match="expands to more than 100,000 values"):
        gates.load_gate_file(file) if what == "gate file" else acceptance_from_yaml(file)
    assert time.monotonic() - started < 1.0


def test_an_alias_inside_itself_is_refused():
    with pytest.raises(Exception, match="endless"):
        parse_yaml("a: &a [1, *a]", "suite.yaml")


@pytest.mark.parametrize("depth", [100, 5000])
def test_deep_nesting_in_a_suite_is_refused(tmp_path, capsys, depth):
    deep = "[" * depth + "1" + "]" * depth
    text = yaml.safe_dump(SMALL, sort_keys=False) + f"description: {deep}\n"
    code, err = _dry_run(tmp_path, capsys, text)
    assert code == 2 and "nested deeper than 64 levels" in _one_error(err)


def test_deep_nesting_through_set_is_refused(tmp_path, capsys):
    code, err = _dry_run(tmp_path, capsys, SMALL, "--set", "engines[0].options.cache=" + "[" * 3000 + "]" * 3000)
    assert code == 2 and "nested deeper" in _one_error(err)


def test_a_giant_integer_literal_is_one_sentence(tmp_path, capsys):
    code, err = _dry_run(tmp_path, capsys, SMALL, "--set", "measure.seed=" + "9" * 5000)
    assert code == 2 and "a value cannot be read" in _one_error(err)


@pytest.mark.parametrize(
    "rule",
    [
        "n_failed == " + "(" * 3000 + "1" + ")" * 3000,
        "n_failed == " + "-" * 3000 + "1",
        "n_failed == " + "(" * 40 + "1" + ")" * 40,  # short, but deeper than 32
        "n_failed == " + " + ".join(["1"] * 400),  # long
    ],
)
def test_gate_rules_with_deep_or_long_expressions_are_refused(tmp_path, capsys, rule):
    code, err = _dry_run(tmp_path, capsys, {**SMALL, "gates": [rule]})
    assert code == 2
    assert re.search(r"nested parentheses or signs|characters long", _one_error(err))


def test_a_deep_gate_rule_is_refused_by_the_parser_itself():
    with pytest.raises(Exception, match="nested parentheses"):
        gates.parse_rule("n_failed == " + "-" * 100 + "1")


# ----------------------------------------------------------------------- 4. bad values
NON_FINITE = [".nan", ".inf", "-.inf", "nan", "inf"]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize(
    "key",
    [
        "sweep.temperatures",
        "sweep.top_p",
        "measure.min_duration_s",
        "measure.sample_interval_ms",
        "sweep.context_lengths",
        "measure.repetitions",
    ],
)
def test_nan_and_infinity_are_refused_on_the_command_line(tmp_path, capsys, key, value):
    code, err = _dry_run(tmp_path, capsys, SMALL, "--set", f"{key}={value}")
    assert code == 2
    line = _one_error(err)
    assert key in line and re.search(r"finite|NaN|must be an integer|must be a number", line)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_and_infinity_are_refused_in_a_suite_file(tmp_path, capsys, value):
    suite = {**SMALL, "sweep": {**SMALL["sweep"], "temperatures": [0.0, value]}}
    code, err = _dry_run(tmp_path, capsys, suite)
    assert code == 2 and "sweep.temperatures[1]: must be a finite number" in _one_error(err)


@pytest.mark.parametrize(
    "engine, options, path",
    [
        ({"engine": "fast_dllm", "model": "dlm"}, {"threshold": float("nan")}, "options.threshold"),
        (
            {"engine": "assisted", "model": "base", "draft_model": "base"},
            {"assistant_confidence_threshold": float("inf")},
            "options.assistant_confidence_threshold",
        ),
    ],
)
def test_nan_in_engine_options_is_refused(tmp_path, capsys, engine, options, path):
    suite = {**SMALL, "models": {"base": "tiny-base", "dlm": "tiny-dlm"}, "engines": [{**engine, "options": options}]}
    suite["reference"] = None
    code, err = _dry_run(tmp_path, capsys, suite)
    assert code == 2 and path in _one_error(err) and "finite" in _one_error(err)


def test_unknown_engine_option_lists_the_accepted_ones(tmp_path, capsys):
    suite = {**SMALL, "engines": [{"engine": "orthrus", "model": "base", "options": {"draft_len": 8}}]}
    code, err = _dry_run(tmp_path, capsys, suite)
    line = _one_error(err)
    assert code == 2 and "takes no option 'draft_len'" in line and "block_size" in line
    suite["engines"][0]["options"] = {"block_sise": 8}
    code, err = _dry_run(tmp_path, capsys, suite)
    assert code == 2 and "did you mean 'block_size'" in _one_error(err)


@pytest.mark.parametrize(
    "rule, message",
    [
        ("tokens_per_forwrd >= 1", "unknown metric 'tokens_per_forwrd'; did you mean 'tokens_per_forward'"),
        ({"rule": "n_failed == 0", "where": {"engin": "ar"}}, "where key 'engin' is not a cell parameter"),
        ("n_failed <= blok_size", "unknown name 'blok_size'"),
        ("n_failed == 1e999", "too large"),
        ({"rule": "n_failed == 0", "where": {"temperature": float("nan")}}, "must be finite"),
    ],
)
def test_gate_mistakes_are_reported_before_anything_runs(tmp_path, capsys, rule, message):
    out = tmp_path / "reports"
    file = tmp_path / "suite.yaml"
    file.write_text(yaml.safe_dump({**SMALL, "gates": [rule]}, sort_keys=False))
    code = main([str(file), "--out", str(out), "--quiet"])  # a real run, not a dry run
    err = capsys.readouterr().err
    assert code == 2 and message in _one_error(err)
    assert not out.exists()  # nothing measured, nothing written


def _docstring_gates() -> list:
    block = re.search(r"^    gates:\n(.*?)\n\n", gates.__doc__, re.S | re.M).group(1)
    return yaml.safe_load("gates:\n" + block)["gates"]


def test_every_rule_in_the_gates_docstring_parses_and_a_suite_accepts_them(tmp_path, capsys):
    examples = _docstring_gates()
    assert any(isinstance(e, str) for e in examples) and len(examples) >= 5
    for i, entry in enumerate(examples):
        gates.parse_rule(entry, f"gates[{i}]")
    suite = {
        **SMALL,
        "engines": [{"engine": "ar", "model": "base"}, {"engine": "orthrus", "model": "base"}],
        "sweep": {**SMALL["sweep"], "context_lengths": [512]},
        "gates": {"baseline": str(tmp_path / "missing.json"), "rules": examples},
    }
    code, err = _dry_run(tmp_path, capsys, suite)
    assert code == 2 and "missing.json" in _one_error(err)  # only the baseline file is missing
    suite["gates"] = examples
    code, err = _dry_run(tmp_path, capsys, suite, "--baseline", str(_baseline(tmp_path)))
    assert code == 0, err


def _baseline(tmp_path: Path) -> Path:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"format": gates.BASELINE_FORMAT, "version": 1, "summary": []}))
    return path


def _inline(ids=None, text=None) -> dict:
    prompt = {"ids": ids} if ids is not None else {"text": text}
    return {**SMALL, "prompts": [{"source": "inline", "prompts": [prompt]}]}


@pytest.mark.parametrize(
    "ids, message", [([5, 4096], "token id 4096, outside the 4096 ids"), ([5, 10**9], "token id 1000000000")]
)
def test_inline_ids_outside_the_vocabulary_are_refused_in_planning(tmp_path, capsys, ids, message):
    code, err = _dry_run(tmp_path, capsys, _inline(ids))
    assert code == 2 and message in _one_error(err)


def test_jsonl_prompts_against_a_small_context_and_a_huge_budget(tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"prompt": "hello world " * 3}) + "\n")
    suite = {**SMALL, "prompts": [{"source": "jsonl", "path": str(data)}], "sweep": {"max_new_tokens": [10**12]}}
    code, err = _dry_run(tmp_path, capsys, suite)
    assert code == 2 and "1,000,000,000,000 exceeds the 16,384 positions" in _one_error(err)


def test_a_prompt_longer_than_the_model_is_refused_in_planning(tmp_path, capsys):
    text = "the quick brown fox jumps over the lazy dog\n" * 4000  # ~180 KB, tens of thousands of tokens
    code, err = _dry_run(tmp_path, capsys, _inline(text=text))
    assert code == 2 and "exceeds the 16,384 positions of model 'base'" in _one_error(err)


def test_ids_at_the_edges_of_the_vocabulary_are_accepted(tmp_path, capsys):
    code, err = _dry_run(tmp_path, capsys, _inline(ids=[0, 4095]))
    assert code == 0, err


def test_a_prompts_file_with_a_non_utf8_byte_is_one_sentence(tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    code, err = _dry_run(tmp_path, capsys, {**SMALL, "prompts": [{"source": "jsonl", "path": str(data)}]})
    assert code == 2 and "line 2 is not UTF-8" in _one_error(err)


def test_a_huge_synthetic_count_plans_at_once(tmp_path, capsys):
    suite = {**SMALL, "prompts": [{"source": "synthetic", "count": 10**15}]}
    started = time.monotonic()
    code, err = _dry_run(tmp_path, capsys, suite)
    assert code == 0, err
    assert time.monotonic() - started < 60


# ----------------------------------------------------------------------- compare, report --index
@pytest.fixture(scope="module")
def two_suites(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "reports"
    a = make_run(root, "a", seed=0)
    b = make_run(root, "b", seed=0)
    suite_file = Path(b) / "suite.yaml"
    raw = yaml.safe_load(suite_file.read_text())
    raw["name"] = "another_suite"
    suite_file.write_text(yaml.safe_dump(raw))
    for name in ("run.json", "environment.json"):
        file = Path(b) / name
        if file.is_file():
            data = json.loads(file.read_text())
            data["suite_name"] = "another_suite"
            file.write_text(json.dumps(data))
    return a, b


def test_compare_of_runs_of_different_suites_exits_2(two_suites, capsys, tmp_path):
    a, b = two_suites
    out = tmp_path / "cmp.html"
    code = cmd_compare([str(a), str(b), "--fail-on-worse", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "another_suite" in _one_error(err) and "same suite" in err
    assert not out.exists()


def test_report_index_on_a_mistyped_path_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "reprots" / "nested"
    code = cmd_report(["--index", str(missing)])
    err = capsys.readouterr().err
    assert code == 2 and "is not a directory" in _one_error(err)
    assert not (tmp_path / "reprots").exists()
