"""Decoding engines behind one interface: ``build_engine(name, model, **options).generate(...)``."""

from __future__ import annotations

import difflib
from typing import Any

from orthrus.engines.ar import AREngine, HFGenerateEngine
from orthrus.engines.base import (
    DEFAULT_BLOCK_SIZE,
    DRAFT_MODEL_KINDS,
    MODEL_KINDS,
    BatchResult,
    CannotBatchError,
    Engine,
    EngineDescription,
    GenerationResult,
    SamplingSettings,
)
from orthrus.engines.dflash import DFlashEngine
from orthrus.engines.dlm import DLMEngine, FastDLLMEngine
from orthrus.engines.eagle3 import Eagle3Engine
from orthrus.engines.orthrus_engine import OrthrusEngine
from orthrus.engines.speculative import AssistedEngine, PromptLookupEngine
from orthrus.errors import UserInputError

ENGINES: dict[str, type[Engine]] = {
    cls.name: cls
    for cls in (
        AREngine,
        HFGenerateEngine,
        OrthrusEngine,
        DLMEngine,
        FastDLLMEngine,
        AssistedEngine,
        PromptLookupEngine,
        DFlashEngine,
        Eagle3Engine,
    )
}
# what a caller that names no engine gets (the command line's generate): the method this suite is about
DEFAULT_ENGINE = OrthrusEngine.name

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_ENGINE",
    "DRAFT_MODEL_KINDS",
    "ENGINES",
    "MODEL_KINDS",
    "BatchResult",
    "CannotBatchError",
    "Engine",
    "EngineDescription",
    "GenerationResult",
    "SamplingSettings",
    "build_engine",
    "engine_class",
    "engine_names",
    "register_engine",
]


def register_engine(cls: type[Engine]) -> type[Engine]:
    ENGINES[cls.name] = cls
    return cls


def engine_names() -> tuple[str, ...]:
    return tuple(sorted(ENGINES))


def engine_class(name: str) -> type[Engine]:
    """The registered engine class; an unknown name is one sentence with a did-you-mean."""
    if name not in ENGINES:
        close = difflib.get_close_matches(str(name), list(ENGINES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserInputError(f"unknown engine {name!r}{hint}; choose one of {', '.join(engine_names())}.")
    return ENGINES[name]


def build_engine(name: str, model: Any, **options: Any) -> Engine:
    """An engine by name; options are the engine's own (e.g. block_size for 'orthrus')."""
    cls = engine_class(name)
    try:
        return cls(model, **options)
    except TypeError as err:
        raise UserInputError(f"engine {name!r} got an option it does not take ({err}).") from err
