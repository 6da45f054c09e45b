"""Build records covering every branch of the summary and write the summary files beside them.

PYTHONPATH=. python tests/data/summary_golden/make_golden.py   # rewrites a/ and b/ here
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for report_synthetic

from report_synthetic import make_run  # noqa: E402

from orthrus.results.rundir import read_records  # noqa: E402
from orthrus.results.summary import write_summary  # noqa: E402

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
tmp = Path(tempfile.mkdtemp())


def cid(cell):
    return hashlib.sha1(json.dumps(cell, sort_keys=True).encode()).hexdigest()[:12]


def scenario_a():
    run = make_run(
        tmp,
        "a",
        contexts=(512, 1024),
        prompts=3,
        repeats=2,
        near_tie_at=512,
        fail_engine_at=("dlm", 1024),
        memory_sources=("rss_peak_mib",),
    )
    records = read_records(run / "results.jsonl")
    rng = random.Random(7)
    out_records = []
    for r in records:
        r["cell"]["batch_size"] = 1
        r["cell_id"] = cid(r["cell"])
        r["category"] = "code" if r["prompt_id"] in ("p0", "p2") else "chat"
        if r["status"] == "ok":
            r["nvml_device_used_mib"] = round(1000 + rng.uniform(0, 50), 3)
            r["nvml_process_used_mib"] = round(500 + rng.uniform(0, 50), 3)
            r["torch_max_allocated_mib"] = round(300 + rng.uniform(0, 20), 3)
            r["torch_max_reserved_mib"] = None if r["prompt_id"] == "p1" else round(320 + rng.uniform(0, 20), 3)
            r["memory_bandwidth_gb_s"] = rng.uniform(1, 20)
            r["harness_overhead_ms"] = rng.uniform(0.1, 2)
            if r["cell"]["engine"] != "dlm":
                b = int(r["prompt_id"][1:])
                r["batch_id"], r["batch_index"], r["batch_rows"] = b, 0, 1
                r["batch_prompt_ids"] = [r["prompt_id"]]
                r["batch_e2e_ms"] = r["e2e_ms"]
                r["batch_tokens_per_s"] = r["new_tokens"] / r["e2e_ms"] * 1e3
                r["batch_tokens_per_forward"] = r["tokens_per_forward"]
                r["batch_acceptance_length"] = r["acceptance_length"]
                r["batch_wasted_row_pass_fraction"] = 0.0
                r["batch_kv_cache_bytes_peak"] = r["kv_cache_bytes_peak"]
        out_records.append(r)
    # batch size 2 for ar and orthrus: prompts p0,p1 in batch 0, p2 alone in batch 1; dlm skipped
    for r in records:
        engine = r["cell"]["engine"]
        cell = dict(r["cell"], batch_size=2)
        if engine == "dlm":
            s = {k: None for k in r}
            s.update(
                run_id=r["run_id"],
                cell=cell,
                cell_id=cid(cell),
                prompt_id=r["prompt_id"],
                repeat=r["repeat"],
                status="skipped",
                skip_reason="cannot batch",
                version=r["version"],
                extra={},
            )
            out_records.append(s)
            continue
        if r["status"] != "ok":
            continue
        b2 = copy.deepcopy(r)
        b2["cell"], b2["cell_id"] = cell, cid(cell)
        p = int(r["prompt_id"][1:])
        b2["batch_id"], b2["batch_index"] = (0, p) if p < 2 else (1, 0)
        b2["batch_rows"] = 2 if p < 2 else 1
        b2["batch_prompt_ids"] = ["p0", "p1"] if p < 2 else ["p2"]
        factor = 1.3 if engine == "orthrus" else 1.1
        b2["e2e_ms"] = r["e2e_ms"] * factor * (1 + 0.01 * r["repeat"])
        b2["batch_e2e_ms"] = b2["e2e_ms"] * (1.05 if p < 2 else 1.0) + b2["batch_id"] + r["repeat"] * 0.5
        b2["batch_tokens_per_s"] = b2["batch_rows"] * r["new_tokens"] / b2["batch_e2e_ms"] * 1e3
        b2["batch_tokens_per_forward"] = None if engine == "ar" and p == 2 else rng.uniform(1, 3)
        b2["batch_acceptance_length"] = r["acceptance_length"] and r["acceptance_length"] * 0.9
        b2["batch_wasted_row_pass_fraction"] = rng.uniform(0, 0.3)
        b2["batch_kv_cache_bytes_peak"] = r["kv_cache_bytes_peak"] * b2["batch_rows"]
        same = not (engine == "orthrus" and p == 1 and r["cell"]["context_length"] == 1024)
        b2["identity_vs_batch1_exact"] = same
        b2["divergence_margin_vs_batch1"] = None if same else 0.125
        b2["first_divergence_vs_batch1"] = None if same else 5
        out_records.append(b2)
    # a duplicate (resume) record: dedupe keeps the ok one
    dup = copy.deepcopy(out_records[0])
    dup["status"], dup["error"] = "failed", "x"
    out_records.insert(0, dup)
    return out_records


def scenario_b():
    run = make_run(
        tmp,
        "b",
        contexts=(512,),
        prompts=4,
        repeats=2,
        engines=("ar", "orthrus"),
        memory_sources=(),
        block_sizes=(4, 8),
    )
    records = read_records(run / "results.jsonl")
    for r in records:
        r["node"] = "n0" if r["prompt_id"] in ("p0", "p1") else ("n1" if r["prompt_id"] == "p2" else None)
    return records


for name, records in (("a", scenario_a()), ("b", scenario_b())):
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "results.jsonl", "w") as h:
        for r in records:
            r = {k: v for k, v in r.items() if k not in ("tokens", "extra") and v is not None}
            h.write(json.dumps(r) + "\n")
    frame = write_summary(d, read_records(d / "results.jsonl"))
    print(name, len(records), frame.shape, sorted(p.name for p in d.iterdir()))
