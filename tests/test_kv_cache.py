"""The shared KV cache: drafting leaves the committed prefix alone, verification writes after it, the
committed length is exactly the committed prefix after every cycle, and Orthrus holds at most one
block of K/V more than AR. The cache is the project's own (orthrus.models.kv_cache), so none of this
depends on which transformers release is installed."""

from __future__ import annotations

import pytest
import torch

from orthrus.engines import build_engine
from orthrus.engines.orthrus_engine import OrthrusEngine


@pytest.mark.parametrize("capacity", [400, None])
def test_diffusion_pass_leaves_the_committed_cache_alone(orthrus_model, prompts, capacity):
    prompt = torch.tensor([prompts[300]])
    cache = orthrus_model.new_cache(1, capacity)
    with torch.no_grad():
        orthrus_model.forward_ar(prompt, cache, 0)
        before = [t[:, :, :300].clone() for t in (*cache.keys, *cache.values)]
        block = torch.tensor([[7] + [orthrus_model.config.mask_token_id] * 7])
        orthrus_model.forward_diffusion(block, cache, 300)
    for now, held in zip((*cache.keys, *cache.values), before):
        assert torch.equal(now[:, :, :300], held)


class CacheCheckingEngine(OrthrusEngine):
    """Orthrus with its after_cycle hook checking the cache against a fresh AR prefill of the committed text."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompt: list[int] = []
        self.checked: list[int] = []

    def after_cycle(self, cache, committed_lengths, tokens):
        # the anchor (last committed token) is not in the cache yet; everything before it is
        (length,), (out,) = committed_lengths, tokens
        assert length == len(self.prompt) + len(out) - 1
        fresh = self.model.new_cache()
        self.model.forward_ar(torch.tensor([self.prompt + out[:-1]]), fresh, 0)
        for held, exact in zip((*cache.keys, *cache.values), (*fresh.keys, *fresh.values)):
            assert torch.allclose(held[:, :, :length], exact, atol=1e-5)
        self.checked.append(length)


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


def test_a_preallocated_cache_refuses_a_pass_past_its_capacity_and_a_growing_one_grows(orthrus_model, prompts):
    fixed, growing = orthrus_model.new_cache(1, 8), orthrus_model.new_cache()
    assert growing.storage_bytes() == 0
    with torch.no_grad(), pytest.raises(ValueError, match="8 slots"):
        orthrus_model.forward_ar(torch.tensor([prompts[7]]), fixed, 2)
    with torch.no_grad():
        orthrus_model.forward_ar(torch.tensor([prompts[7]]), growing, 0)
    assert growing.capacity == 7
    assert growing.storage_bytes() == 7 * orthrus_model.kv_bytes_per_token()


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


def test_a_ragged_write_puts_each_rows_entries_in_its_own_slots_and_touches_nothing_else():
    """KVCache.scatter (rows at their own positions: a ragged batch, a drafter's spill) writes what
    torch's scatter_ would, slot for slot, and leaves every other slot's bytes as they were."""
    from orthrus.models.kv_cache import KVCache

    generator = torch.Generator().manual_seed(0)
    for batch, heads, steps, dim, capacity in ((4, 2, 1, 16, 300), (3, 2, 16, 8, 50), (1, 1, 5, 4, 9)):
        cache = KVCache.empty(2, batch, heads, dim, capacity, torch.float32, "cpu")
        for store in (cache.keys, cache.values):
            for tensor in store:
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
        before = [t.clone() for t in (*cache.keys, *cache.values)]
        slots = torch.stack([torch.randperm(capacity, generator=generator)[:steps] for _ in range(batch)])
        k, v = (torch.randn(batch, heads, steps, dim, generator=generator) for _ in range(2))
        keys, values = cache.scatter(1, slots, k, v, capacity - 1)
        index = slots.view(batch, 1, steps, 1).expand(-1, heads, -1, dim)  # torch's scatter_ index
        assert keys.shape[2] == values.shape[2] == capacity - 1
        assert torch.equal(cache.keys[1], before[1].scatter(2, index, k))
        assert torch.equal(cache.values[1], before[3].scatter(2, index, v))
        assert torch.equal(cache.keys[0], before[0]) and torch.equal(cache.values[0], before[2])
