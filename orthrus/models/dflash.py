"""DFlash drafters (block diffusion for speculative decoding, z-lab), loaded natively: no remote code.

A DFlash drafter is a few Qwen3-style layers that draft a whole block in one bidirectional forward
pass, conditioned on the target: the hidden states of chosen target layers, concatenated, projected by
``fc`` to the hidden size and normed (``hidden_norm``), are the keys and values every drafter layer
puts before the block's own. The block is the last committed token followed by mask tokens, embedded
with the target's embeddings; block position j (1..K-1) drafts the token at that position through the
target's LM head. The drafter caches the projected context per layer: its own K/V cache, which grows
with the context (one entry per committed position), beside the target's.

Per drafter layer, with c the projected context and h the block's hidden states:
    keys     [k_norm(k_proj(c)) ; k_norm(k_proj(input_layernorm(h)))], RoPE at their positions
    values   [v_proj(c) ; v_proj(input_layernorm(h))]
    queries  q_norm(q_proj(input_layernorm(h))), the block only, attending to all of the above
    h = h + o_proj(attention);  h = h + mlp(post_attention_layernorm(h))
    drafts   target_head(norm(h_j)) * output_multiplier, soft-capped at final_logit_softcapping

The released layout (read in z-lab/dflash ``dflash/model.py``, ``DFlashDraftModel``, and the config of
``z-lab/Qwen3-8B-DFlash-b16`` as quoted by vLLM's speculators converter tests): config.json is a Qwen3
config (``model_type`` "qwen3", ``architectures`` ["DFlashDraftModel"]; hidden_size, num_hidden_layers,
num_attention_heads, num_key_value_heads, head_dim, intermediate_size, rms_norm_eps, rope_theta or
rope_parameters, vocab_size) plus ``block_size`` (16 when absent), ``num_target_layers`` and
``dflash_config``: ``target_layer_ids`` (the hidden state *after* each named target layer:
transformers' ``hidden_states[id + 1]``), ``mask_token_id`` and optionally ``input_embedding_scale``,
``output_multiplier``, ``final_logit_softcapping`` (each field is read from ``dflash_config`` first,
then from the top level, as the reference does). Weights: ``fc.weight`` [H, n H], ``hidden_norm``,
``layers.N.self_attn.{q,k,v,o}_proj``, ``layers.N.self_attn.{q,k}_norm``,
``layers.N.mlp.{gate,up,down}_proj``, ``layers.N.{input,post_attention}_layernorm``, ``norm``.
DFlash2 (a candidate selector and convolutions), the Domino projector and sliding-window drafters
are refused with one sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm, Qwen3RotaryEmbedding

from orthrus.errors import UserInputError
from orthrus.models.drafting import (
    build_drafter,
    check_layer_ids,
    config_int,
    init_random,
    layer_ids,
    load_drafter_state,
    read_drafter_config,
    rope,
    save_drafter,
    spill_layout,
    target_facts,
)
from orthrus.models.kv_cache import KVCache
from orthrus.models.modeling_orthrus import attention_function, check_attn_implementation

WHAT = "DFlash"
DFLASH_BLOCK_SIZE = 16  # the reference's default when a config names none
# config fields (read from dflash_config first, then the top level) and what each is
DFLASH_FIELDS = (
    "target_layer_ids",
    "mask_token_id",
    "block_size",
    "input_embedding_scale",
    "output_multiplier",
    "final_logit_softcapping",
)
QWEN3_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "hidden_act",
    "attention_bias",
    "max_position_embeddings",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "vocab_size",
)


@dataclass(frozen=True)
class DFlashSettings:
    target_layer_ids: tuple[int, ...]
    mask_token_id: int
    block_size: int = DFLASH_BLOCK_SIZE
    input_embedding_scale: float = 1.0
    output_multiplier: float = 1.0
    final_logit_softcapping: float | None = None


def _field(config: dict[str, Any], name: str) -> tuple[Any, str]:
    """(value, where it was found) of a DFlash field; (None, its canonical place) when absent."""
    inner = config.get("dflash_config")
    inner = inner if isinstance(inner, dict) else {}
    if name in inner:
        return inner[name], f"dflash_config.{name}"
    if name in config:
        return config[name], name
    return None, f"dflash_config.{name}"


def _number(value: Any, where: str, default: float | None) -> float | None:
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise UserInputError(f"the {WHAT} config's {where} must be a number, got {value!r}.")
    return float(value)


def dflash_settings(config: dict[str, Any]) -> DFlashSettings:
    """The DFlash fields of a drafter config; a missing or malformed one, or a variant this module does
    not run, is one sentence naming the field."""
    inner = config.get("dflash_config")
    if inner is not None and not isinstance(inner, dict):
        raise UserInputError(f"the {WHAT} config's dflash_config must be a mapping, got {type(inner).__name__}.")
    architectures = config.get("architectures") or []
    if "DFlash2DraftModel" in architectures or any(
        _field(config, k)[0] is not None for k in ("conv_kernel_size", "selector_rank")
    ):
        raise UserInputError(
            "the drafter is a DFlash2 model (candidate selector and convolutions: dflash_config.selector_rank, "
            "conv_kernel_size), which this suite does not run; use a DFlash (DFlashDraftModel) drafter."
        )
    if _field(config, "projector_type")[0] is not None:
        raise UserInputError(
            f"the {WHAT} config's dflash_config.projector_type ({_field(config, 'projector_type')[0]!r}) names a "
            "projector this suite does not run; use a plain DFlash (DFlashDraftModel) drafter."
        )
    layer_types = config.get("layer_types") or []
    if "sliding_attention" in layer_types or config.get("is_causal"):
        raise UserInputError(
            f"the {WHAT} config's layer_types/is_causal ask for sliding-window or causal drafter attention, which "
            "this suite does not run; use a DFlash drafter with full attention (as for Qwen3)."
        )
    ids, where = _field(config, "target_layer_ids")
    if ids is None:
        raise UserInputError(f"the {WHAT} config has no {where}; it is required (the target layers the drafter reads).")
    mask, mask_where = _field(config, "mask_token_id")
    if mask is None:
        raise UserInputError(f"the {WHAT} config has no {mask_where}; it is required (the id of the mask token).")
    if not isinstance(mask, int) or isinstance(mask, bool) or mask < 0:
        raise UserInputError(f"the {WHAT} config's {mask_where} must be a token id, got {mask!r}.")
    block, block_where = _field(config, "block_size")
    if block is not None and (not isinstance(block, int) or isinstance(block, bool) or block < 1):
        raise UserInputError(f"the {WHAT} config's {block_where} must be an integer >= 1, got {block!r}.")
    softcap = _number(*_field(config, "final_logit_softcapping"), None)
    return DFlashSettings(
        target_layer_ids=layer_ids(ids, where, WHAT),
        mask_token_id=mask,
        block_size=block or DFLASH_BLOCK_SIZE,
        input_embedding_scale=_number(*_field(config, "input_embedding_scale"), 1.0),
        output_multiplier=_number(*_field(config, "output_multiplier"), 1.0),
        final_logit_softcapping=softcap if softcap and softcap > 0 else None,
    )


def dflash_qwen3_config(config: dict[str, Any]) -> Qwen3Config:
    """The drafter's layers as a Qwen3 config (the fields it needs; the required ones checked)."""
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        config_int(config, key, key, WHAT)
    for key in ("num_key_value_heads", "head_dim"):
        config_int(config, key, key, WHAT, None)
    fields = {k: config[k] for k in QWEN3_FIELDS if config.get(k) is not None}
    heads = fields["num_attention_heads"]
    fields.setdefault("num_key_value_heads", heads)
    fields.setdefault("head_dim", fields["hidden_size"] // heads)
    return Qwen3Config(**fields)


def check_dflash_target(config: dict[str, Any], target: dict[str, Any]) -> None:
    """The drafter fits the target (a config dict: hidden size, layers, vocabulary); each mismatch is
    one sentence naming the drafter's field."""
    settings = dflash_settings(config)
    facts = target_facts(target)
    hidden = config_int(config, "hidden_size", "hidden_size", WHAT)
    if facts["hidden_size"] is not None and hidden != facts["hidden_size"]:
        raise UserInputError(
            f"the {WHAT} config's hidden_size ({hidden}) differs from the target's ({facts['hidden_size']}); the drafter "
            "reads the target's embeddings, hidden states and LM head, so use a drafter trained for this target."
        )
    vocab = config_int(config, "vocab_size", "vocab_size", WHAT, None)
    if vocab is not None and facts["vocab_size"] is not None and vocab != facts["vocab_size"]:
        raise UserInputError(
            f"the {WHAT} config's vocab_size ({vocab}) differs from the target's ({facts['vocab_size']}); use a drafter "
            "trained with the target's tokenizer."
        )
    layers = facts["num_hidden_layers"]
    check_layer_ids(settings.target_layer_ids, layers, _field(config, "target_layer_ids")[1], WHAT)
    declared = config_int(config, "num_target_layers", "num_target_layers", WHAT, None)
    if declared is None:
        declared = config_int(
            config.get("dflash_config") or {}, "num_target_layers", "dflash_config.num_target_layers", WHAT, None
        )
    if declared is not None and layers is not None and declared != layers:
        raise UserInputError(
            f"the {WHAT} config's num_target_layers ({declared}) differs from the target's {layers} layers; use a "
            "drafter trained for this target."
        )
    if facts["vocab_size"] is not None and settings.mask_token_id >= facts["vocab_size"]:
        raise UserInputError(
            f"the {WHAT} config's mask_token_id ({settings.mask_token_id}) is outside the target's vocabulary of "
            f"{facts['vocab_size']} tokens; use a drafter trained for this target."
        )


# ---------------------------------------------------------------------- the model
class DFlashAttention(nn.Module):
    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        bias = bool(getattr(config, "attention_bias", False))
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_out, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_out, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_out, bias=bias)
        self.o_proj = nn.Linear(q_out, config.hidden_size, bias=bias)
        self.q_norm = Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def heads(self, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """[B, T, n * D] -> [B, n, T, D], each head normed by ``norm``."""
        x = x.view(*x.shape[:2], -1, self.head_dim)
        return (x if norm is None else norm(x)).transpose(1, 2)

    def keys_values(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rope(self.heads(self.k_proj(x), self.k_norm), cos, sin), self.heads(self.v_proj(x))


class DFlashLayer(nn.Module):
    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        self.self_attn = DFlashAttention(config)
        self.mlp = Qwen3MLP(config)
        self.input_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class DFlashDrafter(nn.Module):
    """A DFlash drafter (see the module docstring): its own weights only; the target's embeddings and
    LM head are handed to it by the engine."""

    def __init__(self, config: Qwen3Config, settings: DFlashSettings) -> None:
        super().__init__()
        self.config = config
        self.settings = settings
        hidden = config.hidden_size
        self.fc = nn.Linear(len(settings.target_layer_ids) * hidden, hidden, bias=False)
        self.hidden_norm = Qwen3RMSNorm(hidden, eps=config.rms_norm_eps)
        self.layers = nn.ModuleList(DFlashLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = Qwen3RMSNorm(hidden, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config=config)
        self.attn_implementation = "sdpa"
        self.name_or_path = ""
        self.config_dict: dict[str, Any] = {}

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        """The target hidden states it reads (``forward_ar``'s indices): the output of each named layer."""
        return tuple(i + 1 for i in self.settings.target_layer_ids)

    @property
    def block_size(self) -> int:
        return self.settings.block_size

    @property
    def mask_token_id(self) -> int:
        return self.settings.mask_token_id

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        """Its own K/V cache: ``capacity`` slots per row, preallocated (the last one is the spill slot)."""
        attn, weight = self.layers[0].self_attn, self.fc.weight
        return KVCache.empty(
            len(self.layers), batch_size, attn.num_kv_heads, attn.head_dim, capacity, weight.dtype, weight.device
        )

    def kv_bytes_per_token(self) -> int:
        attn = self.layers[0].self_attn
        return 2 * len(self.layers) * attn.num_kv_heads * attn.head_dim * self.fc.weight.element_size()

    def write_context(
        self, features: torch.Tensor, starts: Sequence[int], counts: Sequence[int], cache: KVCache
    ) -> None:
        """Row r's ``counts[r]`` new target hidden states (``features`` [B, N, n H], padded to N), at positions
        starts[r]..: projected once, their K/V written into every layer's slots starts[r].. of ``cache``."""
        batch, width = features.shape[:2]
        if width == 0:
            return
        context = self.hidden_norm(self.fc(features.to(self.fc.weight.dtype)))
        slots, positions, _ = spill_layout(starts, counts, width, cache.capacity - 1, features.device)
        cos, sin = self.rotary_emb(context, positions)
        for i, layer in enumerate(self.layers):
            k, v = layer.self_attn.keys_values(context, cos, sin)
            cache.scatter(i, slots, k, v, 0)

    def draft_block(
        self, embeds: torch.Tensor, starts: Sequence[int], widths: Sequence[int], cache: KVCache
    ) -> torch.Tensor:
        """The block (``embeds`` [B, K, H]: the anchor's and the masks' embeddings) of row r at positions
        starts[r].., after its context (slots < starts[r]); row r's block is only ``widths[r]`` wide (the
        positions past it are padding no query of the row sees). Every layer's block K/V goes into slots
        starts[r].., past the committed context (the next context overwrites them). Returns norm(h) [B, K, H]."""
        batch, size = embeds.shape[:2]
        device = embeds.device
        begin = torch.tensor(list(starts), device=device).unsqueeze(1)
        positions = begin + torch.arange(size, device=device)
        span = max(starts) + size
        end = begin + torch.tensor(list(widths), device=device).unsqueeze(1)
        mask = (torch.arange(span, device=device).unsqueeze(0) < end).view(batch, 1, 1, span)
        cos, sin = self.rotary_emb(embeds, positions)
        attend = attention_function(self.attn_implementation)
        hidden = embeds.to(self.fc.weight.dtype)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = rope(attn.heads(attn.q_proj(x), attn.q_norm), cos, sin)
            k, v = attn.keys_values(x, cos, sin)
            keys, values = cache.scatter(i, positions, k, v, span)
            out = attend(q, keys, values, mask, False, attn.scaling, attn.num_heads != attn.num_kv_heads)
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(batch, size, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.norm(hidden)

    def logits(self, hidden: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """Draft logits over the target's vocabulary: the target's head, scaled and soft-capped as configured."""
        logits = head(hidden) * self.settings.output_multiplier
        cap = self.settings.final_logit_softcapping
        return torch.tanh(logits / cap) * cap if cap else logits


def load_dflash(
    path: str | Path,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> DFlashDrafter:
    """A DFlash drafter from a directory in the released layout (module docstring); no code from the
    checkpoint runs, one that declares its own is refused unless ``trust_remote_code``."""
    directory, config = read_drafter_config(path, trust_remote_code, WHAT)
    settings = dflash_settings(config)
    qwen3 = dflash_qwen3_config(config)
    state = load_drafter_state(directory)
    with torch.device("meta"):
        drafter = DFlashDrafter(qwen3, settings)
    build_drafter(drafter, state, dtype, WHAT)
    drafter.rotary_emb = Qwen3RotaryEmbedding(config=qwen3)  # fp32 frequencies, off the meta device
    drafter.attn_implementation = check_attn_implementation(attn_implementation, "a DFlash drafter")
    drafter.name_or_path, drafter.config_dict = str(path), config
    return drafter.to(device).eval().requires_grad_(False)


def default_target_layer_ids(target_layers: int, count: int) -> list[int]:
    """``count`` target layers spread as the released drafters spread them (Qwen3-8B's 36 layers, 5
    ids: 1, 9, 17, 25, 33: from layer 1 to the fourth-last), squeezed into small targets."""
    start, end = (1, target_layers - 3) if target_layers > 4 else (0, target_layers - 1)
    if count == 1:
        return [min(target_layers // 2, target_layers - 1)]
    return [round(start + i * (end - start) / (count - 1)) for i in range(count)]


def write_random_dflash(
    target: dict[str, Any],
    out: str | Path,
    num_layers: int = 1,
    target_layer_ids: Sequence[int] | None = None,
    block_size: int = DFLASH_BLOCK_SIZE,
    mask_token_id: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    std: float = 0.02,
) -> Path:
    """A random-weight DFlash drafter for ``target`` (its config dict) written in the released layout
    (module docstring) to ``out``: Qwen3 layers of the target's shape, ``num_layers`` of them, reading
    ``target_layer_ids`` (default: spread as released, one per drafter layer). The mask token: the one
    the target's config names, else its last vocabulary id."""
    facts = target_facts(target)
    layers = int(facts["num_hidden_layers"] or 1)
    ids = list(target_layer_ids) if target_layer_ids is not None else default_target_layer_ids(layers, num_layers)
    heads = int(target["num_attention_heads"])
    config = {
        "architectures": ["DFlashDraftModel"],
        "model_type": "qwen3",
        "block_size": block_size,
        "num_target_layers": layers,
        "dflash_config": {
            "mask_token_id": int(
                mask_token_id if mask_token_id is not None else target.get("mask_token_id") or facts["vocab_size"] - 1
            ),
            "target_layer_ids": ids,
        },
        "hidden_size": int(target["hidden_size"]),
        "intermediate_size": int(target.get("intermediate_size") or 3 * target["hidden_size"]),
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(target.get("num_key_value_heads") or heads),
        "head_dim": int(target.get("head_dim") or target["hidden_size"] // heads),
        "rms_norm_eps": float(target.get("rms_norm_eps") or 1e-6),
        "hidden_act": "silu",
        "attention_bias": False,
        "max_position_embeddings": int(target.get("max_position_embeddings") or 40960),
        "rope_theta": float((target.get("rope_parameters") or {}).get("rope_theta") or target.get("rope_theta") or 1e6),
        "vocab_size": int(facts["vocab_size"]),
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    drafter = DFlashDrafter(dflash_qwen3_config(config), dflash_settings(config))
    init_random(drafter, std, seed)
    return save_drafter(out, config, {k: v.to(dtype) for k, v in drafter.state_dict().items()})
