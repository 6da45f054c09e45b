"""EAGLE-3 drafters (SafeAILab), loaded natively: no remote code.

An EAGLE-3 drafter is one Llama-style decoder layer. Its input at position i is the pair (target
feature f_i, token x_{i+1}): f_i is ``fc`` over the concatenation of three target hidden states at
position i (a low, a middle and a high layer), and the token is embedded. The layer's attention reads
[input_layernorm(embedding) ; hidden_norm(feature)] (2 x hidden wide), causal, with its own small K/V
cache; ``norm`` and an LM head over a *draft vocabulary* (e.g. the 32k most frequent tokens) give the
next token x_{i+2}, mapped to a target id by ``d2t`` (target id = draft id + d2t[draft id]; tokens
outside the draft vocabulary are never drafted). Drafting is a chain: the layer's output hidden state
(before ``norm``) stands in for the next position's feature, paired with the token just drafted.

Per pass, with e the token embeddings and g the features (fc(f), or the previous output):
    x = [input_layernorm(e) ; hidden_norm(g)]
    h = r + o_proj(attention(q_proj(x), k_proj(x), v_proj(x)))   (r = hidden_norm(g) if
        norm_before_residual, else g; causal over the drafter's cache; no q/k norms; RoPE)
    h = h + mlp(post_attention_layernorm(h));  logits = lm_head(norm(h)) over the draft vocabulary

Two released layouts are loaded (read in SafeAILab/EAGLE ``eagle/model/cnets.py``, class ``Model``,
and vLLM's ``vllm/model_executor/models/llama_eagle3.py`` with
``vllm/transformers_utils/configs/speculators/algos.py``):

* the authors' (SafeAILab/EAGLE; ``architectures`` ["LlamaForCausalLMEagle3"], ``model_type`` "llama"):
  a flat Llama config (hidden_size, num_attention_heads, num_key_value_heads, head_dim,
  intermediate_size, rms_norm_eps, rope_theta, rope_scaling, vocab_size) plus ``draft_vocab_size``,
  optional ``target_hidden_size``, ``norm_before_residual`` (default false, as cnets.py) and the target
  layers in ``eagle_config.eagle_aux_hidden_state_layer_ids`` (or top-level
  ``eagle_aux_hidden_state_layer_ids``); weights ``midlayer.*`` (``self_attn.{q,k,v,o}_proj``,
  ``mlp.{gate,up,down}_proj``, ``hidden_norm``, ``input_layernorm``, ``post_attention_layernorm``),
  ``fc``, ``norm``, ``lm_head``, ``d2t``, ``t2d`` and optionally ``embed_tokens``;
* vLLM's speculators format (``speculators_model_type`` "eagle3"): the Llama fields under
  ``transformer_layer_config``, and top-level ``draft_vocab_size``, ``target_hidden_size``,
  ``norm_before_residual`` (default true, as vLLM reads it), ``eagle_aux_hidden_state_layer_ids`` and
  ``speculators_config.proposal_methods[0].speculative_tokens``; weights ``layers.0.*``, ``fc``,
  ``norm``, ``lm_head``, ``d2t``, ``t2d``, optionally ``embed_tokens``.

The target layers: an aux id i is the hidden state *entering* target layer i (transformers'
``hidden_states[i]``; vLLM collects it before layer i, EAGLE's own modeling files likewise), and the
three are concatenated in layer order, as they are collected while the target runs; without
ids in the config, (2, L // 2, L - 3) for a target of L layers, as both do. Without its own
``embed_tokens`` the drafter embeds with the target's embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding

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
    target_facts,
)
from orthrus.models.kv_cache import KVCache
from orthrus.models.modeling_orthrus import attention_function, check_attn_implementation

WHAT = "EAGLE-3"
LAYOUTS = ("eagle", "speculators")  # SafeAILab/EAGLE's, vLLM's speculators format
LLAMA_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "max_position_embeddings",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "vocab_size",
)


@dataclass(frozen=True)
class Eagle3Settings:
    layout: str
    vocab_size: int
    draft_vocab_size: int
    target_hidden_size: int | None
    aux_layer_ids: tuple[int, ...] | None  # None: the target's (2, L // 2, L - 3)
    norm_before_residual: bool
    speculative_tokens: int | None = None  # what the checkpoint proposes per step, when it says


def default_aux_layer_ids(target_layers: int) -> tuple[int, int, int]:
    return (2, target_layers // 2, target_layers - 3)


def eagle3_layout(config: dict[str, Any]) -> str:
    """Which released layout a config is in; a config that is not an EAGLE-3 drafter's is one sentence."""
    if config.get("speculators_model_type") is not None:
        if config["speculators_model_type"] != "eagle3":
            raise UserInputError(
                f"the drafter's speculators_model_type is {config['speculators_model_type']!r}, not 'eagle3'; use an "
                "EAGLE-3 drafter."
            )
        return "speculators"
    if "dflash_config" in config:
        raise UserInputError(
            "the drafter is a DFlash drafter (it has dflash_config), not an EAGLE-3 one; use engine dflash."
        )
    architectures = " ".join(str(a) for a in config.get("architectures") or [])
    if "Eagle3" not in architectures and "draft_vocab_size" not in config:
        raise UserInputError(
            "the drafter's config is not an EAGLE-3 one (no speculators_model_type 'eagle3', no Eagle3 architecture, "
            "no draft_vocab_size); point the draft model at an EAGLE-3 drafter directory."
        )
    return "eagle"


def _layer_config(config: dict[str, Any], layout: str) -> tuple[dict[str, Any], str]:
    if layout == "eagle":
        return config, ""
    inner = config.get("transformer_layer_config")
    if not isinstance(inner, dict):
        raise UserInputError(
            f"the {WHAT} config has no transformer_layer_config; it is required in the speculators format."
        )
    return inner, "transformer_layer_config."


def eagle3_settings(config: dict[str, Any]) -> Eagle3Settings:
    """The EAGLE-3 fields of a drafter config; a missing or malformed one is one sentence naming it."""
    layout = eagle3_layout(config)
    layer, prefix = _layer_config(config, layout)
    vocab = config_int(layer, "vocab_size", f"{prefix}vocab_size", WHAT)
    draft_vocab = config_int(config, "draft_vocab_size", "draft_vocab_size", WHAT, None)
    draft_vocab = vocab if draft_vocab is None else draft_vocab
    if not 0 < draft_vocab <= vocab:
        raise UserInputError(
            f"the {WHAT} config's draft_vocab_size ({draft_vocab}) must be between 1 and its vocab_size ({vocab})."
        )
    eagle_config = config.get("eagle_config") if isinstance(config.get("eagle_config"), dict) else {}
    if eagle_config.get("use_aux_hidden_state") is False:
        raise UserInputError(
            f"the {WHAT} config's eagle_config.use_aux_hidden_state is false (an EAGLE-1/2 style drafter); use an "
            "EAGLE-3 drafter that reads three target layers."
        )
    if config.get("norm_before_fc"):
        raise UserInputError(
            f"the {WHAT} config's norm_before_fc is true, which this suite does not run; use a drafter without it."
        )
    ids, where = config.get("eagle_aux_hidden_state_layer_ids"), "eagle_aux_hidden_state_layer_ids"
    if ids is None and "eagle_aux_hidden_state_layer_ids" in eagle_config:
        ids, where = eagle_config["eagle_aux_hidden_state_layer_ids"], "eagle_config.eagle_aux_hidden_state_layer_ids"
    # concatenated in layer order, as the target's states are collected while it runs (vLLM, EAGLE)
    aux = tuple(sorted(layer_ids(ids, where, WHAT))) if ids is not None else None
    if aux is not None and len(aux) != 3:
        raise UserInputError(
            f"the {WHAT} config's {where} must name 3 target layers (low, middle, high), got {list(aux)}."
        )
    before = config.get("norm_before_residual", layout == "speculators")
    tokens = None
    methods = (config.get("speculators_config") or {}).get("proposal_methods") if layout == "speculators" else None
    if isinstance(methods, list) and methods and isinstance(methods[0], dict):
        tokens = methods[0].get("speculative_tokens")
        tokens = tokens if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 0 else None
    return Eagle3Settings(
        layout=layout,
        vocab_size=vocab,
        draft_vocab_size=draft_vocab,
        target_hidden_size=config_int(config, "target_hidden_size", "target_hidden_size", WHAT, None),
        aux_layer_ids=aux,
        norm_before_residual=bool(before),
        speculative_tokens=tokens,
    )


def eagle3_llama_config(config: dict[str, Any]) -> LlamaConfig:
    """The drafter's layer as a Llama config (the fields it needs; the required ones checked)."""
    layer, prefix = _layer_config(config, eagle3_layout(config))
    for key in ("hidden_size", "num_attention_heads", "intermediate_size"):
        config_int(layer, key, prefix + key, WHAT)
    layers = config_int(layer, "num_hidden_layers", prefix + "num_hidden_layers", WHAT, 1)
    if layers != 1:
        raise UserInputError(
            f"the {WHAT} config's {prefix}num_hidden_layers is {layers}; this suite runs single-layer EAGLE-3 drafters "
            "(as released)."
        )
    fields = {k: layer[k] for k in LLAMA_FIELDS if layer.get(k) is not None}
    fields.setdefault("num_key_value_heads", fields["num_attention_heads"])
    fields.setdefault("head_dim", fields["hidden_size"] // fields["num_attention_heads"])
    return LlamaConfig(**fields)


def check_eagle3_target(config: dict[str, Any], target: dict[str, Any]) -> None:
    """The drafter fits the target (a config dict: hidden size, layers, vocabulary); each mismatch is one
    sentence naming the drafter's field."""
    settings = eagle3_settings(config)
    layer, prefix = _layer_config(config, settings.layout)
    facts = target_facts(target)
    fed, where = settings.target_hidden_size, "target_hidden_size"
    if fed is None:
        fed, where = config_int(layer, "hidden_size", prefix + "hidden_size", WHAT), prefix + "hidden_size"
    if facts["hidden_size"] is not None and fed != facts["hidden_size"]:
        raise UserInputError(
            f"the {WHAT} config's {where} ({fed}) differs from the target's hidden size ({facts['hidden_size']}); use a "
            "drafter trained for this target."
        )
    if facts["vocab_size"] is not None and settings.vocab_size != facts["vocab_size"]:
        raise UserInputError(
            f"the {WHAT} config's {prefix}vocab_size ({settings.vocab_size}) differs from the target's "
            f"({facts['vocab_size']}); use a drafter trained with the target's tokenizer."
        )
    if settings.aux_layer_ids is not None:
        where = "eagle_aux_hidden_state_layer_ids"
        if "eagle_aux_hidden_state_layer_ids" not in config:
            where = "eagle_config." + where
        check_layer_ids(settings.aux_layer_ids, facts["num_hidden_layers"], where, WHAT)
    elif facts["num_hidden_layers"] is not None and facts["num_hidden_layers"] < 4:
        raise UserInputError(
            f"the {WHAT} config names no eagle_aux_hidden_state_layer_ids and the target has only "
            f"{facts['num_hidden_layers']} layers, too few for the default (2, L // 2, L - 3); name the layers in the config."
        )


# ---------------------------------------------------------------------- the model
class Eagle3Attention(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        bias = bool(getattr(config, "attention_bias", False))
        wide = 2 * config.hidden_size  # [embedding ; feature]
        self.q_proj = nn.Linear(wide, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(wide, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(wide, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], -1, self.head_dim).transpose(1, 2)


class Eagle3Layer(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.self_attn = Eagle3Attention(config)
        self.mlp = LlamaMLP(config)
        self.hidden_norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class Eagle3Drafter(nn.Module):
    """An EAGLE-3 drafter (see the module docstring): ``fc``, one layer, ``norm``, ``lm_head`` over the
    draft vocabulary, the ``d2t``/``t2d`` maps, and its own embeddings when the checkpoint has them."""

    def __init__(self, config: LlamaConfig, settings: Eagle3Settings, own_embeddings: bool) -> None:
        super().__init__()
        self.config = config
        self.settings = settings
        hidden = config.hidden_size
        self.fc = nn.Linear(3 * (settings.target_hidden_size or hidden), hidden, bias=False)
        self.layers = nn.ModuleList([Eagle3Layer(config)])
        self.norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, settings.draft_vocab_size, bias=False)
        self.embed_tokens = nn.Embedding(settings.vocab_size, hidden) if own_embeddings else None
        self.register_buffer("d2t", torch.zeros(settings.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(settings.vocab_size, dtype=torch.bool))
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.aux_layer_ids: tuple[int, ...] = settings.aux_layer_ids or ()
        self.attn_implementation = "sdpa"
        self.name_or_path = ""
        self.config_dict: dict[str, Any] = {}

    def bind_target(self, target_layers: int) -> None:
        """Resolve the default target layers for a target of ``target_layers`` layers."""
        self.aux_layer_ids = self.settings.aux_layer_ids or default_aux_layer_ids(target_layers)

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        """The target hidden states it reads (``forward_ar``'s indices: the input of each named layer)."""
        return self.aux_layer_ids

    @property
    def draft_to_target(self) -> torch.Tensor:
        """The target id of every draft id [Vd]."""
        return torch.arange(self.d2t.shape[0], device=self.d2t.device) + self.d2t

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        attn, weight = self.layers[0].self_attn, self.fc.weight
        return KVCache.empty(1, batch_size, attn.num_kv_heads, attn.head_dim, capacity, weight.dtype, weight.device)

    def kv_bytes_per_token(self) -> int:
        attn = self.layers[0].self_attn
        return 2 * attn.num_kv_heads * attn.head_dim * self.fc.weight.element_size()

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """The target's three hidden states at a position [.., 3 H_target] -> the drafter's feature [.., H]."""
        return self.fc(features.to(self.fc.weight.dtype))

    def forward_pairs(
        self,
        features: torch.Tensor,
        embeds: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over pairs (feature, token embedding) [B, T, H] at ``positions`` [B, T], their K/V
        written to ``slots`` [B, T] of ``cache``; each query attends causally to the slots up to its own
        position. Returns (the output before ``norm`` [B, T, H]: the next position's feature in a chain,
        the draft-vocabulary logits [B, T, Vd])."""
        batch, steps = features.shape[:2]
        layer = self.layers[0]
        attn = layer.self_attn
        dtype = self.fc.weight.dtype
        features, embeds = features.to(dtype), embeds.to(dtype)
        normed = layer.hidden_norm(features)
        residual = normed if self.settings.norm_before_residual else features
        x = torch.cat([layer.input_layernorm(embeds), normed], dim=-1)
        cos, sin = self.rotary_emb(x, positions)
        q = rope(attn.heads(attn.q_proj(x)), cos, sin)
        k = rope(attn.heads(attn.k_proj(x)), cos, sin)
        v = attn.heads(attn.v_proj(x))
        span = int(positions.max()) + 1
        keys, values = cache.scatter(0, slots, k, v, span)
        if steps > 1 and bool((positions[:, 0] == 0).all()):
            # every row from position 0 (the prompts): plain causal attention over slots [0, T), no
            # T x T mask (a row's padding follows its entries, and no real query sees it)
            mask, causal = None, True
        else:
            mask = torch.arange(span, device=x.device).view(1, 1, 1, span) <= positions.view(batch, 1, steps, 1)
            causal = False
        gqa = attn.num_heads != attn.num_kv_heads
        out = attention_function(self.attn_implementation)(q, keys, values, mask, causal, attn.scaling, gqa)
        hidden = residual + attn.o_proj(out.transpose(1, 2).reshape(batch, steps, -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return hidden, self.lm_head(self.norm(hidden))


def _rename(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' ``midlayer.`` is vLLM's ``layers.0.`` (as vLLM renames it)."""
    return {k.replace("midlayer.", "layers.0.", 1) if k.startswith("midlayer.") else k: v for k, v in state.items()}


def check_d2t(drafter: Eagle3Drafter) -> None:
    targets = drafter.draft_to_target
    if int(targets.min()) < 0 or int(targets.max()) >= drafter.settings.vocab_size:
        raise UserInputError(
            f"the {WHAT} drafter's d2t maps a draft id outside the target's {drafter.settings.vocab_size} ids; "
            "the checkpoint is broken or made for another target."
        )


def load_eagle3(
    path: str | Path,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> Eagle3Drafter:
    """An EAGLE-3 drafter from a directory in either released layout (module docstring); no code from
    the checkpoint runs, one that declares its own is refused unless ``trust_remote_code``."""
    directory, config = read_drafter_config(path, trust_remote_code, WHAT)
    settings = eagle3_settings(config)
    llama = eagle3_llama_config(config)
    state = _rename(load_drafter_state(directory))
    state.setdefault("t2d", torch.zeros(settings.vocab_size, dtype=torch.bool))  # vLLM never reads it
    if "d2t" not in state and settings.draft_vocab_size == settings.vocab_size:
        state["d2t"] = torch.zeros(settings.draft_vocab_size, dtype=torch.long)  # the identity map
    with torch.device("meta"):
        drafter = Eagle3Drafter(llama, settings, own_embeddings="embed_tokens.weight" in state)
    build_drafter(drafter, state, dtype, WHAT, keep=("d2t", "t2d"))
    drafter.d2t, drafter.t2d = drafter.d2t.long(), drafter.t2d.bool()
    drafter.rotary_emb = LlamaRotaryEmbedding(config=llama)  # fp32 frequencies, off the meta device
    drafter.attn_implementation = check_attn_implementation(attn_implementation, "an EAGLE-3 drafter")
    drafter.name_or_path, drafter.config_dict = str(path), config
    check_d2t(drafter)
    return drafter.to(device).eval().requires_grad_(False)


def write_random_eagle3(
    target: dict[str, Any],
    out: str | Path,
    layout: str = "speculators",
    draft_vocab: Sequence[int] | None = None,
    aux_layer_ids: Sequence[int] | None = None,
    own_embeddings: bool = False,
    norm_before_residual: bool | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    std: float = 0.02,
) -> Path:
    """A random-weight EAGLE-3 drafter for ``target`` (its config dict) written to ``out`` in one of the
    released layouts (``speculators`` or the authors' ``eagle``; module docstring): one layer of the
    target's width, the draft vocabulary ``draft_vocab`` (target ids, sorted; default: all of them) with
    its ``d2t`` and ``t2d`` maps, the target layers ``aux_layer_ids`` (default: none named, i.e.
    (2, L // 2, L - 3); for a target of fewer than 4 layers (0, L // 2, L - 1), named)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    facts = target_facts(target)
    vocab, hidden = int(facts["vocab_size"]), int(target["hidden_size"])
    layers = int(facts["num_hidden_layers"] or 1)
    if aux_layer_ids is None and layers < 4:
        aux_layer_ids = [0, layers // 2, layers - 1]
    kept = sorted(draft_vocab) if draft_vocab is not None else list(range(vocab))
    heads = int(target["num_attention_heads"])
    layer = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(target.get("intermediate_size") or 3 * hidden),
        "num_hidden_layers": 1,
        "num_attention_heads": heads,
        "num_key_value_heads": int(target.get("num_key_value_heads") or heads),
        "head_dim": int(target.get("head_dim") or hidden // heads),
        "rms_norm_eps": float(target.get("rms_norm_eps") or 1e-6),
        "hidden_act": "silu",
        "max_position_embeddings": int(target.get("max_position_embeddings") or 40960),
        "rope_theta": float((target.get("rope_parameters") or {}).get("rope_theta") or target.get("rope_theta") or 1e6),
        "vocab_size": vocab,
        "tie_word_embeddings": False,
    }
    extra: dict[str, Any] = {"draft_vocab_size": len(kept), "target_hidden_size": hidden}
    if norm_before_residual is not None:
        extra["norm_before_residual"] = norm_before_residual
    if layout == "speculators":
        config: dict[str, Any] = {
            "architectures": ["Eagle3Speculator"],
            "speculators_model_type": "eagle3",
            "transformer_layer_config": layer,
            **extra,
            "speculators_config": {"algorithm": "eagle3", "proposal_methods": [{"speculative_tokens": 3}]},
        }
        if aux_layer_ids is not None:
            config["eagle_aux_hidden_state_layer_ids"] = list(aux_layer_ids)
    else:
        config = {**layer, "architectures": ["LlamaForCausalLMEagle3"], **extra}
        if aux_layer_ids is not None:
            config["eagle_config"] = {
                "eagle_aux_hidden_state_layer_ids": list(aux_layer_ids),
                "use_aux_hidden_state": True,
            }
    settings = eagle3_settings(config)
    drafter = Eagle3Drafter(eagle3_llama_config(config), settings, own_embeddings)
    init_random(drafter, std, seed)
    state = {k: v.to(dtype) for k, v in drafter.state_dict().items() if k not in ("d2t", "t2d")}
    ids = torch.tensor(kept, dtype=torch.long)
    state["d2t"] = ids - torch.arange(len(kept))
    state["t2d"] = torch.zeros(vocab, dtype=torch.bool).index_fill_(0, ids, True)
    if layout == "eagle":
        state = {("midlayer." + k[len("layers.0.") :] if k.startswith("layers.0.") else k): v for k, v in state.items()}
    return save_drafter(out, config, state)
