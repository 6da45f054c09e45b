"""The GPU check: everything CUDA-specific in one command, under 8 minutes, offline, nothing to install.

    PYTHONPATH=. python scripts/gpu_check.py OUT_DIR

Stages (each time-boxed; a failing or timed-out stage is recorded and the next one runs):
  1 cuda_tests      pytest -m cuda: engines on cuda fp32 equal to ar, static cache on the device,
                    NVML readings non-null and plausible, synchronised timers
  2 zoo_fp32/bf16   suites/ci.yaml on cuda in fp32 and in bf16 (identity, divergence margins)
  3 profile_*       python -m orthrus profile for qwen3-shape:1.7b and 8b in bf16 up to 32K context
                    (and 0.6b, decode only, as the draft model of assisted)
  4 shapes_suite    a long_context_gpu-style run on random-weight 1.7B (target) and 0.6B (draft)
  5 project         the run projected with the 1.7B profile of this GPU: projection vs measurement
  6 batch_sweep     ar and orthrus on the random-weight 1.7B shape in bf16 at batch sizes 1, 4, 16
                    (2K context, 16 prompts): throughput, speedup over AR at the same batch size,
                    TPF vs batch 1, and identity vs solo AR and vs batch 1 with divergence margins
Writes at most 8 files to OUT_DIR: summary.md, summary.json, profile-*.json (3), projection.json.
Needs: torch with CUDA, transformers, pandas, pyyaml, jinja2, pytest, nvidia-ml-py (as a typical
GPU image has them). On a machine without CUDA it says so in one sentence and exits 2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 470  # all stages together; the 8-minute limit minus start-up and writing
TAIL_CHARS = 1500
PROFILE_CONTEXTS = "1024,8192,32768"
PROFILE_BLOCKS = "1,2,4,8,16,32,64"
TOKENIZER = "orthrus/models/zoo/tiny-tokenizer"


def shape_suite(target: Path, draft: Path) -> dict[str, Any]:
    """A long_context_gpu-style suite on random-weight checkpoints (the zoo's tokenizer for prompts)."""
    return {
        "name": "gpu_check_shapes",
        "description": "Orthrus vs AR and assisted on random-weight Qwen3-1.7B/0.6B shapes, bf16, 2K and 16K context.",
        "models": {
            "target": {"path": str(target), "dtype": "bfloat16", "device": "cuda", "tokenizer": TOKENIZER},
            "draft": {"path": str(draft), "dtype": "bfloat16", "device": "cuda", "tokenizer": TOKENIZER},
        },
        "engines": [
            {"engine": "ar", "model": "target"},
            {"engine": "orthrus", "model": "target"},
            {"engine": "assisted", "model": "target", "draft_model": "draft"},
        ],
        "sweep": {
            "context_lengths": [2048, 16384],
            "block_sizes": [32],
            "temperatures": [0.0],
            "max_new_tokens": [64],
        },
        "prompts": [{"source": "synthetic", "corpus": "heldout", "count": 1}],
        "measure": {"repetitions": 2, "warmup": 1},
        "reference": {"engine": "ar", "model": "target"},
    }


def batch_suite(target: Path) -> dict[str, Any]:
    """The GPU regime of suites/batch.yaml: does Orthrus's advantage survive batching in bf16, and is
    every batched row still the AR output (a divergence is judged near-tie or real by its margin)?"""
    return {
        "name": "gpu_check_batch",
        "description": "Orthrus vs AR at batch sizes 1, 4, 16 on a random-weight Qwen3-1.7B shape, bf16.",
        "models": {"target": {"path": str(target), "dtype": "bfloat16", "device": "cuda", "tokenizer": TOKENIZER}},
        "engines": [{"engine": "ar", "model": "target"}, {"engine": "orthrus", "model": "target"}],
        "sweep": {
            "context_lengths": [2048],
            "block_sizes": [16],
            "temperatures": [0.0],
            "max_new_tokens": [64],
            "batch_sizes": [1, 4, 16],
        },
        "prompts": [{"source": "synthetic", "corpus": "heldout", "count": 16}],
        "measure": {"repetitions": 1, "warmup": 1},
        "reference": {"engine": "ar", "model": "target"},
    }


BATCH_TABLE = """
import json, sys
rows = json.load(open(sys.argv[1]))
cols = ("engine", "batch_size", "batch_tokens_per_s_median", "batch_tokens_per_s_vs_batch1", "speedup_vs_ar",
        "throughput_speedup_vs_ar", "tokens_per_forward_vs_batch1", "identity_exact_rate", "identity_vs_batch1_rate",
        "divergence_margin_median", "divergence_margin_vs_batch1_median", "wasted_row_pass_fraction_mean")
print(" ".join(c[:14] for c in cols))
for r in sorted(rows, key=lambda r: (r["engine"], r["batch_size"])):
    print(" ".join(f"{r.get(c):.4g}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols))
"""


def stages(out: Path, work: Path) -> list[tuple[str, int, list[list[str]]]]:
    """(name, time cap in seconds, commands) in order."""
    py = sys.executable
    runs = work / "runs"
    target, draft = work / "qwen3-1.7b", work / "qwen3-0.6b"
    suite_file = work / "shapes.yaml"
    suite_file.write_text(json.dumps(shape_suite(target, draft), indent=1))  # JSON is YAML
    batch_file = work / "batch.yaml"
    batch_file.write_text(json.dumps(batch_suite(target), indent=1))
    write = "from orthrus.profile.shapes import write_shape_checkpoint as w; w({!r}, {!r}, 'cuda', 'bfloat16')"

    def profile(name: str, blocks: str, contexts: str, repeats: int, *extra: str) -> list[str]:
        return [
            *(py, "-m", "orthrus", "profile", "--device", "cuda", "--dtype", "bfloat16", "--quiet"),
            *("--model", f"qwen3-shape:{name}", "--contexts", contexts, "--blocks", blocks),
            *("--repeats", str(repeats), "--out", str(out / f"profile-qwen3-{name}-bf16.json"), *extra),
        ]

    def zoo(dtype: str) -> list[str]:
        return [
            *(py, "run_bench.py", "suites/ci.yaml", "--device", "cuda", "--quiet", "--out", str(runs)),
            *("--set", f"models.base.dtype={dtype}", "--set", "gates=[]", "--run-id", f"zoo-{dtype}"),
        ]

    return [
        ("cuda_tests", 60, [[py, "-m", "pytest", "tests/test_cuda.py", "-m", "cuda", "-q", "-p", "no:cacheprovider"]]),
        ("zoo_fp32", 40, [zoo("float32")]),
        ("zoo_bf16", 40, [zoo("bfloat16")]),
        # 8 repeats (2 rounds of 4) leave the caps room for the engine steps; the 0.6B shape is the
        # draft model of the shapes suite, which needs only its decode pass
        ("profile_1.7b", 55, [profile("1.7b", PROFILE_BLOCKS, PROFILE_CONTEXTS, 8)]),
        ("profile_8b", 60, [profile("8b", PROFILE_BLOCKS, PROFILE_CONTEXTS, 8)]),
        ("profile_0.6b", 30, [profile("0.6b", "1,2", PROFILE_CONTEXTS, 10, "--no-engine-steps")]),
        (
            "shapes_suite",
            110,
            [
                [py, "-c", write.format("qwen3-shape:1.7b", str(target))],
                [py, "-c", write.format("qwen3-shape:0.6b", str(draft))],
                [py, "run_bench.py", str(suite_file), "--quiet", "--out", str(runs), "--run-id", "shapes"],
            ],
        ),
        (
            "project",
            30,
            [
                [
                    *(py, "-c", "import sys; from orthrus.profile.cli import main_project; sys.exit(main_project())"),
                    str(runs / "gpu_check_shapes" / "shapes"),
                    *("--profile", str(out / "profile-qwen3-1.7b-bf16.json")),
                    *("--profile", str(out / "profile-qwen3-0.6b-bf16.json")),
                    *("--out", str(out / "projection.json")),
                ]
            ],
        ),
        (
            "batch_sweep",  # last: it takes what the earlier stages left of the budget, at most 45 s
            45,
            [
                [py, "run_bench.py", str(batch_file), "--quiet", "--out", str(runs), "--run-id", "batch"],
                [py, "-c", BATCH_TABLE, str(runs / "gpu_check_batch" / "batch" / "summary.json")],
            ],
        ),
    ]


def run_command(command: list[str], timeout: float, env: dict[str, str]) -> tuple[int | None, str]:
    """(exit code or None on timeout, the output's tail); a timed-out command's process group is killed."""
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=max(timeout, 1))
        return process.returncode, output[-TAIL_CHARS:]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return None, (output or "")[-TAIL_CHARS:]


def run_stages(plan: list[tuple[str, int, list[list[str]]]], budget_s: float, env: dict[str, str]) -> list[dict]:
    deadline = time.monotonic() + budget_s
    results = []
    for name, cap, commands in plan:
        started = time.monotonic()
        stage_deadline = min(started + cap, deadline)
        status, tail = "ok", ""
        for command in commands:
            left = stage_deadline - time.monotonic()
            if left <= 0:
                status = "skipped (time budget spent)"
                break
            code, tail = run_command(command, left, env)
            if code is None:
                status = f"timeout after {time.monotonic() - started:.0f} s"
                break
            if code != 0:
                status = f"failed (exit {code})"
                break
        results.append({"stage": name, "status": status, "seconds": round(time.monotonic() - started, 1), "tail": tail})
        print(f"[gpu_check] {name}: {status} ({results[-1]['seconds']} s)", file=sys.stderr, flush=True)
    return results


def zoo_forensics(runs: Path) -> list[dict[str, Any]]:
    """Identity and divergence margins per cell of the zoo runs (from their summary.json)."""
    rows = []
    for dtype in ("float32", "bfloat16"):
        path = runs / "ci" / f"zoo-{dtype}" / "summary.json"
        if not path.is_file():
            continue
        for row in json.loads(path.read_text()):
            rows.append(
                {
                    key: row.get(key)
                    for key in (
                        "label",
                        "dtype",
                        "context_length",
                        "identity_exact_rate",
                        "match_fraction_mean",
                        "divergence_margin_median",
                        "tokens_per_forward_median",
                        "speedup_vs_ar",
                        "nvml_device_used_mib_max",
                        "torch_max_allocated_mib_max",
                    )
                }
            )
    return rows


def write_summary(out: Path, results: list[dict], extra: dict[str, Any]) -> None:
    (out / "summary.json").write_text(json.dumps({"stages": results, **extra}, indent=1, default=str) + "\n")
    lines = [f"# GPU check on {extra.get('device')}", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['status']} | {r['seconds']} |" for r in results]
    if extra.get("zoo"):
        lines += ["", "## Zoo on CUDA: identity and divergence margins", ""]
        lines += [
            "| label | dtype | ctx | identical | match | margin | TPF | speedup |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for z in extra["zoo"]:
            lines.append(
                f"| {z['label']} | {z['dtype']} | {z['context_length']} | {z['identity_exact_rate']} | "
                f"{z['match_fraction_mean']} | {z['divergence_margin_median']} | {z['tokens_per_forward_median']} | "
                f"{z['speedup_vs_ar']} |"
            )
    if extra.get("projection_text"):
        lines += [
            "",
            "## Projection of the shapes run with this GPU's profile",
            "",
            "```",
            extra["projection_text"],
            "```",
        ]
    failed = [r for r in results if r["status"] != "ok"]
    for r in failed:
        lines += ["", f"## {r['stage']}: {r['status']}", "", "```", r["tail"], "```"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: PYTHONPATH=. python scripts/gpu_check.py OUT_DIR", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print(
            "error: this machine has no CUDA GPU (torch.cuda.is_available() is False); run it on one.", file=sys.stderr
        )
        return 2
    out = Path(argv[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    try:
        results = run_stages(stages(out, work), BUDGET_S, env)
        extra: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
        extra["zoo"] = zoo_forensics(work / "runs")
        projection = out / "projection.json"
        if projection.is_file():
            from orthrus.profile.report import format_projection_text

            extra["projection_text"] = format_projection_text(json.loads(projection.read_text()))
        write_summary(out, results, extra)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(out / "summary.md")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
