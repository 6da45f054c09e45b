"""Output quality of an engine against the AR reference (definitions in docs/metrics.md).

* ``compare_tokens``: exact identity, first divergent position, fraction of matching tokens.
* ``divergence_margin``: the reference model's top-1 minus top-2 logit where the outputs part, to
  tell numerical near-ties (small margin) from real disagreements (large margin).
* ``ar_nll``: mean negative log-likelihood of an output under the AR model, a label-free quality
  proxy for engines that are not lossless.

``model`` is any causal LM whose ``forward(input_ids)`` returns logits [B, T, V], either as a
tensor (``OrthrusForCausalLM``) or as ``.logits`` (transformers models). All computation runs
in fp32 on the model's device, one sequence at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def compare_tokens(reference: Sequence[int], candidate: Sequence[int]) -> tuple[bool, int | None, float]:
    """``(identity_exact, first_divergence, match_fraction)`` of ``candidate`` against ``reference``.

    identity_exact: same length and content. first_divergence: index of the first position where
    they differ, counting a length difference as a difference at the end of the shorter one (None
    when exact). match_fraction: positions < min(len) with equal tokens, divided by
    len(reference) (1.0 when both are empty, 0.0 when only the reference is).
    """
    reference, candidate = [int(t) for t in reference], [int(t) for t in candidate]
    shorter = min(len(reference), len(candidate))
    first = next((i for i in range(shorter) if reference[i] != candidate[i]), None)
    if first is None and len(reference) != len(candidate):
        first = shorter
    matches = sum(reference[i] == candidate[i] for i in range(shorter))
    if not reference:
        fraction = 1.0 if not candidate else 0.0
    else:
        fraction = matches / len(reference)
    return first is None, first, fraction


def _logits(model: Any, ids: list[int]) -> torch.Tensor:
    """fp32 logits [T, V] of one sequence."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(torch.tensor([ids], device=device))
    logits = out if isinstance(out, torch.Tensor) else out.logits
    return logits[0].float()


def divergence_margin(model: Any, prompt_ids: Sequence[int], reference_tokens: Sequence[int], position: int) -> float:
    """Top-1 minus top-2 logit of ``model`` for new token ``position`` of the reference output.

    The model sees the prompt and ``reference_tokens[:position]`` (the reference's own context at
    that point). ``position`` may equal len(reference_tokens) (the reference stopped there).
    """
    if not 0 <= position <= len(reference_tokens):
        raise ValueError(f"position must be in [0, {len(reference_tokens)}], got {position}.")
    ids = [int(t) for t in prompt_ids] + [int(t) for t in reference_tokens[:position]]
    top2 = torch.topk(_logits(model, ids)[-1], 2).values
    return float(top2[0] - top2[1])


def ar_nll(model: Any, prompt_ids: Sequence[int], tokens: Sequence[int]) -> float | None:
    """Mean negative log-likelihood (nats per token) of ``tokens`` following ``prompt_ids``.

    None when ``tokens`` is empty (nothing to score).
    """
    if not tokens:
        return None
    prompt = [int(t) for t in prompt_ids]
    new = [int(t) for t in tokens]
    if not prompt:
        raise ValueError("ar_nll needs a non-empty prompt to condition the first token on.")
    logits = _logits(model, prompt + new[:-1])[len(prompt) - 1 :]
    targets = torch.tensor(new, device=logits.device)
    return float(F.cross_entropy(logits, targets))
