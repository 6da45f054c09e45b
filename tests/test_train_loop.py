"""The one training loop: budget and schedule, the checkpoint, and a resumed run that computes the
same losses as one that never stopped (real tiny Qwen3, the base trainer's own step function)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orthrus.train.base import TrainConfig, next_token_step
from orthrus.train.loop import (
    LoopConfig,
    budget_fraction,
    checkpoint_path,
    learning_rate,
    start_run,
    train_loop,
)
from tests.conftest import random_qwen3


class Killed(Exception):
    """Stands in for a run killed mid-way (the last checkpoint is what survives)."""


STREAM = torch.randint(3, 64, (2000,), generator=torch.Generator().manual_seed(0))


def tiny_config(out_dir: Path, **overrides) -> TrainConfig:
    settings = dict(
        out_dir=out_dir,
        steps=6,
        short_seq_len=16,
        short_batch_size=2,
        long_seq_len=32,
        long_batch_size=1,
        long_frac=0.34,  # steps 5 and 6 run at the long sequence length
        checkpoint_minutes=0.0,  # a checkpoint after every step
        num_threads=1,
        quiet=True,
    )
    return TrainConfig(**{**settings, **overrides})


def run(config: TrainConfig, stop_after: int | None = None):
    """start_run + a fresh tiny model + train_loop; `stop_after` steps simulates a killed run."""
    start_run(config)
    model = random_qwen3(vocab=64, hidden=16, layers=1, seed=5, scale=1.0)
    step_fn = next_token_step(model, STREAM, config)

    def step(index: int, progress: float, generator: torch.Generator):
        if stop_after is not None and index == stop_after:
            raise Killed
        return step_fn(index, progress, generator)

    return train_loop(config, model, step, desc="test"), model


def test_resumed_run_computes_the_same_losses_as_an_uninterrupted_one(tmp_path):
    whole, whole_model = run(tiny_config(tmp_path / "whole"))
    assert whole.step == 6 and len(whole.losses) == 6
    assert whole.tokens_seen == 4 * 16 * 2 + 2 * 32
    assert whole.last_info == {"seq": 32, "batch": 1}

    with pytest.raises(Killed):
        run(tiny_config(tmp_path / "split"), stop_after=3)
    resumed, resumed_model = run(tiny_config(tmp_path / "split", resume=True))
    assert resumed.step == 6
    assert resumed.losses == whole.losses  # bit for bit: weights, optimizer and data RNG restored
    for (name, a), b in zip(whole_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_holds_model_optimizer_state_rng_and_config(tmp_path):
    config = tiny_config(tmp_path, steps=2)
    state, model = run(config)
    payload = torch.load(checkpoint_path(tmp_path), weights_only=True)  # plain tensors and values only
    assert set(payload) == {"model", "optimizer", "state", "rng", "config"}
    assert payload["model"].keys() == model.state_dict().keys()
    assert payload["state"]["step"] == 2 and payload["state"]["losses"] == state.losses
    assert set(payload["rng"]) == {"data", "torch", "python"}
    assert payload["config"]["steps"] == 2 and payload["config"]["out_dir"] == str(tmp_path)
    assert not model.training  # the loop hands the model back in eval mode


def test_resume_to_a_larger_budget_continues_the_run(tmp_path):
    run(tiny_config(tmp_path, steps=2))
    state, _ = run(tiny_config(tmp_path, steps=3, resume=True))
    assert state.step == 3 and len(state.losses) == 3


def test_budget_and_resume_mistakes_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="training budget"):
        start_run(LoopConfig(out_dir=tmp_path))
    with pytest.raises(ValueError, match="--steps must be at least 1"):
        start_run(LoopConfig(out_dir=tmp_path, steps=0))
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        start_run(LoopConfig(out_dir=tmp_path, steps=1, resume=True))
    checkpoint_path(tmp_path).parent.mkdir(parents=True)
    torch.save({"diff": {}, "step": 1}, checkpoint_path(tmp_path))  # the old distillation format
    config = tiny_config(tmp_path, resume=True)
    with pytest.raises(ValueError, match="older orthrus"):
        run(config)


def test_time_budget_ends_the_run(tmp_path):
    state, _ = run(tiny_config(tmp_path, steps=None, max_minutes=0.002))
    assert state.step >= 1 and state.elapsed_s >= 0.12


def test_schedule_warms_up_then_decays_to_the_floor():
    config = LoopConfig(out_dir=Path("."), steps=100, lr=1e-3, warmup_frac=0.1, min_lr_ratio=0.1)
    assert learning_rate(config, 0.0) == pytest.approx(1e-5)  # 1% of the peak at the very start
    assert learning_rate(config, 0.05) == pytest.approx(5e-4)
    assert learning_rate(config, 0.1) == pytest.approx(1e-3)
    assert learning_rate(config, 0.55) == pytest.approx(5.5e-4)  # half way down the cosine
    assert learning_rate(config, 1.0) == pytest.approx(1e-4)
    both = LoopConfig(out_dir=Path("."), steps=100, max_minutes=1.0)
    assert budget_fraction(both, 10, 30.0) == 0.5  # the larger of the step and time fractions
    assert budget_fraction(both, 80, 30.0) == 0.8
    assert budget_fraction(both, 200, 0.0) == 1.0
