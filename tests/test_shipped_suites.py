"""Every shipped suite validates and expands (dry run: nothing run, nothing written); the GPU
suite, on a machine without CUDA, stops with the one-sentence CUDA error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITES = sorted(p.name for p in (ROOT / "suites").glob("*.yaml"))


def test_the_documented_suites_are_shipped():
    assert {
        "long_context.yaml",
        "ci.yaml",
        "block_size.yaml",
        "sampling.yaml",
        "spec_bench.yaml",
        "long_context_gpu.yaml",
    } <= set(SUITES)


@pytest.mark.parametrize("suite", SUITES)
def test_suite_starts_with_its_question_and_validates(suite, tmp_path):
    text = (ROOT / "suites" / suite).read_text()
    assert text.startswith("# Question:")
    extra = ["--baseline", "reports/baselines/ci.json"] if suite == "ci.yaml" else []
    if suite == "spec_bench.yaml":  # the dataset is not shipped: a file of its shape stands in for it
        data = tmp_path.parent / f"{tmp_path.name}-question.jsonl"
        rows = [{"question_id": i, "category": f"c{i % 3}", "turns": [f"Question {i}?"]} for i in range(9)]
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        extra = ["--set", f"prompts[0].path={data}"]
    command = [sys.executable, "run_bench.py", f"suites/{suite}", "--dry-run", "--out", str(tmp_path), *extra]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if suite == "long_context_gpu.yaml" and not torch.cuda.is_available():
        assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and proc.stderr.count("\n") == 1
        return
    assert proc.returncode == 0, proc.stderr
    assert "dry run: nothing was run or written." in proc.stdout
    assert not any(tmp_path.iterdir())
