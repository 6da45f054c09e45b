"""DFlash and EAGLE-3 drafters in suites: a random checkpoint in each released layout (key names and
config fields as published) loads through a suite's model path and runs end to end with run_bench.py
(identity with ar, the drafter's own KV cache and the added parameters recorded apart); the pool loads
each drafter once; a drafter that does not fit its target is refused at validation with one sentence
naming the field, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from orthrus.bench.loading import ModelPool, build_cell_engine, loader_key, models_needed
from orthrus.bench.suite.validate import load_suite
from orthrus.errors import UserInputError
from orthrus.models.checkpoint import read_json_object
from orthrus.models.drafters import target_config_of, write_random_drafter
from orthrus.models.zoo_index import TOKENIZER_DIR, zoo_path
from orthrus.results.rundir import RESULTS_FILE, read_records

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "ORTHRUS_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.skipif(zoo_path("tiny-orthrus") is None, reason="needs the zoo model tiny-orthrus")

# the names as published (module docstrings of orthrus.models.dflash / orthrus.models.eagle3)
LAYER = ("input_layernorm", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
DFLASH_KEYS = {"fc.weight", "hidden_norm.weight", "norm.weight"} | {
    f"layers.{i}.{name}.weight"
    for i in range(2)
    for name in (*LAYER, *PROJECTIONS, "self_attn.q_norm", "self_attn.k_norm")
}
EAGLE_LAYER = {f"{name}.weight" for name in (*LAYER, *PROJECTIONS, "hidden_norm")}
EAGLE_KEYS = {
    "eagle": {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d"} | {f"midlayer.{k}" for k in EAGLE_LAYER},
    "speculators": {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d"}
    | {f"layers.0.{k}" for k in EAGLE_LAYER},
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Random drafters for the zoo's tiny-orthrus (5 layers, hidden 256, 4096 tokens) in each layout."""
    root = tmp_path_factory.mktemp("drafters")
    target = target_config_of("tiny-orthrus")
    return {
        "dflash": write_random_drafter("dflash", target, root / "dflash", num_layers=2, block_size=8),
        "speculators": write_random_drafter("eagle3", target, root / "speculators", layout="speculators"),
        "eagle": write_random_drafter(
            "eagle3", target, root / "eagle", layout="eagle", draft_vocab=range(0, 4096, 4), aux_layer_ids=[1, 2, 3]
        ),
    }


def keys_of(path: Path) -> set[str]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        return set(handle.keys())


def test_each_layout_has_the_published_key_names_and_config_fields(checkpoints):
    assert keys_of(checkpoints["dflash"]) == DFLASH_KEYS
    config = read_json_object(checkpoints["dflash"] / "config.json")
    assert config["architectures"] == ["DFlashDraftModel"] and config["model_type"] == "qwen3"
    assert config["dflash_config"] == {"mask_token_id": 2, "target_layer_ids": [1, 2]} and config["block_size"] == 8
    assert config["num_target_layers"] == 5 and config["num_hidden_layers"] == 2
    for layout in ("speculators", "eagle"):
        assert keys_of(checkpoints[layout]) == EAGLE_KEYS[layout], layout
    speculators = read_json_object(checkpoints["speculators"] / "config.json")
    assert speculators["speculators_model_type"] == "eagle3" and speculators["draft_vocab_size"] == 4096
    assert speculators["transformer_layer_config"]["num_hidden_layers"] == 1
    assert speculators["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 3
    eagle = read_json_object(checkpoints["eagle"] / "config.json")
    assert eagle["architectures"] == ["LlamaForCausalLMEagle3"] and eagle["draft_vocab_size"] == 1024
    assert eagle["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]


def suite(checkpoints: dict[str, Path], **changes) -> dict:
    raw = {
        "name": "drafters",
        "models": {
            "base": {"path": "tiny-orthrus"},
            "dflash_drafter": {"path": str(checkpoints["dflash"])},
            "eagle_spec": {"path": str(checkpoints["speculators"])},
            "eagle_authors": {"path": str(checkpoints["eagle"])},
        },
        "engines": [
            {"engine": "ar", "model": "base"},
            {"engine": "dflash", "model": "base", "draft_model": "dflash_drafter"},
            {"engine": "eagle3", "model": "base", "draft_model": "eagle_spec"},
            {"engine": "eagle3", "label": "eagle3_authors", "model": "base", "draft_model": "eagle_authors"},
        ],
        "sweep": {"context_lengths": [48], "max_new_tokens": [10], "block_sizes": [4], "batch_sizes": [1, 2]},
        "prompts": [{"source": "synthetic", "count": 2}],
        "measure": {"repetitions": 1, "warmup": 0, "threads": 1},
        "reference": {"engine": "ar", "model": "base"},
    }
    raw.update(changes)
    return raw


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run_bench.py"), *args], capture_output=True, text=True, env=ENV, timeout=600
    )


def test_a_suite_naming_drafter_directories_runs_end_to_end(checkpoints, tmp_path):
    file = tmp_path / "suite.yaml"
    file.write_text(yaml.safe_dump(suite(checkpoints)))
    done = bench(str(file), "--out", str(tmp_path / "reports"), "--run-id", "run", "--quiet")
    assert done.returncode == 0, done.stderr
    run = tmp_path / "reports" / "drafters" / "run"
    records = read_records(run / RESULTS_FILE)
    assert len(records) == 4 * 2 * 2 and all(r["status"] == "ok" for r in records)
    for record in records:
        drafter = record["cell"]["engine"] != "ar"
        assert record["identity_exact"] is True, record["cell"]["label"]
        assert (
            (record["draft_kv_cache_bytes_peak"] or 0) > 0 if drafter else record["draft_kv_cache_bytes_peak"] is None
        )
        assert record["extra_parameters"] > 0 if drafter else record["extra_parameters"] == 0
        assert record["block_size"] == (4 if drafter else None)
    summary = {(r["label"], r["batch_size"]): r for r in json.loads((run / "summary.json").read_text())}
    assert summary[("dflash", 2)]["identity_vs_batch1_rate"] == 1.0
    assert summary[("eagle3_authors", 1)]["draft_kv_cache_bytes_peak_max"] > 0
    assert summary[("ar", 1)]["draft_kv_cache_bytes_peak_max"] is None


def test_the_pool_loads_each_drafter_once_through_the_loader_its_engine_names(checkpoints):
    loaded = load_suite(None, raw=suite(checkpoints, sweep={"context_lengths": [48], "block_sizes": [4, 8]}))
    cells = [c for c in loaded.cells if c.engine.engine == "dflash"]
    assert len(cells) == 2 and loader_key("dflash_drafter", "dflash") in models_needed(cells)
    assert loader_key("eagle_spec", "eagle3") in models_needed(loaded.cells)
    pool = ModelPool()
    first, second = (build_cell_engine(cell, pool) for cell in cells)
    assert first.drafter is second.drafter and (first.block_size, second.block_size) == (4, 8)
    assert first.model is second.model


def broken_drafter(checkpoints: dict[str, Path], tmp_path: Path, layout: str, change) -> Path:
    copy = tmp_path / f"broken-{layout}"
    shutil.copytree(checkpoints[layout], copy)
    config = read_json_object(copy / "config.json")
    change(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def set_layer_ids(config):
    config["dflash_config"]["target_layer_ids"] = [1, 7]


def drop_mask(config):
    del config["dflash_config"]["mask_token_id"]


def widen(config):
    config["target_hidden_size"] = 512


def other_vocabulary(config):
    config["transformer_layer_config"]["vocab_size"] = 5000


def too_deep(config):
    config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [1, 2, 5]


def dflash2(config):
    config["dflash_config"]["selector_rank"] = 8


@pytest.mark.parametrize(
    "layout, change, says",
    [
        ("dflash", set_layer_ids, "dflash_config.target_layer_ids names layer 7, but the target has 5 layers"),
        ("dflash", drop_mask, "has no dflash_config.mask_token_id"),
        ("dflash", dflash2, "DFlash2"),
        ("speculators", widen, "target_hidden_size (512) differs from the target's hidden size (256)"),
        (
            "speculators",
            other_vocabulary,
            "transformer_layer_config.vocab_size (5000) differs from the target's (4096)",
        ),
        ("eagle", too_deep, "eagle_config.eagle_aux_hidden_state_layer_ids names layer 5"),
    ],
    ids=["layer_ids", "no_mask_token", "dflash2", "hidden_size", "vocabulary", "aux_layer_ids"],
)
def test_a_drafter_that_does_not_fit_is_refused_at_validation(checkpoints, tmp_path, layout, change, says):
    raw = suite(checkpoints)
    key = {"dflash": "dflash_drafter", "speculators": "eagle_spec", "eagle": "eagle_authors"}[layout]
    raw["models"][key]["path"] = str(broken_drafter(checkpoints, tmp_path, layout, change))
    with pytest.raises(UserInputError) as caught:
        load_suite(None, raw=raw)
    message = str(caught.value)
    assert message.startswith("engines[") and ".draft_model: model " in message and says in message, message
    assert "\n" not in message and message.endswith(".")


def test_a_drafter_with_another_tokenizer_is_refused(checkpoints, tmp_path):
    copy = tmp_path / "with-tokenizer"
    shutil.copytree(checkpoints["dflash"], copy)
    tokenizer = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = list(vocab)[10:12]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # two ids swapped: same size, another tokenizer
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    raw = suite(checkpoints)
    raw["models"]["dflash_drafter"]["path"] = str(copy)
    with pytest.raises(UserInputError, match=r"engines\[1\].draft_model: .*tokenizer.json differs from the target's"):
        load_suite(None, raw=raw)
    shutil.copy(TOKENIZER_DIR / "tokenizer.json", copy / "tokenizer.json")  # the target's own: accepted
    load_suite(None, raw=raw)


def test_run_bench_refuses_a_drafter_that_does_not_fit_before_anything_is_written(checkpoints, tmp_path):
    raw = suite(checkpoints)
    raw["models"]["dflash_drafter"]["path"] = str(broken_drafter(checkpoints, tmp_path, "dflash", set_layer_ids))
    file = tmp_path / "suite.yaml"
    file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "reports"
    done = bench(str(file), "--out", str(out), "--quiet")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "target_layer_ids names layer 7" in lines[0] and "engines[1].draft_model" in lines[0]
    assert not out.exists() or not any(out.rglob("*"))


def test_the_command_line_generates_with_a_drafter_directory(checkpoints, capsys):
    from orthrus.cli import main

    outputs = {}
    for engine, drafter in (("ar", None), ("dflash", "dflash"), ("eagle3", "eagle")):
        args = ["generate", "--model", "tiny-orthrus", "--engine", engine, "--prompt-ids", "5,6,7,8", "--json"]
        args += ["--max-new-tokens", "12"] + (["--draft-model", str(checkpoints[drafter])] if drafter else [])
        assert main(args) == 0
        outputs[engine] = json.loads(capsys.readouterr().out)
    assert outputs["dflash"]["tokens"] == outputs["eagle3"]["tokens"] == outputs["ar"]["tokens"]
    assert outputs["eagle3"]["forward_passes"]["draft"] > outputs["dflash"]["forward_passes"]["draft"] > 0
    assert (
        main(["generate", "--model", "tiny-orthrus", "--engine", "ar", "--draft-model", "x", "--prompt-ids", "5"]) == 2
    )
    assert "--draft-model applies to engines that take a draft model" in capsys.readouterr().err
