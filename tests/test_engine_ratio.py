"""scripts/engine_ratio.py: one engine over another within one run, paired by prompt."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "engine_ratio.py"
spec = importlib.util.spec_from_file_location("engine_ratio", SCRIPT)
engine_ratio = importlib.util.module_from_spec(spec)
spec.loader.exec_module(engine_ratio)


def record(label, context, prompt, tps, e2e, status="ok"):
    cell = {
        "label": label,
        "prompt_source": "heldout",
        "context_length": context,
        "block_size": None,
        "batch_size": 1,
        "temperature": 0.0,
        "max_new_tokens": 8,
    }
    return {"cell": cell, "prompt_id": prompt, "status": status, "decode_tokens_per_s": tps, "e2e_ms": e2e}


def test_ratios_pair_by_prompt_and_setting_and_take_the_median_of_repetitions():
    records = [
        record("fast", 512, "p0", 200.0, 50.0),
        record("fast", 512, "p0", 220.0, 40.0),  # median 210, 45
        record("slow", 512, "p0", 100.0, 90.0),
        record("fast", 512, "p1", 150.0, 60.0),
        record("slow", 512, "p1", 100.0, 120.0),
        record("fast", 512, "p2", 999.0, 1.0, status="failed"),
        record("slow", 512, "p2", 100.0, 90.0),  # not paired
        record("fast", 1024, "p0", 100.0, 10.0),  # no counterpart at 1024: no row
    ]
    (row,) = engine_ratio.ratios(records, "fast", "slow", "decode_tokens_per_s")
    assert row["context_length"] == 512 and row["prompts"] == 2
    assert math.isclose(row["ratio"], math.sqrt(2.1 * 1.5))
    assert row["low"] <= row["ratio"] <= row["high"]
    (faster,) = engine_ratio.ratios(records, "fast", "slow", "e2e_ms")  # lower is better: B / A
    assert math.isclose(faster["ratio"], math.sqrt((90 / 45) * (120 / 60)))


def test_a_missing_run_or_labels_it_does_not_have_are_one_sentence_and_exit_2(tmp_path, capsys):
    assert engine_ratio.main([str(tmp_path / "nowhere"), "a", "b"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "results.jsonl").write_text("")
    assert engine_ratio.main([str(tmp_path), "a", "b"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "check the engine labels" in err
    assert engine_ratio.main([str(tmp_path), "a", "b", "--field", "speed"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a record field of a metric" in err
