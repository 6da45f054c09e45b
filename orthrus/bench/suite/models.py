"""``models:``: each key names a checkpoint directory or a zoo model, with its dtype, device and
attention implementation. A known zoo model that is not built yet is not an error here: its cells
fail with the command that builds it.

Checked here, before anything loads (so also under --dry-run): config.json and tokenizer files parse
(JSON objects, UTF-8), safetensors files are complete, and a checkpoint or tokenizer that ships its
own code (``auto_map``) is refused unless the model sets ``trust_remote_code: true``."""

from __future__ import annotations

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
from orthrus.errors import UserInputError
from orthrus.models import SUPPORTED_ATTN_IMPLEMENTATIONS
from orthrus.models.checkpoint import check_remote_code, check_safetensors, read_json_object, read_tokenizer_file
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
        for directory, where in ((resolved, f"{path}.path"), (tokenizer, f"{path}.tokenizer")):
            if directory is not None:
                _check_files(directory, where, trust, path)
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
    config = _read_json(config_file, path)
    weights = list(directory.glob("*.safetensors")) + list(directory.glob("*.bin"))
    if not weights:
        raise fail(path, f"{str(directory)!r} has no weights (*.safetensors); point it at a complete checkpoint.")
    for file in sorted(directory.glob("*.safetensors")):
        try:
            check_safetensors(file)
        except UserInputError as err:
            raise fail(path, str(err)) from err
    max_positions = config.get("max_position_embeddings")
    return directory, None, int(max_positions) if isinstance(max_positions, int) else None


def _resolve_tokenizer(text: str, path: str, base_dir: Path | None) -> Path:
    candidate = resolve_file(text, base_dir)
    if not candidate.is_dir() and (ZOO_DIR / text).is_dir():
        candidate = ZOO_DIR / text
    if not candidate.is_dir() or not has_tokenizer_files(candidate):
        raise fail(path, f"{text!r} is not a directory with tokenizer files (tokenizer.json or tokenizer_config.json).")
    return candidate


def _read_json(file: Path, path: str) -> dict[str, Any]:
    try:
        return read_json_object(file)
    except UserInputError as err:
        raise fail(path, str(err)) from err


def _check_files(directory: Path, where: str, trust_remote_code: bool, model_path: str) -> None:
    """The JSON files of a checkpoint or tokenizer directory parse, its tokenizer.json loads, and it
    declares no code of its own unless the model allows it (refused here, before any load)."""
    for name in ("config.json", "tokenizer_config.json"):
        if (directory / name).is_file():
            _read_json(directory / name, where)
    check_remote_code(
        directory,
        trust_remote_code,
        where,
        fix=f"allow it only if you trust that code: {model_path}.trust_remote_code: true in the suite",
    )
    if (directory / "tokenizer.json").is_file():
        try:
            read_tokenizer_file(directory / "tokenizer.json")
        except UserInputError as err:
            raise fail(where, str(err)) from err


def has_tokenizer_files(directory: Path) -> bool:
    return (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file()
