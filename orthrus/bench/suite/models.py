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


# ------------------------------------------------------------------ which model a checkpoint is
# what each model kind of an engine (orthrus.engines.MODEL_KINDS) is in words, for messages and --help
MODEL_KIND_WORDS = {
    "causal": "a causal LM (any Qwen3 or Orthrus checkpoint, e.g. tiny-base)",
    "dual_view": "an Orthrus checkpoint with a trained diffusion view (e.g. tiny-orthrus)",
    "dlm": "a masked-diffusion LM (e.g. tiny-dlm)",
}


def checkpoint_kind(directory: Path | None) -> str | None:
    """What a checkpoint directory holds, read from its config.json without loading it: ``dlm`` (a
    bidirectional masked-diffusion LM: ``is_causal`` false and a ``mask_token_id``), ``dual_view`` (an
    Orthrus checkpoint: model_type orthrus, or a Qwen3 config with ``block_size`` and
    ``mask_token_id``), ``causal`` (a plain Qwen3), or None (another model type, or no readable config:
    the loaders say what is wrong with it)."""
    if directory is None or not (directory / "config.json").is_file():
        return None
    try:
        config = read_json_object(directory / "config.json")
    except UserInputError:
        return None
    if config.get("is_causal") is False and config.get("mask_token_id") is not None:
        return "dlm"
    model_type = config.get("model_type")
    if model_type == "orthrus" or (model_type == "qwen3" and "mask_token_id" in config and "block_size" in config):
        return "dual_view"
    return "causal" if model_type == "qwen3" else None


def model_mismatch(
    engine: str,
    model_kind: str,
    checkpoint: str | None,
    where: str,
    fix_dlm: str,
    fix_causal: str,
    offer_diffusion_engines: bool = True,
) -> str | None:
    """Why ``engine`` (its name as shown, quoted), loading a model of ``model_kind``, cannot run the
    checkpoint ``where`` of kind ``checkpoint`` (``checkpoint_kind``), as one sentence, or None when it
    can (a causal checkpoint under a dual-view engine can: it gets a fresh view, see
    ``fresh_view_note``). ``fix_dlm`` / ``fix_causal`` name the model to use instead; a diffusion
    checkpoint under a causal engine also suggests the diffusion engines unless told not to."""
    if checkpoint is None:
        return None
    if model_kind == "dlm" and checkpoint != "dlm":
        what = "an Orthrus (causal) checkpoint" if checkpoint == "dual_view" else "a causal LM"
        return (
            f"engine {engine} decodes with a masked-diffusion LM, and {where} is {what}; "
            f"use a diffusion LM such as {fix_dlm}."
        )
    if model_kind != "dlm" and checkpoint == "dlm":
        other = (
            f", or run a diffusion engine ({', '.join(diffusion_engines())}) on it" if offer_diffusion_engines else ""
        )
        return (
            f"{where} is a masked-diffusion LM (bidirectional attention, is_causal false), which engine {engine} "
            f"would decode as a causal LM; use a causal checkpoint such as {fix_causal}{other}."
        )
    return None


def diffusion_engines() -> list[str]:
    """The registered engines that decode with a masked-diffusion LM."""
    from orthrus.engines import engine_class, engine_names

    return [name for name in engine_names() if engine_class(name).model_kind == "dlm"]


def fresh_view_note(
    engine: str, model_kind: str, checkpoint: str | None, where: str, several: bool = False
) -> str | None:
    """A dual-view engine on a plain causal checkpoint runs with a fresh (copied, untrained) diffusion view:
    what it measures is the floor that training lifts, which a user should be told. ``engine`` may name
    ``several`` engines."""
    if model_kind != "dual_view" or checkpoint != "causal":
        return None
    return (
        f"{where} is a plain causal checkpoint, so engine{'s' if several else ''} {engine} "
        f"run{'' if several else 's'} with a fresh diffusion view (copies of the AR attention, untrained: it "
        "accepts few drafts); a trained view comes with an Orthrus checkpoint such as tiny-orthrus."
    )
