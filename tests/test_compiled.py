"""Compiled engines (``compile: true``): the same greedy tokens as eager ``ar`` in fp32, no step that
recompiles as the sequence grows, compile time counted apart from generation time, and one sentence
where compiling is not possible. Small models only: inductor's C++ compile of one graph takes
10-40 s on a 2-core CPU. (A compiled engine's speed is measured by suites/compiled.yaml, not here.)"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from orthrus.engines import build_engine
from orthrus.errors import UserInputError

NEW = 64  # tokens per generation: the whole sequence grows by 64 positions under one graph per shape


@pytest.fixture(scope="module")
def engines(orthrus_model):
    """Compiled engines, built once (each compiles its graphs on first use)."""
    return {
        "ar": build_engine("ar", orthrus_model, compile=True),
        "orthrus-K4": build_engine("orthrus", orthrus_model, block_size=4, compile=True),
        "orthrus-K8": build_engine("orthrus", orthrus_model, block_size=8, compile=True),
    }


@pytest.fixture(scope="module")
def prompts():
    generator = torch.Generator().manual_seed(7)
    # lengths 1..150 with 64 new tokens fit one capacity bucket (256 slots): one graph per shape
    return [torch.randint(3, 256, (n,), generator=generator).tolist() for n in (1, 7, 90, 150)]


@pytest.mark.parametrize("name", ["ar", "orthrus-K4", "orthrus-K8"])
def test_compiled_greedy_tokens_equal_eager_ar(orthrus_model, engines, prompts, name):
    eager = build_engine("ar", orthrus_model)
    for prompt in prompts:
        assert engines[name].generate(prompt, NEW).tokens == eager.generate(prompt, NEW).tokens, len(prompt)
    for budget in (1, 3, 4, 5):  # around the block size: a compiled step keeps whole blocks, capped by the budget
        assert engines[name].generate(prompts[2], budget).tokens == eager.generate(prompts[2], budget).tokens


def test_no_step_recompiles_as_the_sequence_grows(engines, prompts):
    engine = engines["orthrus-K4"]
    engine.generate(prompts[1], NEW)  # compiled here (or earlier): decode, draft(4), verify(4) at this capacity
    graphs, seconds = engine.describe().compiled_graphs, engine.describe().compile_s
    assert 1 <= graphs <= 4 and seconds > 0  # decode, draft and verify, and at most one re-specialisation
    previous = torch._dynamo.config.error_on_recompile
    torch._dynamo.config.error_on_recompile = True  # any guard failure from here on is an error
    try:
        for prompt in prompts:
            result = engine.generate(prompt, NEW)
            assert result.new_tokens == NEW and result.cycles > 5
    finally:
        torch._dynamo.config.error_on_recompile = previous
    assert engine.describe().compiled_graphs == graphs and engine.describe().compile_s == seconds


def test_compile_time_is_not_generation_time(orthrus_model):
    engine = build_engine("orthrus", orthrus_model, block_size=4, compile=True)
    prompt = torch.randint(3, 256, (300,), generator=torch.Generator().manual_seed(3)).tolist()
    result = engine.generate(prompt, NEW)  # its graphs are compiled before its clock starts
    assert engine.describe().compiled_graphs >= 1
    assert result.e2e_ms < 1e3 * engine.describe().compile_s / 2  # compiling takes seconds; none of it is in e2e


def test_a_compiled_batch_equals_solo_ar(orthrus_model, prompts):
    engine = build_engine("orthrus", orthrus_model, block_size=4, compile=True)
    eager = build_engine("ar", orthrus_model)
    batch = engine.generate_batch(prompts, NEW)
    assert [row.tokens for row in batch.rows] == [eager.generate(p, NEW).tokens for p in prompts]
    assert 1 <= engine.describe().compiled_graphs <= 4


def test_where_compiling_is_not_possible_it_says_why(orthrus_model, monkeypatch):
    with pytest.raises(UserInputError, match="cache: static"):
        build_engine("orthrus", orthrus_model, cache="dynamic", compile=True)
    monkeypatch.setattr("orthrus.engines.decoding.shutil.which", lambda name: None)
    with pytest.raises(UserInputError, match="C\\+\\+ compiler .* install g\\+\\+ or set compile: false"):
        build_engine("ar", orthrus_model, compile=True)
