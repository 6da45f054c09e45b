"""Train a DFlash drafter (block diffusion for speculative decoding, z-lab) for a target, in small.

Recipe (DFlash's, arXiv 2602.06036, as its training code runs it, scaled to a CPU): the text is the
target's own greedy continuations of corpus prompts (the data of ``train orthrus``); each step draws
random anchor positions a in every sequence; each anchor gets a block [x_a, MASK x (K - 1)] at positions
a .. a + K - 1 whose queries attend to the drafter's context, the target's hidden states at
``target_layer_ids`` of positions < a (projected by ``fc`` and ``hidden_norm``, as K/V in every drafter
layer), and bidirectionally to their own block; block position j (1..K - 1) is trained towards the
target's greedy token at a + j (its argmax there, which is the continuation's own token: cross-entropy,
``loss="ce"``; or ``loss="kl"``: forward KL to the target's whole distribution), weighted by
exp(-(j - 1) / gamma) (DFlash's decay: early positions decide acceptance). One pass holds every block of
a sequence (a block-sparse mask; ``dflash_block_logits``), computing what ``DFlashDrafter.draft_block``
computes at inference for each anchor (tests/test_train_drafters.py checks it). Only the drafter's own
weights train; the target's embeddings and LM head, which it borrows, stay frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from orthrus.models.drafters import target_config_of
from orthrus.models.drafting import rope
from orthrus.models.modeling_orthrus import attention_function
from orthrus.models.zoo_index import ZOO_DIR
from orthrus.train.distill import sample_anchors
from orthrus.train.drafters import (
    DrafterTrainConfig,
    Target,
    data_lines,
    evaluation_placeholder,
    new_drafter,
    run_training,
    target_pass,
)
from orthrus.train.loop import Step, StepFn

DFLASH_LOSSES = ("ce", "kl")


@dataclass(kw_only=True)
class DFlashTrainConfig(DrafterTrainConfig):
    """Everything a DFlash run depends on. Defaults are the `tiny-dflash` recipe."""

    out_dir: Path = ZOO_DIR / "tiny-dflash"
    layers: int = 2  # drafter layers (Qwen3 layers of the target's width)
    # the target layers it reads (the output of each: forward_ar's hidden state id + 1): low, middle, last
    target_layer_ids: tuple[int, ...] = (0, 2, 4)
    block_size: int = 16  # saved in its config: the block the engine drafts by default
    train_block_sizes: tuple[int, ...] = (8, 16, 16, 32)  # one per step, cycling (as train orthrus)
    anchors_per_seq: int = 48
    loss: str = "ce"
    decay_gamma: float = 7.0  # weight of block position j: exp(-(j - 1) / gamma); DFlash's 7 for blocks of 16


def dflash_block_logits(
    drafter: Any, target: Any, features: torch.Tensor, ids: torch.Tensor, anchors: torch.Tensor, block: int
) -> torch.Tensor:
    """The drafter's logits for every anchor's block in one pass: [B, N, K - 1, V] over the target's
    vocabulary, row j for the token at anchor + j + 1.

    ``features`` [B, T, n H]: the target's hidden states at ``drafter.hidden_layers`` over ``ids`` [B, T];
    ``anchors`` [B, N] (each a <= T - K). Block n's queries see the context of positions < a_n (every
    drafter layer's K/V of the projected features, at their positions) and their own block, nothing else:
    what the drafter's cache and ``draft_block`` give them at inference."""
    batch, length = ids.shape
    count = anchors.shape[1]
    device = ids.device
    offsets = torch.arange(block, device=device)
    positions = (anchors.unsqueeze(-1) + offsets).reshape(batch, -1)  # [B, N*K]
    block_ids = torch.full((batch, count, block), drafter.mask_token_id, dtype=torch.long, device=device)
    block_ids[:, :, 0] = torch.gather(ids, 1, anchors)
    block_ids = block_ids.reshape(batch, -1)

    context = drafter.hidden_norm(drafter.fc(features.to(drafter.fc.weight.dtype)))  # [B, T, H]
    context_positions = torch.arange(length, device=device).unsqueeze(0).expand(batch, -1)
    cos_c, sin_c = drafter.rotary_emb(context, context_positions)
    cos_b, sin_b = drafter.rotary_emb(context, positions)
    owner = torch.arange(count, device=device).repeat_interleave(block)  # the block each query belongs to
    sees_context = torch.arange(length, device=device).view(1, 1, -1) < anchors.repeat_interleave(block, 1).unsqueeze(-1)
    own_block = (owner.unsqueeze(1) == owner.unsqueeze(0)).unsqueeze(0).expand(batch, -1, -1)
    mask = torch.cat([sees_context, own_block], dim=-1).unsqueeze(1)  # [B, 1, N*K, T + N*K]

    attend = attention_function(drafter.attn_implementation)
    hidden = target.model.embed_tokens(block_ids).to(context.dtype) * drafter.settings.input_embedding_scale
    for layer in drafter.layers:
        attn = layer.self_attn
        k_context, v_context = attn.keys_values(context, cos_c, sin_c)
        x = layer.input_layernorm(hidden)
        q = rope(attn.heads(attn.q_proj(x), attn.q_norm), cos_b, sin_b)
        k, v = attn.keys_values(x, cos_b, sin_b)
        keys, values = torch.cat([k_context, k], dim=2), torch.cat([v_context, v], dim=2)
        out = attend(q, keys, values, mask, False, attn.scaling, attn.num_heads != attn.num_kv_heads)
        hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(batch, count * block, -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    hidden = drafter.norm(hidden).view(batch, count, block, -1)[:, :, 1:]
    return drafter.logits(hidden, target.lm_head)


def position_weights(block: int, gamma: float, device: torch.device | None = None) -> torch.Tensor:
    """[K - 1]: exp(-(j - 1) / gamma) for block positions j = 1 .. K - 1 (gamma <= 0: all equal)."""
    j = torch.arange(block - 1, device=device, dtype=torch.float32)
    return torch.exp(-j / gamma) if gamma > 0 else torch.ones_like(j)


def dflash_loss(
    drafter: Any,
    target: Any,
    ids: torch.Tensor,
    anchors: torch.Tensor,
    block: int,
    gamma: float = 7.0,
    loss: str = "ce",
) -> tuple[torch.Tensor, float]:
    """(the weighted loss, the fraction of block positions whose argmax is the target's greedy token)."""
    if loss not in DFLASH_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(DFLASH_LOSSES)}, got {loss!r}.")
    teacher_all, features = target_pass(target, ids, drafter.hidden_layers)
    student = dflash_block_logits(drafter, target, features, ids, anchors, block).float()  # [B, N, K-1, V]
    rows = (anchors.unsqueeze(-1) + torch.arange(block - 1, device=ids.device)).flatten(1)  # row p predicts p + 1
    teacher = torch.gather(teacher_all, 1, rows.unsqueeze(-1).expand(-1, -1, teacher_all.shape[-1]))
    teacher = teacher.view(student.shape).float()
    greedy = teacher.argmax(-1)
    logp = F.log_softmax(student, dim=-1)
    if loss == "ce":
        per_position = -logp.gather(-1, greedy.unsqueeze(-1)).squeeze(-1)
    else:
        teacher_logp = F.log_softmax(teacher, dim=-1)
        per_position = (teacher_logp.exp() * (teacher_logp - logp)).sum(-1)
    weights = position_weights(block, gamma, ids.device).expand_as(per_position)
    value = (per_position * weights).sum() / weights.sum()
    accuracy = (student.argmax(-1) == greedy).float().mean().item()
    return value, accuracy


def dflash_step(drafter: Any, target: Target, data: torch.Tensor, config: DFlashTrainConfig) -> StepFn:
    """The step function: a batch of self-distillation sequences, anchors, the loss at this step's block size."""

    def step(index: int, progress: float, generator: torch.Generator) -> Step:
        block = config.train_block_sizes[index % len(config.train_block_sizes)]
        rows = torch.randint(0, len(data), (config.batch_size,), generator=generator)
        batch = data[rows].to(config.device)
        anchors = sample_anchors(
            config.batch_size, batch.shape[1], block, config.anchors_per_seq, config.anchor_low, generator
        ).to(config.device)
        loss, accuracy = dflash_loss(drafter, target.model, batch, anchors, block, config.decay_gamma, config.loss)
        return Step(loss, batch.numel(), {"K": block, "acc": round(accuracy, 3)})

    return step


def check_config(config: DFlashTrainConfig, target_layers: int | None = None) -> None:
    """Bad values are one sentence each, before anything slow."""
    if config.loss not in DFLASH_LOSSES:
        raise ValueError(f"--loss must be one of {', '.join(DFLASH_LOSSES)}, got {config.loss!r}.")
    if config.layers < 1:
        raise ValueError(f"--layers must be at least 1, got {config.layers}.")
    if not config.train_block_sizes or min(config.train_block_sizes) < 2 or config.block_size < 2:
        raise ValueError("--block-size and --train-block-sizes must be >= 2 (a block drafts K - 1 tokens).")
    longest = config.prompt_len + config.continuation_len - config.anchor_low
    if max(config.train_block_sizes) > longest:
        raise ValueError(
            f"--train-block-sizes {max(config.train_block_sizes)} does not fit after the first anchor position "
            f"({longest} tokens from {config.anchor_low} to the end of a sequence); use smaller blocks or longer text."
        )
    if target_layers is not None and not all(0 <= i < target_layers for i in config.target_layer_ids):
        raise ValueError(
            f"--target-layers {','.join(map(str, config.target_layer_ids))}: the target has {target_layers} layers "
            f"(0..{target_layers - 1})."
        )
    if config.anchors_per_seq < 1:
        raise ValueError(f"--anchors must be at least 1, got {config.anchors_per_seq}.")


def train(config: DFlashTrainConfig) -> Path:
    check_config(config, int(target_config_of(config.base)["num_hidden_layers"]))

    def build(target: Target, data: torch.Tensor, init_dir: Path) -> tuple[Any, dict[str, Any]]:
        drafter = new_drafter(
            "dflash",
            target,
            init_dir,
            num_layers=config.layers,
            target_layer_ids=list(config.target_layer_ids),
            block_size=config.block_size,
            mask_token_id=target.tokenizer.mask_token_id,
            seed=config.seed,
            std=config.init_std,
        )
        with torch.no_grad():  # its final norm starts as the target's: the borrowed LM head's logits start at their scale
            drafter.norm.weight.copy_(target.model.model.norm.weight)
        return drafter, {
            "mask_token_id": drafter.mask_token_id,
            "num_target_layers": int(target.config["num_hidden_layers"]),
        }

    return run_training(
        config, "dflash", build, lambda drafter, target, data: dflash_step(drafter, target, data, config), model_card
    )


def model_card(config: DFlashTrainConfig, summary: dict[str, Any]) -> str:
    name = Path(config.out_dir).name
    blocks = ", ".join(str(b) for b in sorted(set(config.train_block_sizes)))
    loss = (
        "cross-entropy to the target's greedy token at every block position (its argmax there: the continuation's own token)"
        if config.loss == "ce"
        else "forward KL(p_target || p_draft) at every block position"
    )
    kv = summary["draft_kv_bytes_per_token_fp32"]
    return f"""# {name}

A DFlash drafter (block diffusion for speculative decoding, z-lab's `DFlashDraftModel` layout) trained
for `{config.base}` on `{config.base}`'s own text, shipped inside the `orthrus` package so that the
`dflash` engine runs offline (`draft_model: {{path: {name}}}` in a suite; `--draft-model {name}` for
`python -m orthrus generate`). The target verifies every block, so greedy decoding with it produces
exactly `{config.base}`'s greedy text. It is a test fixture for decoding algorithms, not a drafter for
any other model.

## Format
z-lab's released layout (`orthrus.models.dflash`): `config.json` is a Qwen3 config with `architectures`
["DFlashDraftModel"], {config.layers} layer(s) of the target's width, `block_size` {config.block_size},
`num_target_layers` {summary["num_target_layers"]} and `dflash_config` {{`target_layer_ids` {list(config.target_layer_ids)}
(the outputs of those target layers), `mask_token_id` {summary["mask_token_id"]} (the tokenizer's `<|mask|>`)}};
weights `fc`, `hidden_norm`, `layers.N.*`, `norm`. It borrows the target's embeddings and LM head.
{summary["drafter_parameters"]:,} parameters of its own, stored as float16 and meant to be loaded and run in
fp32; its own K/V cache holds {kv:,} bytes per token of context in fp32 ({config.layers} layer(s) x K and V x
the target's KV heads x head dim x 4 bytes).

## Training
Command: `{config.command}`

{data_lines(config, summary, ", norms 1, except the final `norm`: a copy of the target's")}
- {config.anchors_per_seq} random anchors per sequence (anywhere after the first {config.anchor_low} tokens),
  each a block [anchor, MASK x (K - 1)] seeing the target's hidden states of the positions before its
  anchor and its own block; block sizes {blocks} (one per step, cycling through {list(config.train_block_sizes)})
- loss: {loss}, block position j weighted by exp(-(j - 1) / {config.decay_gamma:g}); only the drafter's
  parameters train (the target is frozen and checked unchanged at the end)

{evaluation_placeholder(name, "dflash", config.base)}"""
