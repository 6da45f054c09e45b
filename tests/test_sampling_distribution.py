"""Sampling is lossless in distribution: orthrus samples what AR samples (and the test has power)."""

from __future__ import annotations

import itertools

import pytest
import torch

from orthrus.engines import SamplingSettings, build_engine
from orthrus.engines.base import warp_probs
from orthrus.models import OrthrusForCausalLM
from tests.conftest import perturb_diffusion_view, random_qwen3

VOCAB, PROMPT, SAMPLES = 12, [5, 7, 3, 9, 4], 3000


@pytest.fixture(scope="module")
def small_vocab_model() -> OrthrusForCausalLM:
    model = OrthrusForCausalLM.from_base(
        random_qwen3(vocab=VOCAB, hidden=32, scale=3.0, seed=3), block_size=4, mask_token_id=2
    )
    perturb_diffusion_view(model, scale=3.0)  # drafts from a view that clearly differs from AR
    return model


def exact_pair_distribution(model, settings: SamplingSettings) -> torch.Tensor:
    """P(second token, third token) under AR sampling with the given warping, [V, V]."""
    prefixes = torch.tensor([PROMPT + [a, b] for a, b in itertools.product(range(VOCAB), repeat=2)])
    with torch.no_grad():
        logits = model(prefixes)
    p1 = warp_probs(logits[0, len(PROMPT) - 1], settings)  # first token
    p2 = warp_probs(logits[:, len(PROMPT)], settings).view(VOCAB, VOCAB, VOCAB)[:, 0]  # [t1, t2]
    p3 = warp_probs(logits[:, len(PROMPT) + 1], settings).view(VOCAB, VOCAB, VOCAB)  # [t1, t2, t3]
    joint = p1[:, None, None] * p2[:, :, None] * p3
    return joint.sum(0)


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson goodness of fit; cells expected < 5 are pooled into one."""
    counts, expected = counts.flatten().double(), probs.flatten().double() * counts.sum()
    small = expected < 5
    counts = torch.cat([counts[~small], counts[small].sum().view(1)])
    expected = torch.cat([expected[~small], expected[small].sum().view(1)])
    keep = expected > 0
    statistic = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0), statistic / 2.0))


def sampled_pairs(engine, settings: SamplingSettings) -> torch.Tensor:
    counts = torch.zeros(VOCAB, VOCAB)
    for seed in range(SAMPLES):
        tokens = engine.generate(
            PROMPT, 3, temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p, seed=seed
        ).tokens
        counts[tokens[1], tokens[2]] += 1
    return counts


SETTINGS = [SamplingSettings(1.0), SamplingSettings(0.7, top_k=6, top_p=0.9)]


@pytest.mark.parametrize("settings", SETTINGS, ids=["T1", "T0.7-topk-topp"])
def test_orthrus_sampling_has_the_ar_distribution(small_vocab_model, settings):
    exact = exact_pair_distribution(small_vocab_model, settings)
    orthrus = sampled_pairs(build_engine("orthrus", small_vocab_model, block_size=4), settings)
    ar = sampled_pairs(build_engine("ar", small_vocab_model), settings)
    assert chi_square_p_value(ar, exact) > 1e-3
    assert chi_square_p_value(orthrus, exact) > 1e-3


@pytest.mark.parametrize("settings", SETTINGS, ids=["T1", "T0.7-topk-topp"])
def test_broken_acceptance_rule_is_detected(small_vocab_model, settings):
    exact = exact_pair_distribution(small_vocab_model, settings)
    broken = build_engine("orthrus", small_vocab_model, block_size=4, accept_rule="accept_all")
    assert chi_square_p_value(sampled_pairs(broken, settings), exact) < 1e-6
