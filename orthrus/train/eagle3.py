"""Train an EAGLE-3 drafter (SafeAILab) for a target, in small, with EAGLE-3's training-time test.

Recipe (EAGLE-3's, arXiv 2503.01840, as its training code runs it, scaled to a CPU): the text is the
target's own greedy continuations of corpus prompts (the data of ``train orthrus``). The drafter's input
at position i is the pair (f_i, x_{i+1}): f_i fuses three target hidden states at i (a low, a middle and
a high layer, ``aux_layer_ids``) through ``fc``. Training-time test unrolls ``ttt_steps`` draft steps:

  step 0     every pair (f_i, x_{i+1}) of the sequence at position i, causal: the drafter's context, and
             the first draft of each chain s (the pair at s is the last committed one; it predicts x_{s+2})
  step k     each chain s takes in the pair (h, x) at position s + k: h is the drafter's own output feature
             of step k - 1 (not the target's: what it will have at inference), x the token drafted at step
             k - 1, by default the text's own token there (``chain_tokens="data"``, as EAGLE-3's code feeds
             its data; on the self-distillation text it is the target's greedy token, i.e. what the chain
             holds whenever every earlier draft was accepted, the only case in which step k's draft can be
             accepted) or the drafter's own argmax (``chain_tokens="draft"``); it attends to the context
             pairs at positions <= s and to its own chain's steps 1..k, exactly what the engine's chain
             attends to in the drafter's cache (tests/test_train_drafters.py checks it)

and at every step the loss is the forward KL from the target's distribution at that position, restricted
to the draft vocabulary and renormalised, to the drafter's (positions whose target argmax lies outside the
draft vocabulary are left out, as EAGLE-3 does), step k weighted by ``step_decay`` ** k (EAGLE-3's 0.8).
Chains start where the other trainers put their anchors (``anchor_low``). The draft vocabulary is the
``draft_vocab`` most frequent tokens of the target's own continuations in the training data, with the
``d2t`` / ``t2d`` maps of the released layouts. Only the drafter's weights train; it embeds tokens with
the target's (frozen) embeddings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from orthrus.models.drafters import target_config_of
from orthrus.models.drafting import rope, target_facts
from orthrus.models.modeling_orthrus import attention_function
from orthrus.models.zoo_index import ZOO_DIR
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

CHAIN_TOKENS = ("data", "draft")


@dataclass(kw_only=True)
class Eagle3TrainConfig(DrafterTrainConfig):
    """Everything an EAGLE-3 run depends on. Defaults are the `tiny-eagle3` recipe."""

    out_dir: Path = ZOO_DIR / "tiny-eagle3"
    # the target hidden states it fuses (forward_ar's ids: the input of each named layer): low, middle, high
    aux_layer_ids: tuple[int, ...] = (1, 2, 4)
    draft_vocab: int = 2048  # the most frequent target tokens of the training data
    ttt_steps: int = 7  # draft steps unrolled per training step (EAGLE-3's 7)
    step_decay: float = 0.8  # loss weight of step k: step_decay ** k (EAGLE-3's 0.8)
    chain_tokens: str = "data"


def draft_vocabulary(data: torch.Tensor, prompt_len: int, size: int, vocab_size: int) -> tuple[list[int], float]:
    """(the ``size`` most frequent tokens of the target's own continuations data[:, prompt_len:], sorted by id
    (ties: the lower id first), the share of those continuation tokens they cover)."""
    tokens = data[:, prompt_len:].flatten()
    counts = torch.bincount(tokens, minlength=vocab_size)[:vocab_size]
    order = torch.argsort(-counts, stable=True)[:size]
    kept = sorted(order.tolist())
    coverage = float(counts[kept].sum()) / max(int(tokens.numel()), 1)
    return kept, coverage


def _pair_inputs(drafter: Any, features: torch.Tensor, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer input [input_layernorm(e) ; hidden_norm(g)] and the residual, as ``forward_pairs`` builds them."""
    layer = drafter.layers[0]
    normed = layer.hidden_norm(features)
    residual = normed if drafter.settings.norm_before_residual else features
    return torch.cat([layer.input_layernorm(embeds), normed], dim=-1), residual


def _finish(drafter: Any, residual: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the output feature, draft-vocabulary logits) after the attention output ``out`` [B, H, T, D]."""
    layer = drafter.layers[0]
    batch, _, steps, _ = out.shape
    hidden = residual + layer.self_attn.o_proj(out.transpose(1, 2).reshape(batch, steps, -1))
    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return hidden, drafter.lm_head(drafter.norm(hidden))


def eagle3_ttt_logits(
    drafter: Any,
    embed: Any,
    features: torch.Tensor,
    ids: torch.Tensor,
    first_start: int,
    steps: int,
    chain_tokens: str = "data",
) -> list[torch.Tensor]:
    """The training-time test: per step k (0 .. steps - 1), draft-vocabulary logits [B, S, Vd] of every chain
    s = first_start .. T - 2 (S of them), the draft of token s + 2 + k (module docstring).

    ``features`` [B, T, 3 H]: the target's hidden states at the drafter's aux layers over ``ids`` [B, T];
    ``embed``: the token embeddings (the drafter's own, else the target's). A chain whose step k would need
    a token past the text (s + 1 + k > T - 1) is fed the last one; its logits there mean nothing (the loss
    leaves them out)."""
    batch, length = ids.shape
    device = ids.device
    layer = drafter.layers[0]
    attn = layer.self_attn
    dtype = drafter.fc.weight.dtype
    group = attn.num_heads // attn.num_kv_heads

    # step 0: the pairs (f_i, x_{i+1}) at positions i = 0 .. T - 2, plain causal attention
    x, residual = _pair_inputs(drafter, drafter.fuse(features[:, :-1]), embed(ids[:, 1:]).to(dtype))
    positions = torch.arange(length - 1, device=device).unsqueeze(0).expand(batch, -1)
    cos, sin = drafter.rotary_emb(x, positions)
    q = rope(attn.heads(attn.q_proj(x)), cos, sin)
    k_context = rope(attn.heads(attn.k_proj(x)), cos, sin)
    v_context = attn.heads(attn.v_proj(x))
    out = attention_function(drafter.attn_implementation)(
        q, k_context, v_context, None, True, attn.scaling, attn.num_heads != attn.num_kv_heads
    )
    starts = torch.arange(first_start, length - 1, device=device)  # chain s: its last committed pair at s
    hidden, logits = _finish(drafter, residual[:, starts], out[:, :, starts])
    outputs = [logits]

    # steps 1..: each chain's pair attends to context pairs <= s and to its own earlier chain steps
    k_context = k_context.repeat_interleave(group, dim=1)
    v_context = v_context.repeat_interleave(group, dim=1)
    visible = torch.arange(length - 1, device=device).unsqueeze(0) <= starts.unsqueeze(1)  # [S, T - 1]
    chain_keys: list[torch.Tensor] = []
    chain_values: list[torch.Tensor] = []
    for k in range(1, steps):
        if chain_tokens == "data":
            tokens = ids[:, (starts + 1 + k).clamp(max=length - 1)]
        else:
            tokens = drafter.draft_to_target[outputs[-1].detach().argmax(-1)]
        x, residual = _pair_inputs(drafter, hidden, embed(tokens).to(dtype))
        cos, sin = drafter.rotary_emb(x, (starts + k).unsqueeze(0).expand(batch, -1))
        q = rope(attn.heads(attn.q_proj(x)), cos, sin)  # [B, H, S, D]
        chain_keys.append(rope(attn.heads(attn.k_proj(x)), cos, sin).repeat_interleave(group, dim=1))
        chain_values.append(attn.heads(attn.v_proj(x)).repeat_interleave(group, dim=1))
        scores = torch.matmul(q, k_context.transpose(-1, -2)).masked_fill(~visible, float("-inf"))
        own = torch.stack([(q * key).sum(-1) for key in chain_keys], dim=-1)  # [B, H, S, k]
        weights = torch.softmax(torch.cat([scores, own], dim=-1).float() * attn.scaling, dim=-1).to(dtype)
        out = torch.matmul(weights[..., : length - 1], v_context) + (
            weights[..., length - 1 :].unsqueeze(-1) * torch.stack(chain_values, dim=-2)
        ).sum(-2)
        hidden, logits = _finish(drafter, residual, out)
        outputs.append(logits)
    return outputs


def eagle3_loss(
    drafter: Any,
    target: Any,
    ids: torch.Tensor,
    first_anchor: int,
    steps: int,
    step_decay: float = 0.8,
    chain_tokens: str = "data",
) -> tuple[torch.Tensor, list[float]]:
    """(the weighted forward KL over the unrolled steps, each step's share of positions whose draft argmax is
    the target's greedy token). Chains start at s = first_anchor - 1 (the anchor, the last committed token, at
    s + 1 >= first_anchor)."""
    if chain_tokens not in CHAIN_TOKENS:
        raise ValueError(f"chain_tokens must be one of {', '.join(CHAIN_TOKENS)}, got {chain_tokens!r}.")
    teacher_all, features = target_pass(target, ids, drafter.hidden_layers)
    length = ids.shape[1]
    first_start = first_anchor - 1
    outputs = eagle3_ttt_logits(drafter, target.model.embed_tokens, features, ids, first_start, steps, chain_tokens)
    kept = drafter.draft_to_target
    starts = torch.arange(first_start, length - 1, device=ids.device)
    total, weight_sum, accuracies = 0.0, 0.0, []
    for k, logits in enumerate(outputs):
        rows = starts + 1 + k  # the target's row predicting the token this step drafts
        valid = rows <= length - 1
        teacher = teacher_all[:, rows.clamp(max=length - 1)].float()  # [B, S, V]
        greedy = teacher.argmax(-1)
        mask = (valid.unsqueeze(0) & drafter.t2d[greedy]).float()  # [B, S]
        teacher_logp = F.log_softmax(teacher[..., kept], dim=-1)  # renormalised over the draft vocabulary
        logq = F.log_softmax(logits.float(), dim=-1)
        kl = (teacher_logp.exp() * (teacher_logp - logq)).sum(-1)
        step_loss = (kl * mask).sum() / mask.sum().clamp_min(1.0)
        weight = step_decay**k
        total = total + weight * step_loss
        weight_sum += weight
        hit = (kept[logits.argmax(-1)] == greedy).float() * valid.unsqueeze(0)
        accuracies.append(float(hit.sum() / (valid.sum() * ids.shape[0]).clamp_min(1)))
    return total / weight_sum, accuracies


def eagle3_step(drafter: Any, target: Target, data: torch.Tensor, config: Eagle3TrainConfig) -> StepFn:
    """The step function: a batch of self-distillation sequences, the training-time test over all its chains."""

    def step(index: int, progress: float, generator: torch.Generator) -> Step:
        rows = torch.randint(0, len(data), (config.batch_size,), generator=generator)
        batch = data[rows].to(config.device)
        loss, accuracies = eagle3_loss(
            drafter, target.model, batch, config.anchor_low, config.ttt_steps, config.step_decay, config.chain_tokens
        )
        return Step(loss, batch.numel(), {"acc0": round(accuracies[0], 3), "acc_last": round(accuracies[-1], 3)})

    return step


def check_config(config: Eagle3TrainConfig, target_layers: int | None = None, vocab: int | None = None) -> None:
    """Bad values are one sentence each, before anything slow."""
    if config.chain_tokens not in CHAIN_TOKENS:
        raise ValueError(f"--chain-tokens must be one of {', '.join(CHAIN_TOKENS)}, got {config.chain_tokens!r}.")
    if not 1 <= config.ttt_steps <= 32:
        raise ValueError(f"--ttt-steps must be between 1 and 32, got {config.ttt_steps}.")
    if len(config.aux_layer_ids) != 3:
        raise ValueError(
            f"--aux-layers must name 3 target layers (low, middle, high), got {','.join(map(str, config.aux_layer_ids))}."
        )
    if config.draft_vocab < 1 or (vocab is not None and config.draft_vocab > vocab):
        raise ValueError(f"--draft-vocab must be between 1 and the target's vocabulary ({vocab}), got {config.draft_vocab}.")
    if config.anchor_low < 1 or config.anchor_low + config.ttt_steps > config.prompt_len + config.continuation_len:
        raise ValueError("--ttt-steps does not fit after the first anchor position; use fewer steps or longer text.")
    if target_layers is not None and not all(0 <= i < target_layers for i in config.aux_layer_ids):
        raise ValueError(
            f"--aux-layers {','.join(map(str, config.aux_layer_ids))}: the target has {target_layers} layers "
            f"(0..{target_layers - 1}; id i is the input of layer i)."
        )


def train(config: Eagle3TrainConfig) -> Path:
    facts = target_facts(target_config_of(config.base))
    check_config(config, facts["num_hidden_layers"], facts["vocab_size"])

    def build(target: Target, data: torch.Tensor, init_dir: Path) -> tuple[Any, dict[str, Any]]:
        vocab = int(target.model.lm_head.out_features)
        kept, coverage = draft_vocabulary(data, config.prompt_len, config.draft_vocab, vocab)
        path_options = {
            "layout": "speculators",
            "draft_vocab": kept,
            "aux_layer_ids": list(config.aux_layer_ids),
            "seed": config.seed,
            "std": config.init_std,
        }
        drafter = new_drafter("eagle3", target, init_dir, **path_options)
        # the chain length it was trained for, as the speculators format says it (the engine's default K - 1)
        methods = drafter.config_dict["speculators_config"]["proposal_methods"]
        methods[0]["speculative_tokens"] = config.ttt_steps
        (init_dir / "config.json").write_text(json.dumps(drafter.config_dict, indent=2) + "\n")
        drafter.bind_target(int(target.config["num_hidden_layers"]))
        return drafter, {
            "draft_vocab_size": len(kept),
            "draft_vocab_coverage": round(coverage, 4),
            "target_vocab": vocab,
        }

    return run_training(
        config, "eagle3", build, lambda drafter, target, data: eagle3_step(drafter, target, data, config), model_card
    )


def model_card(config: Eagle3TrainConfig, summary: dict[str, Any]) -> str:
    name = Path(config.out_dir).name
    kv = summary["draft_kv_bytes_per_token_fp32"]
    tokens = (
        "the text's own token there (the target's greedy token: what the chain holds when every earlier draft "
        "was accepted; EAGLE-3's code likewise feeds its data's tokens)"
        if config.chain_tokens == "data"
        else "the drafter's own argmax of the step before"
    )
    return f"""# {name}

An EAGLE-3 drafter (SafeAILab's EAGLE-3, in vLLM's speculators format) trained for `{config.base}` on
`{config.base}`'s own text, shipped inside the `orthrus` package so that the `eagle3` engine runs offline
(`draft_model: {{path: {name}}}` in a suite; `--draft-model {name}` for `python -m orthrus generate`). The
target verifies every chain, so greedy decoding with it produces exactly `{config.base}`'s greedy text. It
is a test fixture for decoding algorithms, not a drafter for any other model.

## Format
vLLM's speculators format (`orthrus.models.eagle3`): `speculators_model_type` "eagle3", one Llama layer of the
target's width under `transformer_layer_config`, `draft_vocab_size` {summary["draft_vocab_size"]},
`eagle_aux_hidden_state_layer_ids` {list(config.aux_layer_ids)} (the inputs of those target layers: low,
middle, high), `norm_before_residual` true (vLLM's default for the format), `speculative_tokens`
{config.ttt_steps} (the chain it was trained to draft; the engine's default block is that + 1); weights `fc`,
`layers.0.*`, `norm`, `lm_head` (over the draft vocabulary), `d2t` and `t2d`. It embeds tokens with the
target's embeddings. {summary["drafter_parameters"]:,} parameters of its own, stored as float16 and meant to
be loaded and run in fp32; its own K/V cache holds {kv:,} bytes per token of context in fp32 (one layer x K and
V x the target's KV heads x head dim x 4 bytes).

## Training
Command: `{config.command}`

{data_lines(config, summary)}
- draft vocabulary: the {summary["draft_vocab_size"]} most frequent tokens of `{config.base}`'s continuations in
  this data (they cover {summary["draft_vocab_coverage"]:.1%} of them), of its {summary["target_vocab"]:,} tokens
- training-time test: {config.ttt_steps} draft steps unrolled over every chain whose anchor lies after the first
  {config.anchor_low} tokens; step k takes the drafter's own output feature of step k - 1 and, as its token,
  {tokens}
- loss: forward KL(p_target || p_draft) over the draft vocabulary (p_target restricted to it and
  renormalised; positions whose target argmax lies outside it left out) at every step, step k weighted by
  {config.step_decay:g}^k; only the drafter's parameters train (the target is frozen and checked unchanged
  at the end)

{evaluation_placeholder(name, "eagle3", config.base)}"""
