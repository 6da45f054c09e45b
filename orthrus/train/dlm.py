"""Adapt a causal Qwen3 LM (`tiny-base`) into a masked-diffusion LM (`tiny-dlm`) for the DLM baselines.

The recipe of MDLM / LLaDA pre-training, at tiny scale: the base's weights are run with
bidirectional attention (``Qwen3DiffusionLM``); for each training window a masking ratio
``t ~ U(eps, 1)`` is drawn and every maskable token is replaced by the tokenizer's ``<|mask|>``
with probability ``t``; the loss is the cross-entropy on the masked positions weighted by ``1/t``,
summed and divided by the number of maskable tokens (an upper bound on the NLL). A fraction
``prompt_frac`` of the windows keeps a clean prefix of random length that is never masked (LLaDA's
SFT form), so that the model also sees the prompt-plus-masked-continuation inputs the decoders
give it. Budget, learning-rate schedule and sequence-length curriculum work as in
``orthrus/train/base.py`` (whose helpers are reused).

Saved in Hugging Face format (fp16 weights, ``config.json`` with ``"is_causal": false`` and
``"mask_token_id"``), with the tokenizer files, ``eval.json`` (measured on held-out text from the
saved weights loaded back as fp32, before and after training) and a ``README.md`` model card.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoTokenizer

from orthrus.models.dlm import Qwen3DiffusionLM, load_diffusion_lm
from orthrus.models.modeling_orthrus import load_state_dict, read_config, resolve_model_path
from orthrus.train.base import (
    ZOO_DIR,
    TrainState,
    checkpoint_path,
    invocation,
    load_checkpoint,
    make_optimizer,
    sample_batch,
    save_checkpoint,
    tokenize_stream,
)
from orthrus.train.corpus import Document, corpus_documents
from orthrus.train.tokenizer import copy_tokenizer_files

MASK_TOKEN = "<|mask|>"


@dataclass
class DLMConfig:
    """Everything a `tiny-dlm` adaptation run depends on (optimizer fields are read by base.make_optimizer)."""

    out_dir: Path = ZOO_DIR / "tiny-dlm"
    base: str = "tiny-base"  # zoo name or Qwen3 checkpoint directory (with tokenizer files)
    steps: int | None = None
    max_minutes: float | None = None
    seed: int = 0
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.03
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eps: float = 1e-3  # smallest masking ratio
    prompt_frac: float = 0.5  # windows that keep a clean prefix (never masked)
    short_seq_len: int = 512
    short_batch_size: int = 8
    long_seq_len: int = 2048
    long_batch_size: int = 2
    long_frac: float = 0.2  # final fraction of the budget spent on long windows
    num_threads: int = 2
    checkpoint_minutes: float = 4.0
    log_every: int = 10
    eval_contexts: tuple[int, ...] = (512, 2048)
    eval_windows: int = 4
    eval_mask_ratios: tuple[float, ...] = (0.15, 0.5, 0.9)
    eval_continuation: int = 64  # masked tokens at the end of each window ("continuation" NLL)
    eval_generations: int = 4  # held-out prompts decoded with the DLM engines and scored by the base
    resume: bool = False
    quiet: bool = False
    command: str = field(default_factory=invocation)


# ---------------------------------------------------------------------------------------------
# Objective


def mask_batch(
    tokens: torch.Tensor, mask_id: int, eps: float, prompt_frac: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy inputs, the masked positions, the per-window ratio t [B] and the maskable positions."""
    batch, length = tokens.shape
    t = eps + (1 - eps) * torch.rand(batch, generator=generator)
    maskable = torch.ones(batch, length, dtype=torch.bool)
    with_prompt = torch.rand(batch, generator=generator) < prompt_frac
    prompt_len = torch.randint(1, max(length, 2), (batch,), generator=generator)
    positions = torch.arange(length).unsqueeze(0)
    maskable &= ~(with_prompt.unsqueeze(1) & (positions < prompt_len.unsqueeze(1)))
    masked = (torch.rand(batch, length, generator=generator) < t.unsqueeze(1)) & maskable
    return tokens.masked_fill(masked, mask_id), masked, t, maskable


def diffusion_loss(model: Qwen3DiffusionLM, tokens: torch.Tensor, noisy, masked, t, maskable) -> torch.Tensor:
    """Sum over masked positions of CE / t, divided by the number of maskable positions (MDLM/LLaDA)."""
    logits = model(noisy)
    ce = F.cross_entropy(logits[masked].float(), tokens[masked], reduction="none")
    weights = (1.0 / t).unsqueeze(1).expand_as(masked)[masked]
    return (ce * weights).sum() / maskable.sum().clamp(min=1)


def learning_rate(config: DLMConfig, progress: float) -> float:
    if progress < config.warmup_frac:
        return config.lr * max(progress / config.warmup_frac, 0.01)
    decay = (progress - config.warmup_frac) / (1 - config.warmup_frac)
    return config.lr * (
        config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(decay, 1.0)))
    )


def budget_fraction(config: DLMConfig, step: int, elapsed_s: float) -> float:
    fractions = []
    if config.steps is not None:
        fractions.append(step / config.steps)
    if config.max_minutes is not None:
        fractions.append(elapsed_s / (config.max_minutes * 60))
    return min(1.0, max(fractions))


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate_dlm(
    model: Qwen3DiffusionLM, stream: torch.Tensor, mask_id: int, config: DLMConfig
) -> dict[str, dict[str, float]]:
    """Held-out masked-token NLL (nats): at fixed masking ratios, and for a masked continuation.

    ``masked_nll[ratio@context]``: mean CE over positions masked i.i.d. with that ratio.
    ``continuation_nll[context]``: mean CE over the last ``eval_continuation`` tokens, all masked,
    given the clean rest of the window (what the first denoising step of a generation faces).
    Windows are evenly spaced over the held-out stream; the masks come from a fixed seed.
    """
    model.eval()
    generator = torch.Generator().manual_seed(1234)
    masked_nll: dict[str, float] = {}
    continuation: dict[str, float] = {}
    for context in config.eval_contexts:
        if len(stream) < context:
            continue
        last = len(stream) - context
        starts = [round(i * last / max(config.eval_windows - 1, 1)) for i in range(config.eval_windows)]
        windows = [stream[s : s + context].unsqueeze(0) for s in starts]
        for ratio in config.eval_mask_ratios:
            total, count = 0.0, 0
            for window in windows:
                masked = torch.rand(window.shape, generator=generator) < ratio
                logits = model(window.masked_fill(masked, mask_id))
                total += F.cross_entropy(logits[masked].float(), window[masked], reduction="sum").item()
                count += int(masked.sum())
            masked_nll[f"{ratio}@{context}"] = total / max(count, 1)
        total, count = 0.0, 0
        for window in windows:
            masked = torch.zeros_like(window, dtype=torch.bool)
            masked[:, -config.eval_continuation :] = True
            logits = model(window.masked_fill(masked, mask_id))
            total += F.cross_entropy(logits[masked].float(), window[masked], reduction="sum").item()
            count += int(masked.sum())
        continuation[str(context)] = total / count
    return {"masked_nll": masked_nll, "continuation_nll": continuation}


@torch.no_grad()
def evaluate_generations(
    model: Qwen3DiffusionLM, base_dir: Path, stream: torch.Tensor, eos: int, config: DLMConfig
) -> dict[str, dict[str, float]]:
    """Decode held-out prompts with `dlm` and `fast_dllm`; score the outputs with the AR base (ar_nll).

    The base's own greedy continuation is scored too, as the reference point (lower = more
    AR-like). 256-token prompts, 64 new tokens, block 32; `dlm` with one token per step.
    """
    from orthrus.engines import build_engine
    from orthrus.models import load_causal_lm
    from orthrus.quality import ar_nll

    base = load_causal_lm(base_dir)
    prompt_len, new = 256, 64
    last = len(stream) - prompt_len
    if last < config.eval_generations:
        return {}
    starts = [round((i + 0.5) * last / config.eval_generations) for i in range(config.eval_generations)]
    prompts = [stream[s : s + prompt_len].tolist() for s in starts]
    engines = {
        "ar": build_engine("ar", base),
        "dlm": build_engine("dlm", model, block_length=32),
        "fast_dllm": build_engine("fast_dllm", model, block_length=32, threshold=0.9, cache="dual"),
    }
    summary: dict[str, dict[str, float]] = {}
    for name, engine in engines.items():
        nlls, tokens, passes = [], 0, 0
        for prompt in prompts:
            result = engine.generate(prompt, new, eos_token_id=eos)
            nll = ar_nll(base, prompt, result.tokens)
            if nll is not None:
                nlls.append(nll)
            tokens += result.new_tokens
            passes += result.total_forward_passes
        summary[name] = {
            "ar_nll": sum(nlls) / max(len(nlls), 1),
            "tokens_per_forward": tokens / max(passes, 1),
            "new_tokens": tokens,
        }
    return summary


# ---------------------------------------------------------------------------------------------
# Training


def _log(config: DLMConfig, message: str) -> None:
    if config.quiet:
        return
    if sys.stderr.isatty():
        tqdm.write(message)
    else:
        print(message, flush=True)


def load_base(base: str | Path, mask_id: int) -> Qwen3DiffusionLM:
    """The base causal Qwen3 checkpoint's weights (fp32) in a bidirectional model, ready to train."""
    path = resolve_model_path(base)
    config = read_config(path)
    if config.get("model_type") != "qwen3":
        raise ValueError(f"{base} is not a plain Qwen3 checkpoint; the DLM adaptation starts from a Qwen3 causal LM.")
    config["mask_token_id"] = mask_id
    model = Qwen3DiffusionLM.from_weights(config, load_state_dict(path), torch.float32)
    model.requires_grad_(True)
    return model


def train(
    config: DLMConfig,
    train_documents: list[Document] | None = None,
    heldout_documents: list[Document] | None = None,
) -> dict:
    """Adapt, save (fp16 HF format + tokenizer), evaluate before/after, write eval.json and README.md."""
    if config.steps is None and config.max_minutes is None:
        raise ValueError("Give a training budget: --steps N and/or --max-minutes M.")
    torch.set_num_threads(config.num_threads)
    out_dir = Path(config.out_dir)
    ckpt = checkpoint_path(out_dir)
    if config.resume and not ckpt.exists():
        raise FileNotFoundError(f"No checkpoint at {ckpt} to resume from; run without --resume to start fresh.")
    base_dir = resolve_model_path(config.base)
    if not (base_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{base_dir} has no tokenizer.json; the base must ship its tokenizer files.")
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    mask_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    if mask_id is None or mask_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer of {base_dir} has no {MASK_TOKEN} token; add one to it first.")

    if train_documents is None:
        train_documents = corpus_documents("train")
    if heldout_documents is None:
        heldout_documents = corpus_documents("heldout")
    train_stream = tokenize_stream(tokenizer, train_documents)
    heldout_stream = tokenize_stream(tokenizer, heldout_documents)
    _log(config, f"train tokens: {len(train_stream):,}  held-out tokens: {len(heldout_stream):,}  mask id {mask_id}")

    torch.manual_seed(config.seed)
    model = load_base(base_dir, mask_id)
    num_params = sum(p.numel() for p in model.parameters())
    initial_eval = evaluate_dlm(model, heldout_stream, mask_id, config)
    _log(config, f"{config.base} run bidirectionally, before adaptation: {json.dumps(initial_eval)}")
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    state = TrainState()
    if config.resume:
        state = load_checkpoint(ckpt, model, optimizer, generator)
        _log(config, f"resumed from {ckpt} at step {state.step} ({state.elapsed_s / 60:.1f} min)")

    show_bar = not config.quiet and sys.stderr.isatty()
    bar = tqdm(total=1000, disable=not show_bar, unit="‰", desc="tiny-dlm", dynamic_ncols=True)
    model.train()
    start_time = time.perf_counter() - state.elapsed_s
    last_checkpoint = time.perf_counter()
    progress = budget_fraction(config, state.step, state.elapsed_s)
    seq_len = config.long_seq_len if progress >= 1.0 - config.long_frac else config.short_seq_len
    while progress < 1.0:
        long_phase = progress >= 1.0 - config.long_frac
        seq_len = config.long_seq_len if long_phase else config.short_seq_len
        batch_size = config.long_batch_size if long_phase else config.short_batch_size
        lr = learning_rate(config, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr

        tokens, _ = sample_batch(train_stream, batch_size, seq_len, generator)
        noisy, masked, t, maskable = mask_batch(tokens, mask_id, config.eps, config.prompt_frac, generator)
        loss = diffusion_loss(model, tokens, noisy, masked, t, maskable)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

        state.step += 1
        state.tokens_seen += tokens.numel()
        state.elapsed_s = time.perf_counter() - start_time
        state.recent_losses = [*state.recent_losses[-49:], loss.item()]
        progress = budget_fraction(config, state.step, state.elapsed_s)
        bar.update(round(progress * 1000) - bar.n)
        bar.set_postfix(step=state.step, loss=f"{loss.item():.3f}", seq=seq_len, lr=f"{lr:.2e}")
        if not show_bar and (state.step % config.log_every == 0 or state.step == 1):
            _log(
                config,
                f"step {state.step:5d} | loss {loss.item():.4f} | lr {lr:.2e} | seq {seq_len} x {batch_size}"
                f" | {state.elapsed_s / 60:5.1f} min | {progress:6.1%}"
                f" | {state.tokens_seen / max(state.elapsed_s, 1e-9):,.0f} tok/s",
            )
        if time.perf_counter() - last_checkpoint > config.checkpoint_minutes * 60:
            save_checkpoint(ckpt, model, optimizer, state, generator)
            last_checkpoint = time.perf_counter()
    bar.close()
    save_checkpoint(ckpt, model, optimizer, state, generator)
    recent = state.recent_losses[-20:]
    final_loss = sum(recent) / max(len(recent), 1)
    _log(config, f"done: {state.step} steps, {state.tokens_seen:,} tokens, {state.elapsed_s / 60:.1f} min")

    model.eval()
    model.save_dlm(out_dir, dtype=torch.float16)
    copy_tokenizer_files(base_dir, out_dir)
    del model, optimizer

    eval_start = time.perf_counter()
    saved = load_diffusion_lm(out_dir)
    final_eval = evaluate_dlm(saved, heldout_stream, mask_id, config)
    generations = evaluate_generations(saved, base_dir, heldout_stream, tokenizer.eos_token_id, config)
    summary = {
        "model": "tiny-dlm",
        "base": str(config.base),
        "num_parameters": num_params,
        "mask_token_id": mask_id,
        "steps": state.step,
        "tokens_seen": state.tokens_seen,
        "train_wall_time_s": round(state.elapsed_s, 1),
        "eval_wall_time_s": round(time.perf_counter() - eval_start, 1),
        "final_train_loss": final_loss,
        "final_train_loss_note": f"mean of the last {len(recent)} steps (1/t-weighted masked CE per maskable "
        f"token), the last at sequence length {seq_len}",
        "seed": config.seed,
        "heldout_before_adaptation": initial_eval,
        "heldout": final_eval,
        "generation_quality": generations,
        "recipe": {k: v for k, v in asdict(config).items() if k not in ("out_dir", "command", "resume", "quiet")},
        "command": config.command,
        "torch": torch.__version__,
        "cpu_threads": config.num_threads,
        "machine": platform.machine(),
    }
    (out_dir / "eval.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out_dir / "README.md").write_text(model_card(config, summary))
    _log(config, f"held-out: {json.dumps(final_eval)}")
    _log(config, f"generations scored by the base: {json.dumps(generations)}")
    return summary


def model_card(config: DLMConfig, summary: dict) -> str:
    before, after = summary["heldout_before_adaptation"], summary["heldout"]
    rows = "\n".join(
        f"| masked, ratio {key.split('@')[0]} | {key.split('@')[1]} | {before['masked_nll'][key]:.3f} | "
        f"{after['masked_nll'][key]:.3f} |"
        for key in after["masked_nll"]
    )
    rows += "\n" + "\n".join(
        f"| continuation, last {config.eval_continuation} masked | {context} | "
        f"{before['continuation_nll'][context]:.3f} | {after['continuation_nll'][context]:.3f} |"
        for context in after["continuation_nll"]
    )
    generation_rows = "\n".join(
        f"| `{name}` | {values['ar_nll']:.3f} | {values['tokens_per_forward']:.2f} |"
        for name, values in summary["generation_quality"].items()
    )
    return f"""# tiny-dlm

A tiny masked-diffusion language model (LLaDA/MDLM style) adapted from `{summary["base"]}`, shipped
inside the `orthrus` package as the model of the diffusion-LM baselines (engines `dlm` and
`fast_dllm`). It is a test fixture for decoding algorithms, not a useful language model.

## Format
A Qwen3 checkpoint (same weight names and shapes as `{summary["base"]}`, {summary["num_parameters"]:,}
parameters, fp16 weights, meant to run in fp32) whose `config.json` adds `"is_causal": false`
(attention is bidirectional; transformers' `Qwen3ForCausalLM` honours this flag too) and
`"mask_token_id": {summary["mask_token_id"]}` (the tokenizer's `{MASK_TOKEN}`). Row i of the
output predicts the token at position i (no shift). Load with
`orthrus.models.dlm.load_diffusion_lm("tiny-dlm")`.

## Training
Command: `{summary["command"]}`

Starting from `{summary["base"]}`'s weights with bidirectional attention. Per window a masking
ratio t ~ U({config.eps:g}, 1); each maskable token is replaced by the mask token with probability t;
loss = sum over masked tokens of CE / t, divided by the number of maskable tokens. {config.prompt_frac:.0%}
of the windows keep a clean prefix of random length (never masked). Data: random windows of the
train split of the stdlib corpus (`orthrus/train/corpus.py`), {config.short_seq_len} tokens x
{config.short_batch_size}, then {config.long_seq_len} tokens x {config.long_batch_size} for the final
{config.long_frac:.0%} of the budget. AdamW (betas {config.betas}, weight decay {config.weight_decay}), peak lr
{config.lr:g}, {config.warmup_frac:.0%} warmup, cosine to {config.min_lr_ratio:.0%}, clip {config.grad_clip}, fp32,
{config.num_threads} CPU thread(s), seed {config.seed}.

- steps: {summary["steps"]:,}
- tokens seen: {summary["tokens_seen"]:,}
- training wall time: {summary["train_wall_time_s"] / 60:.1f} min (torch {summary["torch"]})
- final train loss: {summary["final_train_loss"]:.4f} ({summary["final_train_loss_note"]})

## Held-out evaluation (nats per masked token; saved fp16 weights loaded as fp32)
{config.eval_windows} windows per context length from the held-out split; masks from a fixed seed.
"Before" is `{summary["base"]}` run bidirectionally with no adaptation.

| masking | context | NLL before | NLL after |
|---|---|---|---|
{rows}

## Generations scored by the AR base
{config.eval_generations} held-out prompts of 256 tokens, 64 new tokens, greedy, block 32 (`dlm`: one token
per step; `fast_dllm`: threshold 0.9, dual cache). `ar_nll` is `{summary["base"]}`'s mean NLL of the output
(lower = closer to what the AR model finds likely; its own greedy output is the reference point).

| engine | ar_nll | tokens per forward |
|---|---|---|
{generation_rows}
"""
