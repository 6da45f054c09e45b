"""What the DFlash and EAGLE-3 trainers share (``dflash.py``, ``eagle3.py``): the frozen target, its pass
over a batch of self-distillation text, the drafter built in its released layout and saved in fp16, and
the run itself (data, the one loop, the card).

Both train a drafter for a target (by default ``tiny-base``) on the same text as ``train orthrus``: the
target's own greedy continuations of corpus prompts (``distill.self_distillation_data``; with the same
data flags and ``--data-cache`` the very same file). The target never trains: it is loaded as the AR view
of an ``OrthrusForCausalLM`` (what the engines run), every parameter frozen, and each step reads its
logits and the hidden states the drafter reads (``forward_ar(..., hidden_layers=...)``, the call the
engines make) without gradients. Only the drafter's own parameters are handed to the loop.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from orthrus.models import OrthrusForCausalLM, resolve_model_path
from orthrus.models.drafters import NAMES, load_drafter, target_config_of, write_random_drafter
from orthrus.models.drafting import save_drafter
from orthrus.train.distill import EVALUATION_HEADING, SelfDistillConfig, extra_sequences, self_distillation_data
from orthrus.train.loop import StepFn, checkpoint_path, log, mean_of_last, start_run, train_loop, training_time


@dataclass(kw_only=True)
class DrafterTrainConfig(SelfDistillConfig):
    """The data and loop values both drafter trainers share; defaults are the shipped drafters' recipe:
    512 corpus tokens then 256 of the base's own (the evaluation drafts after 512 tokens of context)."""

    data_sequences: int = 768
    prompt_len: int = 512
    continuation_len: int = 256
    init_std: float = 0.02  # the drafter starts from random Qwen3-style weights (normal, this std)
    lr: float = 1e-3
    warmup_frac: float = 0.05
    weight_decay: float = 0.0
    checkpoint_minutes: float = 5.0
    log_every: int = 20


@dataclass
class Target:
    """The frozen target: its AR view, tokenizer, config dict and where it was loaded from."""

    model: OrthrusForCausalLM
    tokenizer: Any
    config: dict[str, Any]
    directory: Path


def load_target(config: DrafterTrainConfig) -> Target:
    """The base as the engines run it (the AR view of an OrthrusForCausalLM), fp32, nothing trainable."""
    directory = resolve_model_path(config.base)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    model = OrthrusForCausalLM.from_base(directory, mask_token_id=tokenizer.mask_token_id, dtype=torch.float32)
    model = model.to(config.device).eval().requires_grad_(False)
    return Target(model, tokenizer, target_config_of(directory), Path(directory))


@torch.no_grad()
def target_pass(target: OrthrusForCausalLM, ids: torch.Tensor, hidden_layers: tuple[int, ...]):
    """(logits [B, T, V], hidden states [B, T, n H] at ``hidden_layers``) of the target over ``ids``: row p
    predicts token p + 1; the states are what the engines hand the drafter for position p."""
    return target.forward_ar(ids, None, 0, hidden_layers=hidden_layers)


def new_drafter(kind: str, target: Target, init_dir: Path, **options: Any) -> Any:
    """A random-weight drafter of ``kind`` for the target, written in its released layout to ``init_dir``
    (``orthrus.models.drafters.write_random_drafter``) and loaded back as the engines load one, trainable."""
    path = write_random_drafter(kind, target.config, init_dir, **options)
    drafter = load_drafter(kind, path, dtype="float32", device="cpu")
    return drafter.requires_grad_(True)


def trainable_names(drafter: torch.nn.Module) -> list[str]:
    return [name for name, p in drafter.named_parameters() if p.requires_grad]


def save_fp16(drafter: Any, out_dir: Path, config: dict[str, Any]) -> None:
    """The drafter in its released layout with float16 weights (the zoo stays small; loaded back as fp32);
    index maps (EAGLE-3's d2t and t2d) keep their integer and boolean types."""
    state = {
        name: (t.detach().half() if t.is_floating_point() else t.detach())
        for name, t in drafter.state_dict().items()
    }
    save_drafter(out_dir, {**config, "torch_dtype": "float16"}, state)


def run_training(
    config: DrafterTrainConfig,
    kind: str,
    build: Callable[[Target, torch.Tensor, Path], tuple[Any, dict[str, Any]]],
    step_for: Callable[[Any, Target, torch.Tensor], StepFn],
    card: Callable[[DrafterTrainConfig, dict[str, Any]], str],
) -> Path:
    """The run both trainers share: check, load the target, the self-distillation text, ``build`` the drafter
    (returns it and facts for the card), train it through the one loop with ``step_for``'s step function,
    check that the target is untouched, save the drafter (fp16), ``training.json`` and the card."""
    extra_sequences(config)  # a bad --extra-prompts stops the run before anything loads
    start_run(config)
    out_dir = Path(config.out_dir)
    ckpt_dir = checkpoint_path(out_dir).parent
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    target = load_target(config)
    before = {k: v.clone() for k, v in target.model.state_dict().items()}
    data = self_distillation_data(target.model, target.tokenizer, config)
    drafter, facts = build(target, data, ckpt_dir / "init")
    wall = time.perf_counter()
    state = train_loop(config, drafter, step_for(drafter, target, data), desc=NAMES[kind])
    wall = time.perf_counter() - wall
    for name, tensor in target.model.state_dict().items():
        if not torch.equal(tensor, before[name]):
            raise RuntimeError(f"target weight {name} changed during {NAMES[kind]} training")
    summary = {
        "kind": kind,
        "base": str(config.base),
        "steps": state.step,
        "wall_time_min": round(wall / 60, 2),
        "budget_clock": config.budget_clock,
        "budget_time_min": round(state.elapsed_s / 60, 2),
        "final_loss": round(mean_of_last(state.losses, 50), 4),
        "self_distillation_sequences": int(data.shape[0]),
        "self_distillation_generated_tokens": int(data.shape[0] * config.continuation_len),
        "drafter_parameters": sum(p.numel() for p in drafter.parameters()),
        "draft_kv_bytes_per_token_fp32": int(drafter.kv_bytes_per_token()),
        **facts,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    save_fp16(drafter, out_dir, drafter.config_dict)
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "README.md").write_text(card(config, summary))
    log(config, f"{out_dir.name} saved to {out_dir} ({state.step} steps, {training_time(summary)})")
    return out_dir


def data_lines(config: DrafterTrainConfig, summary: dict[str, Any], init_note: str = "") -> str:
    """The card's lines on the data and the optimiser (the same words for both drafters)."""
    extra = extra_sequences(config)
    sources = f"{config.data_sequences - extra} from the corpus's train split"
    if extra:
        sources += f", {extra} from the Python files under `{config.extra_prompts}`"
    return (
        f"- data: {summary['self_distillation_sequences']} prompts of {config.prompt_len} tokens ({sources}), each "
        f"continued greedily by `{config.base}` itself for {config.continuation_len} tokens "
        f"({summary['self_distillation_generated_tokens']:,} generated tokens): the text `train orthrus` "
        f"distils the Orthrus view on with the same flags (seed {config.seed})\n"
        f"- AdamW (betas {config.betas}, weight decay {config.weight_decay:g}), peak lr {config.lr:g}, "
        f"{config.warmup_frac:.0%} warmup, cosine to {config.min_lr_ratio:.0%}, clip {config.grad_clip}, "
        f"batch {config.batch_size} sequences, fp32, {config.num_threads} CPU thread(s), seed {config.seed}; "
        f"random initial weights (normal, std {config.init_std:g}){init_note}\n"
        f"- steps: {summary['steps']:,}; {training_time(summary)} (after generating the data)\n"
        f"- final loss (mean of the last 50 steps): {summary['final_loss']}"
    )


def evaluation_placeholder(name: str, kind: str, base: str) -> str:
    return (
        f"{EVALUATION_HEADING}\nNot measured yet: run `python -m orthrus evaluate --model {base} --engine {kind} "
        f"--draft-model {name} --block-sizes 4,8,16 --write-card`.\n"
    )
