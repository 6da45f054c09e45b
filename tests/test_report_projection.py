"""The "projected on <device>" section reaches report.html from a run's projection.json, escaped."""

from __future__ import annotations

import json

from orthrus.profile.project import PROJECTION_FILE, PROJECTION_FORMAT
from orthrus.profile.report import projection_section
from orthrus.report import render_run
from tests.report_synthetic import make_run


def test_projection_json_renders_in_the_report_escaped(tmp_path):
    run = make_run(tmp_path / "reports")
    hostile = "<script>alert(1)</script>"
    document = {
        "format": PROJECTION_FORMAT,
        "formula": "speedup = tokens/cycle x t_AR(1) / (t_draft(K) + t_verify(K))",
        "devices": [
            {
                "device": hostile,
                "dtype": "bfloat16",
                "profile": "gpu.json",
                "profile_shape": "qwen3-shape:8b",
                "draft_profile": None,
                "warnings": [],
                "same_machine": False,
                "rows": [  # a row as projection.json held it before engine steps (no t_step_ms, ...)
                    {
                        "source": hostile,
                        "engine": "orthrus",
                        "context": 1024.0,
                        "block": 8,
                        "measured_block": 8,
                        "tokens_per_cycle": 3.0,
                        "t_ar1_ms": 10.0,
                        "t_draft_ms": 11.0,
                        "t_verify_ms": 12.0,
                        "tokens_per_s": 130.4,
                        "ar_tokens_per_s": 100.0,
                        "speedup": 1.3,
                        "best": True,
                        "note": None,
                        "measured_speedup_decode": None,
                        "measured_speedup_e2e": None,
                        "arithmetic": "3.00 x 10.000 ms / (11.000 ms + 12.000 ms) = 1.30x",
                    }
                ],
            }
        ],
    }
    (run / PROJECTION_FILE).write_text(json.dumps(document))
    assert projection_section(run) is not None, "the hand-made document is a valid projection"
    page = (render_run(run, update_index=False)).read_text()
    assert "Projected on" in page and "1.30x" in page
    assert hostile not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
