"""The sweep expanded to cells: engine x prompt source x context length x block size x sampling x ...

Semantics follow GitHub Actions' matrix: the lists of ``sweep`` multiply; ``exclude`` drops every
combination that matches all the keys of one entry; ``include`` then adds the combinations that
match all the keys of an entry (axes an entry does not name take every value of their list), unless
they are already there. Axes that do not apply collapse to null instead of multiplying: the
context length for jsonl/inline prompts (their length is their own), the block size for engines
without one. Batch sizes multiply for every engine: an engine that cannot batch (its class fact
``batchable``) keeps its cells above batch size 1, and the runner records them as skipped with the
engine's reason, so a sweep never silently measures batch 1 under another batch size's name.
"""

from __future__ import annotations

import itertools
from typing import Any

from orthrus.bench.suite.spec import Cell, EngineSpec, PromptSourceSpec, Suite, cell_id_of
from orthrus.engines import engine_class
from orthrus.errors import UserInputError


def _takes_block_size(engine: EngineSpec) -> bool:
    """The block-size axis applies to engines that take one, unless the suite fixed it in the options."""
    return engine_class(engine.engine).takes_block_size and "block_size" not in engine.options


def _axis_values(suite: Suite, engine: EngineSpec, source: PromptSourceSpec) -> dict[str, list[Any]]:
    axes = suite.sweep.axes
    return {
        "context_length": axes["context_length"] if source.uses_context_length else [None],
        "block_size": axes["block_size"] if _takes_block_size(engine) else [None],
        "temperature": axes["temperature"],
        "top_k": axes["top_k"],
        "top_p": axes["top_p"],
        "max_new_tokens": axes["max_new_tokens"],
        "batch_size": axes["batch_size"],
    }


def _matches(engine: EngineSpec, combo: dict[str, Any], entry: dict[str, Any]) -> bool:
    """An entry's ``engine`` names an engine by its label or by its engine name (all engines of that kind)."""
    for axis, value in entry.items():
        if axis == "engine":
            if value not in (engine.label, engine.engine):
                return False
        elif combo.get(axis) != value:
            return False
    return True


def _engine_order(suite: Suite) -> list[EngineSpec]:
    """Reference engine first, so its measured greedy tokens serve as the identity reference."""
    engines = list(suite.engines)
    if suite.reference is not None:
        first = [e for e in engines if e.engine == suite.reference.engine and e.model == suite.reference.model]
        engines = first + [e for e in engines if e not in first]
    return engines


def expand(suite: Suite) -> list[Cell]:
    """All cells of the suite in run order (engine-major), after exclude / include / select."""
    combos: list[tuple[EngineSpec, PromptSourceSpec, dict[str, Any]]] = []
    seen: set[tuple] = set()

    def add(engine: EngineSpec, source: PromptSourceSpec, values: dict[str, Any]) -> None:
        key = (engine.label, source.name, *values.values())
        if key not in seen:
            seen.add(key)
            combos.append((engine, source, values))

    engines = _engine_order(suite)
    full: list[tuple[EngineSpec, PromptSourceSpec, dict[str, Any]]] = []
    for engine in engines:
        for source in suite.prompts:
            axes = _axis_values(suite, engine, source)
            for product in itertools.product(*axes.values()):
                full.append((engine, source, dict(zip(axes, product))))
    for engine, source, values in full:
        combo = {"prompt_source": source.name, **values}
        if not any(_matches(engine, combo, entry) for entry in suite.sweep.exclude):
            add(engine, source, values)
    for entry in suite.sweep.include:
        for engine in engines:
            if "engine" in entry and entry["engine"] not in (engine.label, engine.engine):
                continue
            for source in suite.prompts:
                if "prompt_source" in entry and entry["prompt_source"] != source.name:
                    continue
                axes = _axis_values(suite, engine, source)
                for axis, value in entry.items():
                    if axis in axes:
                        applies = axes[axis] != [None] or value is None
                        axes[axis] = [value] if applies else [None]
                for product in itertools.product(*axes.values()):
                    add(engine, source, dict(zip(axes, product)))
    if suite.selected_engines is not None:
        combos = [c for c in combos if c[0].label in suite.selected_engines]
    cells = [_make_cell(suite, engine, source, values) for engine, source, values in combos]
    _check_context_fits(cells)
    return cells


def _make_cell(suite: Suite, engine: EngineSpec, source: PromptSourceSpec, values: dict[str, Any]) -> Cell:
    model = suite.models[engine.model]
    draft = suite.models[engine.draft_model] if engine.draft_model else None
    measure = suite.measure
    params: dict[str, Any] = {
        "engine": engine.engine,
        "label": engine.label,
        "engine_options": dict(engine.options),
        "model": engine.model,
        "model_path": model.path,
        "dtype": model.dtype,
        "device": model.device,
        "attn_implementation": model.attn_implementation,
        "draft_model": engine.draft_model,
        "draft_model_path": draft.path if draft else None,
        "prompt_source": source.name,
        "context_length": values["context_length"],
        "block_size": values["block_size"],
        "temperature": values["temperature"],
        "top_k": values["top_k"],
        "top_p": values["top_p"],
        "max_new_tokens": values["max_new_tokens"],
        "batch_size": values["batch_size"],
        "seed": measure.seed,
        "stop_at_eos": measure.stop_at_eos,
    }
    if "block_size" in engine.options:
        params["block_size"] = engine.options["block_size"]
    return Cell(cell_id=cell_id_of(params), params=params, engine=engine, model=model, draft_model=draft, source=source)


def _check_context_fits(cells: list[Cell]) -> None:
    for cell in cells:
        limit = cell.model.max_positions
        context = cell.params["context_length"]
        if limit is None or context is None:
            continue
        new = cell.params["max_new_tokens"]
        if context + new > limit:
            raise UserInputError(
                f"sweep.context_lengths: {context} + max_new_tokens {new} exceeds the {limit} positions of model "
                f"{cell.model.key!r} (engine {cell.params['label']!r}); lower it or exclude it for that engine."
            )


def shard(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Deterministic slice ``index`` of ``count`` (0-based): every count-th cell, so heavy cells spread out."""
    return [cell for i, cell in enumerate(cells) if i % count == index]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as err:
        raise UserInputError(f"--shard {text!r}: write it as I/N, e.g. --shard 0/4 for the first of 4 shards.") from err
    if count < 1 or not 0 <= index < count:
        raise UserInputError(f"--shard {text!r}: I must be in 0..N-1 (0-based) and N >= 1.")
    return index, count
