"""How one measurement is made: the one timed region of the harness.

``Measurer.measure(unit)`` makes one ``generate_batch`` call (a single prompt is a batch of one) with
the memory trackers alongside, checks every row against the reference, and returns one record per
row, each built whole by one constructor (``MeasurementRecord.from_generation``), never changed
afterwards. It knows nothing about *when* a unit runs (``orthrus.bench.schedule``) or where records
go (the runner and executors). Engines are built once per cell and kept; models come from one pool.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from orthrus.bench.loading import CellFailure, ModelPool, build_cell_engine, free_after_error, one_line
from orthrus.bench.prompts import PromptFactory
from orthrus.bench.reference import Reference
from orthrus.bench.schedule import CELL_PROMPT, Unit
from orthrus.bench.suite.spec import Cell, Suite
from orthrus.bench.trackers import MemoryTracker
from orthrus.engines import BatchResult, CannotBatchError
from orthrus.engines.base import sync
from orthrus.errors import UserInputError
from orthrus.results.record import MeasurementRecord


@dataclass
class _Setup:
    """What every unit of a cell shares: its engine, tokenizer, stop token, tracker, weight bytes."""

    engine: Any
    tokenizer: Any
    eos: int | None
    tracker: MemoryTracker
    weight_bytes: int


class Measurer:
    """Measures units of a suite in this process (see the module docstring). ``existing`` is the run's
    records by key, kept up to date by the caller: measured reference tokens and batch-1 rows are
    read from it."""

    def __init__(self, suite: Suite, run_id: str, existing: Mapping[tuple, dict[str, Any]]) -> None:
        self.suite = suite
        self.run_id = run_id
        self.existing = existing
        self.factory = PromptFactory()
        self.pool = ModelPool()
        self.reference = Reference(suite, self.pool, self.factory)
        self._setups: dict[str, _Setup] = {}

    # ---------------------------------------------------------------- per cell
    def _setup(self, cell: Cell) -> _Setup:
        if cell.cell_id not in self._setups:
            engine = build_cell_engine(cell, self.pool)
            tokenizer_dir = self.factory.tokenizer_dir(cell.model)
            tokenizer = self.factory.tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
            eos = tokenizer.eos_token_id if (cell.stop_at_eos and tokenizer is not None) else None
            tracker = MemoryTracker(engine.device, self.suite.measure.sample_interval_ms)
            self._setups[cell.cell_id] = _Setup(engine, tokenizer, eos, tracker, self.pool.weight_bytes(engine.model))
        return self._setups[cell.cell_id]

    def release(self, keep: set[tuple[str, str]], done: list[Cell]) -> None:
        """Forget the engines of cells that are done, and free models outside ``keep``."""
        for cell in done:
            self._setups.pop(cell.cell_id, None)
        self.pool.release(keep | self.reference.needed_models)

    def _offer_measured_reference(self, unit: Unit) -> None:
        """Tokens the reference cell measured earlier in this run (or before a resume) are the reference."""
        if not self.reference.is_reference_cell(unit.cell):
            return
        for prompt in unit.item.prompts:
            done = self.existing.get((unit.cell.cell_id, prompt.prompt_id, 0))
            if done is not None and done.get("status") == "ok":
                self.reference.offer(unit.cell, prompt, done["tokens"])

    def _generate(self, setup: _Setup, cell: Cell, prompts: tuple) -> BatchResult:
        """One call of the engine: ``generate_batch``, or for a single prompt ``generate`` as a batch
        of one (what a user of the engine runs for one prompt; some engines take another path there)."""
        settings = dict(**asdict(cell.sampling), seed=cell.seed, eos_token_id=setup.eos)
        if len(prompts) == 1:
            return BatchResult.of_single(setup.engine.generate(prompts[0].ids, cell.max_new_tokens, **settings))
        return setup.engine.generate_batch([p.ids for p in prompts], cell.max_new_tokens, **settings)

    # ---------------------------------------------------------------- one unit
    def measure(self, unit: Unit) -> list[MeasurementRecord]:
        """The records of one unit: one per row, or one that closes the cell (it cannot run, or an
        engine refused to batch)."""
        cell = unit.cell
        if unit.close:
            return [self._closing(cell, unit.close, unit.reason or "")]
        self._offer_measured_reference(unit)
        try:
            setup = self._setup(cell)
        except CellFailure as err:
            return [self._closing(cell, "failed", str(err))]
        try:
            for _ in range(unit.warmup):
                self._generate(setup, cell, unit.item.batches[0])
        except CannotBatchError as err:
            return [self._closing(cell, "skipped", str(err))]
        except Exception as err:  # noqa: BLE001 - the cell cannot run
            free_after_error(err)
            return [self._closing(cell, "failed", f"warm-up: {one_line(err)}")]
        return self._timed(unit, setup)

    def _timed(self, unit: Unit, setup: _Setup) -> list[MeasurementRecord]:
        cell, prompts = unit.cell, unit.prompts
        description = setup.engine.describe()
        begin = time.perf_counter()
        try:  # the timed region
            sync(setup.engine.device)
            setup.tracker.start()
            call_start = time.perf_counter()
            result = self._generate(setup, cell, prompts)
            sync(setup.engine.device)
            call_ms = (time.perf_counter() - call_start) * 1e3
            memory = setup.tracker.stop()
        except CannotBatchError as err:
            setup.tracker.stop()
            return [self._closing(cell, "skipped", str(err))]
        except Exception as err:  # noqa: BLE001 - OOM or an engine error fails this unit only
            setup.tracker.stop()
            free_after_error(err)
            return self._failed(unit, err, description)
        checks, quality_ms = [], 0.0
        for prompt, row in zip(prompts, result.rows):
            start = time.perf_counter()
            notes: dict[str, Any] = {}
            try:
                if description.synthetic:  # acceptance at a set rate: its output is not meant to be AR's
                    quality, notes["identity"] = {}, "not checked: synthetic acceptance (a cost measurement)"
                else:
                    quality = asdict(
                        self.reference.check(cell, prompt, list(row.tokens), setup.eos, description.lossless, self.existing)
                    )
            except Exception as err:  # noqa: BLE001 - a quality check must not lose the measurement
                free_after_error(err)
                quality, notes["quality_error"] = {}, one_line(err)
            notes["quality_ms"] = (time.perf_counter() - start) * 1e3
            quality_ms += notes["quality_ms"]
            checks.append((quality, notes))
        # time outside generate_batch and the checks, shared equally by the rows of the batch
        overhead_ms = max(0.0, (time.perf_counter() - begin) * 1e3 - quality_ms - result.e2e_ms) / len(prompts)
        ids = [p.prompt_id for p in prompts]
        records = []
        for index, (prompt, row, (quality, notes)) in enumerate(zip(prompts, result.rows, checks)):
            text = {"output_text": setup.tokenizer.decode(row.tokens)} if setup.tokenizer is not None else {}
            records.append(
                MeasurementRecord.from_generation(
                    row,
                    description,
                    **self._identity(unit, prompt),
                    memory=memory.as_dict(),
                    weight_bytes=setup.weight_bytes,
                    batch=result,
                    batch_id=unit.batch_id,
                    batch_index=index,
                    batch_prompt_ids=ids,
                    quality=quality,
                    notes={"call_ms": call_ms, **text, **notes},
                    harness_overhead_ms=overhead_ms,
                    timestamp=time.time(),
                )
            )
        return records

    # ---------------------------------------------------------------- records that are not measurements
    def _identity(self, unit: Unit, prompt: Any) -> dict[str, Any]:
        cell = unit.cell
        return dict(
            run_id=self.run_id,
            cell_id=cell.cell_id,
            cell=cell.params,
            prompt_id=prompt.prompt_id,
            repeat=unit.repeat,
            category=prompt.category,
        )

    def _failed(self, unit: Unit, err: BaseException, description: Any) -> list[MeasurementRecord]:
        """One failed record per row of a unit whose call raised."""
        notes = {}
        if not isinstance(err, (UserInputError, torch.OutOfMemoryError)):
            notes["traceback"] = traceback.format_exc(limit=-3)[-2000:]
        ids = [p.prompt_id for p in unit.prompts]
        batched = unit.cell.batch_size > 1  # a solo prompt's failure names no batch, as before batching existed
        return [
            MeasurementRecord.failed(
                one_line(err),
                description,
                **self._identity(unit, prompt),
                prompt_tokens=len(prompt.ids),
                timestamp=time.time(),
                batch_id=unit.batch_id if batched else None,
                batch_index=index if batched else None,
                batch_prompt_ids=ids if batched else None,
                notes=notes,
            )
            for index, prompt in enumerate(unit.prompts)
        ]

    def _closing(self, cell: Cell, status: str, message: str) -> MeasurementRecord:
        return closing_record(self.run_id, cell, status, message)


def closing_record(run_id: str, cell: Cell, status: str, message: str) -> MeasurementRecord:
    """One record standing for a whole cell (prompt CELL_PROMPT) that ended without measurements:
    ``status`` failed (it cannot run) or skipped (not measured on purpose)."""
    make = MeasurementRecord.failed if status == "failed" else MeasurementRecord.skipped
    return make(
        message,
        run_id=run_id,
        cell_id=cell.cell_id,
        cell=cell.params,
        prompt_id=CELL_PROMPT,
        repeat=0,
        timestamp=time.time(),
    )
