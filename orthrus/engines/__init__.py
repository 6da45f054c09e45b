"""Decoding engines behind one interface: ``build_engine(name, model, **options).generate(...)``."""

from __future__ import annotations

from typing import Any

from orthrus.engines.ar import AREngine, HFGenerateEngine
from orthrus.engines.base import Engine, GenerationResult, SamplingSettings
from orthrus.engines.dlm import DLMEngine, FastDLLMEngine
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
    )
}

__all__ = ["ENGINES", "Engine", "GenerationResult", "SamplingSettings", "build_engine", "register_engine"]


def register_engine(cls: type[Engine]) -> type[Engine]:
    ENGINES[cls.name] = cls
    return cls


def build_engine(name: str, model: Any, **options: Any) -> Engine:
    """An engine by name; options are the engine's own (e.g. block_size for 'orthrus')."""
    if name not in ENGINES:
        raise UserInputError(f"unknown engine {name!r}; choose one of {', '.join(sorted(ENGINES))}.")
    try:
        return ENGINES[name](model, **options)
    except TypeError as err:
        raise UserInputError(f"engine {name!r} got an option it does not take ({err}).") from err
