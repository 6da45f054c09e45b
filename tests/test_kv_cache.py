"""The shared KV cache: drafting writes nothing, verification appends, the cache is cropped to the
committed prefix after every cycle, and Orthrus holds at most one block of K/V more than AR."""

from __future__ import annotations

import pytest
import torch

from orthrus.engines import build_engine
from orthrus.engines.orthrus_engine import OrthrusEngine
from orthrus.models.modeling_orthrus import cache_storage_bytes, crop_cache


@pytest.mark.parametrize("cache_kind", ["static", None])
def test_diffusion_pass_leaves_the_committed_cache_alone(orthrus_model, prompts, cache_kind):
    prompt = torch.tensor([prompts[300]])
    cache = orthrus_model.new_cache(400 if cache_kind else None)
    with torch.no_grad():
        orthrus_model.forward_ar(prompt, cache, 0)
        before = [(layer.keys[:, :, :300].clone(), layer.values[:, :, :300].clone()) for layer in cache.layers]
        block = torch.tensor([[7] + [orthrus_model.config.mask_token_id] * 7])
        orthrus_model.forward_diffusion(block, cache, 300)
    assert int(cache.get_seq_length()) == 300
    for layer, (keys, values) in zip(cache.layers, before):
        assert torch.equal(layer.keys[:, :, :300], keys) and torch.equal(layer.values[:, :, :300], values)


class CacheCheckingEngine(OrthrusEngine):
    """Orthrus with its after_cycle hook checking the cache against a fresh AR prefill of the committed text."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompt: list[int] = []
        self.checked: list[int] = []

    def after_cycle(self, cache, committed_length, tokens):
        # the anchor (last committed token) is not in the cache yet; everything before it is
        assert committed_length == int(cache.get_seq_length()) == len(self.prompt) + len(tokens) - 1
        fresh = self.model.new_cache(None)
        self.model.forward_ar(torch.tensor([self.prompt + tokens[:-1]]), fresh, 0)
        for held, exact in zip(cache.layers, fresh.layers):
            assert torch.allclose(held.keys[:, :, :committed_length], exact.keys, atol=1e-5)
            assert torch.allclose(held.values[:, :, :committed_length], exact.values, atol=1e-5)
        self.checked.append(committed_length)


@pytest.mark.parametrize("cache_kind", ["static", "dynamic"])
def test_cache_holds_exactly_the_committed_prefix_after_every_cycle(orthrus_model, prompts, cache_kind):
    engine = CacheCheckingEngine(orthrus_model, block_size=4, cache=cache_kind)
    engine.prompt = prompts[7]
    result = engine.generate(engine.prompt, 40)
    assert len(engine.checked) == result.cycles + result.forward_passes["decode"] > 5
    assert (
        result.tokens
        == build_engine("orthrus", orthrus_model, block_size=4, cache=cache_kind).generate(engine.prompt, 40).tokens
    )  # the hook only watches


def test_crop_keeps_a_positive_length_and_refuses_zero(orthrus_model, prompts):
    cache = orthrus_model.new_cache(None)
    with torch.no_grad():
        orthrus_model.forward_ar(torch.tensor([prompts[7]]), cache, 0)
    crop_cache(cache, 7, held=7)  # keeping everything is a no-op, not an emptied cache
    assert int(cache.get_seq_length()) == 7
    crop_cache(cache, 3, held=7)
    assert int(cache.get_seq_length()) == 3
    with pytest.raises(ValueError):
        crop_cache(cache, 0, held=3)


@pytest.mark.parametrize("cache_kind", ["static", "dynamic"])
def test_extra_kv_memory_is_one_block_and_flat_in_context(orthrus_model, cache_kind):
    block_size, new_tokens = 8, 48
    block_bytes = block_size * orthrus_model.kv_bytes_per_token()
    ar = build_engine("ar", orthrus_model, cache=cache_kind)
    orthrus = build_engine("orthrus", orthrus_model, block_size=block_size, cache=cache_kind)
    extras = []
    for context in (100, 2000):
        prompt = torch.randint(3, 256, (context,), generator=torch.Generator().manual_seed(context)).tolist()
        ar_bytes = ar.generate(prompt, new_tokens).kv_cache_bytes_peak
        orthrus_bytes = orthrus.generate(prompt, new_tokens).kv_cache_bytes_peak
        assert ar_bytes >= (context + new_tokens - 1) * orthrus_model.kv_bytes_per_token()
        extras.append(orthrus_bytes - ar_bytes)
    assert all(0 <= extra <= block_bytes for extra in extras)
    assert extras[0] == extras[1]
    assert cache_storage_bytes(orthrus_model.new_cache(None)) == 0
