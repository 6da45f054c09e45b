"""Lossless greedy decoding: orthrus == ar == hf_generate token for token, in fp32."""

from __future__ import annotations

import pytest
import torch

from orthrus.engines import build_engine
from tests.conftest import perturb_diffusion_view

BLOCK_SIZES = (1, 2, 4, 8, 16, 32)


def test_ar_view_equals_transformers_qwen3(qwen3_base, orthrus_model, prompts):
    ids = torch.tensor([prompts[300]])
    with torch.no_grad():
        reference = qwen3_base(ids).logits
        plain = orthrus_model(ids)
        cache = orthrus_model.new_cache(1, 400)
        first = orthrus_model.forward_ar(ids[:, :200], cache, 0)
        rest = [orthrus_model.forward_ar(ids[:, i : i + 1], cache, i) for i in range(200, 300)]
        cached = torch.cat([first, *rest], dim=1)
    assert torch.allclose(plain, reference, atol=1e-5, rtol=0)
    assert torch.allclose(cached, reference, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def ar_outputs(orthrus_model, prompts):
    engine = build_engine("ar", orthrus_model)
    return {n: engine.generate(p, 100).tokens for n, p in prompts.items()}


def test_outputs_are_varied(ar_outputs):
    for tokens in ar_outputs.values():
        assert len(set(tokens)) >= 10, "the test model repeats itself; identity would prove little"


def test_hf_generate_equals_ar(orthrus_model, prompts, ar_outputs):
    engine = build_engine("hf_generate", orthrus_model)
    for n, prompt in prompts.items():
        assert engine.generate(prompt, 100).tokens == ar_outputs[n]


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_orthrus_greedy_equals_ar(orthrus_model, prompts, ar_outputs, block_size):
    engine = build_engine("orthrus", orthrus_model, block_size=block_size)
    for n, prompt in prompts.items():
        for max_new in sorted({1, 2, max(block_size - 1, 1), block_size, block_size + 1, 100}):
            result = engine.generate(prompt, max_new)
            assert result.tokens == ar_outputs[n][:max_new], (n, max_new)
            passes = result.forward_passes
            assert passes["prefill"] == 1 and passes["draft"] == passes["verify"] == result.cycles
            if block_size == 1:
                assert result.cycles == 0 and passes["decode"] == max_new - 1


def test_trained_looking_view_is_still_lossless(orthrus_model, prompts, ar_outputs):
    model = type(orthrus_model)._from_state(
        orthrus_model.config, {k: v.clone() for k, v in orthrus_model.state_dict().items()}, None
    )
    perturb_diffusion_view(model)
    block = torch.tensor([[5] + [model.config.mask_token_id] * 7])
    with torch.no_grad():  # the view really differs from the copied one
        assert not torch.allclose(
            model.forward_diffusion(block, None, 0), orthrus_model.forward_diffusion(block, None, 0)
        )
    changed = build_engine("orthrus", model, block_size=8).generate(prompts[7], 100)
    copied = build_engine("orthrus", orthrus_model, block_size=8).generate(prompts[7], 100)
    assert changed.tokens == copied.tokens == ar_outputs[7]


def _find_eos_case(result, inside_block: bool) -> int | None:
    """A token whose first occurrence is inside an accepted block (or is a block's last token)."""
    position = 0
    for _, count in result.commits:
        for offset in range(count):
            token = result.tokens[position + offset]
            first = result.tokens.index(token) == position + offset
            last_in_block = offset == count - 1
            if count >= 2 and first and (last_in_block != inside_block):
                return token
        position += count
    return None


@pytest.mark.parametrize("inside_block", [True, False], ids=["eos_in_accepted_block", "eos_is_correction"])
def test_eos_stops_like_ar(orthrus_model, prompts, inside_block):
    ar = build_engine("ar", orthrus_model)
    hf = build_engine("hf_generate", orthrus_model)
    checked = 0
    for block_size in (2, 4, 8):
        engine = build_engine("orthrus", orthrus_model, block_size=block_size)
        for prompt in prompts.values():
            eos = _find_eos_case(engine.generate(prompt, 100), inside_block)
            if eos is None:
                continue
            expected = ar.generate(prompt, 100, eos_token_id=eos)
            assert expected.tokens[-1] == eos and expected.stop_reason == "eos"
            got = engine.generate(prompt, 100, eos_token_id=eos)
            assert got.tokens == expected.tokens and got.stop_reason == "eos"
            assert hf.generate(prompt, 100, eos_token_id=eos).tokens == expected.tokens
            checked += 1
    assert checked >= 3
