"""A block size that follows the load (``block_size: auto``) and synthetic acceptance: the chooser takes
plain AR steps where drafting never pays and the largest block where it is free, every K it picks
keeps the output identical to AR, and synthetic records are never counted as exact."""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable

import pytest
import torch
import yaml

from orthrus.engines import block_choice, build_engine
from orthrus.engines.block_choice import (
    CANDIDATES,
    BlockChooser,
    CostTable,
    constant_rate_for,
    expected_by_block,
    expected_tokens,
    read_profile,
    synthetic_acceptance_rates,
)
from orthrus.errors import UserInputError
from orthrus.results.rundir import read_records
from orthrus.run_cli import main as bench_main


def table(cost):
    return CostTable(lambda batch, context, blocks: {block: cost(block) for block in blocks}, None)


def learned(chooser: BlockChooser, rate: float, cycles: int = 400) -> BlockChooser:
    """The chooser after ``cycles`` cycles at K = 32 whose drafts were each kept with probability ``rate``."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(cycles):
        kept = 0
        while kept < 31 and float(torch.rand(1, generator=generator)) < rate:
            kept += 1
        chooser.observe(32, 1, 512, 0.0, [31], [kept])
    return chooser


def test_it_takes_plain_ar_steps_where_drafting_never_pays_and_the_largest_block_where_it_is_free():
    never = learned(BlockChooser(table(lambda k: 1.0 if k == 1 else 10.0 * k)), 0.5)
    assert never.choose(1, 512, 64) == 1
    free = learned(BlockChooser(table(lambda k: 1.0)), 0.9)
    assert free.choose(1, 512, 64) == 32
    assert free.choose(1, 512, 5) == 4  # never a block larger than the budget left
    middle = learned(BlockChooser(table(lambda k: 1.0 + 0.25 * k)), 0.6)
    assert 1 < middle.choose(1, 512, 64) < 32


def test_it_learns_acceptance_and_corrects_costs_from_what_it_measures():
    chooser = learned(BlockChooser(table(lambda k: 1.0)), 0.5)
    assert abs(chooser.rates()[0] - 0.5) < 0.1
    assert expected_tokens([1.0] * 8, 8) == 8 and expected_tokens([0.0] * 8, 8) == 1
    for _ in range(30):  # a machine on which a K = 8 cycle costs four times what the table says
        chooser.observe(8, 1, 512, 4.0, [7], [3])
    assert chooser.predicted(8, 1, 512) > 3.0 and chooser.predicted(4, 1, 512) == 1.0


def test_the_expected_tokens_of_every_candidate_in_one_pass_are_those_of_each_alone():
    generator = random.Random(0)
    for _ in range(50):
        rates = [generator.random() for _ in range(generator.randint(0, 40))]
        together = expected_by_block(rates, CANDIDATES)
        assert together == pytest.approx([expected_tokens(rates, block) for block in CANDIDATES], rel=1e-12)
    for size in range(1, 16):
        values = [generator.random() for _ in range(size)]
        assert block_choice.median(values) == statistics.median(values)
    chooser = learned(BlockChooser(table(lambda k: 1.0)), 0.6)
    means = chooser.rates()
    assert all(a >= b for a, b in zip(means, means[1:])) and len(means) == max(CANDIDATES)
    hopes = chooser.rates(optimistic=True)
    assert all(h >= m for h, m in zip(hopes, means)) and all(a >= b for a, b in zip(hopes, hopes[1:]))


ZOO_RATES = [0.86, 0.41, 0.19, 0.03, 0.01]  # tiny-orthrus's conditional acceptance by position (batch suite)
CPU_COSTS = {1: 1.0, 2: 2.4, 4: 3.0, 8: 3.4, 16: 3.8, 32: 4.7}  # this CPU at batch 1: a cycle costs 2.4-4.7 steps


def steady(seconds: float) -> float:
    return 1.0


def lifetime(
    costs: dict[int, float],
    rates: list[float],
    calls: int = 20,
    tokens: int = 32,
    tabled: dict | None = None,
    pace: Callable[[float], float] = steady,
    kind: type[BlockChooser] = BlockChooser,
) -> dict:
    """An engine's life in a simulation: ``calls`` calls of ``tokens`` tokens at batch 1, each step
    costing ``costs[K]`` (+-5%, seeded) times the machine's ``pace`` at the seconds elapsed so far, and
    each draft kept with its position's conditional rate; the chooser's cost table says ``tabled`` (a
    misread one) or ``costs``. Its speed is against plain AR steps at the same pace."""
    generator = torch.Generator().manual_seed(0)

    def draw() -> float:
        return float(torch.rand(1, generator=generator))

    chooser = kind(table(lambda k: (tabled or costs)[k]))
    chooser.costs.prepare(1, 512, chooser.candidates)
    seconds = committed = 0.0
    chosen = []
    for _ in range(calls):
        left = tokens
        while left > 0:
            size = min(chooser.choose(1, 512, left), left)
            kept = 0
            while kept < size - 1 and kept < len(rates) and draw() < rates[kept]:
                kept += 1
            spent = costs[size] * pace(seconds) * (0.95 + 0.1 * draw())
            chooser.observe(size, 1, 512, spent, [size - 1] if size > 1 else [], [kept] if size > 1 else [])
            seconds, committed, left = seconds + spent, committed + kept + 1, left - kept - 1
            chosen.append(size)
    ar_seconds = 0.0  # plain AR steps at costs[1] each, for as many tokens, on the same machine
    for _ in range(int(committed)):
        ar_seconds += costs[1] * pace(ar_seconds)
    return {"speed": ar_seconds / seconds, "chooser": chooser, "chosen": chosen}


def test_where_drafting_never_pays_trials_stay_within_their_budget_and_it_keeps_ar_speed():
    life = lifetime(CPU_COSTS, ZOO_RATES)
    chooser = life["chooser"]
    assert chooser.trials > 0  # it did try drafting
    assert chooser.explored <= block_choice.EXPLORATION * chooser.elapsed
    assert life["speed"] >= 1 - block_choice.EXPLORATION
    assert life["chosen"][-200:].count(1) >= 190  # plain AR steps, but for a rare trial


def test_without_the_budget_the_trials_would_cost_more_than_it(monkeypatch):
    """The control: the budget is what bounds the trials (unbounded, the same life spends more on them)."""
    budget = block_choice.EXPLORATION
    monkeypatch.setattr(block_choice, "EXPLORATION", 1.0)
    life = lifetime(CPU_COSTS, ZOO_RATES)
    assert life["chooser"].explored > budget * life["chooser"].elapsed


def test_where_drafting_pays_the_trials_find_it():
    costs = {1: 1.0, 2: 1.9, 4: 1.95, 8: 2.0, 16: 2.1, 32: 2.4}  # a GPU-like device: a cycle costs about 2 steps
    life = lifetime(costs, [0.9] * 31)  # the paper's drafter: about 8 tokens per cycle at K = 16
    assert life["speed"] > 2.0
    assert life["chooser"].choose(1, 512, 64) >= 8  # what it learned: long blocks
    assert life["chooser"].explored <= block_choice.EXPLORATION * life["chooser"].elapsed


def test_a_misread_ar_cost_is_checked_with_plain_steps_and_corrected():
    """The table read a plain step at twice its cost (a slow moment when it was measured), so drafting at
    K = 4 looks better than AR under it, and drafting alone never times a plain step: a few plain steps
    within the budget check AR's cost, and it goes back to AR's speed."""
    misread = {**CPU_COSTS, 1: 2.0 * CPU_COSTS[1]}
    life = lifetime(CPU_COSTS, ZOO_RATES, calls=1, tokens=640, tabled=misread)  # one long call: no short tail
    chooser = life["chooser"]
    assert chooser.checks >= 1
    assert chooser.explored <= block_choice.EXPLORATION * chooser.elapsed
    assert abs(chooser.predicted(1, 1, 512) - CPU_COSTS[1]) < 0.06
    assert life["speed"] >= 1 - block_choice.EXPLORATION
    assert life["chosen"][-200:].count(1) >= 190


def test_without_checks_the_misread_cost_would_hold(monkeypatch):
    """The control: with no checks the same life keeps drafting on the misread AR cost, below AR's speed."""
    monkeypatch.setattr(block_choice, "CHECKS", 0)
    life = lifetime(CPU_COSTS, ZOO_RATES, calls=1, tokens=640, tabled={**CPU_COSTS, 1: 2.0 * CPU_COSTS[1]})
    assert life["chooser"].checks == 0
    assert life["speed"] < 0.95 and life["chosen"][-200:].count(1) < 100


def test_corrections_are_kept_per_context_bucket_and_pooled_where_a_bucket_has_none():
    chooser = BlockChooser(table(lambda k: 1.0))
    for _ in range(5):
        chooser.observe(1, 1, 4096, 2.0, [], [])  # plain steps at 4096 cost twice the table
        chooser.observe(1, 1, 512, 1.0, [], [])  # and at 512 what it says
    assert chooser.predicted(1, 1, 4096) == 2.0 and chooser.predicted(1, 1, 512) == 1.0
    assert chooser.predicted(1, 1, 2048) == 1.5  # no step there yet: the median over every bucket
    assert chooser.predicted(1, 4, 2048) == 1.0  # another batch size: the table's until it runs
    for _ in range(4):  # a slow moment: the machine's pace, not the cost of one bucket against another
        chooser.observe(1, 1, 4096, 40.0, [], [])
    assert chooser.corrected(1, 1, 4096) == 2.0 and chooser.pace == 20.0
    assert chooser.predicted(1, 1, 4096) == 2 * chooser.predicted(1, 1, 512) == 40.0


def swinging(seconds: float) -> float:
    """A shared machine: it runs at half speed in every other stretch of 20 step-seconds."""
    return 2.0 if int(seconds // 20) % 2 else 1.0


class Paceless(BlockChooser):
    """The control: corrections in absolute seconds, as if the machine kept one pace."""

    def observe(self, *args, **kwargs) -> None:
        super().observe(*args, **kwargs)
        self.pace = 1.0


def test_a_slow_stretch_of_the_machine_scales_every_k_alike_and_changes_no_choice():
    """Plain steps timed in a slow stretch beside a cycle cost timed in a fast one would make drafting at
    K = 4 look cheaper than AR (and stay so, since drafting then times no plain step): the pace, shared
    by every K, keeps the choice on what differs between them."""
    life = lifetime(CPU_COSTS, ZOO_RATES, calls=1, tokens=2000, pace=swinging)
    assert life["speed"] >= 1 - block_choice.EXPLORATION
    assert life["chosen"].count(1) >= 0.97 * len(life["chosen"])
    assert 1.0 <= life["chooser"].pace <= 2.2


def test_without_the_shared_pace_the_slow_stretches_would_draft_below_ar():
    life = lifetime(CPU_COSTS, ZOO_RATES, calls=1, tokens=2000, pace=swinging, kind=Paceless)
    assert life["speed"] < 0.9 and life["chosen"].count(1) < 0.5 * len(life["chosen"])


def test_where_drafting_pays_a_swinging_machine_still_drafts():
    costs = {1: 1.0, 2: 1.9, 4: 1.95, 8: 2.0, 16: 2.1, 32: 2.4}
    life = lifetime(costs, [0.9] * 31, calls=1, tokens=2000, pace=swinging)
    assert life["speed"] > 2.0 and life["chosen"][-100:].count(1) <= 10


def test_no_position_is_estimated_above_the_one_before_it():
    chooser = BlockChooser(table(lambda k: 1.0))
    assert chooser.rates() == [0.5] * 32  # the prior, before any cycle
    for _ in range(50):  # cycles that reached position 1 and never kept it: positions beyond it unseen
        chooser.observe(32, 1, 512, 0.0, [31], [0])
    rates = chooser.rates(optimistic=True)
    assert rates[0] < 0.2 and all(later <= earlier for earlier, later in zip(rates, rates[1:]))


def test_every_block_it_can_pick_keeps_the_output_identical_to_ar(orthrus_model, prompts):
    engine = build_engine("orthrus", orthrus_model, block_size="auto")
    candidates = engine.chooser.candidates
    picks = iter(candidates * 40)
    engine.chooser.choose = lambda batch, context, budget: next(picks)  # every candidate in turn
    ar = build_engine("ar", orthrus_model)
    for prompt in prompts.values():
        result = engine.generate(prompt, 60)
        assert result.tokens == ar.generate(prompt, 60).tokens
    assert set(result.chosen_blocks) >= {1, 2, 4, 8}
    batch = build_engine("orthrus", orthrus_model, block_size="auto").generate_batch(list(prompts.values()), 40)
    assert [row.tokens for row in batch.rows] == [ar.generate(p, 40).tokens for p in prompts.values()]
    assert all(row.chosen_blocks for row in batch.rows)


def test_synthetic_acceptance_reaches_its_length_and_refuses_what_it_cannot():
    assert abs(expected_tokens([constant_rate_for(6.0, 16)] * 16, 16) - 6.0) < 1e-6
    assert synthetic_acceptance_rates(None, [0.9, 0.5], 8) == [0.9, 0.5]
    for length, rates, words in ((9.0, None, "outside 1..8"), (None, [1.2], r"\[0, 1\]"), (2.0, [0.5], "not both")):
        with pytest.raises(UserInputError, match=words):
            synthetic_acceptance_rates(length, rates, 8)


def test_a_synthetic_engine_accepts_at_its_rate_and_is_not_lossless(orthrus_model, prompts):
    engine = build_engine("orthrus", orthrus_model, block_size=8, synthetic_acceptance_length=6.0)
    result = engine.generate(prompts[300], 400)
    assert not engine.lossless and engine.describe().synthetic
    assert abs(1 + result.acceptance_length - 6.0) < 0.8  # about 70 cycles of a constant-rate draw
    again = build_engine("orthrus", orthrus_model, block_size=8, synthetic_acceptance_length=6.0)
    assert again.generate(prompts[300], 400, seed=0).tokens == result.tokens  # seeded draws


def test_a_profile_of_another_model_device_or_dtype_is_refused(orthrus_model, tmp_path):
    profile = {
        "format": "orthrus-latency-profile",
        "device": {"type": "cpu"},
        "dtype": "float32",
        "model": {"shape": {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": 256}},
        "timings": [{"kind": "ar_step", "block": 1, "context": 64, "median_ms": 1.0}],
    }
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    with pytest.raises(UserInputError, match="no engine steps"):
        read_profile(path, orthrus_model.config, "cpu", "float32")
    profile["timings"].append({"kind": "orthrus_cycle", "block": 2, "context": 64, "median_ms": 1.5})
    path.write_text(json.dumps(profile))
    assert read_profile(path, orthrus_model.config, "cpu", "float32")["dtype"] == "float32"
    with pytest.raises(UserInputError, match="on cpu in float32, this engine runs on cpu in bfloat16"):
        read_profile(path, orthrus_model.config, "cpu", "bfloat16")
    profile["model"]["shape"]["layers"] = 5
    path.write_text(json.dumps(profile))
    with pytest.raises(UserInputError, match="another model \\(layers differ\\)"):
        read_profile(path, orthrus_model.config, "cpu", "float32")


def suite(tmp_path, engines, gates=()):
    raw = {
        "name": "auto",
        "models": {"base": {"path": "tiny-orthrus", "dtype": "float32", "device": "cpu"}},
        "engines": [{"engine": "ar", "model": "base"}, *engines],
        "sweep": {"context_lengths": [64], "max_new_tokens": [24], "block_sizes": [8]},
        "prompts": [{"source": "synthetic", "count": 2}],
        "measure": {"repetitions": 1, "warmup": 1, "threads": 1},
        "gates": list(gates),
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_synthetic_records_are_marked_and_kept_out_of_exactness_gates_and_the_headline(tmp_path):
    engines = [
        {"engine": "orthrus", "model": "base", "options": {"block_size": "auto"}},
        {"engine": "orthrus", "label": "syn", "model": "base", "options": {"synthetic_acceptance_length": 5}},
    ]
    gates = [{"rule": "identity.exact_rate == 1.0", "where": {"engine": "orthrus"}}]
    out = tmp_path / "out"
    assert bench_main([suite(tmp_path, engines, gates), "--out", str(out), "--run-id", "r", "--quiet"]) == 0
    records = read_records(out / "auto" / "r" / "results.jsonl")
    syn = [r for r in records if r["cell"]["label"] == "syn"]
    assert syn and all(r["synthetic"] and r["identity_exact"] is None for r in syn)
    assert all("synthetic" in r["extra"]["identity"] for r in syn)
    auto = [r for r in records if r["cell"]["engine_options"].get("block_size") == "auto"]
    assert auto and all(r["identity_exact"] and r["chosen_blocks"] for r in auto)
    belief = auto[0]["extra"]["block_chooser"]  # what the chooser believed: kept for diagnosing a choice
    assert set(belief["costs_ms"]["256"]) == {"1", "2", "4", "8", "16", "32"}
    assert all(tabled > 0 and corrected > 0 for tabled, corrected in belief["costs_ms"]["256"].values())
    assert belief["own_us_per_step"] > 0  # what choosing cost, timed by the engine (its size is the run's finding)
    html = (out / "auto" / "r" / "report.html").read_text()
    assert "syn vs fastest AR" not in html


@pytest.mark.parametrize(
    "options, words",
    [
        ({"synthetic_acceptance_length": 12}, "outside 1..8"),
        ({"synthetic_rates": [1.5]}, r"\[0, 1\]"),
        ({"synthetic_acceptance_length": ["../../etc/passwd", -1, 1.5]}, "must be a number"),  # found by the fuzz
        ({"synthetic_acceptance_length": True}, "must be a number"),
        ({"synthetic_rates": "0.9"}, "must be a list"),
        ({"synthetic_rates": [0.9, "x"]}, "must be a list"),
        ({"block_size": "auto", "profile": "reports/profiles/intel-r-xeon-r-processor-qwen3-0.6b-float32.json"}, "another model"),
    ],
)
def test_bad_settings_are_one_sentence_before_anything_runs(tmp_path, capsys, options, words):
    out = tmp_path / "out"
    path = suite(tmp_path, [{"engine": "orthrus", "model": "base", "options": options}])
    assert bench_main([path, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(words, err), err
    assert not out.exists()


