"""Mistakes and mishaps at the command line end in one sentence on stderr and exit 2 (130 for
Ctrl-C), never a traceback, and write nothing half-way: bad output paths, run ids that escape
--out, read-only runs, a full disk, Ctrl-C during start-up, bad generate values, argparse usage
errors, and engine labels that look like TeX to matplotlib."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from orthrus.cli import main as orthrus_main
from orthrus.models.zoo_index import zoo_path
from orthrus.results.rundir import read_records
from orthrus.run_cli import main as bench_main

ROOT = Path(__file__).resolve().parents[1]
needs_zoo = pytest.mark.skipif(zoo_path("tiny-draft") is None, reason="needs the zoo model tiny-draft")
LABELS = ("a$b$c", "a$^$c")  # mathtext to matplotlib: the second one does not even parse as TeX
SUITE = {
    "name": "clierrors",
    "models": {"base": {"path": "tiny-draft"}},
    "engines": [
        {"engine": "ar", "model": "base"},
        *({"engine": "orthrus", "model": "base", "label": label, "options": {"block_size": 4}} for label in LABELS),
    ],
    "sweep": {"context_lengths": [48], "max_new_tokens": 4},
    "prompts": {"source": "synthetic", "count": 2},
    "measure": {"repetitions": 1, "warmup": 0, "threads": 1},
    "gates": ["tokens_per_forward_median >= 0"],
}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "ORTHRUS_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"}


def one_error(text: str, *words: str) -> str:
    """The stderr of a refused command: one 'error:' line, no traceback, naming ``words``."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert "Traceback" not in text
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")} if path.exists() else set()


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "suite.yaml"
    path.write_text(yaml.safe_dump(SUITE, sort_keys=False, allow_unicode=True))
    return path


@pytest.fixture(scope="module")
def run_dir(suite_file, tmp_path_factory) -> Path:
    """One real small run (ar plus two orthrus engines with '$' in their labels)."""
    if zoo_path("tiny-draft") is None:
        pytest.skip("needs the zoo model tiny-draft")
    out = tmp_path_factory.mktemp("reports")
    assert bench_main([str(suite_file), "--out", str(out), "--run-id", "r", "--quiet"]) == 0
    return out / "clierrors" / "r"


@pytest.fixture
def run_copy(run_dir, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def read_only(command: list[str], path: Path) -> list[str]:
    """``command`` run with ``path`` read-only: chmod for an ordinary user; for root (who may write
    anywhere) a private mount namespace with a read-only bind mount of ``path``."""
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(path)], check=True)
        return command
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    probe = subprocess.run(["unshare", "-m", "sh", "-c", script, str(path), "true"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("running as root without a way to make a folder read-only (unshare/mount)")
    return ["unshare", "-m", "sh", "-c", script, str(path), *command]


def bench(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run_bench.py"), *args], capture_output=True, text=True, env=ENV, **kwargs
    )


# ------------------------------------------------------------------------------- run: --out, --run-id
def test_out_that_is_a_file_is_refused_before_anything_runs(suite_file, tmp_path, capsys):
    out = tmp_path / "reports"
    out.write_text("not a folder")
    assert bench_main([str(suite_file), "--out", str(out), "--quiet"]) == 2
    one_error(capsys.readouterr().err, "--out", "is a file", "folder")
    assert out.read_text() == "not a folder"


@needs_zoo
def test_read_only_out_is_refused_before_anything_runs(suite_file, tmp_path):
    out = tmp_path / "archive"
    out.mkdir()
    command = [sys.executable, str(ROOT / "run_bench.py"), str(suite_file), "--out", str(out), "--quiet"]
    done = subprocess.run(read_only(command, out), capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 2, done.stderr
    one_error(done.stderr, "--out", "not writable")
    assert files_under(out) == set()


@pytest.mark.parametrize("run_id", ["../../escaped", "..", "nested/run", "{abs}", "back\\slash"])
def test_run_id_that_leaves_out_is_refused(suite_file, tmp_path, capsys, run_id):
    out = tmp_path / "inner" / "reports"
    run_id = run_id.format(abs=tmp_path / "absolute")
    assert bench_main([str(suite_file), "--out", str(out), "--run-id", run_id, "--quiet"]) == 2
    one_error(capsys.readouterr().err, "--run-id", "plain folder name")
    assert files_under(tmp_path) == set()  # nothing inside --out, and nothing outside it either


# ----------------------------------------------------------------------------- full disk, Ctrl-C
@needs_zoo
def test_full_disk_during_a_run_is_one_sentence_and_the_run_resumes(suite_file, tmp_path, capsys):
    """An OSError(ENOSPC) injected at the second fsync of results.jsonl: the half-written record is
    taken back, the message says the disk is full, what is safe and how to resume; the resume then
    measures every measurement exactly once."""
    out = tmp_path / "reports"
    inject = (
        "import errno, os, sys\n"
        "real, seen = os.fsync, [0]\n"
        "def fsync(fd):\n"
        "    if os.readlink(f'/proc/self/fd/{fd}').endswith('results.jsonl'):\n"
        "        seen[0] += 1\n"
        "        if seen[0] > 1:\n"
        "            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    return real(fd)\n"
        "os.fsync = fsync\n"
        "from orthrus.run_cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = [str(suite_file), "--out", str(out), "--run-id", "full", "--quiet"]
    done = subprocess.run(
        [sys.executable, "-c", inject, *args], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600
    )
    run = out / "clierrors" / "full"
    assert done.returncode == 2, done.stderr
    started = [line for line in done.stderr.splitlines() if line.startswith("note: ")]
    assert len(started) == 1 and "fresh diffusion view" in started[0]  # tiny-draft has no view: said once, at the start
    errors = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("note: "))
    line = one_error(errors, "disk is full", "1 measurement", str(run), f"--resume {run}")
    assert "free some space" in line
    data = (run / "results.jsonl").read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1  # the record that failed at fsync was taken back
    assert bench_main(["--resume", str(run), "--quiet"]) == 0
    capsys.readouterr()
    keys = [(r["cell_id"], r["prompt_id"], r["repeat"]) for r in read_records(run / "results.jsonl")]
    assert len(keys) == len(set(keys)) == 3 * 2  # engines x prompts, each exactly once


def _wait_until_importing_torch(pid: int, timeout_s: float = 120.0) -> None:
    """Until the process has mapped torch's library (Python's own SIGINT handling is installed by
    then, and the command is still importing); a fixed sleep raced with a loaded machine."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if "libtorch" in Path(f"/proc/{pid}/maps").read_text():
                return
        except OSError:
            return  # already gone: the assertions below say how it ended
        time.sleep(0.02)


@pytest.mark.parametrize(
    "command",
    [
        ["run_bench.py", "{suite}", "--out", "{out}", "--quiet"],
        ["-m", "orthrus", "generate", "--model", "tiny-draft", "--prompt-ids", "1,2,3"],
    ],
    ids=["run_bench", "generate"],
)
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(suite_file, tmp_path, command):
    args = [part.format(suite=suite_file, out=tmp_path / "reports") for part in command]
    if args[0] == "run_bench.py":
        args[0] = str(ROOT / "run_bench.py")
    process = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT
    )
    _wait_until_importing_torch(process.pid)  # start-up: Python runs, its heavy imports are under way
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2, err
    assert "interrupted" in err
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("main", [bench_main, orthrus_main], ids=["run_bench", "orthrus"])
def test_a_command_line_driven_from_a_thread_runs_and_returns_its_code(main, tmp_path, capsys):
    """Python allows signal handlers on the main thread only: the Ctrl-C bookkeeping must step aside
    for a command line run from another thread (the Ray executor's tests and embedders do this)."""
    codes: list[int] = []
    failures: list[BaseException] = []

    def drive() -> None:
        try:
            codes.append(main(["report", str(tmp_path / "missing")] if main is bench_main else ["no-such-command"]))
        except BaseException as error:  # noqa: BLE001 - the test reports what escaped the thread
            failures.append(error)

    thread = threading.Thread(target=drive)
    thread.start()
    thread.join(timeout=120)
    assert failures == [] and codes == [2]
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------- merge, gate, baseline, report
def test_merge_out_that_is_a_file_is_refused(run_dir, tmp_path, capsys):
    target = tmp_path / "merged.txt"
    target.write_text("keep me")
    assert bench_main(["merge", str(run_dir), "--out", str(target), "--quiet"]) == 2
    one_error(capsys.readouterr().err, "merge --out", "is a file")
    assert target.read_text() == "keep me"


def test_gate_junit_that_is_a_folder_is_refused_before_the_gates(run_dir, tmp_path, capsys):
    assert bench_main(["gate", str(run_dir), "--junit", str(tmp_path), "--no-report"]) == 2
    one_error(capsys.readouterr().err, "--junit", "is a folder", str(tmp_path / "gates.xml"))
    assert files_under(tmp_path) == set()


def test_baseline_saved_onto_a_folder_is_refused(run_dir, tmp_path, capsys):
    assert bench_main(["baseline", "save", str(run_dir), str(tmp_path)]) == 2
    one_error(capsys.readouterr().err, "is a folder", "baseline.json")
    assert files_under(tmp_path) == set()


def test_step_summary_that_is_a_folder_is_a_warning_and_the_gates_decide(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path))
    assert bench_main(["gate", str(run_dir), "--no-report", "--quiet"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "GITHUB_STEP_SUMMARY" in warnings[0] and "Traceback" not in err
    failing = tmp_path / "fail.yaml"
    failing.write_text(yaml.safe_dump({"gates": ["tokens_per_forward_median >= 1000"]}))
    assert bench_main(["gate", str(run_dir), "--gate", str(failing), "--no-report", "--quiet"]) == 1


def test_environment_json_that_is_not_an_object_is_one_sentence(run_copy, capsys):
    for content in ("[1, 2]", '"text"', "3"):
        (run_copy / "environment.json").write_text(content)
        for command in (["report", str(run_copy)], ["baseline", "save", str(run_copy), str(run_copy / "b.json")]):
            assert bench_main(command) == 2
            one_error(capsys.readouterr().err, "environment.json", "JSON object")
    assert not (run_copy / "b.json").exists()


@needs_zoo
def test_read_only_run_is_not_re_rendered_but_can_be_rendered_elsewhere(run_copy, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in files_under(run_copy)}
    elsewhere = tmp_path / "rendered"
    report = [sys.executable, str(ROOT / "run_bench.py"), "report", str(run_copy)]
    done = subprocess.run(read_only(report, run_copy), capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 2, done.stderr
    one_error(done.stderr, "read-only", "--out", "copy")
    done = subprocess.run(
        read_only([*report, "--out", str(elsewhere)], run_copy), capture_output=True, text=True, env=ENV, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert (elsewhere / "report.html").is_file() and len(list((elsewhere / "plots").glob("*.png"))) >= 5
    gate = [sys.executable, str(ROOT / "run_bench.py"), "gate", str(run_copy), "--quiet"]
    done = subprocess.run(read_only(gate, run_copy), capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert {p: p.stat().st_mtime_ns for p in files_under(run_copy)} == before  # nothing in the run changed


# --------------------------------------------------------------------------- plots: labels with '$'
def test_labels_with_dollar_signs_are_drawn_as_plain_text(run_copy, capsys):
    from orthrus.report.plots import PLOTS, make_plots
    from orthrus.report.rundata import load_run

    plots, warnings = make_plots(load_run(run_copy))
    assert warnings == []
    assert {p.name for p in plots} >= {"by_engine", "acceptance_histogram", "latency_cdfs"}  # one context: bars
    assert all(p.path.stat().st_size > 0 for p in plots) and len(plots) <= len(PLOTS)
    assert bench_main(["report", str(run_copy)]) == 0
    assert "could not" not in capsys.readouterr().err
    page = (run_copy / "report.html").read_text()
    assert all(label in page for label in LABELS)


# ------------------------------------------------------------------- python -m orthrus generate/evaluate
GENERATE = ["generate", "--model", "tiny-draft", "--prompt-ids", "1,2,3", "--max-new-tokens", "4"]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--temperature", "nan"], ["--temperature", "finite"]),
        (["--temperature", "inf"], ["--temperature", "finite"]),
        (["--top-p", "nan"], ["--top-p"]),
        (["--device", "mps"], ["--device", "'mps'", "cpu"]),
        (["--device", "tpu"], ["--device", "'tpu'", "cuda"]),
        (["--threads", "-1"], ["--threads", "-1"]),
    ],
)
def test_generate_refuses_bad_values_before_loading(extra, words, capsys):
    assert orthrus_main([*GENERATE, *extra]) == 2
    one_error(capsys.readouterr().err, *words)


def test_evaluate_refuses_zero_prompts_and_a_missing_json_folder_before_running(tmp_path, capsys):
    out = tmp_path / "reports"
    assert orthrus_main(["evaluate", "--prompts", "0", "--out", str(out)]) == 2
    one_error(capsys.readouterr().err, "--prompts")
    missing = tmp_path / "missing" / "eval.json"
    assert orthrus_main(["evaluate", "--prompts", "1", "--json-out", str(missing), "--out", str(out)]) == 2
    one_error(capsys.readouterr().err, "--json-out", "does not exist")
    assert not out.exists()


@pytest.mark.parametrize(
    ("main", "argv", "hint"),
    [
        (orthrus_main, [], "python -m orthrus --help"),
        (orthrus_main, ["frobnicate"], "python -m orthrus --help"),
        (orthrus_main, ["generate", "--model"], "python -m orthrus generate --help"),
        (orthrus_main, ["generate", "--model", "m", "--prompt-ids", "1", "--temperature", "hot"], "generate --help"),
        (orthrus_main, ["evaluate", "--prompts", "many"], "python -m orthrus evaluate --help"),
        (orthrus_main, ["profile"], "python -m orthrus profile --help"),
    ],
)
def test_argument_errors_are_one_sentence_with_a_help_hint(main, argv, hint, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    one_error(captured.err, hint)
    assert "usage:" not in captured.err + captured.out


def test_argument_errors_of_a_real_process_are_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "orthrus", "generate", "--temperature", "nan"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 2
    one_error(done.stderr, "--model", "python -m orthrus generate --help")


def test_json_outputs_still_parse_after_the_checks(run_dir, tmp_path, capsys):
    """A guard on the checks above (not a bug test): they refuse only what is wrong, so a baseline
    into a new folder and JUnit XML next to it are still written."""
    baseline = tmp_path / "new" / "baseline.json"
    assert bench_main(["baseline", "save", str(run_dir), str(baseline)]) == 0
    assert json.loads(baseline.read_text())["run_id"] == "r"
    junit = tmp_path / "new" / "junit.xml"
    assert bench_main(["gate", str(run_dir), "--junit", str(junit), "--no-report", "--quiet"]) == 0
    assert junit.read_text().startswith("<?xml") or "<testsuite" in junit.read_text()
    capsys.readouterr()
