"""The Orthrus dual-view model: a frozen Qwen3 causal LM plus a diffusion view of itself.

Both views run the same decoder stack (embeddings, RMSNorms, MLPs, final norm, LM head are
shared and frozen) and read one KV cache. They differ only in the attention projections:

* AR view: ``q_proj k_proj v_proj o_proj q_norm k_norm`` (the base model's), causal, appends its
  K/V to the cache.
* Diffusion view: ``q_proj_diff k_proj_diff v_proj_diff o_proj_diff q_norm_diff k_norm_diff``,
  bidirectional inside the block, full attention over the cached prefix, writes nothing.

Parameter names match the released Orthrus-Qwen3 checkpoints (Qwen3 names plus ``*_diff``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, PreTrainedModel, Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3MLP,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
    apply_rotary_pos_emb,
)

from orthrus.errors import UserInputError
from orthrus.models.checkpoint import check_remote_code, check_safetensors, read_json_object, read_tokenizer_file
from orthrus.models.kv_cache import KVCache

# the one default block size: a config without one, a fresh view, and an engine told "null" all use it
DEFAULT_BLOCK_SIZE = 16
DIFF_SUFFIXES = ("q_proj_diff", "k_proj_diff", "v_proj_diff", "o_proj_diff", "q_norm_diff", "k_norm_diff")


class OrthrusConfig(Qwen3Config):
    """A Qwen3 config plus the two Orthrus fields."""

    model_type = "orthrus"

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE, mask_token_id: int | None = None, **kwargs: Any) -> None:
        self.block_size = block_size
        self.mask_token_id = mask_token_id
        super().__init__(**kwargs)


# transformers' Auto classes read config.json first (AutoTokenizer does, to pick a tokenizer class):
# knowing "orthrus" spares every load of an Orthrus checkpoint's tokenizer a fallback and a warning
# that the checkpoint might not be compatible. Registration maps a name to our class; it runs no code
# from any checkpoint.
AutoConfig.register(OrthrusConfig.model_type, OrthrusConfig, exist_ok=True)


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float, gqa: bool
) -> torch.Tensor:
    """torch's fused scaled_dot_product_attention. q [B, H, Tq, D], k and v [B, Hkv, Tk, D] -> [B, H, Tq, D];
    ``mask`` is boolean (True = may attend) and broadcasts to [B, H, Tq, Tk]; ``causal`` needs Tq == Tk;
    ``gqa``: Hkv < H (grouped-query attention; a Python bool, also when compiled with dynamic shapes)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=gqa)


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool, scale: float, gqa: bool
) -> torch.Tensor:
    """The same attention written out: softmax(q k^T * scale, masked) v, softmax in fp32 (as transformers' eager)."""
    if gqa:  # grouped-query attention: each K/V head serves H / Hkv query heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(weights, v)


# the attention implementations our models honour, by the name transformers uses for them
ATTENTION_FUNCTIONS = {"sdpa": sdpa_attention, "eager": eager_attention}
SUPPORTED_ATTN_IMPLEMENTATIONS = tuple(ATTENTION_FUNCTIONS)


def check_attn_implementation(name: str | None, model: str = "this model") -> str:
    """The attention implementation to use for a requested one (None: sdpa); others are one clear error."""
    name = "sdpa" if name is None else name
    if name not in ATTENTION_FUNCTIONS:
        raise UserInputError(
            f"attn_implementation {name!r} is not supported by {model}; use one of "
            f"{', '.join(SUPPORTED_ATTN_IMPLEMENTATIONS)}."
        )
    return name


def attention_function(name: str | None):
    return ATTENTION_FUNCTIONS[check_attn_implementation(name)]


class HonoursAttnImplementation:
    """Mixin for our PreTrainedModels: transformers' attn_implementation checks, limited to what we honour.

    ``from_pretrained(..., attn_implementation=...)``, ``config._attn_implementation`` and
    ``set_attn_implementation`` all land here; anything outside SUPPORTED_ATTN_IMPLEMENTATIONS is
    refused instead of being accepted and ignored.
    """

    # our attention modules read config._attn_implementation on every call, so switching is live
    # (transformers otherwise guesses from the module source and would silently ignore a switch)
    _can_set_attn_implementation_cached_value = True

    def _check_and_adjust_attn_implementation(
        self, attn_implementation: str | None, is_init_check: bool = False, allow_all_kernels: bool = False
    ) -> str:
        return check_attn_implementation(attn_implementation, type(self).__name__)

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        return check_attn_implementation(requested_attention, type(self).__name__)


class OrthrusAttention(nn.Module):
    """Qwen3 attention with a second (diffusion) set of projections and norms."""

    def __init__(self, config: OrthrusConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config  # the model's own config object: its _attn_implementation picks the attention
        self.layer_idx = layer_idx
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        bias = config.attention_bias
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        for suffix in ("", "_diff"):
            setattr(self, f"q_proj{suffix}", nn.Linear(config.hidden_size, q_out, bias=bias))
            setattr(self, f"k_proj{suffix}", nn.Linear(config.hidden_size, kv_out, bias=bias))
            setattr(self, f"v_proj{suffix}", nn.Linear(config.hidden_size, kv_out, bias=bias))
            setattr(self, f"o_proj{suffix}", nn.Linear(q_out, config.hidden_size, bias=bias))
            setattr(self, f"q_norm{suffix}", Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps))
            setattr(self, f"k_norm{suffix}", Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps))

    def project(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, suffix: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, H, T, D], k and v [B, Hkv, T, D] of one view, RoPE applied."""
        shape = (*hidden.shape[:-1], -1, self.head_dim)
        q = getattr(self, f"q_norm{suffix}")(getattr(self, f"q_proj{suffix}")(hidden).view(shape)).transpose(1, 2)
        k = getattr(self, f"k_norm{suffix}")(getattr(self, f"k_proj{suffix}")(hidden).view(shape)).transpose(1, 2)
        v = getattr(self, f"v_proj{suffix}")(hidden).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool, suffix: str
    ) -> torch.Tensor:
        attention = attention_function(self.config._attn_implementation)  # read per call: set_attn_implementation works
        out = attention(q, k, v, mask, causal, self.scaling, self.num_heads != self.num_kv_heads)
        out = out.transpose(1, 2).reshape(*q.shape[:1], q.shape[2], -1)
        return getattr(self, f"o_proj{suffix}")(out)


class OrthrusDecoderLayer(nn.Module):
    def __init__(self, config: OrthrusConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = OrthrusAttention(config, layer_idx)
        self.mlp = Qwen3MLP(config)
        self.input_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def feed_forward(self, hidden: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        hidden = hidden + attn_out
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class OrthrusModel(nn.Module):
    def __init__(self, config: OrthrusConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(OrthrusDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config=config)


def build_from_state(
    model_class: type[nn.Module], config: Any, state: dict[str, torch.Tensor], dtype: torch.dtype | None, layout: str
) -> Any:
    """A Qwen3-layout model built on the meta device with ``state`` assigned (tensors reused, cast
    to ``dtype``), the LM head tied when the config says so, and RoPE buffers materialised."""
    if "lm_head.weight" not in state and config.tie_word_embeddings:
        state = {**state, "lm_head.weight": state["model.embed_tokens.weight"]}
    target = dtype or state["model.embed_tokens.weight"].dtype
    state = {k: v.to(target) for k, v in state.items()}
    with torch.device("meta"):
        model = model_class(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise UserInputError(
            f"checkpoint weights do not match the {layout} layout (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); check that the directory holds a {layout} model."
        )
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # RoPE's inverse frequencies stay in fp32 whatever the weights' dtype, as in transformers: rounded
    # to bf16 they shift every position's angle (non-persistent buffers, built off the meta device)
    model.model.rotary_emb = Qwen3RotaryEmbedding(config=config)
    return model


def init_qwen3_weights(module: nn.Module, std: float) -> None:
    """Qwen3's initialisation (normal linear/embedding weights, unit norms), for fresh models."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
    elif isinstance(module, Qwen3RMSNorm):
        nn.init.ones_(module.weight)


class OrthrusPreTrainedModel(HonoursAttnImplementation, PreTrainedModel):
    config_class = OrthrusConfig
    base_model_prefix = "model"
    _no_split_modules = ["OrthrusDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        init_qwen3_weights(module, self.config.initializer_range)


class OrthrusForCausalLM(OrthrusPreTrainedModel):
    """Qwen3 causal LM with an Orthrus diffusion view.

    ``forward_ar`` is exactly the Qwen3 forward pass (same weights, same math).
    ``forward_diffusion`` drafts a block from the shared cache without modifying it.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: OrthrusConfig) -> None:
        super().__init__(config)
        self.model = OrthrusModel(config)
        head_rows = getattr(config, "lm_head_size", None) or config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, head_rows, bias=False)
        self.post_init()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *args: Any,
        dtype: torch.dtype | None = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ):
        """Load a directory in the Orthrus-Qwen3 layout; attention "sdpa" (default) or "eager".

        No code from the checkpoint ever runs; one that declares its own (``auto_map``) is refused
        unless ``trust_remote_code`` (and then loaded as Qwen3 all the same)."""
        path = Path(resolve_model_path(path))
        check_remote_code(path, trust_remote_code)
        config_dict = read_config(path)
        state = load_state_dict(path)
        if not any(name.endswith("_diff.weight") for name in state):
            raise UserInputError(
                f"{path} is a plain Qwen3 checkpoint without a diffusion view; "
                "use OrthrusForCausalLM.from_base(path) (or engine 'ar') for it."
            )
        config = OrthrusConfig(**{k: v for k, v in config_dict.items() if k not in ("model_type", "architectures")})
        if config.mask_token_id is None:
            raise UserInputError(f"{path}/config.json has no mask_token_id; add the id of the mask token to it.")
        return cls._from_state(config, state, dtype, attn_implementation)

    @classmethod
    def _from_state(
        cls,
        config: OrthrusConfig,
        state: dict[str, torch.Tensor],
        dtype: torch.dtype | None,
        attn_implementation: str | None = None,
    ):
        if attn_implementation is not None or config._attn_implementation is None:
            config._attn_implementation = check_attn_implementation(attn_implementation, cls.__name__)
        model = build_from_state(cls, config, state, dtype, "Orthrus-Qwen3")
        model.requires_grad_(False)
        for name, param in model.named_parameters():
            if is_diffusion_param(name):
                param.requires_grad_(True)
        return model.eval()

    @classmethod
    def from_base(
        cls,
        base: str | Path | nn.Module,
        block_size: int = DEFAULT_BLOCK_SIZE,
        mask_token_id: int | None = None,
        dtype: torch.dtype | None = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        tokenizer: str | Path | None = None,
    ) -> OrthrusForCausalLM:
        """Attach a fresh diffusion view (copies of the AR attention weights) to a Qwen3 model.

        ``attn_implementation`` (None: the base module's own, else sdpa) applies to both views. A
        checkpoint directory that declares its own code is refused unless ``trust_remote_code``.
        The mask token, unless given: the config's, else the one the tokenizer files name (those in
        ``tokenizer``, a directory, when the model's tokenizer lives apart from it), else the first
        embedding row past the tokenizer's vocabulary, else a new row."""
        if block_size < 1:
            raise UserInputError(f"block_size must be >= 1, got {block_size}.")
        if isinstance(base, nn.Module):
            attn_implementation = attn_implementation or getattr(base.config, "_attn_implementation", None)
            config_dict = base.config.to_dict()
            state = {k: v.detach() for k, v in base.state_dict().items()}
        else:
            path = Path(resolve_model_path(base))
            check_remote_code(path, trust_remote_code)
            config_dict = read_config(path)
            state = load_state_dict(path)
        state = {k: v for k, v in state.items() if not is_diffusion_param(k)}
        config_dict = {k: v for k, v in config_dict.items() if k not in ("model_type", "architectures")}
        if mask_token_id is None:
            mask_token_id = config_dict.get("mask_token_id")
        embed = state["model.embed_tokens.weight"]
        if mask_token_id is None and not isinstance(base, nn.Module):
            mask_token_id = _first_unused_row(Path(tokenizer or resolve_model_path(base)), embed.shape[0])
        if mask_token_id is None:
            # The vocabulary has no spare row: add one for the mask token. The LM head keeps the
            # original rows (untied), so the AR view still computes exactly the base model's logits.
            mask_token_id = embed.shape[0]
            state["lm_head.weight"] = state.get("lm_head.weight", embed).clone()
            state["model.embed_tokens.weight"] = torch.cat([embed, embed.mean(0, keepdim=True)])
            config_dict.update(vocab_size=mask_token_id + 1, lm_head_size=mask_token_id, tie_word_embeddings=False)
        config_dict.update(block_size=block_size, mask_token_id=mask_token_id)
        for name in list(state):
            for twin in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"):
                marker = f".self_attn.{twin}."
                if marker in name:
                    state[name.replace(marker, f".self_attn.{twin}_diff.")] = state[name].clone()
        return cls._from_state(OrthrusConfig(**config_dict), state, dtype, attn_implementation)

    # ------------------------------------------------------------------ passes
    def new_cache(self, batch_size: int = 1, capacity: int | None = None) -> KVCache:
        """The K/V cache both views share (see KVCache): ``capacity`` slots per row preallocated, or
        (None) growing to fit each write."""
        attn = self.model.layers[0].self_attn
        weight = self.model.embed_tokens.weight
        return KVCache.empty(
            len(self.model.layers), batch_size, attn.num_kv_heads, attn.head_dim, capacity, weight.dtype, weight.device
        )

    def forward_ar(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        starts: int | Sequence[int] = 0,
        last: Sequence[int] | None = None,
        hidden_layers: Sequence[int] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """AR view over ``input_ids`` [B, T]: row r sits at positions starts[r] .. starts[r] + T - 1,
        attends causally to its cached prefix (slots < starts[r]) and writes its K/V to slots starts[r]..
        (``starts`` as one int: every row at the same positions). Without a cache: plain causal
        attention over the ids alone. Returns logits [B, T, V]; row j predicts the token after input
        j. ``last`` (one block index per row) computes the LM head there alone: [B, V] (a prefill of
        prompts right-padded to one length reads each row's last real token).

        ``hidden_layers`` (what a drafter conditioned on the target reads): also return the hidden
        states at these indices, concatenated in the order given, [B, T, len * hidden] at every
        position (also with ``last``). Indices as transformers' ``output_hidden_states``: i < L is
        the input of decoder layer i (0: the embeddings), L (the number of layers) the final normed
        state. The logits are computed exactly as without it."""
        return self._forward(input_ids, cache, starts, "", last, hidden_layers=hidden_layers)

    def forward_diffusion(
        self,
        block_ids: torch.Tensor,
        cache: KVCache | None,
        starts: int | Sequence[int],
        widths: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Diffusion view over blocks [B, K] (anchor first, then masks), row r at positions starts[r]..;
        full attention over its cached prefix, bidirectional inside its block: its first widths[r]
        positions (default all K; a narrower row's block is what it would draft alone, the positions
        past it are padding no query of the row sees). The committed slots (< starts[r]) are only
        read; the block's own K/V go into the row's free slots from starts[r] on, which the verify
        pass overwrites. Returns logits [B, K, V]; row j predicts block position j + 1."""
        return self._forward(block_ids, cache, starts, "_diff", None, widths)

    def forward_static(
        self,
        ids: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        positions: torch.Tensor,
        ends: torch.Tensor,
        diffusion: bool,
    ) -> torch.Tensor:
        """One pass whose shapes depend only on the batch, the block and the cache's capacity, for
        compiled decoding (no Python number in it changes as a sequence grows, so no step recompiles).

        ids [B, T] at ``positions`` [B, T] (a tensor); ``keys``/``values``: a KVCache's per-layer
        tensors [B, Hkv, C, D], written in place at the positions; every query attends over all C
        slots with a mask: the AR view (``diffusion`` False) to slots up to its own position, the
        diffusion view to slots below ``ends`` [B] (row r's prefix and the first ends[r] -
        positions[r, 0] positions of its block). The same results as ``forward_ar`` /
        ``forward_diffusion`` over the visible slots. Returns logits [B, T, V]."""
        batch, steps = ids.shape
        hidden = self.model.embed_tokens(ids)
        cos, sin = self.model.rotary_emb(hidden, positions)
        slots = torch.arange(keys[0].shape[2], device=ids.device).view(1, 1, -1)
        visible = slots < ends.view(batch, 1, 1) if diffusion else slots <= positions.unsqueeze(-1)
        mask = visible.unsqueeze(1)  # [B, 1, T, C]
        index = positions.view(batch, 1, steps, 1)
        suffix = "_diff" if diffusion else ""
        for layer, layer_keys, layer_values in zip(self.model.layers, keys, values):
            attn = layer.self_attn
            q, k, v = attn.project(layer.input_layernorm(hidden), cos, sin, suffix)
            where = index.expand(-1, k.shape[1], -1, k.shape[3])
            layer_keys.scatter_(2, where, k)
            layer_values.scatter_(2, where, v)
            hidden = layer.feed_forward(hidden, attn.attend(q, layer_keys, layer_values, mask, False, suffix))
        return self.lm_head(self.model.norm(hidden))

    def _forward(
        self,
        ids: torch.Tensor,
        cache: KVCache | None,
        starts: int | Sequence[int],
        suffix: str,
        last: Sequence[int] | None,
        widths: Sequence[int] | None = None,
        hidden_layers: Sequence[int] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        batch, steps = ids.shape
        device = ids.device
        hidden = self.model.embed_tokens(ids)
        starts = [int(starts)] * batch if isinstance(starts, int) else [int(s) for s in starts]
        span = max(starts) + steps  # slots any row may see in this pass
        if cache is not None:
            cache.reserve(span)
        full = widths is None or all(w == steps for w in widths)
        if len(set(starts)) == 1 and full:
            # every row at the same positions (one row, a prefill, equal-length rows): slices and the
            # simplest attention that sees exactly the allowed slots
            start = starts[0]
            positions = torch.arange(start, span, device=device).unsqueeze(0)
            mask, causal = None, False
            if not suffix and steps > 1:  # AR over a block: causal, offset by the cached prefix
                if start == 0 or cache is None:
                    causal = True
                else:
                    rows = torch.arange(steps, device=device).unsqueeze(1) + start
                    mask = torch.arange(span, device=device).unsqueeze(0) <= rows
            # (one AR token, or a diffusion block: every slot up to the block's end is visible)
        else:
            start = None
            offsets = torch.tensor(starts, device=device).unsqueeze(1)  # [B, 1]
            positions = offsets + torch.arange(steps, device=device)  # [B, T] absolute positions = slots
            slots = torch.arange(span, device=device).view(1, 1, span)
            if suffix:  # diffusion view: the committed prefix and the whole block (its first widths[r] positions)
                end = offsets + (steps if widths is None else torch.tensor(widths, device=device).unsqueeze(1))
                visible = slots < end.unsqueeze(-1)
            else:  # AR view: every slot up to the query's own position (prefix, then the block causally)
                visible = slots <= positions.unsqueeze(-1)
            # [B, 1, T, span]; slots past a row's block (stale or another row's span) are never visible,
            # so each row computes exactly what it would alone over its own prefix. A prefill (every
            # row from slot 0) is plain causal attention: the fused causal kernel, no mask.
            causal = not suffix and max(starts) == 0
            mask = None if causal else visible.unsqueeze(1)
        cos, sin = self.model.rotary_emb(hidden, positions)
        kept: dict[int, torch.Tensor] = {}  # the hidden states a caller asked for, by index
        for layer in self.model.layers:
            attn = layer.self_attn
            if hidden_layers is not None and attn.layer_idx in hidden_layers:
                kept[attn.layer_idx] = hidden
            q, k, v = attn.project(layer.input_layernorm(hidden), cos, sin, suffix)
            if cache is None:
                pass
            elif start is not None:  # every row at the same slots
                k, v = cache.write(attn.layer_idx, start, k, v)
            else:  # row r's block into slots starts[r] .. starts[r] + T - 1 (its positions)
                k, v = cache.scatter(attn.layer_idx, positions, k, v, span)
            hidden = layer.feed_forward(hidden, attn.attend(q, k, v, mask, causal, suffix))
        features = None
        if hidden_layers is not None:
            if len(self.model.layers) in hidden_layers:
                kept[len(self.model.layers)] = self.model.norm(hidden)
            features = torch.cat([kept[i] for i in hidden_layers], dim=-1)
        if last is not None:
            hidden = hidden[torch.arange(batch, device=device), torch.tensor(list(last), device=device)]
        logits = self.lm_head(self.model.norm(hidden))
        return logits if features is None else (logits, features)

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Plain causal LM logits of the AR view (no cache)."""
        return self.forward_ar(input_ids, None, 0)

    def forward_distill(
        self, input_ids: torch.Tensor, anchors: torch.Tensor, block_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training pass for the diffusion view (block-sparse attention, SDPA explicit mask).

        input_ids [B, L] clean text; anchors [B, N] positions (0 < a <= L - K) with K = block_size.
        Each anchor a gets a block [x_a, MASK x (K-1)] at positions a..a+K-1 that attends to the
        AR keys/values of positions < a (exactly what the cache holds at inference) and to its own
        block. Returns (student, teacher) logits, both [B, N, K-1, V]: the diffusion prediction and
        the frozen AR prediction for positions a+1 .. a+K-1.
        """
        k_size = block_size or self.config.block_size
        batch, length = input_ids.shape
        n_anchor = anchors.shape[1]
        device = input_ids.device
        offsets = torch.arange(k_size, device=device)
        positions = (anchors.unsqueeze(-1) + offsets).reshape(batch, -1)  # [B, N*K]
        block_ids = torch.full((batch, n_anchor, k_size), self.config.mask_token_id, device=device)
        block_ids[:, :, 0] = torch.gather(input_ids, 1, anchors)
        block_ids = block_ids.reshape(batch, -1)

        # AR stream (frozen): per-layer K/V of the clean text and the teacher logits
        ar_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        with torch.no_grad():
            hidden = self.model.embed_tokens(input_ids)
            cos, sin = self.model.rotary_emb(hidden, torch.arange(length, device=device).unsqueeze(0))
            for layer in self.model.layers:
                attn = layer.self_attn
                q, k, v = attn.project(layer.input_layernorm(hidden), cos, sin, "")
                ar_kv.append((k, v))
                hidden = layer.feed_forward(hidden, attn.attend(q, k, v, None, True, ""))
            ar_logits = self.lm_head(self.model.norm(hidden))
        rows = (anchors.unsqueeze(-1) + offsets[:-1]).reshape(batch, -1)  # AR row p predicts p+1
        teacher = torch.gather(ar_logits, 1, rows.unsqueeze(-1).expand(-1, -1, ar_logits.shape[-1]))

        # block-sparse mask [B, 1, N*K, L + N*K]: prefix keys < anchor, plus the own block
        block_of_query = torch.arange(n_anchor, device=device).repeat_interleave(k_size)
        prefix_ok = torch.arange(length, device=device).view(1, 1, -1) < anchors.repeat_interleave(k_size, 1).unsqueeze(
            -1
        )
        own_block = (block_of_query.unsqueeze(1) == block_of_query.unsqueeze(0)).unsqueeze(0).expand(batch, -1, -1)
        mask = torch.cat([prefix_ok, own_block], dim=-1).unsqueeze(1)

        hidden = self.model.embed_tokens(block_ids)
        rope = self.model.rotary_emb(hidden, positions)
        for layer, (k_ar, v_ar) in zip(self.model.layers, ar_kv):
            attn = layer.self_attn
            q, k, v = attn.project(layer.input_layernorm(hidden), *rope, "_diff")
            k, v = torch.cat([k_ar, k], dim=2), torch.cat([v_ar, v], dim=2)
            hidden = layer.feed_forward(hidden, attn.attend(q, k, v, mask, False, "_diff"))
        student = self.lm_head(self.model.norm(hidden)).view(batch, n_anchor, k_size, -1)[:, :, :-1]
        return student, teacher.view(batch, n_anchor, k_size - 1, -1)

    def diffusion_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if is_diffusion_param(n)]

    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one token occupies in the cache, over all layers."""
        attn = self.model.layers[0].self_attn
        itemsize = self.model.embed_tokens.weight.element_size()
        return 2 * len(self.model.layers) * attn.num_kv_heads * attn.head_dim * itemsize


def _first_unused_row(path: Path, vocab_rows: int) -> int | None:
    """The mask token for a base checkpoint from its tokenizer files: the tokenizer's own mask
    token when it names one, else len(tokenizer) when the embedding table has padding rows beyond
    it (as Qwen3's has, and as the released checkpoints use), else None."""
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        return None
    tokenizer = read_tokenizer_file(tokenizer_file)
    config_file = path / "tokenizer_config.json"
    if config_file.is_file():
        mask = read_json_object(config_file).get("mask_token")
        mask = mask.get("content") if isinstance(mask, dict) else mask
        mask_id = tokenizer.token_to_id(mask) if mask else None
        if mask_id is not None and mask_id < vocab_rows:
            return mask_id
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    return size if size < vocab_rows else None


def is_diffusion_param(name: str) -> bool:
    return any(f".{suffix}." in name or name.endswith(f".{suffix}") for suffix in DIFF_SUFFIXES)


# ---------------------------------------------------------------------- files
def resolve_model_path(path: str | Path) -> Path:
    """A local directory, or the name of a model in the shipped zoo (e.g. 'tiny-orthrus')."""
    from orthrus.models.zoo_index import zoo_path

    candidate = Path(path).expanduser()
    if candidate.is_dir():
        return candidate
    zoo = zoo_path(str(path))
    if zoo is not None:
        return zoo
    raise UserInputError(
        f"model {str(path)!r} is neither a local directory nor a zoo model; "
        "give a path to a Hugging Face checkpoint directory or a zoo name such as 'tiny-orthrus'."
    )


def read_config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserInputError(f"{path} has no config.json; point the model path at a Hugging Face checkpoint directory.")
    config = read_json_object(config_file)
    if config.get("model_type") not in ("orthrus", "qwen3"):
        raise UserInputError(
            f"{path} holds a {config.get('model_type')!r} model, not Qwen3 or Orthrus; "
            "point the model path at a Qwen3 or Orthrus-Qwen3 checkpoint directory."
        )
    return config


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserInputError(f"{path} has no *.safetensors weights; save the model with safetensors.")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        check_safetensors(file)
        try:
            state.update(load_file(str(file)))
        except Exception as err:  # noqa: BLE001 - a sound header over unreadable data: the user's file
            raise UserInputError(f"{file} cannot be read as safetensors ({err}); re-download or re-save it.") from err
    return state
