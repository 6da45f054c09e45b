"""What the drafters conditioned on a target's hidden states share (DFlash, EAGLE-3): reading their
files, building them from a state dict, the slot layout of their own K/V cache, RoPE on one tensor.

A drafter keeps its own K/V cache (``orthrus.models.kv_cache.KVCache``, preallocated): row r's
committed context occupies slots ``[0, length_r)``, the caller keeps the lengths, and a pass writes
new context at ``[length_r, ...)`` and drafts past it (those slots are overwritten by the next pass, as
in the target's cache). Rows of a batch bring ragged amounts of new context to one pass; the batch is
padded to the longest, and the padding is written to the cache's last slot, the *spill slot*, which is
never visible to any query (every pass attends only to slots below a row's own end, and a cache is
sized one slot larger than any row can reach).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from orthrus.errors import UserInputError
from orthrus.models.checkpoint import check_remote_code, read_json_object
from orthrus.models.modeling_orthrus import load_state_dict, resolve_model_path


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on x [B, H, T, D] with cos and sin [B, T, D] (transformers' rotation, one tensor at a time:
    a drafter's queries and keys sit at different positions)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def spill_layout(
    starts: Sequence[int], counts: Sequence[int], width: int, spill: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row r's ``counts[r]`` new entries at positions (= slots) starts[r] .. in a batch padded to ``width``:
    (slots [B, width], positions [B, width], real [B, width]); padding goes to the ``spill`` slot at
    position 0."""
    offsets = torch.arange(width, device=device).unsqueeze(0)
    real = offsets < torch.tensor(list(counts), device=device).unsqueeze(1)
    positions = torch.where(real, torch.tensor(list(starts), device=device).unsqueeze(1) + offsets, 0)
    slots = torch.where(real, positions, spill)
    return slots, positions, real


# ---------------------------------------------------------------------- files
def read_drafter_config(path: str | Path, trust_remote_code: bool, what: str) -> tuple[Path, dict[str, Any]]:
    """(directory, config.json) of a drafter checkpoint: a local directory or a zoo name. One that
    declares its own code is refused unless ``trust_remote_code`` (its code is never run either way:
    the drafter is built from the published layout)."""
    directory = Path(resolve_model_path(path))
    check_remote_code(directory, trust_remote_code)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise UserInputError(f"{directory} has no config.json; point the draft model at a {what} drafter directory.")
    return directory, read_json_object(config_file)


def build_drafter(
    module: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype | None, layout: str, keep: tuple = ()
) -> None:
    """Assign ``state`` to ``module`` (built on the meta device) in ``dtype``; names that differ from the
    layout are one sentence. Tensors whose name is in ``keep`` keep their own dtype (index maps)."""
    target = dtype or next(v.dtype for v in state.values() if v.is_floating_point())
    state = {k: (v if k in keep else v.to(target)) for k, v in state.items()}
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise UserInputError(
            f"drafter weights do not match the {layout} layout (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}); check that the directory holds a {layout} drafter."
        )


def load_drafter_state(directory: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(directory)


def init_random(module: nn.Module, std: float, seed: int) -> None:
    """Qwen3-style random weights (normal linear weights, unit norms) drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
            else:
                param.zero_()


def save_drafter(out: str | Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    """Write config.json and model.safetensors (contiguous, untied copies) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(out / "model.safetensors"))
    return out


# ---------------------------------------------------------------------- the target a drafter reads
def target_facts(config: dict[str, Any]) -> dict[str, int | None]:
    """What a drafter must match in its target's config: hidden size, layers, vocabulary (the rows of
    its LM head: a mask row an Orthrus view added is not part of the vocabulary)."""

    def number(key: str) -> int | None:
        value = config.get(key)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    return {
        "hidden_size": number("hidden_size"),
        "num_hidden_layers": number("num_hidden_layers"),
        "vocab_size": number("lm_head_size") or number("vocab_size"),
    }


def config_int(config: dict[str, Any], key: str, where: str, what: str, default: Any = ...) -> Any:
    """An integer field of a drafter config (``where`` names it in the sentence); missing without a
    default, or not an integer, is one sentence."""
    value = config.get(key, default)
    if value is ...:
        raise UserInputError(
            f"the {what} config has no {where}; it is required (a {what} checkpoint as released has it)."
        )
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise UserInputError(f"the {what} config's {where} must be an integer, got {value!r}.")
    return value


def layer_ids(value: Any, where: str, what: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in value)
    ):
        raise UserInputError(f"the {what} config's {where} must be a non-empty list of layer indices, got {value!r}.")
    return tuple(value)


def check_layer_ids(ids: Sequence[int], layers: int | None, where: str, what: str) -> None:
    """Every id names a layer of the target (0 .. layers - 1)."""
    if layers is None:
        return
    bad = [i for i in ids if not 0 <= i < layers]
    if bad:
        raise UserInputError(
            f"the {what} config's {where} names layer {bad[0]}, but the target has {layers} layers (0..{layers - 1}); "
            "use a drafter trained for this target."
        )
