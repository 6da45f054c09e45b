"""Models: the Orthrus dual-view LM, loading helpers and the shipped zoo."""

from __future__ import annotations

from pathlib import Path

import torch

from orthrus.errors import UserInputError
from orthrus.models.checkpoint import check_remote_code
from orthrus.models.modeling_orthrus import (
    DEFAULT_BLOCK_SIZE,
    SUPPORTED_ATTN_IMPLEMENTATIONS,
    OrthrusConfig,
    OrthrusForCausalLM,
    is_diffusion_param,
    read_config,
    resolve_model_path,
)
from orthrus.models.zoo_index import ZOO_NAMES, zoo_path

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "SUPPORTED_ATTN_IMPLEMENTATIONS",
    "OrthrusConfig",
    "OrthrusForCausalLM",
    "ZOO_NAMES",
    "is_diffusion_param",
    "load_causal_lm",
    "resolve_model_path",
    "zoo_path",
]

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UserInputError(f"dtype {name!r} is not supported; use one of float32, bfloat16, float16.")
    return DTYPES[name]


def check_device(device: str) -> torch.device:
    """The torch device for a user's setting, with a clear error when it is not available."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device {device!r} was asked for but this machine has no CUDA GPU; use device 'cpu'.")
    return dev


def load_causal_lm(
    path: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    tokenizer: str | Path | None = None,
) -> OrthrusForCausalLM:
    """An Orthrus checkpoint as is, or a plain Qwen3 checkpoint with a fresh (copied) diffusion view.
    The one causal loader: the command line and the harness both load through it.

    ``attn_implementation`` (one of SUPPORTED_ATTN_IMPLEMENTATIONS) applies to both views. A
    checkpoint that declares its own code (``auto_map``) is refused unless ``trust_remote_code``;
    its code is never run here either way (the model is built as Qwen3). ``tokenizer``: the
    directory of the model's tokenizer files when they live apart from it (a fresh view's mask token
    is the one they name, see ``OrthrusForCausalLM.from_base``)."""
    torch_dtype, torch_device = parse_dtype(dtype), check_device(device)
    resolved = resolve_model_path(path)
    check_remote_code(resolved, trust_remote_code)
    config = read_config(resolved)
    has_view = config.get("model_type") == "orthrus" or "mask_token_id" in config and "block_size" in config
    options = {"dtype": torch_dtype, "attn_implementation": attn_implementation, "trust_remote_code": trust_remote_code}
    if has_view:
        model = OrthrusForCausalLM.from_pretrained(resolved, **options)
    else:
        model = OrthrusForCausalLM.from_base(resolved, block_size=DEFAULT_BLOCK_SIZE, tokenizer=tokenizer, **options)
    model.name_or_path = str(path)
    return model.to(torch_device)
