"""``engines:`` and ``reference:``: every fact about an engine comes from its class in the registry
(``orthrus.engines``): its options, whether it needs a draft model, which model kind it loads,
whether it is lossless."""

from __future__ import annotations

import inspect
from typing import Any

from orthrus.bench.suite.checks import (
    a_kind,
    as_bool,
    as_int,
    as_mapping,
    as_number,
    as_str,
    check_finite,
    check_keys,
    close_match,
    fail,
    join,
    suggestion,
)
from orthrus.bench.suite.spec import ENGINE_KEYS, REFERENCE_KEYS, EngineSpec, ModelSpec, ReferenceSpec
from orthrus.engines import engine_class, engine_names
from orthrus.errors import UserInputError
from orthrus.models.checkpoint import read_json_object, read_tokenizer_file
from orthrus.models.drafters import DRAFTER_KINDS, check_drafter_config

# options that name a model: the suite gives those with the engine's draft_model key
MODEL_OPTIONS = ("draft_model", "assistant_model")
# value rules for well-known engine options (whatever engine takes them); others by their default's type
OPTION_RULES: dict[str, tuple[str, float | None]] = {
    "block_size": ("int", 1),
    "steps": ("int", 1),
    "block_length": ("int", 1),
    "num_assistant_tokens": ("int", 1),
    "prompt_lookup_num_tokens": ("int", 1),
    "max_matching_ngram_size": ("int", 1),
    "threshold": ("number", 0),
    "mask_token_id": ("int", 0),
}


def validate_engines(value: Any, models: dict[str, ModelSpec]) -> list[EngineSpec]:
    if value is None:
        raise fail("engines", "missing; list the engines to measure, e.g. engines: [{engine: ar, model: base}].")
    if not isinstance(value, list) or not value:
        raise fail("engines", f"must be a non-empty list of engines, got {a_kind(value)}.")
    known = engine_names()
    model_keys = list(models)
    specs: list[EngineSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(value):
        path = f"engines[{i}]"
        if isinstance(entry, str):
            entry = {"engine": entry}
        entry = as_mapping(entry, path)
        check_keys(entry, ENGINE_KEYS, path)
        if "engine" not in entry:
            raise fail(f"{path}.engine", f"missing; name the decoding method, one of {', '.join(known)}.")
        name = as_str(entry["engine"], f"{path}.engine")
        if name not in known:
            raise fail(f"{path}.engine", f"unknown engine {name!r}; {suggestion(name, known)}")
        label = as_str(entry.get("label", name), f"{path}.label")
        if label in seen:
            raise fail(
                f"{path}.label",
                f"{label!r} is already used by engines[{seen[label]}]; give each engine a distinct label.",
            )
        seen[label] = i
        model = entry.get("model")
        if model is None:
            if len(models) != 1:
                raise fail(f"{path}.model", f"missing; name one of the models: {', '.join(model_keys)}.")
            model = model_keys[0]
        model = as_str(model, f"{path}.model")
        if model not in models:
            raise fail(f"{path}.model", f"no model has the key {model!r}; {suggestion(model, model_keys)}")
        draft = _draft_model(name, entry.get("draft_model"), f"{path}.draft_model", model_keys)
        if draft is not None and engine_class(name).draft_model_kind in DRAFTER_KINDS:
            check_drafter(engine_class(name).draft_model_kind, models[draft], models[model], f"{path}.draft_model")
        options = as_mapping(entry.get("options") or {}, f"{path}.options")
        validate_engine_options(name, options, f"{path}.options")
        specs.append(
            EngineSpec(index=i, engine=name, label=label, model=model, draft_model=draft, options=dict(options))
        )
    return specs


def _draft_model(name: str, draft: Any, path: str, model_keys: list[str]) -> str | None:
    if engine_class(name).needs_draft_model:
        if draft is None:
            raise fail(
                path,
                f"missing; engine {name!r} needs a draft model, e.g. draft_model: draft with "
                "models: {draft: {path: tiny-draft}}.",
            )
    elif draft is not None:
        takers = [n for n in engine_names() if engine_class(n).needs_draft_model]
        verb = "does" if len(takers) == 1 else "do"
        raise fail(path, f"engine {name!r} takes no draft model (only {', '.join(takers)} {verb}).")
    if draft is None:
        return None
    draft = as_str(draft, path)
    if draft not in model_keys:
        raise fail(path, f"no model has the key {draft!r}; {suggestion(draft, model_keys)}")
    return draft


def check_drafter(kind: str, drafter: ModelSpec, target: ModelSpec, path: str) -> None:
    """A DFlash or EAGLE-3 drafter fits the target it drafts for, read from the two config.json files
    (no weights loaded): its required fields are there, the target layers it reads exist, its hidden
    size and vocabulary are the target's, and its tokenizer (when it ships one) is the target's."""
    if drafter.resolved is None or target.resolved is None:
        return  # an unbuilt zoo model: its cells fail with the command that builds it
    try:
        config = read_json_object(drafter.resolved / "config.json")
        check_drafter_config(kind, config, read_json_object(target.resolved / "config.json"))
    except UserInputError as err:
        raise fail(path, f"model {drafter.key!r} cannot draft for model {target.key!r}: {err}") from err
    mine = drafter.resolved / "tokenizer.json"
    theirs = (target.tokenizer or target.resolved) / "tokenizer.json"
    if mine.is_file() and theirs.is_file():
        try:
            same = read_tokenizer_file(mine).get_vocab(True) == read_tokenizer_file(theirs).get_vocab(True)
        except UserInputError as err:
            raise fail(path, str(err)) from err
        if not same:
            raise fail(
                path,
                f"model {drafter.key!r} cannot draft for model {target.key!r}: the drafter's tokenizer.json differs from "
                "the target's; use a drafter trained with the target's tokenizer.",
            )


def validate_engine_options(name: str, options: dict[str, Any], path: str) -> None:
    """Each option is one the engine's constructor takes (``Engine.options()``), with a plausible value."""
    accepted = {key: param for key, param in engine_class(name).options().items() if key not in MODEL_OPTIONS}
    for key, value in options.items():
        key_path = join(path, str(key))
        if not isinstance(key, str):
            raise fail(key_path, "option names must be strings.")
        if key in MODEL_OPTIONS:
            raise fail(key_path, "name the draft model with the engine's draft_model key, not in options.")
        if key not in accepted:
            close = close_match(key, list(accepted))
            hint = f" (did you mean {close!r}?)" if close else ""
            takes = f"its options are {', '.join(accepted)}" if accepted else "it takes no options"
            raise fail(key_path, f"engine {name!r} takes no option {key!r}{hint}; {takes}.")
        _check_option(key, value, key_path, accepted[key])


def _check_option(name: str, value: Any, path: str, param: inspect.Parameter) -> None:
    check_finite(value, path)
    if name == "block_size" and value == "auto":  # a block size per cycle that follows the load
        return
    rule = OPTION_RULES.get(name)
    if rule is not None and value is not None:
        kind, minimum = rule
        if kind == "int":
            as_int(value, path, int(minimum) if minimum is not None else None)
        else:
            as_number(value, path, minimum, exclusive=True)
        return
    if param.default is inspect.Parameter.empty or param.default is None or value is None:
        return
    default = param.default
    if isinstance(default, bool):
        as_bool(value, path)
    elif isinstance(default, int):
        as_int(value, path)
    elif isinstance(default, float):
        as_number(value, path)
    elif isinstance(default, str):
        as_str(value, path)


def validate_reference(value: Any, engines: list[EngineSpec], models: dict[str, ModelSpec]) -> ReferenceSpec | None:
    """The engine whose greedy tokens every compatible cell is compared with (null: no identity check)."""
    if value is None or value is False:
        return None
    dlm_models = {e.model for e in engines if engine_class(e.engine).model_kind == "dlm"}
    if value == "default" and not [m for m in models if m not in dlm_models]:
        return None  # only diffusion LMs: no causal model to take the AR reference's tokens from
    if value == "default":
        value = {}
    reference = as_mapping(value, "reference", "a mapping (engine, model) or null for no identity check")
    check_keys(reference, REFERENCE_KEYS, "reference")
    name = as_str(reference.get("engine", "ar"), "reference.engine")
    labels = {e.label: e for e in engines}
    if name in labels:  # a label of this suite: its engine and model
        entry = labels[name]
        name, default_model = entry.engine, entry.model
    else:
        known = engine_names()
        if name not in known:
            raise fail("reference.engine", f"unknown engine {name!r}; {suggestion(name, known)}")
        same = [e for e in engines if e.engine == name]
        ar_models = [m for m in models if m not in dlm_models]
        default_model = same[0].model if same else (ar_models or list(models))[0]
    cls = engine_class(name)
    if not cls.lossless or cls.needs_draft_model:
        raise fail("reference.engine", f"{name!r} cannot be the identity reference; use an AR engine such as 'ar'.")
    model = as_str(reference.get("model", default_model), "reference.model")
    if model not in models:
        raise fail("reference.model", f"no model has the key {model!r}; {suggestion(model, list(models))}")
    return ReferenceSpec(engine=name, model=model)
