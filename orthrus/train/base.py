"""Train the tiny Qwen3-architecture causal LMs (`tiny-base`, `tiny-draft`) from scratch on CPU.

nanoGPT-style: plain values in a dataclass, one loop. Documents of the train split are tokenized
and concatenated with `<|endoftext|>` separators; each step samples random windows. The budget is
`steps` and/or `max_minutes` (whichever ends first); the learning-rate schedule (3% warmup, cosine
to 10%) and the sequence-length curriculum (short windows first, long windows for the final 20%)
are both functions of the fraction of that budget used, so a time budget needs no step estimate.

The result is saved in Hugging Face format with float16 weights (to keep the shipped zoo small),
together with the tokenizer files, an `eval.json` with held-out perplexities measured from the
fp16-rounded weights loaded back as fp32, and a `README.md` model card.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from orthrus.train.corpus import Document, corpus_documents
from orthrus.train.tokenizer import copy_tokenizer_files, train_tokenizer

ZOO_DIR = Path(__file__).resolve().parent.parent / "models" / "zoo"
DEFAULT_TOKENIZER_DIR = ZOO_DIR / "tiny-tokenizer"


@dataclass(frozen=True)
class ModelShape:
    """The architecture knobs of a Qwen3 model; vocab size comes from the tokenizer."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int = 16384
    rope_theta: float = 10000.0


PRESETS: MappingProxyType[str, ModelShape] = MappingProxyType(
    {
        "tiny-base": ModelShape(
            hidden_size=256,
            num_hidden_layers=5,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            intermediate_size=512,
        ),
        "tiny-draft": ModelShape(
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=64,
            intermediate_size=256,
        ),
    }
)


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults are the `tiny-base` recipe."""

    out_dir: Path
    preset: str = "tiny-base"
    shape: ModelShape | None = None  # overrides the preset (tests use a very small shape)
    tokenizer_dir: Path = DEFAULT_TOKENIZER_DIR
    steps: int | None = None
    max_minutes: float | None = None
    seed: int = 0
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.03
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    short_seq_len: int = 512
    short_batch_size: int = 8
    long_seq_len: int = 4096
    long_batch_size: int = 1
    long_frac: float = 0.2  # final fraction of the budget spent on long windows
    num_threads: int = 2
    checkpoint_minutes: float = 4.0
    log_every: int = 25
    eval_contexts: tuple[int, ...] = (512, 2048, 4096, 8192)
    eval_windows: int = 4
    eval_scored_positions: int = 128
    resume: bool = False
    quiet: bool = False
    command: str = field(default_factory=lambda: invocation())

    def model_shape(self) -> ModelShape:
        if self.shape is not None:
            return self.shape
        if self.preset not in PRESETS:
            raise ValueError(f"Unknown model preset {self.preset!r}; use one of {', '.join(PRESETS)}.")
        return PRESETS[self.preset]


@dataclass
class TrainState:
    """What a checkpoint must restore besides model and optimizer weights."""

    step: int = 0
    elapsed_s: float = 0.0
    tokens_seen: int = 0
    recent_losses: list[float] = field(default_factory=list)


def invocation() -> str:
    """The command line of this process, as a user would type it."""
    program = sys.argv[0]
    if Path(program).name == "__main__.py":  # `python -m pkg` puts pkg/__main__.py in argv[0]
        program = f"-m {Path(program).parent.name}"
    return " ".join(["python", *program.split(), *map(shlex.quote, sys.argv[1:])])


# ---------------------------------------------------------------------------------------------
# Data


def tokenize_stream(tokenizer: PreTrainedTokenizerBase, documents: Sequence[Document]) -> torch.Tensor:
    """All documents as one 1-D token tensor: `<eos> doc <eos> doc ... <eos>`."""
    eos = tokenizer.eos_token_id
    if not documents:
        return torch.tensor([eos], dtype=torch.long)
    encoded = tokenizer([d.text for d in documents], add_special_tokens=False)["input_ids"]
    ids = [eos]
    for document_ids in encoded:
        ids.extend(document_ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def sample_batch(
    stream: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of `seq_len + 1` tokens: inputs (B, T) and next-token targets (B, T)."""
    seq_len = min(seq_len, len(stream) - 1)
    starts = torch.randint(0, len(stream) - seq_len, (batch_size,), generator=generator)
    windows = torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


# ---------------------------------------------------------------------------------------------
# Model and schedule


def build_model(shape: ModelShape, vocab_size: int, tokenizer: PreTrainedTokenizerBase) -> Qwen3ForCausalLM:
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = "sdpa"
    return Qwen3ForCausalLM(config)


def budget_fraction(config: TrainConfig, step: int, elapsed_s: float) -> float:
    """Fraction of the training budget used: the larger of the step and time fractions."""
    fractions = []
    if config.steps is not None:
        fractions.append(step / config.steps)
    if config.max_minutes is not None:
        fractions.append(elapsed_s / (config.max_minutes * 60))
    return min(1.0, max(fractions))


def learning_rate(config: TrainConfig, progress: float) -> float:
    """Linear warmup over the first `warmup_frac`, then cosine from `lr` to `min_lr_ratio * lr`."""
    if progress < config.warmup_frac:
        return config.lr * max(progress / config.warmup_frac, 0.01)
    decay = (progress - config.warmup_frac) / (1 - config.warmup_frac)
    cosine = 0.5 * (1 + math.cos(math.pi * min(decay, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {
            "params": [p for p in params if p.dim() >= 2],
            "weight_decay": config.weight_decay,
        },
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_path(out_dir: Path) -> Path:
    return out_dir / "checkpoint" / "state.pt"


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    generator: torch.Generator,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": asdict(state),
        "data_rng": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> TrainState:
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path} to resume from; run without --resume to start fresh.")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    generator.set_state(payload["data_rng"])
    torch.set_rng_state(payload["torch_rng"])
    return TrainState(**payload["state"])


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def heldout_nll(
    model: Qwen3ForCausalLM,
    stream: torch.Tensor,
    context: int,
    windows: int,
    scored_positions: int,
) -> float:
    """Mean next-token NLL (nats) over the last `scored_positions` targets of `windows` windows.

    Each window holds `context` input tokens, at evenly spaced offsets of the held-out stream, so
    every scored token is predicted from at least `context - scored_positions` tokens of context.
    """
    if len(stream) < context + 1:
        raise ValueError(f"The held-out stream has {len(stream)} tokens, too few for a {context}-token window.")
    model.eval()
    last_start = len(stream) - context - 1
    starts = [round(i * last_start / max(windows - 1, 1)) for i in range(windows)]
    total, count = 0.0, 0
    for start in starts:
        window = stream[start : start + context + 1].unsqueeze(0)
        logits = model(input_ids=window[:, :-1], use_cache=False).logits[0, -scored_positions:]
        targets = window[0, -scored_positions:]
        total += F.cross_entropy(logits.float(), targets, reduction="sum").item()
        count += targets.numel()
    return total / count


def evaluate_saved(out_dir: Path, stream: torch.Tensor, config: TrainConfig) -> dict[str, dict[str, float]]:
    """Held-out NLL and perplexity of the saved (fp16-rounded) weights, loaded back as fp32."""
    model = Qwen3ForCausalLM.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="sdpa")
    nll = {
        str(context): heldout_nll(model, stream, context, config.eval_windows, config.eval_scored_positions)
        for context in config.eval_contexts
    }
    return {
        "heldout_nll": nll,
        "heldout_ppl": {context: math.exp(value) for context, value in nll.items()},
    }


# ---------------------------------------------------------------------------------------------
# Training


def _log(config: TrainConfig, message: str) -> None:
    if not config.quiet:
        print(message, flush=True)


def load_or_train_tokenizer(config: TrainConfig) -> PreTrainedTokenizerBase:
    if not (config.tokenizer_dir / "tokenizer.json").exists():
        _log(
            config,
            f"No tokenizer at {config.tokenizer_dir}; training one on the train split.",
        )
        train_tokenizer(config.tokenizer_dir, seed=config.seed)
    return AutoTokenizer.from_pretrained(config.tokenizer_dir)


def train(
    config: TrainConfig,
    train_documents: Sequence[Document] | None = None,
    heldout_documents: Sequence[Document] | None = None,
) -> dict:
    """Train, save in HF format (fp16 weights) with tokenizer files, evaluate, write the card.

    Returns the run summary that is also written to `eval.json`.
    """
    if config.steps is None and config.max_minutes is None:
        raise ValueError("Give a training budget: --steps N and/or --max-minutes M.")
    torch.set_num_threads(config.num_threads)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint_path(out_dir)
    if config.resume and not ckpt.exists():
        raise FileNotFoundError(f"No checkpoint at {ckpt} to resume from; run without --resume to start fresh.")

    tokenizer = load_or_train_tokenizer(config)
    if train_documents is None:
        train_documents = corpus_documents("train")
    if heldout_documents is None:
        heldout_documents = corpus_documents("heldout")
    train_stream = tokenize_stream(tokenizer, train_documents)
    heldout_stream = tokenize_stream(tokenizer, heldout_documents)
    _log(
        config,
        f"train tokens: {len(train_stream):,}  held-out tokens: {len(heldout_stream):,}",
    )

    torch.manual_seed(config.seed)
    model = build_model(config.model_shape(), len(tokenizer), tokenizer)
    num_params = sum(p.numel() for p in model.parameters())
    _log(config, f"{config.preset}: {num_params:,} parameters")
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    state = TrainState()
    if config.resume:
        state = load_checkpoint(ckpt, model, optimizer, generator)
        _log(
            config,
            f"resumed from {ckpt} at step {state.step} ({state.elapsed_s / 60:.1f} min)",
        )

    show_bar = not config.quiet and sys.stderr.isatty()
    bar = tqdm(
        total=1000,
        disable=not show_bar,
        unit="‰",
        desc=config.preset,
        dynamic_ncols=True,
    )
    model.train()
    start_time = time.perf_counter() - state.elapsed_s
    last_checkpoint = time.perf_counter()
    progress = budget_fraction(config, state.step, state.elapsed_s)
    seq_len = config.short_seq_len
    while progress < 1.0:
        long_phase = progress >= 1.0 - config.long_frac
        seq_len = config.long_seq_len if long_phase else config.short_seq_len
        batch_size = config.long_batch_size if long_phase else config.short_batch_size
        lr = learning_rate(config, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr

        inputs, targets = sample_batch(train_stream, batch_size, seq_len, generator)
        logits = model(input_ids=inputs, use_cache=False).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

        state.step += 1
        state.tokens_seen += targets.numel()
        state.elapsed_s = time.perf_counter() - start_time
        state.recent_losses = [*state.recent_losses[-49:], loss.item()]
        progress = budget_fraction(config, state.step, state.elapsed_s)

        bar.update(round(progress * 1000) - bar.n)
        bar.set_postfix(step=state.step, loss=f"{loss.item():.3f}", seq=seq_len, lr=f"{lr:.2e}")
        if not show_bar and (state.step % config.log_every == 0 or state.step == 1):
            tokens_per_s = state.tokens_seen / max(state.elapsed_s, 1e-9)
            _log(
                config,
                f"step {state.step:5d} | loss {loss.item():.4f} | lr {lr:.2e} | seq {seq_len} x {batch_size}"
                f" | {state.elapsed_s / 60:5.1f} min | {progress:6.1%} | {tokens_per_s:,.0f} tok/s",
            )
        if time.perf_counter() - last_checkpoint > config.checkpoint_minutes * 60:
            save_checkpoint(ckpt, model, optimizer, state, generator)
            last_checkpoint = time.perf_counter()
    bar.close()
    save_checkpoint(ckpt, model, optimizer, state, generator)

    final_loss = sum(state.recent_losses[-20:]) / max(len(state.recent_losses[-20:]), 1)
    _log(
        config,
        f"done: {state.step} steps, {state.tokens_seen:,} tokens, {state.elapsed_s / 60:.1f} min",
    )

    # Save with float16 weights; config.dtype says float32 so the default load is fp32.
    model.half().save_pretrained(out_dir, safe_serialization=True)
    model.config.dtype = torch.float32
    model.config.save_pretrained(out_dir)
    copy_tokenizer_files(config.tokenizer_dir, out_dir)
    del model, optimizer

    eval_start = time.perf_counter()
    results = evaluate_saved(out_dir, heldout_stream, config)
    summary = {
        "model": config.preset,
        "num_parameters": num_params,
        "vocab_size": len(tokenizer),
        "steps": state.step,
        "tokens_seen": state.tokens_seen,
        "train_wall_time_s": round(state.elapsed_s, 1),
        "eval_wall_time_s": round(time.perf_counter() - eval_start, 1),
        "final_train_loss": final_loss,
        "final_train_loss_note": f"mean of the last {len(state.recent_losses[-20:])} steps, "
        f"the last at sequence length {seq_len}",
        "seed": config.seed,
        "train_tokens_in_corpus": len(train_stream),
        "heldout_tokens_in_corpus": len(heldout_stream),
        "eval_windows": config.eval_windows,
        "eval_scored_positions": config.eval_scored_positions,
        **results,
        "command": config.command,
        "torch": torch.__version__,
        "cpu_threads": config.num_threads,
        "machine": platform.machine(),
    }
    (out_dir / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "README.md").write_text(model_card(config, summary))
    for context, ppl in results["heldout_ppl"].items():
        _log(config, f"held-out perplexity @ {context} context: {ppl:.3f}")
    return summary


def model_card(config: TrainConfig, summary: dict) -> str:
    shape = config.model_shape()
    ppl_rows = "\n".join(
        f"| {context} | {summary['heldout_nll'][context]:.4f} | {ppl:.3f} |"
        for context, ppl in summary["heldout_ppl"].items()
    )
    return f"""# {config.preset}

A tiny Qwen3-architecture causal language model trained from scratch on CPU, shipped inside the
`orthrus` package so the benchmarks run offline. It is a test fixture for decoding algorithms,
not a useful language model.

## Architecture
`Qwen3ForCausalLM`: vocab {summary["vocab_size"]}, hidden {shape.hidden_size}, \
{shape.num_hidden_layers} layers, {shape.num_attention_heads} attention heads \
({shape.num_key_value_heads} KV heads, head_dim {shape.head_dim}), MLP {shape.intermediate_size}, \
tied embeddings, RoPE theta {shape.rope_theta:g}, max positions {shape.max_position_embeddings}.
{summary["num_parameters"]:,} parameters. Weights are stored as float16 (to keep the package small);
`config.json` says float32 and the weights are meant to be loaded and run in fp32.

## Data
Python {platform.python_version()} standard library sources (`*.py`, excluding tests, idlelib and
files over 200 KB) plus the `pydoc_data.topics` texts; see `orthrus/train/corpus.py`. Files whose
`sha1(relative path) % 20 == 0` are held out (never trained on).
Tokenizer: byte-level BPE, 4096 tokens, trained on the train split (`orthrus/train/tokenizer.py`).
Train split: {summary["train_tokens_in_corpus"]:,} tokens; held-out split: \
{summary["heldout_tokens_in_corpus"]:,} tokens.

## Training
Command: `{summary["command"]}`

AdamW (betas {config.betas}, weight decay {config.weight_decay}), peak lr {config.lr:g}, \
{config.warmup_frac:.0%} warmup, cosine to {config.min_lr_ratio:.0%}, grad clip {config.grad_clip}, fp32, \
{config.num_threads} CPU thread(s), seed {config.seed}. Random windows of {config.short_seq_len} tokens \
(batch {config.short_batch_size}), then {config.long_seq_len} tokens (batch {config.long_batch_size}) for the \
final {config.long_frac:.0%} of the budget.

- steps: {summary["steps"]:,}
- tokens seen: {summary["tokens_seen"]:,}
- training wall time: {summary["train_wall_time_s"] / 60:.1f} min (torch {summary["torch"]})
- final train loss: {summary["final_train_loss"]:.4f} ({summary["final_train_loss_note"]})

## Held-out evaluation
Mean next-token NLL over the last {summary["eval_scored_positions"]} positions of \
{summary["eval_windows"]} windows per context length from the held-out split, using the stored fp16
weights loaded as fp32.

| context (tokens) | NLL (nats) | perplexity |
|---|---|---|
{ppl_rows}
"""


def config_for(preset: str, out_dir: Path, **overrides: object) -> TrainConfig:
    """The default recipe for a preset, with overrides (CLI flags, tests)."""
    config = TrainConfig(out_dir=out_dir, preset=preset)
    return replace(config, **overrides)
