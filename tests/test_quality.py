"""Quality of an engine's output against the AR reference, on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from orthrus.quality import ar_nll, compare_tokens, divergence_margin


class Bigram(nn.Module):
    """A real (tiny) causal LM with hand-set weights: logits of the next token = table[current token]."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Embedding.from_pretrained(torch.tensor(table))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table(input_ids)


TABLE = [
    [0.0, 3.0, 1.0],  # after 0: 1 (margin 2.0)
    [0.5, 0.0, 0.7],  # after 1: 2 (margin 0.2, a near-tie)
    [4.0, 0.0, 0.0],  # after 2: 0 (margin 4.0)
]


@pytest.mark.parametrize(
    "reference, candidate, expected",
    [
        ([1, 2, 3], [1, 2, 3], (True, None, 1.0)),
        ([1, 2, 3, 4], [1, 9, 3, 4], (False, 1, 0.75)),
        ([1, 2, 3, 4], [1, 2], (False, 2, 0.5)),  # stopped early: differs where it ends
        ([1, 2], [1, 2, 3, 4], (False, 2, 1.0)),  # went on past the reference's end
        ([5, 6], [7, 8], (False, 0, 0.0)),
        ([], [], (True, None, 1.0)),
        ([], [1], (False, 0, 0.0)),
    ],
)
def test_compare_tokens(reference, candidate, expected):
    assert compare_tokens(reference, candidate) == expected


def test_divergence_margin_is_the_reference_models_top2_gap():
    model = Bigram(TABLE)
    # new token 0 follows the prompt's last token (0); new token 1 follows reference[0] = 1
    assert divergence_margin(model, [2, 0], [1, 2, 0], 0) == pytest.approx(2.0)
    assert divergence_margin(model, [2, 0], [1, 2, 0], 1) == pytest.approx(0.2)
    assert divergence_margin(model, [2, 0], [1, 2, 0], 2) == pytest.approx(4.0)
    assert divergence_margin(model, [2, 0], [1, 2, 0], 3) == pytest.approx(2.0)  # after the last token (0)
    with pytest.raises(ValueError):
        divergence_margin(model, [0], [1], 5)


def test_ar_nll_by_hand():
    model = Bigram(TABLE)

    def log_prob(prev: int, token: int) -> float:
        row = TABLE[prev]
        return row[token] - math.log(sum(math.exp(v) for v in row))

    expected = -(log_prob(0, 1) + log_prob(1, 1) + log_prob(1, 0)) / 3
    assert ar_nll(model, [2, 0], [1, 1, 0]) == pytest.approx(expected, rel=1e-6)
    assert ar_nll(model, [0], []) is None


def test_ar_nll_same_for_transformers_and_orthrus_models(qwen3_base, orthrus_model, prompts):
    tokens = prompts[7][:5]
    from_hf = ar_nll(qwen3_base, prompts[7], tokens)  # returns an output object with .logits
    from_orthrus = ar_nll(orthrus_model, prompts[7], tokens)  # returns a logits tensor
    assert from_hf == pytest.approx(from_orthrus, rel=1e-5)
    assert from_hf > 0
