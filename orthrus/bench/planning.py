"""What a run will measure, worked out before anything is written: every cell of this shard with its
prompts (data problems stop the run here, with one sentence), and the matrix as text for --dry-run."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from orthrus.bench.prompts import Prompt, PromptFactory
from orthrus.bench.schedule import PlannedCell, shard
from orthrus.bench.suite.models import checkpoint_kind, fresh_view_note, model_mismatch
from orthrus.bench.suite.spec import Cell, ModelSpec, Suite
from orthrus.engines import engine_class
from orthrus.errors import UserInputError


def plan(
    suite: Suite,
    shard_spec: tuple[int, int] | None,
    factory: PromptFactory,
    notes: list[str] | None = None,
) -> list[PlannedCell]:
    """Cells of this shard with their prompts; data errors raise UserInputError (nothing written yet).
    What the user should know but that stops nothing (a fresh view, a ragged last batch) goes to
    ``notes`` when given, for the caller to print once the run has started, else to stderr now.

    Cells at batch size 1 come before batched ones (otherwise in suite order), so that every batched
    row finds the same engine's batch-1 tokens (batch invariance). A cell whose engine cannot batch
    is planned as skipped above batch size 1 (its reason recorded), never run at batch 1 instead;
    likewise a cell asking an engine that cannot run compiled for ``compile: true``.
    """
    cells = sorted(suite.cells, key=lambda c: c.batch_size != 1)  # expanded once, at validation
    say = notes.append if notes is not None else _print_note
    check_model_kinds(suite, cells, say)
    if shard_spec is not None:
        cells = shard(cells, *shard_spec)
    planned = []
    ragged: set[tuple[int, int]] = set()
    for cell in cells:
        size = cell.batch_size
        engine = engine_class(cell.engine.engine)
        if size > 1 and not engine.batchable:
            reason = f"engine {cell.engine.engine!r} cannot batch ({engine.cannot_batch_reason}); batch size {size}"
            planned.append(PlannedCell(cell, skip=reason))
            continue
        if cell.engine.options.get("compile") and not engine.compilable:
            reason = f"engine {cell.engine.engine!r} cannot run compiled ({engine.cannot_compile_reason})"
            planned.append(PlannedCell(cell, skip=reason))
            continue
        try:
            prompts = factory.prompts(cell.source, cell.model, cell.context_length)
        except UserInputError as err:
            if cell.model.resolved is None:  # an unbuilt zoo model fails its cells, not the suite
                planned.append(PlannedCell(cell, failure=cell.model.missing_reason or str(err)))
                continue
            raise
        if not prompts:
            raise UserInputError(
                f"prompt source {cell.source.name!r} gives no prompts for engine {cell.label!r}, so its batches "
                "would be empty; give the source at least one prompt."
            )
        _check_prompts_fit(cell, prompts)
        if len(prompts) < size:  # every "batch" of the cell would be one smaller batch, labelled as this one
            raise UserInputError(
                f"prompt source {cell.source.name!r} gives {len(prompts)} prompt(s) to engine {cell.label!r} at batch "
                f"size {size}, so no batch of {size} would be decoded; give the source at least {size} prompts "
                f"(prompts[{cell.source.index}].count, a multiple of {size} for full batches) or drop batch size "
                f"{size} from the sweep."
            )
        if len(prompts) % size and (len(prompts), size) not in ragged:
            ragged.add((len(prompts), size))
            say(
                f"{len(prompts)} prompts at batch size {size}: the last batch of each such cell holds "
                f"{len(prompts) % size} row(s) (recorded as batch_rows); use a multiple of {size} for full batches."
            )
        planned.append(PlannedCell(cell, tuple(prompts)))
    return planned


def _print_note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def check_model_kinds(suite: Suite, cells: list[Cell], say: Callable[[str], None] = _print_note) -> None:
    """Each engine runs on the kind of model it decodes with (``Engine.model_kind``), read from the
    checkpoints' config.json: a causal or dual-view engine on a masked-diffusion checkpoint (or its draft
    model or the identity reference on one), or a diffusion engine on a causal one, is one sentence
    before anything runs; a dual-view engine on a plain causal checkpoint is a note (a fresh view)."""
    checks: dict[tuple[str, str, str], tuple[str, ModelSpec, str]] = {}  # (engine, kind, model) -> what to say
    for cell in cells:
        name, label = cell.engine.engine, cell.label
        engine = repr(label) if label == name else f"{label!r} ({name})"
        checks.setdefault((engine, engine_class(name).model_kind, cell.model.key), (engine, cell.model, ""))
        if cell.draft_model is not None:
            role = f", the draft model of {label!r},"  # its draft model is always loaded as a causal LM
            checks.setdefault((engine, "causal", cell.draft_model.key), (engine, cell.draft_model, role))
    if suite.reference is not None:
        name, model = suite.reference.engine, suite.models[suite.reference.model]
        role = ", the identity reference's model,"
        checks.setdefault((repr(name), engine_class(name).model_kind, model.key), (repr(name), model, role))
    fresh: dict[str, tuple[ModelSpec, list[str]]] = {}  # per model, the dual-view engines given a fresh view
    for (_, kind, key), (engine, model, role) in checks.items():
        found = checkpoint_kind(model.resolved)
        where = f"models.{key} ({model.path}){role}"
        if role.startswith(", the identity reference"):
            problem = model_mismatch(
                engine, kind, found, where, "", "tiny-orthrus (reference.model), or reference: null", False
            )
        else:
            problem = model_mismatch(engine, kind, found, where, "tiny-dlm", "tiny-orthrus")
        if problem:
            raise UserInputError(problem)
        if fresh_view_note(engine, kind, found, where):
            fresh.setdefault(key, (model, []))[1].append(engine)
    for key, (model, engines) in fresh.items():  # one note per model, naming its engines
        engine = engines[0] if len(engines) == 1 else f"{', '.join(engines[:-1])} and {engines[-1]}"
        say(fresh_view_note(engine, "dual_view", "causal", f"models.{key} ({model.path})", len(engines) > 1))


def _check_prompts_fit(cell: Cell, prompts: list[Prompt]) -> None:
    """Every prompt id is in the vocabulary, and prompt plus budget fit the positions of each model
    the cell runs (config.json's vocab_size and max_position_embeddings), so a cell cannot fail on
    them at run time."""
    where = f"prompt source {cell.source.name!r} on engine {cell.label!r}"
    if cell.batch_size > 1:
        where += f" at batch size {cell.batch_size}"
    new = cell.max_new_tokens
    # a causal draft model (assisted's) reads the prompt itself; a drafter reads the target's hidden
    # states, its vocabulary is the target's (checked at validation) and its positions are not bounded
    # by the config's max_position_embeddings (an EAGLE-3 config often says 2048)
    causal_draft = engine_class(cell.engine.engine).draft_model_kind == "causal"
    for model in (cell.model, cell.draft_model if causal_draft else None):
        if model is None:
            continue
        for prompt in prompts:
            if model.vocab_size is not None:
                bad = next((t for t in prompt.ids if not 0 <= t < model.vocab_size), None)
                if bad is not None:
                    raise UserInputError(
                        f"{where}: prompt {prompt.prompt_id!r} holds token id {bad}, outside the {model.vocab_size} "
                        f"ids of model {model.key!r}; use ids from 0 to {model.vocab_size - 1}."
                    )
            if model.max_positions is not None and len(prompt.ids) + new > model.max_positions:
                raise UserInputError(
                    f"{where}: prompt {prompt.prompt_id!r} ({len(prompt.ids):,} tokens) + max_new_tokens {new:,} "
                    f"exceeds the {model.max_positions:,} positions of model {model.key!r}; shorten the prompt "
                    "or lower max_new_tokens."
                )


def describe_plan(suite: Suite, planned: list[PlannedCell]) -> str:
    """The expanded matrix and the work it implies (for --dry-run)."""
    measure = suite.measure
    lines = [
        f"suite {suite.name!r}: {len(planned)} cells, repetitions {measure.repetitions} "
        f"(min duration {measure.min_duration_s:g} s, at most {measure.max_repetitions}), warm-up {measure.warmup} per cell",
        f"{'#':>3} {'cell_id':<16} {'engine':<16} {'model':<10} {'source':<14} {'ctx':>5} {'blk':>4} {'T':>4} "
        f"{'new':>4} {'prompts':>7} {'calls':>5}",
    ]
    calls = new_tokens = prompt_tokens = 0
    for i, item in enumerate(planned):
        cell = item.cell
        n_calls = len(item.batches) * measure.repetitions + (measure.warmup if item.prompts else 0)
        calls += n_calls
        new_tokens += n_calls * cell.max_new_tokens
        new_tokens += (len(item.prompts) - len(item.batches)) * measure.repetitions * cell.max_new_tokens
        prompt_tokens += sum(len(x.ids) for x in item.prompts) * measure.repetitions
        if item.prompts and measure.warmup:
            prompt_tokens += sum(len(x.ids) for x in item.batches[0]) * measure.warmup
        note = f"  (fails: {item.failure})" if item.failure else f"  (skipped: {item.skip})" if item.skip else ""
        if cell.batch_size > 1 and item.prompts:
            note = f"  batch {cell.batch_size}{note}"
        lines.append(
            f"{i:>3} {cell.cell_id:<16} {cell.label[:16]:<16} {cell.engine.model[:10]:<10} {cell.source.name[:14]:<14} "
            f"{_s(cell.context_length):>5} {_s(cell.block_size):>4} {cell.sampling.temperature:>4g} "
            f"{cell.max_new_tokens:>4} {len(item.prompts):>7} {n_calls:>5}{note}"
        )
    lines.append(
        f"estimated work: {calls} generate calls (at least), {new_tokens:,} new tokens, "
        f"{prompt_tokens:,} prompt tokens to prefill"
    )
    return "\n".join(lines)


def _s(value: Any) -> str:
    return "-" if value is None else str(value)
