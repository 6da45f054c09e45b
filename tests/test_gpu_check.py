"""scripts/gpu_check.py on a CPU machine: its caps, its stage machinery, and its CPU rehearsal, so that
the first run on a GPU is not its first run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts/gpu_check.py"
PY = sys.executable


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "ORTHRUS_TEST_THREADS": "1"},
    )


def read_summary(out: Path) -> tuple[dict, str, dict]:
    data = json.loads((out / "summary.json").read_text())
    return data, (out / "summary.md").read_text(), {s["stage"]: s for s in data["stages"]}


# ---------------------------------------------------------------------- without CUDA
def test_without_cuda_and_without_rehearsal_it_says_so_and_exits_2(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_script(str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and "--rehearse-on-cpu" in lines[0]


def test_the_preflight_child_says_in_one_sentence_what_failed(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_script("--preflight", "cuda", timeout=120)
    assert result.returncode == 1
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("PREFLIGHT-FAILED ") and "sees no CUDA device" in last
    assert "torch:" in result.stdout and "transformers:" in result.stdout  # the versions come first


# ---------------------------------------------------------------------- caps and budget
def test_caps_add_up_within_the_budget_and_leave_room_in_a_ten_minute_command(gpu_check, tmp_path):
    caps = gpu_check.CAPS
    assert sum(caps.values()) <= gpu_check.BUDGET_S  # preflight included
    assert gpu_check.BUDGET_S + gpu_check.OUTSIDE_STAGES_S <= gpu_check.RECOMMENDED_TIMEOUT_S
    assert gpu_check.RECOMMENDED_TIMEOUT_S <= gpu_check.COMMAND_LIMIT_S - 60 and gpu_check.COMMAND_LIMIT_S == 600
    plan = gpu_check.stages(tmp_path / "out", tmp_path)
    assert [s.name for s in plan] == list(gpu_check.STAGES) == list(caps)
    assert plan[0].name == "preflight" and plan[-1].name == "batch_sweep"
    for stage in plan:
        assert stage.cap == caps[stage.name] and not stage.fixed
        if any(c.argv for c in stage.commands):  # a process: 10-15 s of start-up and imports, then its work
            assert stage.cap >= 25, stage.name
    assert caps["batch_sweep"] >= 75  # estimated at 45-60 s: room beyond the estimate, plus carry-over
    assert caps["preflight"] <= 40  # about 20 s, then the check knows the stack works
    # the GPU plan runs the published shapes on CUDA; a --cap names an exact cap
    argv = [a for s in plan for c in s.commands for a in (c.argv or [])]
    assert "qwen3-shape:1.7b" in argv and "qwen3-shape:8b" in argv and "qwen3-shape:0.6b" in argv
    assert "cuda" in argv and "cpu" not in argv
    [fixed] = [s for s in gpu_check.stages(tmp_path / "o", tmp_path, caps={"batch_sweep": 120}) if s.fixed]
    assert fixed.name == "batch_sweep" and fixed.cap == 120


def test_a_cap_for_an_unknown_stage_is_refused(gpu_check):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["out", "--cap", "nonsense=3"])
    args = gpu_check.parse_args(["out", "--stages", "project,zoo_fp32", "--cap", "project=5"])
    assert args.chosen == ["preflight", "zoo_fp32", "project"] and args.caps == {"project": 5.0}


# ---------------------------------------------------------------------- the stage machinery
def command(gpu_check, code: str):
    return gpu_check.Command(argv=[PY, "-c", code])


def test_stages_are_time_boxed_carry_time_over_and_go_on_after_a_failure(gpu_check, tmp_path):
    Stage = gpu_check.Stage
    plan = [
        Stage("quick", 6, "", [command(gpu_check, "pass")]),
        Stage("uses_carry_over", 1, "", [command(gpu_check, "import time; time.sleep(2)")]),
        Stage("fails", 20, "", [command(gpu_check, "import sys; print('boom'); sys.exit(3)")]),
        Stage("hangs", 1.5, "", [command(gpu_check, "import time; time.sleep(60)")], fixed=True),
        Stage("after", 20, "", [command(gpu_check, "print('still ran')")]),
        Stage("in_process", 5, "", [gpu_check.Command(function=lambda: 1 / 0)]),
    ]
    seen = []
    results = gpu_check.run_stages(plan, 120, {"PATH": "/usr/bin:/bin"}, tmp_path, tmp_path, seen.append)
    status = {r["stage"]: r["status"] for r in results}
    assert status["quick"] == "ok" and status["uses_carry_over"] == "ok"  # 1 s cap + what "quick" left
    assert status["fails"] == "failed (exit 3)" and "boom" in results[2]["tail"]
    assert status["hangs"].startswith("timeout after") and results[3]["seconds"] < 10
    assert status["after"] == "ok" and status["in_process"].startswith("failed (ZeroDivisionError")
    assert (tmp_path / "log-hangs.txt").is_file() and (tmp_path / "log-fails.txt").is_file()
    assert not (tmp_path / "log-quick.txt").exists()
    assert len(seen) == 2 * len(plan) + 1  # before everything, then before and after each stage
    skipped = gpu_check.run_stages(plan[:1], 0, {}, tmp_path, tmp_path)
    assert skipped[0]["status"] == "skipped (time budget spent)"


def test_a_failed_preflight_stops_the_check_with_one_sentence(gpu_check, tmp_path, monkeypatch, capsys):
    real_stages = gpu_check.stages

    def failing_preflight(out, work, settings, caps):
        plan = real_stages(out, work, settings, caps)
        plan[0].commands = [command(gpu_check, "print('PREFLIGHT-FAILED the GPU is on fire'); raise SystemExit(1)")]
        return plan

    monkeypatch.setattr(gpu_check, "stages", failing_preflight)
    assert gpu_check.main([str(tmp_path / "out"), "--rehearse-on-cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: preflight failed: the GPU is on fire."
    data, md, stages = read_summary(tmp_path / "out")
    assert stages["preflight"]["status"] == "failed (exit 1)"
    assert all(s["status"] == "not run (preflight failed)" for name, s in stages.items() if name != "preflight")
    assert data["failure"] == "preflight failed: the GPU is on fire." and "the GPU is on fire" in md


def test_a_run_cut_short_still_leaves_a_partial_summary(gpu_check, tmp_path):
    from tests.report_synthetic import make_run

    run = make_run(tmp_path / "reports", engines=("ar", "orthrus"), contexts=(512,))
    (run / "summary.json").unlink()  # killed before the harness wrote its summary
    out = tmp_path / "out"
    out.mkdir()
    names = gpu_check.copy_run_summary(run, out, "shapes", tmp_path / "work")
    assert "shapes-summary.partial.json" in names and "shapes-summary.partial.csv" in names
    rows = json.loads((out / "shapes-summary.partial.json").read_text())
    assert {r["engine"] for r in rows} == {"ar", "orthrus"}
    gpu_check.write_summary(out, [{"stage": "shapes_suite", "status": "timeout after 75 s", "tail": "t"}], {})
    assert "(partial: the stage was cut short)" in (out / "summary.md").read_text()


# ---------------------------------------------------------------------- the CPU rehearsal
def test_a_stage_that_times_out_leaves_the_earlier_stages_results_and_summary(tmp_path):
    out = tmp_path / "out"
    result = run_script(
        str(out), "--rehearse-on-cpu", "--stages", "zoo_fp32,profile_8b,project", "--cap", "profile_8b=2", timeout=240
    )
    assert result.returncode == 1, result.stderr
    data, md, stages = read_summary(out)
    assert list(stages) == ["preflight", "zoo_fp32", "profile_8b", "project"] and data["complete"]
    assert stages["preflight"]["status"] == "ok" and data["preflight"]["identity"]
    assert stages["zoo_fp32"]["status"] == "ok"
    assert set(stages["zoo_fp32"]["files"]) == {
        "zoo-float32-summary.json",
        "zoo-float32-summary.csv",
        "environment.json",
    }
    assert all((out / name).is_file() for name in stages["zoo_fp32"]["files"])
    assert stages["profile_8b"]["status"].startswith("timeout after") and stages["profile_8b"]["seconds"] < 15
    assert (out / "log-profile_8b.txt").is_file() and not (out / "profile-qwen3-tiny-untied-bf16.json").exists()
    assert stages["project"]["status"].startswith("failed")  # it ran after the timeout (no shapes run to project)
    assert "## Zoo in fp32" in md and "| profile_8b | timeout after" in md


def test_the_cpu_rehearsal_runs_every_stage_end_to_end(gpu_check, tmp_path):
    out = tmp_path / "out"
    result = run_script(str(out), "--rehearse-on-cpu", timeout=400)
    data, md, stages = read_summary(out)
    assert result.returncode == 0, md
    assert list(stages) == list(gpu_check.STAGES) and data["complete"] and data["mode"] == "cpu rehearsal"
    assert all(s["status"] == "ok" for s in stages.values()), {k: s["status"] for k, s in stages.items()}
    for name in gpu_check.STAGES:
        assert f"| {name} | ok |" in md
    assert "skipped" in stages["cuda_tests"]["tail"] and "failed" not in stages["cuda_tests"]["tail"]
    versions = data["preflight"]["versions"]
    assert {"python", "torch", "torch_cuda", "transformers", "tokenizers", "safetensors", "numpy", "pynvml"} <= set(
        versions
    )
    assert data["preflight"]["identity"] == {
        "orthrus": "identical to ar (32 tokens)",
        "assisted": "identical to ar (32 tokens)",
    }
    expected = {
        "profile-qwen3-tiny-bf16.json",
        "profile-qwen3-tiny-untied-bf16.json",
        "profile-qwen3-tiny-draft-bf16.json",
        "projection.json",
        "environment.json",
        *(
            f"{run}-summary.{ext}"
            for run in ("zoo-float32", "zoo-bfloat16", "compiled", "shapes", "batch")
            for ext in ("json", "csv")
        ),
    }
    files = {p.name for p in out.iterdir()}
    assert expected | {"summary.json", "summary.md"} == files
    assert len(files) <= 30 and sum(p.stat().st_size for p in out.iterdir()) < 1_000_000
    # what the shape figures mean, said plainly; the assisted projection marked, the count without it
    assert "Not meaningful" in md and "tokens per forward" in md and "acceptance" in md
    assert "projection vs measurement" in md and "fp32" in md and "divergence margins" in md
    projection = json.loads((out / "projection.json").read_text())
    engines = {r["engine"]: r["comparable"] for d in projection["devices"] for r in d["rows"]}
    assert engines == {"orthrus": True, "assisted": False}
    assert "(not comparable)" in md and data["projection_honesty"]["not_comparable_engines"] == ["assisted"]
    for section in ("## Zoo in fp32", "## Zoo in bf16", "## Shapes suite", "## Batch sweep", "## Projection"):
        assert section in md
