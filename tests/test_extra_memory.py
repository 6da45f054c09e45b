"""The memory question answered side by side: the extra memory each method holds beyond AR, from a real
run: Orthrus's extra K/V is 0 at every context (its block uses the free slots of AR's own cache), a
separate draft model's grows with the context, and the report draws both."""

from __future__ import annotations

import yaml

from orthrus.results.rundir import read_json
from orthrus.results.vocabulary import COLUMN
from orthrus.run_cli import main


def test_extra_memory_beyond_ar_is_flat_for_orthrus_and_grows_for_a_draft_model(tmp_path):
    raw = {
        "name": "memory",
        "models": {"base": {"path": "tiny-orthrus"}, "draft": {"path": "tiny-draft"}},
        "engines": [
            {"engine": "ar", "model": "base"},
            {"engine": "orthrus", "model": "base"},
            {"engine": "assisted", "model": "base", "draft_model": "draft"},
        ],
        "sweep": {"context_lengths": [128, 512], "max_new_tokens": [16]},
        "prompts": [{"source": "synthetic", "count": 1}],
        "measure": {"repetitions": 1, "warmup": 0, "threads": 1},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    assert main([str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--run-id", "m", "--quiet"]) == 0
    run = tmp_path / "out" / "memory" / "m"
    rows = {(r["label"], r["context_length"]): r for r in read_json(run / "summary.json")}
    for context in (128, 512):
        ar, orthrus = rows[("ar", context)], rows[("orthrus", context)]
        assert orthrus[COLUMN.kv_cache_bytes_peak_max] == ar[COLUMN.kv_cache_bytes_peak_max]
        assert orthrus[COLUMN.draft_kv_cache_bytes_peak_max] is None and orthrus[COLUMN.extra_parameter_bytes] > 0
    draft = [rows[("assisted", c)][COLUMN.draft_kv_cache_bytes_peak_max] for c in (128, 512)]
    assert 0 < draft[0] < draft[1]
    assert (run / "plots" / "extra_memory.png").is_file()
    assert "Extra memory beyond AR" in (run / "report.html").read_text()
