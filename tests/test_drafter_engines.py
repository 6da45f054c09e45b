"""The DFlash and EAGLE-3 engines are lossless and keep their books: greedy ``dflash`` and ``eagle3`` ==
``ar`` token for token in fp32 (block sizes, prompt lengths 1 / 7 / 300, max_new_tokens around the block
size, EOS inside an accepted block and as the correction, batch 1 and 4 with ragged prompts), with a
random-weight drafter (identity holds for any drafter) and with an oracle drafter whose drafts copy the
target's (then acceptance is high: the accepting path is exercised); after every cycle each cache holds
exactly the committed prefix; the drafter's own cache grows with the context while Orthrus's extra is
flat; and each engine says what it adds over the base model. Drafters: tests/drafter_models.py."""

from __future__ import annotations

import pytest
import torch

from orthrus.engines import build_engine
from orthrus.engines.dflash import DFlashEngine
from orthrus.engines.eagle3 import Eagle3Engine
from orthrus.errors import UserInputError
from tests.drafter_models import (
    CYCLE,
    PERIOD,
    oracle_dflash,
    oracle_eagle3,
    periodic_target,
    random_dflash,
    random_eagle3,
)

ENGINES = ("dflash", "eagle3")
LENGTHS = (1, 7, 300, 12)  # batch 4 takes all: ragged


@pytest.fixture(scope="module")
def drafters(orthrus_model, tmp_path_factory) -> dict:
    """Random drafters for the conftest target (2 layers): DFlash of 2 layers, EAGLE-3 over half the
    vocabulary (greedy drafts go through d2t too)."""
    root = tmp_path_factory.mktemp("random")
    return {
        "dflash": random_dflash(orthrus_model, root / "dflash", num_layers=2, mask_token_id=2),
        "eagle3": random_eagle3(orthrus_model, root / "eagle3", draft_vocab=range(0, 256, 2), aux_layer_ids=[0, 1, 1]),
    }


@pytest.fixture(scope="module")
def periodic() -> dict:
    return {"target": periodic_target()}


@pytest.fixture(scope="module")
def oracles(periodic, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("oracle")
    target = periodic["target"]
    return {
        "dflash": oracle_dflash(target, root / "dflash"),
        "eagle3": oracle_eagle3(target, root / "eagle3", draft_vocab=[*CYCLE, 40, 41]),
    }


def make_prompts(vocab: int, seed: int = 123) -> dict[int, list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.randint(3, vocab, (n,), generator=generator).tolist() for n in LENGTHS}


@pytest.fixture(scope="module")
def solo_ar():
    memo: dict = {}

    def run(model, prompt: list[int], max_new: int, eos: int | None = None) -> list[int]:
        key = (id(model), tuple(prompt), max_new, eos)
        if key not in memo:
            memo[key] = build_engine("ar", model).generate(prompt, max_new, eos_token_id=eos).tokens
        return memo[key]

    return run


def check_books(result, name: str) -> None:
    passes = result.forward_passes
    assert passes["prefill"] == 1 and passes["verify"] == result.cycles
    # DFlash: one drafter pass per cycle; EAGLE-3: a chain of one pass per draft
    assert passes["draft"] == (result.cycles if name == "dflash" else sum(result.drafted_per_cycle))
    assert result.new_tokens == passes["decode"] + result.cycles + 1 + sum(result.accepted_per_cycle)
    assert sum(count for _, count in result.commits) == result.new_tokens


# ---------------------------------------------------------------------- greedy identity
@pytest.mark.parametrize("block_size", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("name", ENGINES)
def test_greedy_equals_ar_with_a_random_drafter(orthrus_model, drafters, solo_ar, name, block_size):
    engine = build_engine(name, orthrus_model, draft_model=drafters[name], block_size=block_size)
    for n, prompt in make_prompts(256).items():
        if n == 12:
            continue
        for max_new in sorted({1, 2, max(block_size - 1, 1), block_size, block_size + 1, 40}):
            result = engine.generate(prompt, max_new)
            assert result.tokens == solo_ar(orthrus_model, prompt, max_new), (n, max_new)
            check_books(result, name)
            if block_size == 1:  # plain AR decoding: the drafter neither runs nor holds anything
                assert result.cycles == 0 and result.forward_passes["draft"] == 0
                assert result.draft_kv_cache_bytes_peak == 0


@pytest.mark.parametrize("block_size", [4, 8, 16])
@pytest.mark.parametrize("name", ENGINES)
def test_an_oracle_drafter_is_accepted_and_the_output_is_still_ar(periodic, oracles, solo_ar, name, block_size):
    target = periodic["target"]
    engine = build_engine(name, target, draft_model=oracles[name], block_size=block_size)
    for n, prompt in make_prompts(64).items():
        for max_new in (1, block_size - 1, block_size, block_size + 1, 80):
            result = engine.generate(prompt, max_new)
            assert result.tokens == solo_ar(target, prompt, max_new), (n, max_new)
            check_books(result, name)
    # once the context holds a period of the text, (nearly) every draft is right
    periodic_prompt = make_prompts(64)[7] + CYCLE * 2
    result = engine.generate(periodic_prompt, 80)
    assert result.tokens == solo_ar(target, periodic_prompt, 80)
    assert result.acceptance_length >= 0.9 * (block_size - 1), result.accepted_per_cycle
    assert len(set(result.tokens)) == PERIOD  # a varied text, not one token repeated


def _eos_case(result, inside_block: bool) -> int | None:
    """A token whose first occurrence is inside an accepted block (or is a multi-token commit's last)."""
    position = 0
    for _, count in result.commits:
        for offset in range(count):
            token = result.tokens[position + offset]
            first = result.tokens.index(token) == position + offset
            if count >= 2 and first and ((offset == count - 1) != inside_block):
                return token
        position += count
    return None


@pytest.mark.parametrize("inside_block", [True, False], ids=["eos_in_accepted_block", "eos_is_correction"])
@pytest.mark.parametrize("name", ENGINES)
def test_eos_stops_like_ar(periodic, oracles, solo_ar, name, inside_block):
    target = periodic["target"]
    checked = 0
    for block_size in (4, 8):
        engine = build_engine(name, target, draft_model=oracles[name], block_size=block_size)
        for prompt in (make_prompts(64)[7] + CYCLE * 2, make_prompts(64)[300]):
            eos = _eos_case(engine.generate(prompt, 60), inside_block)
            if eos is None:
                continue
            expected = solo_ar(target, prompt, 60, eos)
            assert expected[-1] == eos
            got = engine.generate(prompt, 60, eos_token_id=eos)
            assert got.tokens == expected and got.stop_reason == "eos"
            checked += 1
    assert checked >= 2


# ---------------------------------------------------------------------- batches
@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("name", ENGINES)
def test_every_row_of_a_batch_equals_solo_ar_and_drafts_as_alone(
    orthrus_model, drafters, periodic, oracles, solo_ar, name, batch_size
):
    cases = [
        (orthrus_model, drafters[name], list(make_prompts(256).values())),
        (
            periodic["target"],
            oracles[name],
            [p + CYCLE * 2 if i % 2 else p for i, p in enumerate(make_prompts(64).values())],
        ),
    ]
    for target, drafter, pool in cases:
        engine = build_engine(name, target, draft_model=drafter, block_size=8)
        prompts = pool[:batch_size]
        batch = engine.generate_batch(prompts, 30)
        assert batch.batch_size == batch_size
        for prompt, row in zip(prompts, batch.rows):
            assert row.tokens == solo_ar(target, prompt, 30)
            alone = engine.generate(prompt, 30)
            assert (row.drafted_per_cycle, row.accepted_per_cycle) == (
                alone.drafted_per_cycle,
                alone.accepted_per_cycle,
            )
            assert row.forward_passes == alone.forward_passes
        assert batch.wasted_row_passes == batch.row_passes - sum(row.total_forward_passes for row in batch.rows)
        assert batch.draft_kv_cache_bytes_peak and batch.kv_cache_bytes_peak
        assert all(row.draft_kv_cache_bytes_peak == batch.draft_kv_cache_bytes_peak // batch_size for row in batch.rows)


@pytest.mark.parametrize("name", ENGINES)
def test_eos_in_some_rows_of_a_batch(periodic, oracles, solo_ar, name):
    target = periodic["target"]
    prompts = [p + CYCLE * 2 if i % 2 else p for i, p in enumerate(make_prompts(64).values())]
    engine = build_engine(name, target, draft_model=oracles[name], block_size=8)
    eos = engine.generate(prompts[1], 40).tokens[10]  # inside the periodic text: some rows reach it, maybe not all
    batch = engine.generate_batch(prompts, 40, eos_token_id=eos)
    assert [row.tokens for row in batch.rows] == [solo_ar(target, p, 40, eos) for p in prompts]
    assert any(row.stop_reason == "eos" for row in batch.rows)


# ---------------------------------------------------------------------- the caches
class CacheChecking:
    """After every cycle: the target's cache holds each row's committed prefix (a fresh AR prefill of
    it), and the drafter's cache exactly the positions it took in, recomputed afresh from the target's
    hidden states of the committed text; the rest of the committed positions wait, with those hidden
    states."""

    prompts: list[list[int]] = []

    def after_cycle(self, cache, lengths, drafter, tokens):
        for r, (prompt, length, out) in enumerate(zip(self.prompts, lengths, tokens)):
            text = prompt + out
            assert length == len(prompt) + len(out) - 1, f"row {r}"
            fresh = self.model.new_cache()
            self.model.forward_ar(torch.tensor([text[:-1]]), fresh, 0)
            for held, exact in zip((*cache.keys, *cache.values), (*fresh.keys, *fresh.values)):
                assert torch.allclose(held[r, :, :length], exact[0], atol=1e-5), f"row {r}"
            taken = drafter.lengths[r]
            assert taken + len(drafter.tokens[r]) == length and drafter.tokens[r] == text[taken + 1 : length + 1]
            _, features = self.model.forward_ar(
                torch.tensor([text[:length]]), None, 0, hidden_layers=self.hidden_layers
            )
            assert torch.allclose(drafter.features[r], features[0, taken:length], atol=1e-5), f"row {r}"
            own = self.drafter.new_cache(1, drafter.cache.capacity)
            self.take_in_afresh(features[:, :taken], text[1 : taken + 1], own)
            for held, exact in zip((*drafter.cache.keys, *drafter.cache.values), (*own.keys, *own.values)):
                assert torch.allclose(held[r, :, :taken], exact[0, :, :taken], atol=1e-5), f"row {r}"
        self.checked += 1


class CheckedDFlash(CacheChecking, DFlashEngine):
    def take_in_afresh(self, features, tokens, cache):
        self.drafter.write_context(features, [0], [features.shape[1]], cache)


class CheckedEagle3(CacheChecking, Eagle3Engine):
    def take_in_afresh(self, features, tokens, cache):
        if not tokens:
            return
        at = torch.arange(len(tokens)).unsqueeze(0)
        embeds = self.model.model.embed_tokens(torch.tensor([tokens]))
        self.drafter.forward_pairs(self.drafter.fuse(features), embeds, at, at, cache)


@pytest.mark.parametrize("engine_class", [CheckedDFlash, CheckedEagle3], ids=ENGINES)
def test_both_caches_hold_exactly_the_committed_prefix_after_every_cycle(periodic, oracles, engine_class):
    target = periodic["target"]
    engine = engine_class(target, draft_model=oracles[engine_class.draft_model_kind], block_size=4)
    pool = make_prompts(64)
    engine.prompts, engine.checked = [pool[7] + CYCLE * 2, pool[1], pool[12]], 0
    batch = engine.generate_batch(engine.prompts, 30)
    assert engine.checked == batch.forward_passes["verify"] + batch.forward_passes["decode"] > 5
    assert sum(a for row in batch.rows for a in row.accepted_per_cycle) > 10  # commits of several tokens


def test_the_drafter_cache_grows_with_the_context_while_orthrus_extra_is_flat(orthrus_model, drafters):
    new, extras, draft = 16, [], {name: [] for name in ENGINES}
    for context in (100, 1000):
        prompt = torch.randint(3, 256, (context,), generator=torch.Generator().manual_seed(context)).tolist()
        ar = build_engine("ar", orthrus_model).generate(prompt, new)
        orthrus = build_engine("orthrus", orthrus_model, block_size=8).generate(prompt, new)
        extras.append(orthrus.kv_cache_bytes_peak - ar.kv_cache_bytes_peak)
        assert orthrus.draft_kv_cache_bytes_peak is None and ar.draft_kv_cache_bytes_peak is None
        for name in ENGINES:
            engine = build_engine(name, orthrus_model, draft_model=drafters[name], block_size=8)
            result = engine.generate(prompt, new)
            assert result.kv_cache_bytes_peak == ar.kv_cache_bytes_peak  # the target's cache: AR's, recorded apart
            per_token = engine.describe().draft_kv_bytes_per_token
            assert result.draft_kv_cache_bytes_peak == (context + new + 1) * per_token  # one spill slot
            draft[name].append(result.draft_kv_cache_bytes_peak)
    assert extras[0] == extras[1]
    for name in ENGINES:
        assert (
            draft[name][1] - draft[name][0]
            == 900 * build_engine(name, orthrus_model, draft_model=drafters[name]).describe().draft_kv_bytes_per_token
        )


def test_each_engine_states_the_parameters_it_adds(orthrus_model, drafters, qwen3_base):
    def count(tensors) -> int:
        return sum(t.numel() for t in {t.data_ptr(): t for t in tensors}.values())

    facts = {name: build_engine(name, orthrus_model, draft_model=drafters[name]).describe() for name in ENGINES}
    for name in ENGINES:
        own = count(drafters[name].parameters())
        assert facts[name].extra_parameters == own > 0
        assert facts[name].extra_parameter_bytes == 4 * own  # fp32
        assert facts[name].needs_draft_model and facts[name].lossless
    assert facts["dflash"].block_size == 16  # the drafter's config says 16
    assert facts["eagle3"].block_size == 4  # the speculators config proposes 3 tokens
    assert build_engine("orthrus", orthrus_model).describe().extra_parameters == count(
        orthrus_model.diffusion_parameters()
    )
    assert build_engine("ar", orthrus_model).describe().extra_parameters == 0
    draft = build_engine("assisted", orthrus_model, draft_model=qwen3_base)
    assert draft.describe().extra_parameters == count(qwen3_base.parameters())


def test_what_a_user_can_get_wrong_is_one_sentence(orthrus_model, drafters, tmp_path):
    for name in ENGINES:
        with pytest.raises(UserInputError, match="needs a draft_model"):
            build_engine(name, orthrus_model)
        with pytest.raises(UserInputError, match="drafter as its draft model"):
            build_engine(name, orthrus_model, draft_model=orthrus_model)
        with pytest.raises(UserInputError, match="block_size must be >= 1"):
            build_engine(name, orthrus_model, draft_model=drafters[name], block_size=0)
    with pytest.raises(UserInputError, match="not an EAGLE-3 one"):
        build_engine("eagle3", orthrus_model, draft_model=random_dflash(orthrus_model, tmp_path / "d").name_or_path)
    wide = random_dflash(periodic_target(), tmp_path / "other")  # hidden 64, 64 tokens: another target's drafter
    with pytest.raises(UserInputError, match="vocab_size .64. differs from the target's .256."):
        build_engine("dflash", orthrus_model, draft_model=wide)


def test_forward_ar_returns_transformers_hidden_states_and_the_same_logits(qwen3_base, orthrus_model, prompts):
    """hidden_layers indices are transformers' output_hidden_states: i < L enters layer i, L is the final
    normed state; with a cache, per-row starts or ``last``, the logits are those computed without it."""
    ids = torch.tensor([prompts[300]])
    with torch.no_grad():
        reference = qwen3_base(ids, output_hidden_states=True).hidden_states
        plain = orthrus_model.forward_ar(ids, None, 0)
        logits, features = orthrus_model.forward_ar(ids, None, 0, hidden_layers=[2, 0, 1])
        cache = orthrus_model.new_cache(1, 400)
        last, cached = orthrus_model.forward_ar(ids[:, :200], cache, 0, last=[199], hidden_layers=[1])
        step, rest = orthrus_model.forward_ar(ids[:, 200:203], cache, [200], hidden_layers=[1])
    assert torch.equal(logits, plain)
    assert torch.allclose(features, torch.cat([reference[2], reference[0], reference[1]], -1), atol=1e-5)
    assert torch.allclose(last, plain[:, 199], atol=1e-5) and torch.allclose(cached, reference[1][:, :200], atol=1e-5)
    assert torch.allclose(step, plain[:, 200:203], atol=1e-5) and torch.allclose(
        rest, reference[1][:, 200:203], atol=1e-5
    )


def test_drafter_passes_in_pieces_equal_one_pass(orthrus_model, drafters, prompts):
    """Taking in a text in pieces (as cycles do) leaves the drafter's cache as one pass over it would, and
    gives the same outputs: the prompt pass's causal shortcut and the later passes' masks agree."""
    text = prompts[300][:40]
    _, features = orthrus_model.forward_ar(
        torch.tensor([text]), None, 0, hidden_layers=drafters["eagle3"].aux_layer_ids
    )
    eagle = drafters["eagle3"]
    eagle.bind_target(2)
    embeds = orthrus_model.model.embed_tokens(torch.tensor([text[1:] + [7]]))
    whole, pieces = eagle.new_cache(1, 64), eagle.new_cache(1, 64)
    at = torch.arange(40).unsqueeze(0)
    once = eagle.forward_pairs(eagle.fuse(features), embeds, at, at, whole)
    parts = [
        eagle.forward_pairs(eagle.fuse(features[:, a:b]), embeds[:, a:b], at[:, a:b], at[:, a:b], pieces)
        for a, b in ((0, 13), (13, 14), (14, 40))
    ]
    for i in range(2):
        assert torch.allclose(once[i], torch.cat([part[i] for part in parts], 1), atol=1e-5)
    assert torch.allclose(whole.keys[0][..., :40, :], pieces.keys[0][..., :40, :], atol=1e-6)
    dflash = drafters["dflash"]
    _, features = orthrus_model.forward_ar(torch.tensor([text]), None, 0, hidden_layers=dflash.hidden_layers)
    whole, pieces = dflash.new_cache(1, 64), dflash.new_cache(1, 64)
    dflash.write_context(features, [0], [40], whole)
    for a, b in ((0, 13), (13, 14), (14, 40)):
        dflash.write_context(features[:, a:b], [a], [b - a], pieces)
    for held, exact in zip((*pieces.keys, *pieces.values), (*whole.keys, *whole.values)):
        assert torch.allclose(held[..., :40, :], exact[..., :40, :], atol=1e-6)
