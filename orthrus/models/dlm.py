"""Masked-diffusion LMs: a Qwen3 checkpoint run with bidirectional attention, plus remote-code ones.

A *diffusion LM* here is any model that maps a sequence with MASK tokens to logits for every
position (row i predicts the token at position i, no shift), attending bidirectionally, and names
its mask token. Two kinds are supported:

* ``Qwen3DiffusionLM`` (ours, e.g. ``tiny-dlm``): the Qwen3 decoder stack with non-causal attention
  (``attn_implementation`` "sdpa", the default, or "eager", as the Orthrus model).
  Its checkpoint is a plain Qwen3 one (same weight names as ``Qwen3ForCausalLM``) whose
  ``config.json`` adds ``"is_causal": false`` (transformers' own flag for bidirectional decoder
  models) and ``"mask_token_id"``. It can take a K/V cache, which the Fast-dLLM prefix and dual
  caches need: ``forward(ids, start, kv)`` writes the K/V of ``ids`` at positions ``start..`` into
  the preallocated per-layer buffers ``kv`` and attends over the whole buffer.
* ``RemoteDiffusionLM``: any other local Hugging Face checkpoint loaded with
  ``AutoModel.from_pretrained(path, trust_remote_code=True)`` (LLaDA, Dream), only when the caller
  allows remote code. It is called as ``model(input_ids).logits`` and cannot take a cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3MLP,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
    apply_rotary_pos_emb,
)

from orthrus.errors import UserInputError
from orthrus.models.checkpoint import REMOTE_CODE_FIX, check_remote_code, read_json_object
from orthrus.models.modeling_orthrus import (
    HonoursAttnImplementation,
    attention_function,
    build_from_state,
    check_attn_implementation,
    init_qwen3_weights,
    is_diffusion_param,
    load_state_dict,
    resolve_model_path,
)

# one per layer: keys and values [B, Hkv, L, D] over the whole sequence (prompt + generation)
KVBuffers = list[tuple[torch.Tensor, torch.Tensor]]


class DiffusionAttention(nn.Module):
    """Qwen3 attention (same parameter names) without the causal mask."""

    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        self.config = config  # the model's own config object: its _attn_implementation picks the attention
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.q_norm = Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = Qwen3RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | None,
        start: int,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        shape = (*hidden.shape[:-1], -1, self.head_dim)
        q = self.q_norm(self.q_proj(hidden).view(shape)).transpose(1, 2)
        k = self.k_norm(self.k_proj(hidden).view(shape)).transpose(1, 2)
        v = self.v_proj(hidden).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if kv is not None:  # refresh our slots of the buffer, attend over all of it
            keys, values = kv
            keys[:, :, start : start + k.shape[2]] = k
            values[:, :, start : start + v.shape[2]] = v
            k, v = keys, values
        gqa = self.num_heads != self.num_kv_heads
        out = attention_function(self.config._attn_implementation)(q, k, v, mask, False, self.head_dim**-0.5, gqa)
        return self.o_proj(out.transpose(1, 2).reshape(*hidden.shape[:-1], -1))


class DiffusionDecoderLayer(nn.Module):
    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        self.self_attn = DiffusionAttention(config)
        self.mlp = Qwen3MLP(config)
        self.input_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden, cos, sin, kv, start, mask=None) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), cos, sin, kv, start, mask)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class DiffusionBackbone(nn.Module):
    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(DiffusionDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config=config)


class Qwen3DiffusionLM(HonoursAttnImplementation, PreTrainedModel):
    """A Qwen3 decoder run bidirectionally as a masked-diffusion LM (weight names of Qwen3ForCausalLM)."""

    config_class = Qwen3Config
    base_model_prefix = "model"
    _no_split_modules = ["DiffusionDecoderLayer"]
    _supports_sdpa = True
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    supports_kv_cache = True
    supports_padding = True  # forward(pad=...) hides left padding: a batch of ragged prompts

    def __init__(self, config: Qwen3Config) -> None:
        super().__init__(config)
        self.model = DiffusionBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        init_qwen3_weights(module, self.config.initializer_range)

    @property
    def mask_token_id(self) -> int | None:
        value = getattr(self.config, "mask_token_id", None)
        return None if value is None else int(value)

    def forward(
        self,
        input_ids: torch.Tensor,
        start: int = 0,
        kv: KVBuffers | None = None,
        rows: slice | None = None,
        pad: list[int] | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V] for ``input_ids`` [B, T] at positions ``start .. start+T-1``.

        Without ``kv`` the tokens attend to each other only (the whole sequence must be given).
        With ``kv`` (from ``new_kv``) their K/V are written into the buffers at ``start..`` and
        attention runs over the whole buffer: the other slots hold K/V from earlier passes.
        ``rows`` limits the LM head to those rows of the input (the logits of the others are unused).
        ``pad`` (a batch of left-padded rows): row r's first ``pad[r]`` slots are padding, hidden from
        every query, and its real tokens take positions 0, 1, ... as if the row were alone.
        """
        hidden = self.model.embed_tokens(input_ids)
        device = input_ids.device
        slots = torch.arange(start, start + input_ids.shape[1], device=device).unsqueeze(0)
        mask = None
        if pad is not None and any(pad):
            shift = torch.tensor(pad, device=device).unsqueeze(1)  # [B, 1]
            slots = (slots - shift).clamp_min(0)  # padding slots get position 0; nothing attends to them
            width = kv[0][0].shape[2] if kv is not None else start + input_ids.shape[1]
            mask = (torch.arange(width, device=device).unsqueeze(0) >= shift)[:, None, None, :]  # [B, 1, 1, Lk]
        cos, sin = self.model.rotary_emb(hidden, slots)
        for i, layer in enumerate(self.model.layers):
            hidden = layer(hidden, cos, sin, None if kv is None else kv[i], start, mask)
        if rows is not None:
            hidden = hidden[:, rows]
        return self.lm_head(self.model.norm(hidden))

    def new_kv(self, length: int, batch: int = 1) -> KVBuffers:
        """Empty per-layer K/V buffers for a sequence of ``length`` tokens."""
        attn = self.model.layers[0].self_attn
        weight = self.model.embed_tokens.weight
        shape = (batch, attn.num_kv_heads, length, attn.head_dim)
        return [(weight.new_zeros(shape), weight.new_zeros(shape)) for _ in range(len(self.model.layers))]

    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one position occupies in a cache, over all layers."""
        attn = self.model.layers[0].self_attn
        itemsize = self.model.embed_tokens.weight.element_size()
        return 2 * len(self.model.layers) * attn.num_kv_heads * attn.head_dim * itemsize

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_weights(
        cls,
        config_dict: dict[str, Any],
        state: dict[str, torch.Tensor],
        dtype: torch.dtype | None = None,
        attn_implementation: str | None = None,
    ) -> Qwen3DiffusionLM:
        """Build from a Qwen3 config dict and a Qwen3ForCausalLM-style state dict (tensors are reused)."""
        config_dict = {k: v for k, v in config_dict.items() if k not in ("model_type", "architectures")}
        config = Qwen3Config(**config_dict)
        config.is_causal = False
        config._attn_implementation = check_attn_implementation(attn_implementation, cls.__name__)
        state = {k: v for k, v in state.items() if not is_diffusion_param(k)}
        model = build_from_state(cls, config, state, dtype, "Qwen3")
        return model.eval()

    @classmethod
    def from_causal_lm(cls, model: nn.Module, mask_token_id: int | None = None) -> Qwen3DiffusionLM:
        """The same weights (shared tensors) run bidirectionally: to adapt a causal Qwen3 LM into a DLM.
        The attention implementation is the causal model's own."""
        config_dict = model.config.to_dict()
        if mask_token_id is not None:
            config_dict["mask_token_id"] = mask_token_id
        attn = getattr(model.config, "_attn_implementation", None)
        dlm = cls.from_weights(config_dict, dict(model.state_dict()), attn_implementation=attn)
        return dlm.to(next(model.parameters()).device)

    def save_dlm(self, out_dir: str | Path, dtype: torch.dtype | None = torch.float16) -> None:
        """Save as a Qwen3 checkpoint plus ``is_causal: false`` and ``mask_token_id`` (weights in ``dtype``)."""
        out_dir = Path(out_dir)
        state = {k: v if dtype is None else v.to(dtype) for k, v in self.state_dict().items()}
        if self.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # tied to the embeddings: stored once
        self.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
        config = json.loads((out_dir / "config.json").read_text())
        config.update(model_type="qwen3", architectures=["Qwen3DiffusionLM"], is_causal=False, dtype="float32")
        (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


class RemoteDiffusionLM(nn.Module):
    """A remote-code diffusion LM (LLaDA, Dream) behind the same call; no K/V cache.

    Dream keeps its AR parent's shifted outputs (row i predicts token i+1); it is shifted back here
    so that, as for every diffusion LM in this package, row i predicts token i.
    """

    supports_kv_cache = False
    supports_padding = False

    def __init__(self, model: nn.Module, mask_token_id: int | None) -> None:
        super().__init__()
        self.inner = model
        self.config = model.config
        self._mask_token_id = mask_token_id
        self.shifted = str(getattr(model.config, "model_type", "")).lower() == "dream"

    @property
    def mask_token_id(self) -> int | None:
        return self._mask_token_id

    def forward(
        self,
        input_ids: torch.Tensor,
        start: int = 0,
        kv: KVBuffers | None = None,
        rows: slice | None = None,
        pad: list[int] | None = None,
    ) -> torch.Tensor:
        if kv is not None or start != 0:
            raise UserInputError(f"{type(self.inner).__name__} cannot take a K/V cache; use cache 'none'.")
        if pad is not None and any(pad):
            raise ValueError(f"{type(self.inner).__name__} takes no padding mask (supports_padding is False).")
        logits = self.inner(input_ids).logits
        if self.shifted:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits if rows is None else logits[:, rows]


def load_diffusion_lm(
    path: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
) -> Qwen3DiffusionLM | RemoteDiffusionLM:
    """A diffusion LM from a zoo name or a local directory (see the module docstring for what qualifies).

    ``attn_implementation`` is one of SUPPORTED_ATTN_IMPLEMENTATIONS; a remote-code model gets it
    passed to its own ``from_pretrained``."""
    from orthrus.models import check_device, parse_dtype

    torch_dtype, torch_device = parse_dtype(dtype), check_device(device)
    attn_implementation = check_attn_implementation(attn_implementation)
    resolved = resolve_model_path(path)
    config_file = resolved / "config.json"
    if not config_file.is_file():
        raise UserInputError(f"{resolved} has no config.json; point the model path at a Hugging Face checkpoint.")
    check_remote_code(resolved, trust_remote_code)  # our refusal, before transformers could ask on stdin
    config = read_json_object(config_file)
    model_type = config.get("model_type")
    if model_type == "qwen3":
        if config.get("is_causal", True) or config.get("mask_token_id") is None:
            raise UserInputError(
                f"{path} is a causal Qwen3 LM, not a masked-diffusion one (its config.json needs "
                '"is_causal": false and "mask_token_id"); use a diffusion checkpoint such as tiny-dlm.'
            )
        model: Qwen3DiffusionLM | RemoteDiffusionLM = Qwen3DiffusionLM.from_weights(
            config, load_state_dict(resolved), torch_dtype, attn_implementation
        )
    elif not trust_remote_code:
        raise UserInputError(
            f"{path} holds a {model_type!r} model, which needs code of its own to run as a diffusion LM; "
            f"{REMOTE_CODE_FIX}."
        )
    else:
        from transformers import AutoModel

        inner = AutoModel.from_pretrained(
            str(resolved), trust_remote_code=True, dtype=torch_dtype, attn_implementation=attn_implementation
        )
        model = RemoteDiffusionLM(inner.eval(), config.get("mask_token_id"))
    model.name_or_path = str(path)
    return model.to(torch_device)


def as_diffusion_lm(model: nn.Module) -> Qwen3DiffusionLM | RemoteDiffusionLM:
    """The diffusion-LM view of a loaded model, sharing its weights.

    Accepts a diffusion LM as is, or a Qwen3/Orthrus causal-LM object loaded from a diffusion
    checkpoint (``config.is_causal`` false, e.g. ``load_causal_lm('tiny-dlm')``).
    """
    if isinstance(model, (Qwen3DiffusionLM, RemoteDiffusionLM)):
        return model
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "is_causal", True) is False:
        if getattr(config, "lm_head_size", None):
            raise UserInputError(
                "this diffusion checkpoint was loaded with an extra mask row; load it with "
                "orthrus.models.dlm.load_diffusion_lm instead."
            )
        return Qwen3DiffusionLM.from_causal_lm(model)
    raise UserInputError(
        f"{type(model).__name__} is a causal LM, not a masked-diffusion LM; engines 'dlm' and 'fast_dllm' need "
        "a diffusion checkpoint such as tiny-dlm (orthrus.models.dlm.load_diffusion_lm)."
    )
