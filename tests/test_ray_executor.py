"""--executor ray on a local Ray instance started here (2 CPUs, loopback only): the same cells and
deterministic figures as the local executor, a worker killed by its PID has its cell retried, a
driver killed mid-run is resumed, and bad input is one sentence before anything is written."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from orthrus.results.record import record_key
from orthrus.results.rundir import read_records
from orthrus.run_cli import main

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]"); the Ray executor is untested')

ROOT = Path(__file__).resolve().parents[1]
DETERMINISTIC = (
    "status",
    "tokens",
    "new_tokens",
    "tokens_per_forward",
    "forward_passes",
    "accepted_per_cycle",
    "acceptance_length",
    "identity_exact",
    "first_divergence",
    "kv_cache_bytes_peak",
    "kv_bytes_per_token",
    "block_size",
)


@pytest.fixture(scope="module")
def ray_address():
    """A Ray instance for this module: 2 CPUs, on loopback; shut down at the end."""
    context = ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


def small_suite(tmp_path: Path, contexts=(64, 128), new_tokens: int = 12, repetitions: int = 1) -> Path:
    """Two model groups (tiny-orthrus: ar + orthrus; tiny-draft: ar), a handful of cells."""
    raw = {
        "name": "ray-small",
        "models": {
            "base": {"path": "tiny-orthrus", "dtype": "float32", "device": "cpu"},
            "draft": {"path": "tiny-draft", "dtype": "float32", "device": "cpu"},
        },
        "engines": [
            {"engine": "ar", "model": "base"},
            {"engine": "orthrus", "model": "base"},
            {"engine": "ar", "model": "draft", "label": "ar-draft"},
        ],
        "sweep": {
            "context_lengths": list(contexts),
            "block_sizes": [8],
            "temperatures": [0.0],
            "max_new_tokens": [new_tokens],
        },
        "prompts": [{"source": "synthetic", "corpus": "heldout", "count": 2}],
        "measure": {"repetitions": repetitions, "warmup": 0, "threads": 1},
        "reference": {"engine": "ar", "model": "base"},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def expected_keys(run_dir: Path) -> set[tuple[str, str, int]]:
    from orthrus.bench.planning import plan
    from orthrus.bench.prompts import PromptFactory
    from orthrus.bench.resume import resumed_suite

    suite, shard = resumed_suite(run_dir)
    reps = suite.measure.repetitions
    return {
        (item.cell.cell_id, p.prompt_id, r) for item in plan(suite, shard, PromptFactory()) for p in item.prompts
        for r in range(reps)
    }  # fmt: skip


def assert_each_once(run_dir: Path) -> list[dict]:
    """Every planned (cell, prompt, repeat) exactly once in results.jsonl, each ok."""
    records = read_records(run_dir / "results.jsonl")
    counts = Counter(record_key(r) for r in records)
    assert set(counts) == expected_keys(run_dir)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    assert all(r["status"] == "ok" for r in records), [r["error"] for r in records if r["status"] != "ok"]
    return records


@pytest.mark.parametrize("order", ["cells", "interleaved"])
def test_ray_run_matches_the_local_run(tmp_path, ray_address, capsys, order):
    """Every order runs under Ray (a worker applies the schedule to its model group, where the cells
    a ratio compares live) with the local run's deterministic figures."""
    suite = str(small_suite(tmp_path, repetitions=2 if order == "interleaved" else 1))
    out = tmp_path / "out"
    order_flag = ["--set", f"measure.order={order}"]
    assert main([suite, "--out", str(out), "--run-id", "local", "--quiet", *order_flag]) == 0
    argv = [suite, "--out", str(out), "--run-id", "ray", "--quiet", "--executor", "ray", "--workers", "2", *order_flag]
    assert main(argv) == 0
    local = {record_key(r): r for r in assert_each_once(out / "ray-small" / "local")}
    remote = {record_key(r): r for r in assert_each_once(out / "ray-small" / "ray")}
    assert set(local) == set(remote)
    for key, record in local.items():
        for name in DETERMINISTIC:
            assert remote[key][name] == record[name], (key, name)
        assert record["node"] is None and record["scheduling_overhead_ms"] is None
        assert remote[key]["node"] and remote[key]["scheduling_overhead_ms"] >= 0
    assert any(r["identity_exact"] is False for r in local.values())  # the draft model's AR differs
    # the summary agrees on every deterministic figure, and the speedup is there on both
    summaries = [json.loads((out / "ray-small" / run / "summary.json").read_text()) for run in ("local", "ray")]
    columns = ("cell_id", "identity_exact_rate", "tokens_per_forward_median", "acceptance_length_mean", "n_ok")
    local_rows, ray_rows = ({row["cell_id"]: [row[c] for c in columns] for row in rows} for rows in summaries)
    assert local_rows == ray_rows
    assert all(row["speedup_vs_ar"] is not None for row in summaries[1] if row["model"] == "base")
    run_dir = out / "ray-small" / "ray"
    environment = json.loads((run_dir / "environment.json").read_text())
    node = next(iter(remote.values()))["node"]
    assert set(environment["nodes"]) == {node}
    assert environment["nodes"][node]["packages"]["ray"] == ray.__version__
    info = json.loads((run_dir / "run.json").read_text())
    assert info["executor"]["kind"] == "ray" and info["executor"]["workers"] == 2 and info["status"] == "finished"
    assert (run_dir / "report.html").is_file()
    if order == "interleaved":  # within the base model's worker: prompt i of every cell before prompt i + 1
        rows = [r for r in read_records(run_dir / "results.jsonl") if r["cell"]["model"] == "base"]
        keys = [(r["repeat"], r["batch_id"]) for r in rows]
        assert keys == sorted(keys) and len({r["cell_id"] for r in rows[:4]}) == 4


def test_a_killed_worker_has_its_cells_retried(tmp_path, ray_address):
    suite = str(small_suite(tmp_path, contexts=(64, 128, 256), new_tokens=16, repetitions=3))
    out = tmp_path / "out"
    results = out / "ray-small" / "kill" / "results.jsonl"
    codes: list[int] = []
    argv = [suite, "--out", str(out), "--run-id", "kill", "--quiet", "--executor", "ray", "--workers", "2"]
    thread = threading.Thread(target=lambda: codes.append(main(argv)))
    thread.start()
    killed = None
    deadline = time.time() + 300
    while killed is None and thread.is_alive() and time.time() < deadline:
        time.sleep(0.05)
        for record in read_records(results):
            if record["cell"]["model"] == "base":  # the larger group: most of its cells still to come
                killed = record["extra"]["worker_pid"]
                os.kill(killed, signal.SIGKILL)
                break
    thread.join(timeout=600)
    assert killed is not None and codes == [0]
    run_dir = out / "ray-small" / "kill"
    records = assert_each_once(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["executor"]["workers_lost"] >= 1 and info["executor"]["retried_cells"]
    assert {r["extra"]["worker_pid"] for r in records if r["cell"]["model"] == "base"} - {killed}


def test_a_killed_driver_resumes_each_cell_once(tmp_path, ray_address):
    suite = str(small_suite(tmp_path, contexts=(64, 128, 256), new_tokens=16, repetitions=2))
    out = tmp_path / "out"
    run_dir = out / "ray-small" / "driver"
    driver = subprocess.Popen(
        [sys.executable, "run_bench.py", suite, "--out", str(out), "--run-id", "driver", "--quiet"]
        + ["--executor", "ray", "--ray-address", ray_address],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while driver.poll() is None and time.time() < deadline:
            if len(read_records(run_dir / "results.jsonl")) >= 3:
                break
            time.sleep(0.05)
        assert driver.poll() is None, "the driver finished before it could be killed"
    finally:
        driver.kill()
        driver.wait()
    before = read_records(run_dir / "results.jsonl")
    assert before and len(before) < len(expected_keys(run_dir))
    assert main(["--resume", str(run_dir), "--quiet", "--executor", "ray"]) == 0
    after = assert_each_once(run_dir)
    kept = {record_key(r): r["timestamp"] for r in before}
    assert all(r["timestamp"] == kept[record_key(r)] for r in after if record_key(r) in kept)  # never measured twice


def test_bad_input_is_one_sentence_and_writes_nothing(tmp_path, ray_address, capsys):
    suite = str(small_suite(tmp_path))
    out = tmp_path / "out"
    for flags, words in (
        (["--workers", "0"], "--workers 0"),
        (["--gpus-per-worker", "1"], "asks for GPUs"),
        (["--workers", "2"], "--executor ray"),  # a Ray flag without --executor ray
    ):
        executor = ["--executor", "ray"] if "--executor ray" not in words else []
        assert main([suite, "--out", str(out), "--quiet", *executor, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
        assert not out.exists()
    # a fresh process: importing orthrus imports no Ray; an unreachable address; Ray missing
    script = f"""
import sys
import orthrus, orthrus.run_cli, orthrus.bench.runner, orthrus.bench.executors
assert "ray" not in sys.modules, "importing orthrus imported ray"
from orthrus.run_cli import main
args = [{suite!r}, "--out", {str(out)!r}, "--quiet", "--executor", "ray"]
sys.modules["ray"] = None  # as if Ray were not installed
assert main(args) == 2
del sys.modules["ray"]
assert main(args + ["--ray-address", "127.0.0.1:9"]) == 2
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 2, done.stderr
    assert 'pip install -e ".[ray]"' in lines[0]
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in lines[1]
    assert not out.exists()
