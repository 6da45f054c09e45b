"""The schedule decides when each measurement runs, and nothing else does: the three orders give the
same units in their own sequence, resume skips what is measured, a failed batch is not measured
again, a closed cell is closed once, and shards slice the cells. Pure: tested without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from orthrus.bench.schedule import CELL_PROMPT, PlannedCell, parse_shard, schedule, shard
from orthrus.bench.suite.spec import Cell, EngineSpec, MeasureSpec, ModelSpec, PromptSourceSpec, Sampling
from orthrus.errors import UserInputError

ROOT = Path(__file__).resolve().parents[1]


def cell(label: str, batch_size: int = 1, context: int = 64) -> Cell:
    return Cell(
        engine=EngineSpec(0, label, label, "base"),
        model=ModelSpec("base", "tiny-base", None),
        draft_model=None,
        source=PromptSourceSpec(0, "synthetic", "synthetic"),
        context_length=context,
        block_size=None,
        sampling=Sampling(),
        max_new_tokens=8,
        batch_size=batch_size,
        seed=0,
        stop_at_eos=False,
    )


def planned(label: str, prompts: int = 2, batch_size: int = 1, context: int = 64, **reason: str) -> PlannedCell:
    ids = tuple(SimpleNamespace(prompt_id=f"p{i}", ids=[i]) for i in range(prompts))
    return PlannedCell(cell(label, batch_size, context), () if reason else ids, **reason)


def run(items, measure, existing=None, e2e_ms=10.0, fail=()):
    """Drive the schedule as an executor does: each unit's records go into ``existing`` at once."""
    existing = {} if existing is None else existing
    order = []
    for unit in schedule(items, measure, existing):
        order.append((unit.cell.label, unit.batch_id, unit.repeat, unit.warmup, unit.close))
        for key in unit.keys:
            failed = (unit.cell.label, unit.batch_id, unit.repeat) in fail
            existing[key] = {"status": "failed" if failed else ("ok" if not unit.close else unit.close), "e2e_ms": e2e_ms}
    return order, existing


def test_importing_the_schedule_loads_no_torch():
    code = "import sys, orthrus.bench.schedule; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_cells_order_measures_every_repetition_of_a_cell_then_the_next_and_warms_up_once():
    order, _ = run([planned("ar"), planned("orthrus")], MeasureSpec(repetitions=2, warmup=1))
    assert order == [
        ("ar", 0, 0, 1, None),
        ("ar", 0, 1, 0, None),
        ("ar", 1, 0, 0, None),
        ("ar", 1, 1, 0, None),
        ("orthrus", 0, 0, 1, None),
        ("orthrus", 0, 1, 0, None),
        ("orthrus", 1, 0, 0, None),
        ("orthrus", 1, 1, 0, None),
    ]


def test_cells_order_repeats_until_the_minimum_duration_and_stops_a_batch_at_its_first_failure():
    measure = MeasureSpec(repetitions=1, warmup=0, min_duration_s=0.035, max_repetitions=10)
    order, _ = run([planned("ar", prompts=1)], measure, e2e_ms=10.0)
    assert [repeat for _, _, repeat, _, _ in order] == [0, 1, 2, 3]  # 4 x 10 ms >= 35 ms
    order, _ = run([planned("ar")], MeasureSpec(repetitions=3, warmup=0), fail={("ar", 0, 1)})
    assert [(b, r) for _, b, r, _, _ in order] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]


def test_rounds_measure_repetition_r_of_every_cell_before_r_plus_1_and_warm_up_each_round():
    order, _ = run([planned("ar"), planned("orthrus")], MeasureSpec(repetitions=2, warmup=1, order="rounds"))
    assert order == [
        ("ar", 0, 0, 1, None),
        ("ar", 1, 0, 0, None),
        ("orthrus", 0, 0, 1, None),
        ("orthrus", 1, 0, 0, None),
        ("ar", 0, 1, 1, None),
        ("ar", 1, 1, 0, None),
        ("orthrus", 0, 1, 1, None),
        ("orthrus", 1, 1, 0, None),
    ]


def test_interleaved_measures_batch_i_of_every_cell_before_i_plus_1_and_batched_cells_last():
    items = [planned("ar"), planned("orthrus-b2", prompts=4, batch_size=2), planned("orthrus")]
    order, _ = run(items, MeasureSpec(repetitions=2, warmup=1, order="interleaved"))
    assert order == [
        ("ar", 0, 0, 1, None),
        ("orthrus", 0, 0, 1, None),
        ("orthrus", 1, 0, 0, None),  # the cells one ratio compares take turns going first
        ("ar", 1, 0, 0, None),
        ("orthrus-b2", 0, 0, 1, None),
        ("orthrus-b2", 1, 0, 0, None),
        ("orthrus", 0, 1, 1, None),  # and start each round one place further along
        ("ar", 0, 1, 1, None),
        ("ar", 1, 1, 0, None),
        ("orthrus", 1, 1, 0, None),
        ("orthrus-b2", 0, 1, 1, None),
        ("orthrus-b2", 1, 1, 0, None),
    ]


def test_interleaved_runs_the_cells_one_ratio_compares_next_to_each_other():
    """A sweep lists an engine's cells together; interleaved measures an engine beside its AR
    counterpart (same context, batch, ...) instead of a sweep later, in the suite's order otherwise."""
    items = [planned(label, context=ctx, prompts=1) for label in ("ar", "orthrus", "auto") for ctx in (64, 128)]
    items += [planned(label, prompts=2, batch_size=2, context=ctx) for label in ("ar", "auto") for ctx in (128, 64)]
    units = list(schedule(items, MeasureSpec(repetitions=1, warmup=0, order="interleaved"), {}))
    assert [(u.cell.label, u.cell.context_length, u.batch_id) for u in units] == [
        ("ar", 64, 0), ("orthrus", 64, 0), ("auto", 64, 0),
        ("ar", 128, 0), ("orthrus", 128, 0), ("auto", 128, 0),
        ("ar", 128, 0), ("auto", 128, 0), ("ar", 64, 0), ("auto", 64, 0),
    ]  # fmt: skip


@pytest.mark.parametrize("order", ["cells", "rounds", "interleaved"])
def test_every_order_gives_the_same_units_and_resume_measures_only_what_is_missing(order):
    items = [planned("ar"), planned("orthrus", prompts=4, batch_size=2), planned("dlm", skip="cannot batch")]
    measure = MeasureSpec(repetitions=3, warmup=1, order=order)
    full, records = run(items, measure)
    reference, _ = run(items, MeasureSpec(repetitions=3, warmup=1))
    assert {u[:3] + u[4:] for u in full} == {u[:3] + u[4:] for u in reference}
    assert sum(1 for u in full if u[4] == "skipped") == 1
    kept = dict(list(records.items())[: len(records) // 2])  # a run killed halfway
    resumed, _ = run(items, measure, existing=dict(kept))
    assert sorted(u[:3] for u in resumed) == sorted(u[:3] for u in full if not all(k in kept for k in _keys(items, u)))


def _keys(items, unit):
    label, batch_id, repeat, _, close = unit
    item = next(i for i in items if i.cell.label == label)
    if close:
        return [(item.cell.cell_id, CELL_PROMPT, 0)]
    return [(item.cell.cell_id, p.prompt_id, repeat) for p in item.batches[batch_id]]


@pytest.mark.parametrize("order", ["rounds", "interleaved"])
def test_a_failed_batch_is_not_measured_again_in_later_rounds(order):
    order_, _ = run([planned("ar")], MeasureSpec(repetitions=3, warmup=0, order=order), fail={("ar", 0, 0)})
    assert [(b, r) for _, b, r, _, _ in order_] == [(0, 0), (1, 0), (1, 1), (1, 2)]


def test_a_cell_closed_while_measured_gets_no_more_units():
    items = [planned("ar"), planned("orthrus")]
    existing: dict = {}
    seen = []
    for unit in schedule(items, MeasureSpec(repetitions=2, warmup=0), existing):
        seen.append(unit.cell.label)
        if unit.cell.label == "orthrus":  # its engine could not be built: one closing record
            existing[(unit.cell.cell_id, CELL_PROMPT, 0)] = {"status": "failed"}
        else:
            existing.update({key: {"status": "ok"} for key in unit.keys})
    assert seen == ["ar"] * 4 + ["orthrus"]


def test_a_cell_that_cannot_run_is_closed_once():
    items = [planned("broken", failure="no such model")]
    order, existing = run(items, MeasureSpec(repetitions=2, order="rounds"))
    assert order == [("broken", 0, 0, 0, "failed")]
    assert run(items, MeasureSpec(repetitions=2, order="rounds"), existing=existing)[0] == []


def test_shards_slice_the_cells_exactly_once():
    cells = [cell(f"c{i}") for i in range(7)]
    parts = [shard(cells, i, 3) for i in range(3)]
    assert sorted(c.label for part in parts for c in part) == sorted(c.label for c in cells)
    assert parse_shard("1/3") == (1, 3)
    with pytest.raises(UserInputError, match="0..N-1"):
        parse_shard("3/3")
