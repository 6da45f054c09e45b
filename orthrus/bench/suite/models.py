"""``models:``: each key names a checkpoint directory or a zoo model, with its dtype, device and
attention implementation. A known zoo model that is not built yet is not an error here: its cells
fail with the command that builds it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orthrus.bench.suite.checks import (
    as_bool,
    as_choice,
    as_device,
    as_mapping,
    as_str,
    check_keys,
    fail,
    join,
    resolve_file,
)
from orthrus.bench.suite.spec import DTYPE_NAMES, MODEL_KEYS, ModelSpec
from orthrus.models import SUPPORTED_ATTN_IMPLEMENTATIONS
from orthrus.models.zoo_index import ZOO_DIR, ZOO_NAMES, zoo_path


def validate_models(value: Any, base_dir: Path | None) -> dict[str, ModelSpec]:
    if value is None:
        raise fail("models", "missing; name at least one model, e.g. models: {base: {path: tiny-base}}.")
    models = as_mapping(value, "models", "a mapping of model keys to checkpoints")
    if not models:
        raise fail("models", "is empty; name at least one model, e.g. models: {base: {path: tiny-base}}.")
    specs = {}
    for key, spec in models.items():
        path = join("models", str(key))
        if isinstance(spec, str):
            spec = {"path": spec}
        spec = as_mapping(spec, path, "a mapping with at least 'path' (or just the path)")
        check_keys(spec, MODEL_KEYS, path)
        if "path" not in spec:
            raise fail(f"{path}.path", "missing; give a zoo name (e.g. tiny-base) or a checkpoint directory.")
        model_path = as_str(spec["path"], f"{path}.path")
        dtype = as_choice(spec.get("dtype", "float32"), f"{path}.dtype", DTYPE_NAMES)
        device = as_device(spec.get("device", "cpu"), f"{path}.device")
        attn = _attn_implementation(spec.get("attn_implementation", "sdpa"), path)
        trust = as_bool(spec.get("trust_remote_code", False), f"{path}.trust_remote_code")
        resolved, missing, max_positions = _resolve_model(model_path, f"{path}.path", base_dir)
        tokenizer = None
        if spec.get("tokenizer") is not None:
            tokenizer = _resolve_tokenizer(
                as_str(spec["tokenizer"], f"{path}.tokenizer"), f"{path}.tokenizer", base_dir
            )
        specs[str(key)] = ModelSpec(
            key=str(key),
            path=model_path,
            resolved=resolved,
            dtype=dtype,
            device=device,
            attn_implementation=attn,
            trust_remote_code=trust,
            tokenizer=tokenizer,
            max_positions=max_positions,
            missing_reason=missing,
        )
    return specs


def _attn_implementation(value: Any, path: str) -> str:
    """Only the implementations the models' attention path honours: a setting that changes nothing is refused."""
    name = as_str(value, f"{path}.attn_implementation")
    if name not in SUPPORTED_ATTN_IMPLEMENTATIONS:
        raise fail(
            f"{path}.attn_implementation",
            f"{name!r} is not an attention implementation these models run; use one of "
            f"{', '.join(SUPPORTED_ATTN_IMPLEMENTATIONS)}.",
        )
    return name


def _resolve_model(text: str, path: str, base_dir: Path | None) -> tuple[Path | None, str | None, int | None]:
    """(directory, why it is missing, max_position_embeddings)."""
    candidate = resolve_file(text, base_dir)
    if candidate.is_dir():
        directory = candidate
    elif text in ZOO_NAMES:
        directory = zoo_path(text)
        if directory is None:
            step = text.removeprefix("tiny-")
            return None, f"zoo model {text!r} is not built yet; build it with `python -m orthrus train {step}`", None
    else:
        raise fail(
            path,
            f"{text!r} is neither a checkpoint directory nor a zoo model; give a directory holding config.json "
            f"or one of {', '.join(ZOO_NAMES)}.",
        )
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise fail(path, f"{str(directory)!r} has no config.json; point it at a Hugging Face checkpoint directory.")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise fail(path, f"{config_file} is not valid JSON ({err.msg}); fix or re-download the file.") from err
    weights = list(directory.glob("*.safetensors")) + list(directory.glob("*.bin"))
    if not weights:
        raise fail(path, f"{str(directory)!r} has no weights (*.safetensors); point it at a complete checkpoint.")
    max_positions = config.get("max_position_embeddings")
    return directory, None, int(max_positions) if isinstance(max_positions, int) else None


def _resolve_tokenizer(text: str, path: str, base_dir: Path | None) -> Path:
    candidate = resolve_file(text, base_dir)
    if not candidate.is_dir() and (ZOO_DIR / text).is_dir():
        candidate = ZOO_DIR / text
    if not candidate.is_dir() or not has_tokenizer_files(candidate):
        raise fail(path, f"{text!r} is not a directory with tokenizer files (tokenizer.json or tokenizer_config.json).")
    return candidate


def has_tokenizer_files(directory: Path) -> bool:
    return (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file()
