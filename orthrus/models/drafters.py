"""The drafters conditioned on a target's hidden states, by kind: ``dflash`` (orthrus.models.dflash) and
``eagle3`` (orthrus.models.eagle3). One place that knows, per kind, how to read a config, check it
against a target and load it, so that the engines, the suite's checks and the harness's loader ask
here instead of knowing the kinds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from orthrus.errors import UserInputError
from orthrus.models.dflash import DFlashDrafter, check_dflash_target, load_dflash, write_random_dflash
from orthrus.models.drafting import read_drafter_config
from orthrus.models.eagle3 import Eagle3Drafter, check_eagle3_target, load_eagle3, write_random_eagle3

DRAFTER_KINDS = ("dflash", "eagle3")
_CHECKS: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "dflash": check_dflash_target,
    "eagle3": check_eagle3_target,
}
_LOADERS: dict[str, Callable[..., Any]] = {"dflash": load_dflash, "eagle3": load_eagle3}
_CLASSES: dict[str, type] = {"dflash": DFlashDrafter, "eagle3": Eagle3Drafter}
_WRITERS: dict[str, Callable[..., Path]] = {"dflash": write_random_dflash, "eagle3": write_random_eagle3}
NAMES = {"dflash": "DFlash", "eagle3": "EAGLE-3"}


def _kind(kind: str) -> str:
    if kind not in DRAFTER_KINDS:
        raise ValueError(f"unknown drafter kind {kind!r}; one of {DRAFTER_KINDS}")
    return kind


def check_drafter_config(kind: str, config: dict[str, Any], target: dict[str, Any]) -> None:
    """A drafter config of ``kind`` that lacks a required field or does not fit ``target`` (a config
    dict) raises one sentence naming the field."""
    _CHECKS[_kind(kind)](config, target)


def is_drafter(kind: str, obj: Any) -> bool:
    return isinstance(obj, _CLASSES[_kind(kind)])


def load_drafter(
    kind: str,
    path: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> Any:
    """A drafter of ``kind`` from a checkpoint directory (or zoo name) in a released layout."""
    from orthrus.models import check_device, parse_dtype

    return _LOADERS[_kind(kind)](
        path,
        dtype=parse_dtype(dtype),
        device=check_device(device),
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
    )


def read_config(kind: str, path: str | Path, trust_remote_code: bool = True) -> dict[str, Any]:
    """config.json of a drafter directory (read only; nothing runs)."""
    return read_drafter_config(path, trust_remote_code, NAMES[_kind(kind)])[1]


def write_random_drafter(kind: str, target: dict[str, Any], out: str | Path, **options: Any) -> Path:
    """A random-weight drafter of ``kind`` for ``target`` (its config dict), in a released layout, at ``out``
    (options: see ``write_random_dflash`` / ``write_random_eagle3``)."""
    return _WRITERS[_kind(kind)](target, out, **options)


def target_config_of(path: str | Path) -> dict[str, Any]:
    """config.json of a target checkpoint directory (for ``write_random_drafter``)."""
    from orthrus.models.checkpoint import read_json_object
    from orthrus.models.modeling_orthrus import resolve_model_path

    config_file = Path(resolve_model_path(path)) / "config.json"
    if not config_file.is_file():
        raise UserInputError(f"{config_file.parent} has no config.json; point it at the target's checkpoint directory.")
    return read_json_object(config_file)
