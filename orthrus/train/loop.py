"""The one training loop of the tiny models (nanoGPT shape): plain config values, the loop, and a step
function from each trainer that returns the loss of one batch.

The budget is ``steps`` and/or ``max_minutes``, whichever ends first; minutes of wall-clock time, or
with ``budget_clock="cpu"`` of this process's CPU time (what a run got of the machine, so that runs
sharing a machine with others get equal budgets however the others load it). The learning rate (linear
warmup over ``warmup_frac``, then cosine to ``min_lr_ratio * lr``) is a function of the fraction of
that budget used, so a time budget needs no step estimate; a trainer's data may follow the same
fraction (a sequence-length curriculum). Each step: set the learning rate, call the step function,
backward, clip, AdamW (weight decay on matrices only). Only parameters with ``requires_grad`` train.

The checkpoint (``<out_dir>/checkpoint/state.pt``) holds the model, the optimizer, the loop state,
every random number generator the loop and step functions use, and the config. It is written
every ``checkpoint_minutes`` and at the end; ``resume`` continues from it, and a run resumed with
the same config computes the same losses as one that never stopped (tests/test_train_loop.py).
"""

from __future__ import annotations

import math
import os
import random
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm


def invocation() -> str:
    """The command line of this process, as a user would type it (for model cards)."""
    program = sys.argv[0]
    if Path(program).name == "__main__.py":  # `python -m pkg` puts pkg/__main__.py in argv[0]
        program = f"-m {Path(program).parent.name}"
    return " ".join(["python", *program.split(), *map(shlex.quote, sys.argv[1:])])


@dataclass(kw_only=True)
class LoopConfig:
    """What the loop reads; each trainer's config extends it with its data and model fields."""

    out_dir: Path
    steps: int | None = None
    max_minutes: float | None = None
    budget_clock: str = "wall"  # what max_minutes counts: "wall" (elapsed) or "cpu" (this process's CPU time)
    seed: int = 0
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.03
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    num_threads: int = 2
    checkpoint_minutes: float = 4.0
    log_every: int = 25
    resume: bool = False
    quiet: bool = False
    command: str = field(default_factory=invocation)


@dataclass
class LoopState:
    """What a checkpoint restores besides weights, optimizer and random number generators."""

    step: int = 0
    elapsed_s: float = 0.0
    tokens_seen: int = 0
    losses: list[float] = field(default_factory=list)  # one per step, from the first
    last_info: dict[str, int | float | str] = field(default_factory=dict)  # the last Step's info


@dataclass
class Step:
    """One step's result from a trainer's step function."""

    loss: torch.Tensor  # scalar, to be minimised
    tokens: int  # tokens in the batch (tokens seen, throughput)
    info: dict[str, int | float | str] = field(default_factory=dict)  # shown in the log, e.g. {"seq": 512}


# step_fn(step, progress, generator): `step` counts from 0, `progress` is the budget fraction used
# so far, and `generator` is the loop's data generator (checkpointed), the only randomness to use.
StepFn = Callable[[int, float, torch.Generator], Step]


# ---------------------------------------------------------------------------------------------
# Budget and schedule

# the clocks a time budget may count: elapsed time, or the CPU time of this process (all its threads)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def start_run(config: LoopConfig) -> None:
    """What every trainer does first, before it loads data or builds its model: check the budget
    and the checkpoint to resume (fail before any slow work), set threads, seed torch and random."""
    if config.steps is None and config.max_minutes is None:
        raise ValueError("Give a training budget: --steps N and/or --max-minutes M.")
    if config.steps is not None and config.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {config.steps}.")
    if config.max_minutes is not None and config.max_minutes <= 0:
        raise ValueError(f"--max-minutes must be positive, got {config.max_minutes}.")
    if config.budget_clock not in CLOCKS:
        raise ValueError(f"--budget-clock must be one of {', '.join(CLOCKS)}, got {config.budget_clock!r}.")
    ckpt = checkpoint_path(config.out_dir)
    if config.resume and not ckpt.is_file():
        raise FileNotFoundError(f"No checkpoint at {ckpt} to resume from; run without --resume to start fresh.")
    torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    random.seed(config.seed)


def budget_fraction(config: LoopConfig, step: int, elapsed_s: float) -> float:
    """Fraction of the training budget used: the larger of the step and time fractions."""
    fractions = []
    if config.steps is not None:
        fractions.append(step / config.steps)
    if config.max_minutes is not None:
        fractions.append(elapsed_s / (config.max_minutes * 60))
    return min(1.0, max(fractions))


def learning_rate(config: LoopConfig, progress: float) -> float:
    """Linear warmup over the first `warmup_frac`, then cosine from `lr` to `min_lr_ratio * lr`."""
    if progress < config.warmup_frac:
        return config.lr * max(progress / config.warmup_frac, 0.01)
    decay = (progress - config.warmup_frac) / max(1 - config.warmup_frac, 1e-9)
    cosine = 0.5 * (1 + math.cos(math.pi * min(decay, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def make_optimizer(params: list[torch.nn.Parameter], config: LoopConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms)."""
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


# ---------------------------------------------------------------------------------------------
# Checkpoint


def checkpoint_path(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoint" / "state.pt"


def save_checkpoint(
    config: LoopConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: LoopState,
    generator: torch.Generator,
) -> Path:
    """Write the checkpoint atomically (a crash mid-write leaves the previous one)."""
    path = checkpoint_path(config.out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": asdict(state),
        "rng": {"data": generator.get_state(), "torch": torch.get_rng_state(), "python": random.getstate()},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(
    config: LoopConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> LoopState:
    """Restore model, optimizer and random number generators in place; return the loop state."""
    path = checkpoint_path(config.out_dir)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path} to resume from; run without --resume to start fresh.")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not {"model", "optimizer", "state", "rng"} <= payload.keys():
        raise ValueError(f"{path} is a checkpoint from an older orthrus; run without --resume to start fresh.")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    generator.set_state(payload["rng"]["data"])
    torch.set_rng_state(payload["rng"]["torch"])
    random.setstate(payload["rng"]["python"])
    return LoopState(**payload["state"])


# ---------------------------------------------------------------------------------------------
# The loop


def log(config: LoopConfig, message: str) -> None:
    """One line of output (above the progress bar when there is one); nothing in quiet mode."""
    if not config.quiet:
        tqdm.write(message)
        sys.stdout.flush()


def train_loop(config: LoopConfig, model: torch.nn.Module, step_fn: StepFn, desc: str) -> LoopState:
    """Train `model` until the budget is used up; resume first if `config.resume`. Returns the state.

    Call `start_run(config)` before building the model. The model is left in eval mode.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config)
    generator = torch.Generator().manual_seed(config.seed)
    state = LoopState()
    if config.resume:
        state = load_checkpoint(config, model, optimizer, generator)
        log(
            config,
            f"resumed from {checkpoint_path(config.out_dir)} at step {state.step} ({state.elapsed_s / 60:.1f} min)",
        )

    show_bar = not config.quiet and sys.stderr.isatty()
    bar = tqdm(total=1000, disable=not show_bar, unit="‰", desc=desc, dynamic_ncols=True)
    model.train()
    clock = CLOCKS[config.budget_clock]
    start = clock() - state.elapsed_s
    last_save = time.perf_counter()
    progress = budget_fraction(config, state.step, state.elapsed_s)
    while progress < 1.0:
        lr = learning_rate(config, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step = step_fn(state.step, progress, generator)
        optimizer.zero_grad(set_to_none=True)
        step.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()

        state.step += 1
        state.tokens_seen += step.tokens
        state.elapsed_s = clock() - start
        state.losses.append(step.loss.item())
        state.last_info = dict(step.info)
        progress = budget_fraction(config, state.step, state.elapsed_s)

        info = " | ".join(f"{key} {value}" for key, value in step.info.items())
        bar.update(round(progress * 1000) - bar.n)
        bar.set_postfix(step=state.step, loss=f"{state.losses[-1]:.3f}", lr=f"{lr:.2e}", **step.info)
        if not show_bar and (state.step % config.log_every == 0 or state.step == 1):
            recent = state.losses[-config.log_every :]
            log(
                config,
                f"step {state.step:5d} | loss {sum(recent) / len(recent):.4f} | lr {lr:.2e} | {info}"
                f" | {state.elapsed_s / 60:5.1f} min | {progress:6.1%}"
                f" | {state.tokens_seen / max(state.elapsed_s, 1e-9):,.0f} tok/s",
            )
        if time.perf_counter() - last_save > config.checkpoint_minutes * 60:
            save_checkpoint(config, model, optimizer, state, generator)
            last_save = time.perf_counter()
    bar.close()
    save_checkpoint(config, model, optimizer, state, generator)
    log(config, f"done: {state.step} steps, {state.tokens_seen:,} tokens, {state.elapsed_s / 60:.1f} min")
    model.eval()
    return state


def training_time(summary: dict) -> str:
    """A model card's words for how long training took (a summary's wall_time_min, budget_clock, budget_time_min)."""
    if summary.get("budget_clock") == "cpu":
        return f"training took {summary['budget_time_min']} CPU minutes ({summary['wall_time_min']} min wall time)"
    return f"training wall time {summary['wall_time_min']} min"


def mean_of_last(losses: list[float], count: int) -> float:
    """Mean of the last `count` losses (the final training loss a model card reports)."""
    recent = losses[-count:]
    return sum(recent) / max(len(recent), 1)
