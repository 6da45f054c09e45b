"""Adapt a causal Qwen3 LM (`tiny-base`) into a masked-diffusion LM (`tiny-dlm`) for the DLM baselines.

The recipe of MDLM / LLaDA pre-training, at tiny scale: the base's weights are run with
bidirectional attention (``Qwen3DiffusionLM``); for each training window a masking ratio
``t ~ U(eps, 1)`` is drawn and every maskable token is replaced by the tokenizer's ``<|mask|>``
with probability ``t``; the loss is the cross-entropy on the masked positions weighted by ``1/t``,
summed and divided by the number of maskable tokens (an upper bound on the NLL). A fraction
``prompt_frac`` of the windows keeps a clean prefix of random length that is never masked (LLaDA's
SFT form), so that the model also sees the prompt-plus-masked-continuation inputs the decoders
give it. Budget, schedule, optimizer and checkpoints are the shared loop's
(``orthrus/train/loop.py``); the windows and their length curriculum are ``orthrus/train/base.py``'s.

Saved in Hugging Face format (fp16 weights, ``config.json`` with ``"is_causal": false`` and
``"mask_token_id"``), with the tokenizer files, ``eval.json`` (measured on held-out text from the
saved weights loaded back as fp32, before and after training) and a ``README.md`` model card.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from orthrus.models.dlm import Qwen3DiffusionLM, load_diffusion_lm
from orthrus.models.modeling_orthrus import load_state_dict, read_config, resolve_model_path
from orthrus.models.zoo_index import ZOO_DIR
from orthrus.results.vocabulary import FIELD
from orthrus.train.base import WindowConfig, sample_batch, tokenize_stream, window_shape
from orthrus.train.corpus import Document, corpus_documents
from orthrus.train.loop import Step, StepFn, log, mean_of_last, start_run, train_loop
from orthrus.train.tokenizer import copy_tokenizer_files

MASK_TOKEN = "<|mask|>"


@dataclass(kw_only=True)
class DLMConfig(WindowConfig):
    """Everything a `tiny-dlm` adaptation run depends on. Defaults are the `tiny-dlm` recipe."""

    out_dir: Path = ZOO_DIR / "tiny-dlm"
    base: str = "tiny-base"  # zoo name or Qwen3 checkpoint directory (with tokenizer files)
    lr: float = 1e-3
    eps: float = 1e-3  # smallest masking ratio
    prompt_frac: float = 0.5  # windows that keep a clean prefix (never masked)
    long_seq_len: int = 2048
    long_batch_size: int = 2
    log_every: int = 10
    eval_contexts: tuple[int, ...] = (512, 2048)
    eval_windows: int = 4
    eval_mask_ratios: tuple[float, ...] = (0.15, 0.5, 0.9)
    eval_continuation: int = 64  # masked tokens at the end of each window ("continuation" NLL)
    eval_generations: int = 4  # held-out prompts decoded with the DLM engines and scored by the base


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


def masked_diffusion_step(model: Qwen3DiffusionLM, stream: torch.Tensor, mask_id: int, config: DLMConfig) -> StepFn:
    """The step function: random windows of the curriculum's shape, masked, scored by `diffusion_loss`."""

    def step(index: int, progress: float, generator: torch.Generator) -> Step:
        seq_len, batch_size = window_shape(config, progress)
        tokens, _ = sample_batch(stream, batch_size, seq_len, generator)
        noisy, masked, t, maskable = mask_batch(tokens, mask_id, config.eps, config.prompt_frac, generator)
        loss = diffusion_loss(model, tokens, noisy, masked, t, maskable)
        return Step(loss, tokens.numel(), {"seq": seq_len, "batch": batch_size})

    return step


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
            FIELD.ar_nll: sum(nlls) / max(len(nlls), 1),
            FIELD.tokens_per_forward: tokens / max(passes, 1),
            FIELD.new_tokens: tokens,
        }
    return summary


# ---------------------------------------------------------------------------------------------
# Training


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
    start_run(config)
    out_dir = Path(config.out_dir)
    base_dir = resolve_model_path(config.base)
    if not (base_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{base_dir} has no tokenizer.json; the base must ship its tokenizer files.")
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), trust_remote_code=False)
    mask_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    if mask_id is None or mask_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer of {base_dir} has no {MASK_TOKEN} token; add one to it first.")

    if train_documents is None:
        train_documents = corpus_documents("train")
    if heldout_documents is None:
        heldout_documents = corpus_documents("heldout")
    train_stream = tokenize_stream(tokenizer, train_documents)
    heldout_stream = tokenize_stream(tokenizer, heldout_documents)
    log(config, f"train tokens: {len(train_stream):,}  held-out tokens: {len(heldout_stream):,}  mask id {mask_id}")

    model = load_base(base_dir, mask_id)
    num_params = sum(p.numel() for p in model.parameters())
    initial_eval = evaluate_dlm(model, heldout_stream, mask_id, config)
    log(config, f"{config.base} run bidirectionally, before adaptation: {json.dumps(initial_eval)}")
    state = train_loop(config, model, masked_diffusion_step(model, train_stream, mask_id, config), desc="tiny-dlm")
    final_loss = mean_of_last(state.losses, 20)

    model.save_dlm(out_dir, dtype=torch.float16)
    copy_tokenizer_files(base_dir, out_dir)
    del model

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
        "final_train_loss_note": f"mean of the last {len(state.losses[-20:])} steps (1/t-weighted masked CE per "
        f"maskable token), the last at sequence length {state.last_info['seq']}",
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
    log(config, f"held-out: {json.dumps(final_eval)}")
    log(config, f"generations scored by the base: {json.dumps(generations)}")
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
