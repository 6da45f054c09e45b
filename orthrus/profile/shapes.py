"""Published Qwen3 architectures as random-weight Orthrus models, and the shape of any model.

``qwen3-shape:8b`` is the Qwen3-8B architecture (from the official ``Qwen/Qwen3-*`` config.json
files) as our dual-view ``OrthrusForCausalLM`` with random weights, built directly on the device
in the requested dtype: no download, and no CPU-side initialisation of an 8B model (the modules
are created on the meta device and materialised with ``to_empty``). Latency depends on the shape,
not on the values.

Official figures (Hugging Face ``Qwen/Qwen3-<size>`` config.json; parameter counts are the hub's
safetensors totals, which for 0.6B and 1.7B store the tied LM head a second time):

| size | layers | hidden | Q/KV heads | intermediate | tied | hub safetensors total | model card |
|------|--------|--------|------------|--------------|------|-----------------------|------------|
| 0.6b | 28     | 1024   | 16/8       | 3072         | yes  | 751,632,384 (596,049,920 unique) | 0.6B |
| 1.7b | 28     | 2048   | 16/8       | 6144         | yes  | 2,031,739,904 (1,720,574,976 unique) | 1.7B |
| 4b   | 36     | 2560   | 32/8       | 9728         | yes  | 4,022,468,096         | 4.0B |
| 8b   | 36     | 4096   | 32/8       | 12288        | no   | 8,190,735,360         | 8.2B |
| 14b  | 40     | 5120   | 40/8       | 17408        | no   | 14,768,307,200        | 14.8B |
| 32b  | 64     | 5120   | 64/8       | 25600        | no   | 32,762,123,264        | 32.8B |

All: head_dim 128, vocab 151936, max_position_embeddings 40960, rope_theta 1e6, rms_norm_eps 1e-6,
no attention bias. The diffusion view adds Q/K/V/O twins per layer (the released checkpoints'
``*_diff`` weights), block size 32 and mask token 151669 (= len(tokenizer)) as released.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orthrus.errors import UserInputError
from orthrus.models import OrthrusConfig, OrthrusForCausalLM, is_diffusion_param
from orthrus.models.modeling_orthrus import Qwen3RMSNorm, Qwen3RotaryEmbedding

SHAPE_PREFIX = "qwen3-shape:"
QWEN3_VOCAB = 151936
QWEN3_MASK_TOKEN = 151669  # len(tokenizer) of Qwen3, the released Orthrus checkpoints' mask row
RELEASED_BLOCK_SIZE = 32
RANDOM_POOL = 1_000_003  # a prime: tiled random values do not line up with rows, and every stride walks all of it
RANDOM_SEED = 0  # the pool's seed: a shape's random weights are the same in every process on a device type


@dataclass(frozen=True)
class Qwen3Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    tied_embeddings: bool
    head_dim: int = 128
    vocab: int = QWEN3_VOCAB
    max_positions: int = 40960


QWEN3_SHAPES: dict[str, Qwen3Shape] = {
    "0.6b": Qwen3Shape(28, 1024, 16, 8, 3072, True),
    "1.7b": Qwen3Shape(28, 2048, 16, 8, 6144, True),
    "4b": Qwen3Shape(36, 2560, 32, 8, 9728, True),
    "8b": Qwen3Shape(36, 4096, 32, 8, 12288, False),
    "14b": Qwen3Shape(40, 5120, 40, 8, 17408, False),
    "32b": Qwen3Shape(64, 5120, 64, 8, 25600, False),
}
# Not published: miniatures of the same layout (tied and untied head, a smaller draft), small enough for
# a CPU, for rehearsing on a CPU what runs the published shapes on a GPU (scripts/gpu_check.py
# --rehearse-on-cpu). Their vocabulary holds the zoo tokenizer's 4096 ids plus the mask row beyond them.
MINIATURE_SHAPES: dict[str, Qwen3Shape] = {
    "tiny": Qwen3Shape(2, 64, 4, 2, 128, True, head_dim=16, vocab=4224, max_positions=4096),
    "tiny-untied": Qwen3Shape(2, 64, 4, 2, 128, False, head_dim=16, vocab=4224, max_positions=4096),
    "tiny-draft": Qwen3Shape(1, 32, 2, 1, 64, True, head_dim=16, vocab=4224, max_positions=4096),
}
# what the shape of a model means for latency: compared between a profile and a run
SHAPE_KEYS = ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab", "tied_embeddings")


def is_shape_spec(spec: str) -> bool:
    return str(spec).startswith(SHAPE_PREFIX)


def qwen3_shape(spec: str) -> Qwen3Shape:
    """The published (or miniature) shape for ``qwen3-shape:NAME`` (or plain NAME)."""
    name = str(spec).removeprefix(SHAPE_PREFIX).lower()
    known_shapes = {**QWEN3_SHAPES, **MINIATURE_SHAPES}
    if name not in known_shapes:
        known = ", ".join(SHAPE_PREFIX + n for n in QWEN3_SHAPES)
        raise UserInputError(f"unknown model shape {spec!r}; use one of {known}.")
    return known_shapes[name]


def shape_config(spec: str) -> OrthrusConfig:
    """The Orthrus config of a published Qwen3 shape (dual view, released block size and mask token)."""
    shape = qwen3_shape(spec)
    published_vocab = shape.vocab == QWEN3_VOCAB  # a smaller (test) vocabulary gets ids inside it
    config = OrthrusConfig(
        block_size=RELEASED_BLOCK_SIZE,
        mask_token_id=QWEN3_MASK_TOKEN if published_vocab else shape.vocab - 1,
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        intermediate_size=shape.intermediate,
        tie_word_embeddings=shape.tied_embeddings,
        max_position_embeddings=shape.max_positions,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_theta": 1_000_000.0, "rope_type": "default"},
        attention_bias=False,
        bos_token_id=151643 if published_vocab else 0,
        eos_token_id=151645 if published_vocab else 0,
    )
    config._attn_implementation = "sdpa"
    return config


def meta_model(spec: str) -> OrthrusForCausalLM:
    """The model of a shape on the meta device: parameter shapes only, no memory (for counting)."""
    config = shape_config(spec)
    with torch.device("meta"):
        model = OrthrusForCausalLM(config)
    return model


def build_shape_model(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """A random-weight dual-view model of a published Qwen3 shape, materialised on ``device``.

    Built on the meta device, cast there, then allocated once on the device with ``to_empty`` and
    filled in place, so an 8B model in bf16 takes seconds on a GPU and never passes through the
    host. Every matrix is tiled from one seeded pool of normal(0, 0.02) values (a copy, memory
    bound: no random draw per element), but each walks the pool in its own order (``_pool_walk``:
    an offset and a stride from the tensor's name), so no two tensors hold the same values: the
    diffusion view's Q/K/V/O differ from the AR ones, every layer differs from the others and an
    untied ``lm_head`` differs from ``embed_tokens``. Norms are 1.
    """
    config = shape_config(spec)
    model = meta_model(spec).to(dtype)
    model = model.to_empty(device=device)
    with torch.no_grad():
        generator = torch.Generator(device=device).manual_seed(RANDOM_SEED)
        pool = torch.randn(RANDOM_POOL, generator=generator, device=device, dtype=dtype) * config.initializer_range
        doubled = torch.cat([pool, pool])
        for name, module in model.named_modules():
            if isinstance(module, Qwen3RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                _fill_from_pool(module.weight, _pool_walk(doubled, f"{name}.weight"))
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb = Qwen3RotaryEmbedding(config=config).to(device)  # its buffers were on meta
    model.requires_grad_(False)
    model.name_or_path = f"{SHAPE_PREFIX}{str(spec).removeprefix(SHAPE_PREFIX).lower()}"
    return model.eval()


def _pool_walk(doubled: torch.Tensor, name: str) -> torch.Tensor:
    """The pool in the order one tensor reads it: from an offset, every stride-th value (mod the pool's
    prime size, so every stride visits every value once). Offset and stride come from the tensor's
    name (crc32, the same in every process), so two tensors never share a sequence, nor are they
    shifted copies of one another. ``doubled`` is the pool twice over, so that the index, built from
    two short progressions (i = q x 1024 + r, each term reduced mod the size), needs no reduction
    over the pool's length: one add and one gather of the pool's size per tensor."""
    size = doubled.numel() // 2
    offset = zlib.crc32(name.encode()) % size
    stride = 1 + zlib.crc32(f"{name}/stride".encode()) % (size - 1)
    width = 1024  # every product below stays under 2^31: int32 throughout
    device = doubled.device
    r = torch.arange(width, device=device, dtype=torch.int32) * stride % size
    q = (torch.arange(-(-size // width), device=device, dtype=torch.int32) * (width * stride % size) + offset) % size
    index = (q[:, None] + r[None, :]).view(-1)[:size]  # < 2 x size
    return doubled.index_select(0, index)


def _fill_from_pool(weight: torch.Tensor, walk: torch.Tensor) -> None:
    """Tile a walk of the pool over a weight: one broadcast copy (memory bound)."""
    flat = weight.view(-1)
    size = walk.numel()
    full = flat.numel() // size
    if full:
        flat[: full * size].view(full, size).copy_(walk.expand(full, size))
    rest = flat.numel() - full * size
    if rest:
        flat[full * size :].copy_(walk[:rest])


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Unique parameters (a tied LM head counted once): the AR model's and the diffusion view's."""
    ar = diffusion = 0
    for name, param in model.named_parameters():  # named_parameters() yields a tied weight once
        if is_diffusion_param(name):
            diffusion += param.numel()
        else:
            ar += param.numel()
    return {"params_ar": ar, "params_diffusion": diffusion}


def model_shape(config: Any) -> dict[str, Any]:
    """The latency-relevant shape of a Qwen3/Orthrus config (plain dict, JSON-ready)."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    heads = int(get("num_attention_heads"))
    hidden = int(get("hidden_size"))
    shape = {
        "layers": int(get("num_hidden_layers")),
        "hidden": hidden,
        "heads": heads,
        "kv_heads": int(get("num_key_value_heads") or heads),
        "head_dim": int(get("head_dim") or hidden // heads),
        "intermediate": int(get("intermediate_size")),
        "vocab": int(get("vocab_size")),
        "tied_embeddings": bool(get("tie_word_embeddings", False)),
    }
    shape["name"] = shape_name(shape)
    return shape


def shape_name(shape: dict[str, Any]) -> str:
    """``qwen3-shape:NAME`` when the shape is a published one (or a miniature), else a compact description."""
    for name, known in {**QWEN3_SHAPES, **MINIATURE_SHAPES}.items():
        if all(shape.get(key) == getattr(known, key) for key in SHAPE_KEYS):
            return SHAPE_PREFIX + name
    return (
        f"{shape['layers']}L h{shape['hidden']} {shape['heads']}/{shape['kv_heads']} heads "
        f"ffn{shape['intermediate']} vocab{shape['vocab']}"
    )


def same_shape(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return a is not None and b is not None and all(a.get(key) == b.get(key) for key in SHAPE_KEYS)


def spec_shape(spec: str) -> dict[str, Any] | None:
    """The shape of a model SPEC (shape name, zoo name or local checkpoint) without loading weights;
    None when the checkpoint is not on this machine."""
    if is_shape_spec(spec):
        return model_shape(shape_config(spec))
    from orthrus.models import read_config, resolve_model_path

    try:
        return model_shape(read_config(resolve_model_path(spec)))
    except UserInputError:
        return None


def load_model(spec: str, device: str = "cpu", dtype: str | torch.dtype = "float32") -> Any:
    """A dual-view model for SPEC: ``qwen3-shape:NAME`` (random weights), a zoo name or a checkpoint."""
    from orthrus.models import check_device, load_causal_lm
    from orthrus.models import parse_dtype as to_dtype

    if is_shape_spec(spec):
        qwen3_shape(spec)  # a bad name fails before any allocation
        return build_shape_model(spec, check_device(device), to_dtype(dtype))
    return load_causal_lm(spec, dtype=dtype, device=device)


def write_shape_checkpoint(spec: str, directory: str | Path, device: str = "cpu", dtype: str = "bfloat16") -> Path:
    """Save a random-weight model of a published shape as an Orthrus checkpoint directory (config.json
    + model.safetensors), so that suites, which load checkpoints, can run that shape."""
    from orthrus.models import parse_dtype as to_dtype

    return save_shape_checkpoint(build_shape_model(spec, device, to_dtype(dtype)), directory)


def save_shape_checkpoint(model: Any, directory: str | Path) -> Path:
    """Save a model built by ``build_shape_model`` as an Orthrus checkpoint directory (a tied LM head
    stored once, as published)."""
    import json

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(directory / "model.safetensors"))
    config = model.config.to_dict()
    config["architectures"] = ["OrthrusForCausalLM"]
    (directory / "config.json").write_text(json.dumps(config, indent=2, default=str))
    return directory
