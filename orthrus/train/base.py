"""Train the tiny Qwen3-architecture causal LMs (`tiny-base`, `tiny-draft`) from scratch on CPU.

Documents of the train split are tokenized and concatenated with `<|endoftext|>` separators; each
step samples random windows and takes the next-token cross-entropy. The sequence-length curriculum
(short windows first, long windows for the final 20% of the budget) is, like the learning rate, a
function of the fraction of the budget used. Budget, schedule, optimizer and checkpoints are the
shared loop's (`orthrus/train/loop.py`); this file holds the data, the step function and the card.

The result is saved in Hugging Face format with float16 weights (to keep the shipped zoo small),
together with the tokenizer files, an `eval.json` with held-out perplexities measured from the
fp16-rounded weights loaded back as fp32, and a `README.md` model card.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

import torch
import torch.nn.functional as F
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from orthrus.models.zoo_index import TOKENIZER_DIR
from orthrus.train.corpus import Document, corpus_documents
from orthrus.train.loop import LoopConfig, Step, StepFn, log, mean_of_last, start_run, train_loop
from orthrus.train.loop import invocation as invocation  # re-exported: orthrus/cli.py imports it from here
from orthrus.train.tokenizer import copy_tokenizer_files, train_tokenizer


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


@dataclass(kw_only=True)
class WindowConfig(LoopConfig):
    """Random windows of a token stream: short ones first, long ones for the final `long_frac`."""

    short_seq_len: int = 512
    short_batch_size: int = 8
    long_seq_len: int = 4096
    long_batch_size: int = 1
    long_frac: float = 0.2  # final fraction of the budget spent on long windows


@dataclass(kw_only=True)
class TrainConfig(WindowConfig):
    """Everything a training run depends on. Defaults are the `tiny-base` recipe."""

    preset: str = "tiny-base"
    shape: ModelShape | None = None  # overrides the preset (tests use a very small shape)
    tokenizer_dir: Path = TOKENIZER_DIR
    lr: float = 3e-3
    eval_contexts: tuple[int, ...] = (512, 2048, 4096, 8192)
    eval_windows: int = 4
    eval_scored_positions: int = 128

    def model_shape(self) -> ModelShape:
        if self.shape is not None:
            return self.shape
        if self.preset not in PRESETS:
            raise ValueError(f"Unknown model preset {self.preset!r}; use one of {', '.join(PRESETS)}.")
        return PRESETS[self.preset]


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


def window_shape(config: WindowConfig, progress: float) -> tuple[int, int]:
    """Sequence length and batch size of the windows at this fraction of the budget."""
    if progress >= 1.0 - config.long_frac:
        return config.long_seq_len, config.long_batch_size
    return config.short_seq_len, config.short_batch_size


# ---------------------------------------------------------------------------------------------
# Model and step


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


def next_token_step(model: Qwen3ForCausalLM, stream: torch.Tensor, config: WindowConfig) -> StepFn:
    """The step function: next-token cross-entropy on random windows of the curriculum's shape."""

    def step(index: int, progress: float, generator: torch.Generator) -> Step:
        seq_len, batch_size = window_shape(config, progress)
        inputs, targets = sample_batch(stream, batch_size, seq_len, generator)
        logits = model(input_ids=inputs, use_cache=False).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return Step(loss, targets.numel(), {"seq": seq_len, "batch": batch_size})

    return step


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
    model = Qwen3ForCausalLM.from_pretrained(
        out_dir, dtype=torch.float32, attn_implementation="sdpa", trust_remote_code=False
    )
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


def load_or_train_tokenizer(config: TrainConfig) -> PreTrainedTokenizerBase:
    if not (config.tokenizer_dir / "tokenizer.json").exists():
        log(config, f"No tokenizer at {config.tokenizer_dir}; training one on the train split.")
        train_tokenizer(config.tokenizer_dir, seed=config.seed)
    return AutoTokenizer.from_pretrained(config.tokenizer_dir, trust_remote_code=False)


def train(
    config: TrainConfig,
    train_documents: Sequence[Document] | None = None,
    heldout_documents: Sequence[Document] | None = None,
) -> dict:
    """Train, save in HF format (fp16 weights) with tokenizer files, evaluate, write the card.

    Returns the run summary that is also written to `eval.json`.
    """
    start_run(config)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_or_train_tokenizer(config)
    if train_documents is None:
        train_documents = corpus_documents("train")
    if heldout_documents is None:
        heldout_documents = corpus_documents("heldout")
    train_stream = tokenize_stream(tokenizer, train_documents)
    heldout_stream = tokenize_stream(tokenizer, heldout_documents)
    log(config, f"train tokens: {len(train_stream):,}  held-out tokens: {len(heldout_stream):,}")

    model = build_model(config.model_shape(), len(tokenizer), tokenizer)
    num_params = sum(p.numel() for p in model.parameters())
    log(config, f"{config.preset}: {num_params:,} parameters")
    state = train_loop(config, model, next_token_step(model, train_stream, config), desc=config.preset)
    final_loss = mean_of_last(state.losses, 20)

    # Save with float16 weights; config.dtype says float32 so the default load is fp32.
    model.half().save_pretrained(out_dir, safe_serialization=True)
    model.config.dtype = torch.float32
    model.config.save_pretrained(out_dir)
    copy_tokenizer_files(config.tokenizer_dir, out_dir)
    del model

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
        "final_train_loss_note": f"mean of the last {len(state.losses[-20:])} steps, "
        f"the last at sequence length {state.last_info['seq']}",
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
        log(config, f"held-out perplexity @ {context} context: {ppl:.3f}")
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
