"""Sampling with a DFlash or EAGLE-3 drafter is lossless in distribution: ``dflash`` and ``eagle3`` sample
what AR samples (chi-square over 3000 seeds, as tests/test_sampling_distribution.py does for orthrus),
also for an EAGLE-3 drafter whose draft vocabulary leaves tokens out (q = 0 there), and the same test
rejects a deliberately broken acceptance rule, so it has the power to see a lossy engine."""

from __future__ import annotations

import pytest
import torch

from orthrus.engines import SamplingSettings, build_engine
from orthrus.engines.eagle3 import Eagle3Engine
from orthrus.models import OrthrusForCausalLM
from tests.conftest import random_qwen3
from tests.drafter_models import random_dflash, random_eagle3
from tests.test_sampling_distribution import VOCAB, chi_square_p_value, exact_pair_distribution, sampled_pairs

SETTINGS = [SamplingSettings(1.0), SamplingSettings(0.7, top_k=6, top_p=0.9)]
DRAFT_VOCAB = [0, 2, 3, 5, 6, 8, 9, 11]  # 8 of the 12 target ids: the other 4 are never drafted


@pytest.fixture(scope="module")
def small_vocab_model() -> OrthrusForCausalLM:
    return OrthrusForCausalLM.from_base(
        random_qwen3(vocab=VOCAB, hidden=32, scale=3.0, seed=3), block_size=4, mask_token_id=2
    )


@pytest.fixture(scope="module")
def drafters(small_vocab_model, tmp_path_factory) -> dict:
    """Random drafters whose drafts clearly differ from the target's distribution (larger weights)."""
    root = tmp_path_factory.mktemp("drafters")
    return {
        "dflash": random_dflash(small_vocab_model, root / "dflash", num_layers=1, mask_token_id=2, std=0.5, seed=4),
        "eagle3": random_eagle3(
            small_vocab_model, root / "eagle3", draft_vocab=DRAFT_VOCAB, aux_layer_ids=[0, 1, 1], std=0.5, seed=4
        ),
    }


@pytest.mark.parametrize("settings", SETTINGS, ids=["T1", "T0.7-topk-topp"])
@pytest.mark.parametrize("engine_name", ["dflash", "eagle3"])
def test_sampling_has_the_ar_distribution(small_vocab_model, drafters, engine_name, settings):
    engine = build_engine(engine_name, small_vocab_model, draft_model=drafters[engine_name], block_size=4)
    exact = exact_pair_distribution(small_vocab_model, settings)
    assert chi_square_p_value(sampled_pairs(engine, settings), exact) > 1e-3


@pytest.mark.parametrize("engine_name", ["dflash", "eagle3"])
def test_broken_acceptance_rule_is_detected(small_vocab_model, drafters, engine_name):
    settings = SETTINGS[0]
    broken = build_engine(
        engine_name, small_vocab_model, draft_model=drafters[engine_name], block_size=4, accept_rule="accept_all"
    )
    assert not broken.lossless
    exact = exact_pair_distribution(small_vocab_model, settings)
    assert chi_square_p_value(sampled_pairs(broken, settings), exact) < 1e-6


class DraftRecordingEagle3(Eagle3Engine):
    """eagle3 that keeps every draft and the q it was drawn from."""

    def _draft(self, *args):
        drafts, q, passes = super()._draft(*args)
        self.seen.append((drafts, q))
        return drafts, q, passes


def test_eagle3_never_drafts_outside_its_draft_vocabulary(small_vocab_model, drafters):
    """q is zero outside the draft vocabulary: every draft is one of its tokens (the target still
    produces the others, through the residual and its own next token), and drafts are often accepted."""
    engine = DraftRecordingEagle3(small_vocab_model, draft_model=drafters["eagle3"], block_size=4)
    engine.seen = []
    produced: set[int] = set()
    accepted = 0
    for seed in range(60):
        result = engine.generate([5, 7, 3, 9, 4], 12, temperature=1.0, seed=seed)
        produced.update(result.tokens)
        accepted += sum(result.accepted_per_cycle)
    outside = [t for t in range(VOCAB) if t not in DRAFT_VOCAB]
    assert all(torch.all(q[..., outside] == 0) for _, q in engine.seen)
    assert {t for drafts, _ in engine.seen for t in drafts.flatten().tolist()} <= set(DRAFT_VOCAB)
    assert set(produced) - set(DRAFT_VOCAB) and accepted > 60  # the acceptance path is exercised


@pytest.mark.parametrize("engine_name", ["dflash", "eagle3"])
def test_sampled_rows_of_a_batch_have_the_ar_distribution(small_vocab_model, drafters, engine_name):
    """Rows of different lengths sampled together: each row's (second, third) token pair has the AR
    distribution of its own prompt (1500 batches of 4)."""
    from tests.test_batch_engines import SAMPLING_PROMPTS
    from tests.test_batch_engines import exact_pair_distribution as exact_for

    settings = SETTINGS[0]
    engine = build_engine(engine_name, small_vocab_model, draft_model=drafters[engine_name], block_size=4)
    counts = [torch.zeros(VOCAB, VOCAB) for _ in SAMPLING_PROMPTS]
    for seed in range(1500):
        batch = engine.generate_batch(SAMPLING_PROMPTS, 3, temperature=settings.temperature, seed=seed)
        for row, tally in zip(batch.rows, counts):
            tally[row.tokens[1], row.tokens[2]] += 1
    for r, prompt in enumerate(SAMPLING_PROMPTS):
        assert chi_square_p_value(counts[r], exact_for(small_vocab_model, prompt, settings)) > 1e-3, f"row {r}"
