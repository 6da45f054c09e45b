"""When each measurement runs: the schedule of a run, decided here once and nowhere else.

``schedule(planned, measure, existing)`` orders the *units* of a run. A unit is one ``generate_batch``
call to time: a cell's batch of prompts (a single prompt is a batch of one) at one repetition, with
the warm-up calls to make before it. Three orders give the same units in different sequences:

* ``cells``: every repetition of a cell's first batch, then of its next batch, ..., then the next
  cell; a batch gets at least ``measure.repetitions`` and more until their time reaches
  ``measure.min_duration_s`` (at most ``measure.max_repetitions``); the cell warms up once;
* ``rounds``: repetition r of every cell before repetition r + 1 of any, each cell warmed up again in
  each round, so the cells a ratio compares share the machine's load;
* ``interleaved``: as rounds, and within a round batch i of every cell before batch i + 1 of any
  (batched cells after the round's batch-1 cells, whose tokens their rows are checked against);
  the cells one ratio compares (the same context, batch size, sampling, ... : every ``ar_match``
  axis, engines apart) run next to each other, so an engine and its AR counterpart time the same
  batch seconds apart, not a sweep apart; and they take turns going first (batch i of round r
  starts (i + r) places further along the suite's order), so no engine always runs in the same
  place after the same neighbour (on a 2-core CPU an engine measured last read 3-5% slower than
  the same engine measured first: the A/A check, ``suites/same_work.yaml``).

Also decided here, once for every order and executor: what is already measured (``--resume``: a
unit whose records all exist is not scheduled again; a cell closed by one record is closed), a
batch that failed is not measured again (in later repetitions or rounds), a cell that cannot run
(a failure known at planning, an engine that cannot batch) is closed by one record, and which cells
this process measures (``--shard``: ``shard``).

Pure: no torch, no I/O. ``existing`` is the run's records by ``record_key``, which the caller keeps
up to date as it appends; the schedule is a generator that reads it as it goes (the min-duration
rule and the failure skips depend on what was just measured).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orthrus.bench.suite.spec import ROUND_ORDERS, Cell, MeasureSpec
from orthrus.errors import UserInputError
from orthrus.results.vocabulary import AR_MATCH

if TYPE_CHECKING:
    from orthrus.bench.prompts import Prompt

CELL_PROMPT = "*"  # prompt_id of the one record that closes a whole cell (failed or skipped)
Key = tuple[str, str, int]  # (cell_id, prompt_id, repeat): what a measurement is


@dataclass(frozen=True, eq=False)
class PlannedCell:
    """A cell with its prompts, or the reason it is not measured: ``failure`` (it cannot run; one
    failed record) or ``skip`` (on purpose, e.g. an engine that cannot batch; one skipped record)."""

    cell: Cell
    prompts: tuple[Prompt, ...] = ()
    failure: str | None = None
    skip: str | None = None

    @property
    def batches(self) -> list[tuple[Prompt, ...]]:
        """The prompts grouped in order, batch_size at a time; the last batch holds the rest (fewer rows)."""
        size = self.cell.batch_size
        return [self.prompts[i : i + size] for i in range(0, len(self.prompts), size)]

    def measurements(self, repetitions: int) -> int:
        """Records a full run of the cell writes at ``repetitions`` (1 for a closed cell)."""
        return 1 if self.failure or self.skip else len(self.prompts) * repetitions


@dataclass(frozen=True, eq=False)
class Unit:
    """One timed ``generate_batch`` call: batch ``batch_id`` of the cell at repetition ``repeat``,
    after ``warmup`` untimed calls on the cell's first batch. A unit with ``close`` set measures
    nothing: it closes the cell with one record (``close`` is "failed" or "skipped", ``reason`` why)."""

    item: PlannedCell
    batch_id: int = 0
    repeat: int = 0
    warmup: int = 0
    close: str | None = None
    reason: str | None = None

    @property
    def cell(self) -> Cell:
        return self.item.cell

    @property
    def prompts(self) -> tuple[Prompt, ...]:
        return () if self.close else self.item.batches[self.batch_id]

    @property
    def keys(self) -> list[Key]:
        if self.close:
            return [(self.cell.cell_id, CELL_PROMPT, 0)]
        return [(self.cell.cell_id, p.prompt_id, self.repeat) for p in self.prompts]


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


def schedule(planned: list[PlannedCell], measure: MeasureSpec, existing: Mapping[Key, dict[str, Any]]) -> Iterator[Unit]:
    """The units still to measure, in the order ``measure.order`` asks for (see the module docstring)."""
    if measure.order in ROUND_ORDERS:
        return _rounds(planned, measure, existing, interleave=measure.order == "interleaved")
    return _cells(planned, measure, existing)


def _closed(item: PlannedCell, existing: Mapping[Key, Any]) -> bool:
    return (item.cell.cell_id, CELL_PROMPT, 0) in existing


def _closing(item: PlannedCell, existing: Mapping[Key, Any]) -> Unit | None:
    """The unit that closes a cell known not to run, unless it is closed already."""
    if not (item.failure or item.skip) or _closed(item, existing):
        return None
    return Unit(item, close="failed" if item.failure else "skipped", reason=item.failure or item.skip)


def _done(unit: Unit, existing: Mapping[Key, Any]) -> bool:
    return all(key in existing for key in unit.keys)


def _failed(unit: Unit, existing: Mapping[Key, Any]) -> bool:
    return any(existing.get(key, {}).get("status", "ok") != "ok" for key in unit.keys)


def _failed_before(item: PlannedCell, batch_id: int, repeat: int, existing: Mapping[Key, Any]) -> bool:
    """Whether an earlier repetition of this batch failed (it is not measured again)."""
    return any(_failed(Unit(item, batch_id, r), existing) for r in range(repeat))


def _spent_ms(unit: Unit, existing: Mapping[Key, Any]) -> float:
    record = existing.get(unit.keys[0]) or {}
    return float(record.get("batch_e2e_ms") or record.get("e2e_ms") or 0.0)


def _cells(planned: list[PlannedCell], measure: MeasureSpec, existing: Mapping[Key, Any]) -> Iterator[Unit]:
    for item in planned:
        closing = _closing(item, existing)
        if closing is not None:
            yield closing
        if item.failure or item.skip:
            continue
        warmup = measure.warmup
        for batch_id in range(len(item.batches)):
            repeat, spent_ms = 0, 0.0
            while not _closed(item, existing):
                enough = repeat >= measure.repetitions and spent_ms >= measure.min_duration_s * 1e3
                if enough or repeat >= measure.max_repetitions:
                    break
                unit = Unit(item, batch_id, repeat, warmup)
                if not _done(unit, existing):
                    yield unit
                    warmup = 0
                if _failed(unit, existing):
                    break  # a batch stops at its first failed measurement
                spent_ms += _spent_ms(unit, existing)
                repeat += 1


def _side_by_side(items: list[PlannedCell]) -> list[list[PlannedCell]]:
    """``items`` grouped into the cells that one ratio compares (equal on every ``ar_match`` axis), the
    suite's order kept within the groups and between them (by first appearance)."""
    groups: dict[tuple, list[PlannedCell]] = {}
    for item in items:
        groups.setdefault(tuple(repr(item.cell.params.get(axis)) for axis in AR_MATCH), []).append(item)
    return list(groups.values())


def _turn(comparing: list[PlannedCell], shift: int) -> list[PlannedCell]:
    """The cells one ratio compares, starting ``shift`` places along (taking turns to go first)."""
    shift %= len(comparing)
    return comparing[shift:] + comparing[:shift]


def _rounds(
    planned: list[PlannedCell], measure: MeasureSpec, existing: Mapping[Key, Any], interleave: bool
) -> Iterator[Unit]:
    for item in planned:
        closing = _closing(item, existing)
        if closing is not None:
            yield closing
    runnable = [item for item in planned if not (item.failure or item.skip)]
    for repeat in range(measure.repetitions):
        if interleave:  # batch-1 cells first: batched rows are checked against their tokens
            groups = [
                _side_by_side([i for i in runnable if i.cell.batch_size == 1]),
                _side_by_side([i for i in runnable if i.cell.batch_size != 1]),
            ]
        else:
            groups = [[[item]] for item in runnable]
        for group in groups:
            warmed: set[int] = set()
            for batch_id in range(max((len(item.batches) for comparing in group for item in comparing), default=0)):
                for item in (item for comparing in group for item in _turn(comparing, batch_id + repeat)):
                    if batch_id >= len(item.batches) or _closed(item, existing):
                        continue
                    unit = Unit(item, batch_id, repeat, 0 if id(item) in warmed else measure.warmup)
                    if _done(unit, existing) or _failed_before(item, batch_id, repeat, existing):
                        continue
                    warmed.add(id(item))
                    yield unit
