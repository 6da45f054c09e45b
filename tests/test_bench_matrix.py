"""Sweep expansion: lists multiply, axes that do not apply collapse, exclude/include as in a GitHub matrix."""

from __future__ import annotations

import copy

import pytest

from orthrus.bench.matrix import expand
from orthrus.bench.schedule import parse_shard, shard
from orthrus.bench.suite.overrides import apply_quick, apply_sets, split_key_path
from orthrus.bench.suite.validate import load_suite
from orthrus.errors import UserInputError

RAW = {
    "name": "matrix_test",
    "models": {"base": "tiny-draft"},
    "engines": [
        {"engine": "ar", "model": "base"},
        {"engine": "orthrus", "model": "base"},
        {"engine": "orthrus", "label": "orthrus-dyn", "model": "base", "options": {"cache": "dynamic"}},
    ],
    "sweep": {
        "context_lengths": [64, 128],
        "block_sizes": [4, 8],
        "temperatures": [0.0, 0.7],
        "max_new_tokens": 8,
    },
    "prompts": {"source": "synthetic", "count": 1},
}


def _suite(**sweep_changes):
    raw = copy.deepcopy(RAW)
    raw["sweep"].update(sweep_changes)
    return load_suite(None, raw=raw)


def _axes(cells):
    return [
        (c.params["label"], c.params["context_length"], c.params["block_size"], c.params["temperature"]) for c in cells
    ]


def test_lists_multiply_and_block_size_collapses_for_engines_without_one():
    cells = expand(_suite())
    by_label = {}
    for cell in cells:
        by_label.setdefault(cell.params["label"], []).append(cell)
    assert len(by_label["ar"]) == 2 * 2  # contexts x temperatures; no block size
    assert {c.params["block_size"] for c in by_label["ar"]} == {None}
    assert len(by_label["orthrus"]) == len(by_label["orthrus-dyn"]) == 2 * 2 * 2
    assert [c.params["label"] for c in cells][:4] == ["ar"] * 4  # reference engine first
    assert len({c.cell_id for c in cells}) == len(cells)
    assert all(c.params["engine"] == "orthrus" for c in by_label["orthrus-dyn"])


def test_exclude_drops_every_partial_match_and_engine_names_match_labels_and_kinds():
    cells = expand(
        _suite(exclude=[{"engine": "orthrus", "block_size": 8}, {"temperature": 0.7, "context_length": 128}])
    )
    axes = _axes(cells)
    assert not [a for a in axes if a[0].startswith("orthrus") and a[2] == 8]  # 'orthrus' matched both orthrus engines
    assert not [a for a in axes if a[3] == 0.7 and a[1] == 128]
    assert ("ar", 128, None, 0.0) in axes and ("orthrus-dyn", 64, 4, 0.7) in axes
    only_label = expand(_suite(exclude=[{"engine": "orthrus-dyn"}]))
    assert {c.params["label"] for c in only_label} == {"ar", "orthrus"}


def test_include_adds_new_combinations_once_and_can_re_add_excluded_ones():
    base = _axes(expand(_suite()))
    cells = expand(
        _suite(include=[{"engine": "orthrus-dyn", "context_length": 256, "block_size": 16, "temperature": 0.0}])
    )
    axes = _axes(cells)
    assert len(axes) == len(base) + 1 and ("orthrus-dyn", 256, 16, 0.0) in axes
    cells = expand(_suite(include=[{"engine": "orthrus", "context_length": 256, "block_size": 16, "temperature": 0.0}]))
    assert len(cells) == len(base) + 2  # the engine name matches both orthrus engines
    # unnamed axes expand: every temperature for the new context length
    cells = expand(_suite(include=[{"engine": "ar", "context_length": 256}]))
    assert {a[3] for a in _axes(cells) if a[1] == 256} == {0.0, 0.7}
    # an include that is already in the matrix adds nothing
    assert len(expand(_suite(include=[{"engine": "ar", "context_length": 64}]))) == len(base)
    # exclude first, then include brings a combination back
    cells = expand(
        _suite(exclude=[{"engine": "ar"}], include=[{"engine": "ar", "context_length": 64, "temperature": 0.0}])
    )
    assert [a for a in _axes(cells) if a[0] == "ar"] == [("ar", 64, None, 0.0)]


def test_context_length_does_not_apply_to_inline_prompts():
    raw = copy.deepcopy(RAW)
    raw["prompts"] = [
        {"source": "synthetic", "count": 1},
        {"source": "inline", "name": "mine", "prompts": [{"ids": [5, 6, 7]}, "def f(x):\n"]},
    ]
    cells = expand(load_suite(None, raw=raw))
    inline = [c for c in cells if c.params["prompt_source"] == "mine"]
    assert inline and {c.params["context_length"] for c in inline} == {None}
    assert len([c for c in inline if c.params["label"] == "ar"]) == 2  # temperatures only


def test_cell_ids_are_stable_and_depend_on_every_setting():
    first = {c.cell_id for c in expand(_suite())}
    assert first == {c.cell_id for c in expand(_suite())}
    changed = {c.cell_id for c in expand(_suite(max_new_tokens=9))}
    assert not first & changed


def test_shards_partition_the_matrix():
    cells = expand(_suite())
    parts = [shard(cells, i, 3) for i in range(3)]
    ids = [c.cell_id for part in parts for c in part]
    assert sorted(ids) == sorted(c.cell_id for c in cells) and len(set(ids)) == len(ids)
    assert parse_shard("1/3") == (1, 3)
    with pytest.raises(UserInputError):
        parse_shard("3/3")


def test_select_quick_and_set_overrides():
    raw = copy.deepcopy(RAW)
    raw["quick"] = {"sweep.context_lengths": [64], "sweep.temperatures": 0.0}
    suite = load_suite(None, raw=raw, quick=True, engines=["orthrus"])
    assert {c.params["label"] for c in expand(suite)} == {"orthrus"}
    assert {c.params["context_length"] for c in expand(suite)} == {64}
    assert suite.measure.repetitions == 1 and "quick" not in suite.raw
    assert split_key_path("engines[2].options.block_size") == ["engines", 2, "options", "block_size"]
    assert split_key_path("engines.2.options") == ["engines", 2, "options"]
    changed = apply_sets(RAW, ["sweep.context_lengths=[32, 48]", "engines[1].options={block_size: 4}"])
    assert changed["sweep"]["context_lengths"] == [32, 48] and changed["engines"][1]["options"] == {"block_size": 4}
    assert RAW["sweep"]["context_lengths"] == [64, 128]  # the original is untouched
    assert apply_quick(RAW)["prompts"]["count"] == 1


def test_a_validated_suite_carries_its_cells_expanded_once():
    suite = _suite(exclude=[{"engine": "orthrus-dyn"}])
    assert [c.cell_id for c in suite.cells] == [c.cell_id for c in expand(suite)]
    assert {c.params["label"] for c in suite.cells} == {"ar", "orthrus"}
