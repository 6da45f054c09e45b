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
from dataclasses import fields
from typing import Any

from orthrus.bench.suite.spec import Cell, EngineSpec, PromptSourceSpec, Sampling, Suite
from orthrus.engines import engine_class
from orthrus.errors import UserInputError

CONTEXT, BLOCK = "context_length", "block_size"  # the two axes that apply only where they make sense


def _takes_block_size(engine: EngineSpec) -> bool:
    """The block-size axis applies to engines that take one, unless the suite fixed it in the options."""
    return engine_class(engine.engine).takes_block_size and BLOCK not in engine.options


def _axis_values(suite: Suite, engine: EngineSpec, source: PromptSourceSpec) -> dict[str, list[Any]]:
    """Every swept axis's values for this engine and source: the context length applies to synthetic
    prompts only, the block size to engines that take one; elsewhere they collapse to [None]."""
    applies = {CONTEXT: source.uses_context_length, BLOCK: _takes_block_size(engine)}
    return {
        name: values if applies.get(name, True) else [None] for name, values in suite.sweep.axes.items()
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
    sampling = Sampling(**{f.name: values[f.name] for f in fields(Sampling)})
    return Cell(
        engine=engine,
        model=suite.models[engine.model],
        draft_model=suite.models[engine.draft_model] if engine.draft_model else None,
        source=source,
        context_length=values[CONTEXT],
        block_size=_block(engine.options.get(BLOCK, values[BLOCK])),  # fixed in the options: that one
        sampling=sampling,
        max_new_tokens=values["max_new_tokens"],
        batch_size=values["batch_size"],
        seed=suite.measure.seed,
        stop_at_eos=suite.measure.stop_at_eos,
    )


def _block(value: Any) -> int | None:
    """The cell's block size: a number, or None for the engine's own or one chosen per cycle (auto)."""
    return None if value == "auto" else value


def _check_context_fits(cells: list[Cell]) -> None:
    for cell in cells:
        limit = cell.model.max_positions
        context = cell.context_length
        if limit is None or context is None:
            continue
        new = cell.max_new_tokens
        if context + new > limit:
            raise UserInputError(
                f"sweep.context_lengths: {context} + max_new_tokens {new} exceeds the {limit} positions of model "
                f"{cell.model.key!r} (engine {cell.label!r}); lower it or exclude it for that engine."
            )
