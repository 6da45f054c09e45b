"""The DFlash and EAGLE-3 trainers (``python -m orthrus train dflash|eagle3``): their training passes compute
what the drafters compute at inference, their step functions train only the drafter and lower its loss, a
trained checkpoint round-trips through the drafter loader and decodes exactly as ``ar``, the three
self-distillation trainers share one copy of the text, the zoo drafters load by name, and the command
lines refuse bad input in one sentence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from orthrus.engines import build_engine
from orthrus.models import OrthrusForCausalLM, load_causal_lm
from orthrus.models.drafters import load_drafter, target_config_of
from orthrus.models.zoo_index import TOKENIZER_DIR, ZOO_NAMES, zoo_path
from orthrus.train.cli import main as train_main
from orthrus.train.dflash import DFlashTrainConfig, dflash_block_logits, dflash_loss, dflash_step
from orthrus.train.drafters import Target, new_drafter
from orthrus.train.eagle3 import (
    Eagle3TrainConfig,
    draft_vocabulary,
    eagle3_loss,
    eagle3_step,
    eagle3_ttt_logits,
)
from orthrus.train.loop import LoopConfig, train_loop
from tests.conftest import random_qwen3


@pytest.fixture(scope="module")
def target() -> Target:
    """A small random Qwen3 target (2 layers, 256 tokens) as the trainers load one: the AR view, frozen."""
    base = random_qwen3(seed=3, scale=2.0)
    model = OrthrusForCausalLM.from_base(base, block_size=8, mask_token_id=2).eval().requires_grad_(False)
    return Target(model, None, model.config.to_dict(), Path("."))


def text(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def own_text(target: Target, batch: int, seed: int) -> torch.Tensor:
    """Self-distillation text in small: 16 random tokens, then 24 the target writes greedily itself."""
    ids = text(batch, 16, seed)
    for _ in range(24):
        ids = torch.cat([ids, target.model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def dflash_drafter(target: Target, out: Path):
    drafter = new_drafter("dflash", target, out, num_layers=2, target_layer_ids=[0, 1], mask_token_id=2, std=0.1)
    return drafter


def eagle3_drafter(target: Target, out: Path, vocab=None):
    return new_drafter(
        "eagle3", target, out, draft_vocab=vocab or range(0, 256, 2), aux_layer_ids=[0, 1, 1], std=0.1
    ).eval()


def test_dflash_training_pass_equals_the_inference_draft_block(target, tmp_path):
    drafter = dflash_drafter(target, tmp_path / "d").eval()
    ids = text(2, 40)
    anchors = torch.tensor([[3, 17, 30], [8, 9, 32]])
    block = 8
    with torch.no_grad():
        _, features = target.model.forward_ar(ids, None, 0, hidden_layers=drafter.hidden_layers)
        trained = dflash_block_logits(drafter, target.model, features, ids, anchors, block)
        for b in range(2):
            for n, a in enumerate(anchors[b].tolist()):
                cache = drafter.new_cache(1, a + block + 1)
                drafter.write_context(features[b : b + 1, :a], [0], [a], cache)
                blocks = torch.tensor([[int(ids[b, a])] + [2] * (block - 1)])
                embeds = target.model.model.embed_tokens(blocks)
                hidden = drafter.draft_block(embeds, [a], [block], cache)
                inferred = drafter.logits(hidden[:, 1:], target.model.lm_head)[0]
                assert torch.allclose(trained[b, n], inferred, atol=1e-4), (b, a)


@pytest.mark.parametrize("chain_tokens", ["data", "draft"])
def test_eagle3_training_time_test_equals_the_inference_chain(target, tmp_path, chain_tokens):
    drafter = eagle3_drafter(target, tmp_path / "e")
    drafter.bind_target(2)
    ids = text(2, 30, seed=1)
    first, steps = 20, 5
    embed = target.model.model.embed_tokens
    with torch.no_grad():
        _, features = target.model.forward_ar(ids, None, 0, hidden_layers=drafter.hidden_layers)
        trained = eagle3_ttt_logits(drafter, embed, features, ids, first, steps, chain_tokens)
        for b in range(2):
            for s in range(first, 29):
                # the engine's take-in: the pairs (f_i, x_{i+1}) of positions 0..s, then a chain from (f_s, x_{s+1})
                cache = drafter.new_cache(1, s + steps + 2)
                slots = torch.arange(s + 1).unsqueeze(0)
                hidden, logits = drafter.forward_pairs(
                    drafter.fuse(features[b : b + 1, : s + 1]), embed(ids[b : b + 1, 1 : s + 2]), slots, slots, cache
                )
                hidden, logits = hidden[:, -1:], logits[:, -1]
                for k in range(steps):
                    if s + 1 + k > 29:
                        break  # past the text: the loss leaves it out
                    assert torch.allclose(trained[k][b, s - first], logits[0], atol=1e-4), (b, s, k)
                    if chain_tokens == "data":
                        token = ids[b, s + 2 + k] if s + 2 + k <= 29 else ids[b, 29]
                    else:
                        token = drafter.draft_to_target[logits[0].argmax()]
                    at = torch.tensor([[s + 1 + k]])
                    hidden, logits = drafter.forward_pairs(hidden, embed(token.view(1, 1)), at, at, cache)
                    logits = logits[:, 0]


def test_draft_vocabulary_keeps_the_most_frequent_continuation_tokens():
    data = torch.tensor([[9, 9, 5, 5, 5, 7, 3], [9, 9, 5, 6, 6, 6, 6]])
    kept, coverage = draft_vocabulary(data, prompt_len=2, size=2, vocab_size=16)
    assert kept == [5, 6] and coverage == pytest.approx(8 / 10)  # the prompt's 9s do not count


def losses_before_and_after(drafter, loss_of, step_fn, tmp_path, steps=40, lr=3e-3):
    config = LoopConfig(out_dir=tmp_path / "loop", steps=steps, lr=lr, warmup_frac=0.1, quiet=True, num_threads=1)
    with torch.no_grad():
        before = loss_of().item()
    train_loop(config, drafter, step_fn, desc="test")
    with torch.no_grad():
        after = loss_of().item()
    return before, after


def test_dflash_step_trains_only_the_drafter_and_lowers_its_loss(target, tmp_path):
    drafter = dflash_drafter(target, tmp_path / "d")
    data = own_text(target, 6, seed=2)
    config = DFlashTrainConfig(
        out_dir=tmp_path, prompt_len=16, continuation_len=24, batch_size=2, anchors_per_seq=6, train_block_sizes=(4, 8)
    )
    step = dflash_step(drafter, target, data, config)
    loss = step(0, 0.0, torch.Generator().manual_seed(0)).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in drafter.parameters())
    assert all(not p.requires_grad and p.grad is None for p in target.model.parameters())
    drafter.zero_grad(set_to_none=True)
    fixed = torch.tensor([[16, 20, 24, 30]] * 6)
    before, after = losses_before_and_after(
        drafter, lambda: dflash_loss(drafter, target.model, data, fixed, 8)[0], step, tmp_path
    )
    assert after < 0.8 * before, (before, after)


def test_eagle3_step_trains_only_the_drafter_and_lowers_its_loss(target, tmp_path):
    drafter = eagle3_drafter(target, tmp_path / "e").train()
    data = own_text(target, 6, seed=3)
    config = Eagle3TrainConfig(out_dir=tmp_path, prompt_len=16, continuation_len=24, batch_size=2, ttt_steps=4)
    step = eagle3_step(drafter, target, data, config)
    step(0, 0.0, torch.Generator().manual_seed(0)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in drafter.parameters())
    assert all(not p.requires_grad and p.grad is None for p in target.model.parameters())
    drafter.zero_grad(set_to_none=True)
    before, after = losses_before_and_after(
        drafter, lambda: eagle3_loss(drafter, target.model, data, config.anchor_low, 4)[0], step, tmp_path
    )
    assert after < 0.8 * before, (before, after)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A random 4096-token Qwen3 with the zoo's tokenizer, saved as a checkpoint directory (5 layers: the
    default target layers of both drafters exist)."""
    base_dir = tmp_path_factory.mktemp("base")
    random_qwen3(vocab=4096, hidden=32, layers=5, seed=2, scale=1.0).save_pretrained(base_dir)
    for file in TOKENIZER_DIR.iterdir():
        shutil.copy(file, base_dir / file.name)
    return base_dir


def test_trained_drafters_round_trip_and_share_the_text_of_train_orthrus(tiny_base, tmp_path):
    cache = tmp_path / "text"
    common = ["--base", str(tiny_base), "--data-sequences", "4", "--prompt-len", "16", "--continuation-len", "24"]
    common += ["--data-cache", str(cache), "--threads", "1", "--quiet", "--steps", "2"]
    assert train_main(["dflash", "--out", str(tmp_path / "dflash"), "--train-block-sizes", "4,8", *common]) == 0
    [text_file] = cache.glob("selfdistill-*.pt")
    stamp = text_file.stat().st_mtime_ns
    assert train_main(["eagle3", "--out", str(tmp_path / "eagle3"), "--draft-vocab", "512", *common]) == 0
    assert train_main(["orthrus", "--out", str(tmp_path / "orthrus"), *common]) == 0
    assert list(cache.glob("selfdistill-*.pt")) == [text_file] and text_file.stat().st_mtime_ns == stamp

    model = load_causal_lm(tiny_base)
    prompt = torch.randint(3, 4096, (40,), generator=torch.Generator().manual_seed(5)).tolist()
    reference = build_engine("ar", model).generate(prompt, 20).tokens
    for kind in ("dflash", "eagle3"):
        out = tmp_path / kind
        summary = json.loads((out / "training.json").read_text())
        assert summary["steps"] == 2 and summary["kind"] == kind
        assert "## Evaluation" in (out / "README.md").read_text()
        drafter = load_drafter(kind, out)  # the released layout, fp16 on disk, loaded as fp32
        assert drafter.fc.weight.dtype == torch.float32 and not (out / "checkpoint" / "init").samefile(out)
        for block in (4, 8):
            engine = build_engine(kind, model, draft_model=str(out), block_size=block)
            assert engine.generate(prompt, 20).tokens == reference, (kind, block)
    eagle = load_drafter("eagle3", tmp_path / "eagle3")
    assert eagle.settings.draft_vocab_size == 512 and eagle.settings.speculative_tokens == 7
    assert eagle.t2d.sum() == 512 and eagle.draft_to_target.tolist() == sorted(eagle.draft_to_target.tolist())


@pytest.mark.parametrize(
    "argv, says",
    [
        (["dflash", "--target-layers", "0,9"], "--target-layers 0,9: the target has 5 layers (0..4)."),
        (["dflash", "--train-block-sizes", "a,b"], "--train-block-sizes must be comma-separated integers"),
        (["dflash", "--loss", "mse"], "argument --loss: invalid choice"),
        (["dflash", "--layers", "0"], "--layers must be at least 1"),
        (["eagle3", "--ttt-steps", "0"], "--ttt-steps must be between 1 and 32"),
        (["eagle3", "--draft-vocab", "99999"], "--draft-vocab must be between 1 and the target's vocabulary (4096)"),
        (["eagle3", "--aux-layers", "1,2"], "--aux-layers must name 3 target layers"),
        (["eagle3", "--chain-tokens", "own"], "argument --chain-tokens: invalid choice"),
        (["eagle3", "--budget-clock", "moon"], "argument --budget-clock: invalid choice"),
        (["dflash", "--base", "/no/such/model"], "is neither a local directory nor a zoo model"),
        (["eagle3", "--extra-fraction", "0.5"], "--extra-fraction needs --extra-prompts DIR."),
    ],
)
def test_the_command_lines_refuse_bad_input_in_one_sentence(argv, says, tmp_path, capsys):
    out = tmp_path / "out"
    code = train_main([*argv, "--out", str(out), "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and says in err, err
    assert "\n" not in err and err.startswith("error: ") and not out.exists()


@pytest.mark.parametrize("kind", ["dflash", "eagle3"])
def test_the_command_line_targets_exist(kind, capsys):
    with pytest.raises(SystemExit) as done:
        train_main([kind, "--help"])
    assert done.value.code == 0 and "--data-cache" in capsys.readouterr().out


@pytest.mark.parametrize("kind, name", [("dflash", "tiny-dflash"), ("eagle3", "tiny-eagle3")])
def test_the_zoo_drafters_load_by_name_and_decode_as_ar(kind, name):
    if zoo_path(name) is None or zoo_path("tiny-base") is None:
        pytest.skip(f"needs the zoo models {name} and tiny-base")
    assert name in ZOO_NAMES
    drafter = load_drafter(kind, name)
    config = target_config_of("tiny-base")
    assert drafter.config_dict and config["num_hidden_layers"] == 5
    model = load_causal_lm(zoo_path("tiny-base"))
    generator = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, 4096, (n,), generator=generator).tolist() for n in (1, 30, 300)]
    ar = build_engine("ar", model)
    for block in (4, 16):
        engine = build_engine(kind, model, draft_model=name, block_size=block)
        accepted = 0
        for prompt in prompts:
            result = engine.generate(prompt, 48)
            assert result.tokens == ar.generate(prompt, 48).tokens, (name, block, len(prompt))
            accepted += sum(result.accepted_per_cycle or [])
        assert accepted > 0  # a trained drafter: some drafts are kept


needs_base = pytest.mark.skipif(zoo_path("tiny-base") is None, reason="needs the zoo model tiny-base")


@needs_base
def test_evaluate_measures_a_drafter_on_the_prompts_a_view_gets(tmp_path, capsys):
    from orthrus.cli import main
    from orthrus.models.drafters import write_random_drafter

    drafter = write_random_drafter("dflash", target_config_of("tiny-base"), tmp_path / "my-dflash", num_layers=1)
    (drafter / "README.md").write_text("# my-dflash\n\nTraining notes.\n\n## Evaluation\nNot measured yet.\n")
    json_out = tmp_path / "eval.json"
    argv = ["evaluate", "--model", "tiny-base", "--engine", "dflash", "--draft-model", str(drafter)]
    argv += ["--block-sizes", "4", "--prompts", "1", "--max-new-tokens", "8", "--threads", "1", "--quiet"]
    argv += ["--out", str(tmp_path / "reports"), "--json-out", str(json_out), "--write-card"]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads(json_out.read_text())
    assert report["engine"] == "dflash" and report["draft_model"] == str(drafter)
    assert report["prompts"] == {"heldout": 1, "code": 1} and "untrained_view" not in report
    assert [(c["prompts"], c["block_size"], c["identical_to_ar"]) for c in report["cells"]] == [
        ("code", 4, "1/1"),
        ("heldout", 4, "1/1"),
    ]
    assert all(c["extra_parameters"] > 0 and c["draft_kv_cache_bytes_peak_max"] > 0 for c in report["cells"])
    card = (drafter / "README.md").read_text()
    assert card.startswith("# my-dflash\n\nTraining notes.\n\n## Evaluation\nCommand: ") and "| code | 4 |" in card
    assert json.loads((drafter / "eval.json").read_text()) == report


@needs_base
@pytest.mark.parametrize(
    "flags, says",
    [
        (["--engine", "eagle3"], "--engine eagle3 needs --draft-model"),
        (["--draft-model", "tiny-base"], "--draft-model goes with --engine dflash or eagle3"),
        (["--engine", "dflash", "--draft-model", "nope"], "is neither a local directory nor a zoo model"),
    ],
)
def test_evaluate_refuses_a_drafter_mistake_in_one_sentence(flags, says, tmp_path, capsys):
    from orthrus.cli import main

    out = tmp_path / "reports"
    assert main(["evaluate", "--model", "tiny-base", *flags, "--prompts", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and not out.exists()


def test_a_cpu_clock_budget_counts_only_what_the_run_computed(tmp_path):
    import time

    from orthrus.train.loop import Step, start_run

    weight = torch.nn.Linear(2, 1)

    def step(index, progress, generator):  # waits (another process has the CPU), computes a little
        time.sleep(0.03)
        return Step(weight(torch.ones(1, 2)).sum() ** 2, 1)

    runs = {}
    for clock in ("wall", "cpu"):
        config = LoopConfig(out_dir=tmp_path / clock, steps=40, max_minutes=0.5 / 60, budget_clock=clock, quiet=True)
        start_run(config)
        runs[clock] = train_loop(config, weight, step, desc=clock).step
    # 40 steps wait 1.2 s in all, so the 0.5 s wall budget stops the first run early; the CPU run computes
    # a few ms a step (more on a loaded machine or another torch: room for 12 ms each) and finishes
    assert runs["wall"] < 40 and runs["cpu"] == 40  # waiting spends the wall budget, not the CPU one
    with pytest.raises(ValueError, match="--budget-clock must be one of wall, cpu"):
        start_run(LoopConfig(out_dir=tmp_path / "x", steps=1, budget_clock="moon"))


def test_the_fair_training_table_puts_each_method_on_its_own_row_and_refuses_an_unevaluated_directory(tmp_path, capsys):
    """scripts/drafter_table.py reads each method's training.json and eval.json: one training row per
    method, then per prompt set and block one row per method that measured it (a block one method did
    not measure is left out for it, not invented); a directory without an evaluation is exit 2."""
    import importlib.util

    from orthrus.train.evaluate import side_by_side

    def cell(block, accepted):
        return {"prompts": "heldout", "block_size": block, "identical_to_ar": "4/4", "accepted_per_cycle_token_weighted": accepted,
                "acceptance_by_position": [0.9, 0.5, 0.2, 0.1, 0.05], "tokens_per_forward_median": 1.5,
                "speedup_vs_ar_measured": 1.2, "extra_parameters": 1000}

    view = ("orthrus", {"cells": [cell(4, 2.0), cell(8, 2.5)]}, {"kind": "orthrus", "base": "tiny-base", "steps": 10, "budget_clock": "cpu", "budget_time_min": 1.0, "wall_time_min": 1.5, "final_kl": 0.5})
    drafter = ("dflash", {"cells": [cell(4, 0.8)]}, {"kind": "dflash", "base": "tiny-base", "steps": 20, "budget_clock": "wall", "wall_time_min": 1.0, "final_loss": 2.0})
    table = side_by_side([view, drafter]).splitlines()
    assert "| orthrus | orthrus from tiny-base | 10 | 1.0 | 1.5 | 1000 | 0.5 |" in table
    assert "| dflash | dflash from tiny-base | 20 | n/a | 1.0 | 1000 | 2.0 |" in table  # no CPU budget: not claimed
    assert "| heldout | 4 | orthrus | 4/4 | 2.0 | 0.9 / 0.5 / 0.2 / 0.1 | 1.5 | 1.2x |" in table
    assert "| heldout | 4 | dflash | 4/4 | 0.8 | 0.9 / 0.5 / 0.2 / 0.1 | 1.5 | 1.2x |" in table
    assert [line for line in table if line.startswith("| heldout | 8 |")] == ["| heldout | 8 | orthrus | 4/4 | 2.5 | 0.9 / 0.5 / 0.2 / 0.1 | 1.5 | 1.2x |"]

    spec = importlib.util.spec_from_file_location("drafter_table", Path(__file__).resolve().parents[1] / "scripts" / "drafter_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "training.json").write_text("{}")
    assert script.main([f"view={tmp_path}"]) == 2
    assert "has no eval.json" in capsys.readouterr().err
