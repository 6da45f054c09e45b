"""Batched decoding (generate_batch): every row is the AR output of its own prompt, in fp32.

Rows have ragged prompt lengths and advance at different speeds (Orthrus rows commit their own
accepted counts); each row must equal the same prompt decoded alone by ``ar``, token for token,
sampled rows must have the AR distribution, and each row's cache must hold exactly its prefix.
"""

from __future__ import annotations

import pytest
import torch

from orthrus.engines import ENGINES, build_engine
from orthrus.engines.base import CannotBatchError, SamplingSettings, warp_probs
from orthrus.engines.orthrus_engine import OrthrusEngine
from orthrus.errors import UserInputError
from orthrus.models import OrthrusForCausalLM, load_causal_lm
from tests.conftest import perturb_diffusion_view, random_qwen3
from tests.test_sampling_distribution import chi_square_p_value

MAX_NEW = 24
LENGTHS = (1, 7, 300, 3, 12, 40, 2, 20)  # batch b takes the first b: {1, 7, 300} share every batch >= 3
ENGINE_SETTINGS = [
    ("ar", {}),
    ("hf_generate", {}),
    ("orthrus", {"block_size": 1}),
    ("orthrus", {"block_size": 4}),
    ("orthrus", {"block_size": 16}),
]


@pytest.fixture(scope="module")
def pool() -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(3, 256, (n,), generator=generator).tolist() for n in LENGTHS]


@pytest.fixture(scope="module")
def solo_ar(orthrus_model):
    """Solo ``ar`` output for (prompt, max_new_tokens, eos), computed once each."""
    engine, memo = build_engine("ar", orthrus_model), {}

    def run(prompt: list[int], max_new: int = MAX_NEW, eos: int | None = None) -> list[int]:
        key = (tuple(prompt), max_new, eos)
        if key not in memo:
            memo[key] = engine.generate(prompt, max_new, eos_token_id=eos).tokens
        return memo[key]

    return run


def check_bookkeeping(batch) -> None:
    """Each row's passes are the batch passes it used; the rest are the batch's wasted row-passes."""
    assert batch.wasted_row_passes == batch.row_passes - sum(row.total_forward_passes for row in batch.rows)
    for row in batch.rows:
        assert row.forward_passes["prefill"] == 1
        assert row.forward_passes["draft"] == row.forward_passes["verify"] == row.cycles
        assert batch.start_time == row.start_time < row.end_time <= batch.end_time
        assert sum(count for _, count in row.commits) == row.new_tokens


@pytest.mark.parametrize(
    "engine_name, options", ENGINE_SETTINGS, ids=[n + "".join(f"-K{v}" for v in o.values()) for n, o in ENGINE_SETTINGS]
)
@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])
def test_every_row_equals_solo_ar(orthrus_model, pool, solo_ar, engine_name, options, batch_size):
    engine = build_engine(engine_name, orthrus_model, **options)
    prompts = pool[:batch_size]
    batch = engine.generate_batch(prompts, MAX_NEW)
    assert batch.batch_size == batch_size
    for r, (prompt, row) in enumerate(zip(prompts, batch.rows)):
        assert row.tokens == solo_ar(prompt), f"row {r} (prompt of {len(prompt)} tokens)"
        assert row.prompt_tokens == len(prompt) and row.stop_reason == "max_new_tokens"
    check_bookkeeping(batch)
    if engine_name == "orthrus":  # batching changes neither drafts nor acceptance: the same cycles as alone
        for prompt, row in zip(prompts, batch.rows):
            alone = engine.generate(prompt, MAX_NEW)
            assert (row.drafted_per_cycle, row.accepted_per_cycle) == (
                alone.drafted_per_cycle,
                alone.accepted_per_cycle,
            )
            assert row.forward_passes == alone.forward_passes


@pytest.mark.parametrize("block_size", [4, 16])
def test_max_new_tokens_around_the_block_size(orthrus_model, pool, solo_ar, block_size):
    engine = build_engine("orthrus", orthrus_model, block_size=block_size)
    prompts = pool[:3]
    for max_new in (1, block_size - 1, block_size, block_size + 1):
        batch = engine.generate_batch(prompts, max_new)
        assert [row.tokens for row in batch.rows] == [solo_ar(p, max_new) for p in prompts], max_new
        check_bookkeeping(batch)


def eos_inside_accepted_block(batch) -> list[int]:
    """Tokens first produced inside a multi-token commit (not its last token), over all rows."""
    found = []
    for row in batch.rows:
        position = 0
        for _, count in row.commits:
            for offset in range(count - 1):
                token = row.tokens[position + offset]
                if row.tokens.index(token) == position + offset:
                    found.append(token)
            position += count
    return found


def test_eos_inside_an_accepted_block_in_some_rows_only(orthrus_model, pool, solo_ar):
    engine = build_engine("orthrus", orthrus_model, block_size=4)
    plain = engine.generate_batch(pool, MAX_NEW)
    checked = 0
    for eos in dict.fromkeys(eos_inside_accepted_block(plain)):
        stops = [eos in row.tokens for row in plain.rows]
        if all(stops):
            continue
        expected = [solo_ar(p, MAX_NEW, eos) for p in pool]
        for name, options in [("orthrus", {"block_size": 4}), ("ar", {}), ("hf_generate", {})]:
            batch = build_engine(name, orthrus_model, **options).generate_batch(pool, MAX_NEW, eos_token_id=eos)
            assert [row.tokens for row in batch.rows] == expected, (name, eos)
            assert [row.stop_reason == "eos" for row in batch.rows] == stops
            assert batch.wasted_row_passes > 0  # the stopped rows rode along until the others ended
            check_bookkeeping(batch)
        checked += 1
        if checked == 2:
            break
    assert checked >= 1


# ---------------------------------------------------------------------- sampling
VOCAB, SAMPLES = 12, 2000
SAMPLING_PROMPTS = [[5, 7, 3, 9, 4], [8], [3, 3, 10, 6, 11, 4, 9, 7, 5], [6, 4]]


@pytest.fixture(scope="module")
def small_vocab_model() -> OrthrusForCausalLM:
    model = OrthrusForCausalLM.from_base(
        random_qwen3(vocab=VOCAB, hidden=32, scale=3.0, seed=3), block_size=4, mask_token_id=2
    )
    perturb_diffusion_view(model, scale=3.0)  # drafts from a view that clearly differs from AR
    return model


def exact_pair_distribution(model, prompt: list[int], settings: SamplingSettings) -> torch.Tensor:
    """P(second token, third token) of AR sampling after ``prompt``, [V, V]."""
    pairs = torch.cartesian_prod(torch.arange(VOCAB), torch.arange(VOCAB))
    prefixes = torch.cat([torch.tensor(prompt).expand(len(pairs), -1), pairs], dim=1)
    with torch.no_grad():
        logits = model(prefixes)
    n = len(prompt)
    p1 = warp_probs(logits[0, n - 1], settings)
    p2 = warp_probs(logits[:, n], settings).view(VOCAB, VOCAB, VOCAB)[:, 0]
    p3 = warp_probs(logits[:, n + 1], settings).view(VOCAB, VOCAB, VOCAB)
    return (p1[:, None, None] * p2[:, :, None] * p3).sum(0)


def sampled_pairs_per_row(engine, settings: SamplingSettings) -> list[torch.Tensor]:
    counts = [torch.zeros(VOCAB, VOCAB) for _ in SAMPLING_PROMPTS]
    for seed in range(SAMPLES):
        batch = engine.generate_batch(SAMPLING_PROMPTS, 3, temperature=settings.temperature, seed=seed)
        for row, tally in zip(batch.rows, counts):
            tally[row.tokens[1], row.tokens[2]] += 1
    return counts


def test_sampled_rows_have_the_ar_distribution_and_a_broken_rule_is_caught(small_vocab_model):
    settings = SamplingSettings(1.0)
    exact = [exact_pair_distribution(small_vocab_model, p, settings) for p in SAMPLING_PROMPTS]
    orthrus = sampled_pairs_per_row(build_engine("orthrus", small_vocab_model, block_size=4), settings)
    broken = sampled_pairs_per_row(
        build_engine("orthrus", small_vocab_model, block_size=4, accept_rule="accept_all"), settings
    )
    for r, probs in enumerate(exact):
        assert chi_square_p_value(orthrus[r], probs) > 1e-3, f"row {r}"
    assert max(chi_square_p_value(counts, probs) for counts, probs in zip(broken, exact)) < 1e-6


# ---------------------------------------------------------------------- the cache
class RowCacheCheckingEngine(OrthrusEngine):
    """Orthrus whose after_cycle hook checks every row's cache against a fresh AR prefill of it."""

    prompts: list[list[int]] = []

    def after_cycle(self, cache, committed_lengths, tokens):
        for r, (prompt, length, out) in enumerate(zip(self.prompts, committed_lengths, tokens)):
            assert length == len(prompt) + len(out) - 1, f"row {r}"
            fresh = self.model.new_cache()
            self.model.forward_ar(torch.tensor([prompt + out[:-1]]), fresh, 0)
            for held, exact in zip((*cache.keys, *cache.values), (*fresh.keys, *fresh.values)):
                assert torch.allclose(held[r, :, :length], exact[0], atol=1e-5), f"row {r}"
        self.checked += 1


def test_each_row_cache_holds_exactly_its_committed_prefix(orthrus_model, pool, solo_ar):
    engine = RowCacheCheckingEngine(orthrus_model, block_size=4)
    engine.prompts, engine.checked = [pool[1], pool[0], pool[5]], 0
    batch = engine.generate_batch(engine.prompts, 30)
    assert engine.checked == batch.forward_passes["verify"] + batch.forward_passes["decode"] > 5
    assert [row.tokens for row in batch.rows] == [solo_ar(p, 30) for p in engine.prompts]


def test_orthrus_holds_at_most_one_block_per_row_more_than_ar(orthrus_model):
    block_size, batch_size = 8, 3
    per_token = orthrus_model.kv_bytes_per_token()
    extras = []
    for context in (100, 1000):
        generator = torch.Generator().manual_seed(context)
        prompts = [torch.randint(3, 256, (context - 9 * r,), generator=generator).tolist() for r in range(batch_size)]
        ar = build_engine("ar", orthrus_model).generate_batch(prompts, 16).kv_cache_bytes_peak
        orthrus = build_engine("orthrus", orthrus_model, block_size=block_size).generate_batch(prompts, 16)
        assert ar >= batch_size * (context + 16 - 1) * per_token
        extras.append(orthrus.kv_cache_bytes_peak - ar)
        assert orthrus.rows[0].kv_cache_bytes_peak == orthrus.kv_cache_bytes_peak // batch_size
    assert extras[0] == extras[1] and 0 <= extras[0] <= batch_size * block_size * per_token


# ---------------------------------------------------------------------- the zoo
def test_zoo_tiny_orthrus_rows_equal_solo_ar():
    model = load_causal_lm("tiny-orthrus", dtype="float32")
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 4000, (n,), generator=generator).tolist() for n in (1, 7, 60, 20)]
    ar = build_engine("ar", model)
    orthrus = build_engine("orthrus", model, block_size=16)
    batch = orthrus.generate_batch(prompts, 40)
    for prompt, row in zip(prompts, batch.rows):
        assert row.tokens == ar.generate(prompt, 40).tokens
        assert row.accepted_per_cycle == orthrus.generate(prompt, 40).accepted_per_cycle
    assert [row.tokens for row in ar.generate_batch(prompts, 40).rows] == [row.tokens for row in batch.rows]


# ---------------------------------------------------------------------- what a user can get wrong
@pytest.mark.parametrize(
    "prompts, says",
    [
        ([], "the batch is empty"),
        ([[5, 6], [5] * 5000], "prompt 1 of the batch (5000 tokens)"),
        ([[5, 6], [7], [5, 999]], "token ids of prompt 2 of the batch must be in [0, 256)"),
    ],
    ids=["empty", "longer_than_context", "out_of_vocabulary"],
)
@pytest.mark.parametrize("engine_name", ["ar", "orthrus", "hf_generate"])
def test_bad_batches_are_one_sentence(orthrus_model, prompts, says, engine_name):
    engine = build_engine(engine_name, orthrus_model)
    with pytest.raises(UserInputError) as caught:
        engine.generate_batch(prompts, 8)
    message = str(caught.value)
    assert says in message and "\n" not in message and message.endswith(".")


def test_engines_that_cannot_batch_say_so(orthrus_model, pool, solo_ar):
    batchable = {name for name, cls in ENGINES.items() if cls.batchable}
    assert {"ar", "orthrus", "hf_generate"} <= batchable
    engine = build_engine("prompt_lookup", orthrus_model)
    assert not engine.batchable
    with pytest.raises(CannotBatchError, match="cannot batch .*batch size 1"):
        engine.generate_batch(pool[:2], 8)
    single = engine.generate_batch(pool[1:2], 8)  # a batch of one still runs
    assert single.batch_size == 1 and single.rows[0].tokens == solo_ar(pool[1], 8)
    assert isinstance(CannotBatchError("x"), UserInputError)  # the harness records it as a skip with the reason
