"""Batched diffusion-LM decoding (`dlm`, `fast_dllm`): every row of a batch is that prompt decoded
alone by the same engine, token for token and pass for pass, in fp32.

DLMs are not lossless, so their batch check is batch invariance: ragged prompts are left-padded,
the padding is hidden and each row keeps its own positions, so padding and batching change nothing
a row computes (only arithmetic order, which fp32 must not turn into a different token here).
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_qwen3

from orthrus.engines import build_engine
from orthrus.engines.base import CannotBatchError
from orthrus.models.dlm import Qwen3DiffusionLM, RemoteDiffusionLM

MASK = 2
GEN = 20
LENGTHS = (1, 7, 300, 3, 12, 40, 2, 20)

SETTINGS = [
    ("dlm", {}),
    ("dlm", {"steps": 10}),
    ("dlm", {"remasking": "random", "steps": 10}),
    ("fast_dllm", {"threshold": 0.02, "cache": "none"}),
    ("fast_dllm", {"threshold": 0.02, "cache": "prefix"}),
    ("fast_dllm", {"threshold": 0.02, "cache": "dual"}),
    ("fast_dllm", {"threshold": None, "cache": "dual", "steps": 10}),
]


@pytest.fixture(scope="module")
def dlm() -> Qwen3DiffusionLM:
    return Qwen3DiffusionLM.from_causal_lm(random_qwen3(seed=3, scale=3.0), mask_token_id=MASK)


@pytest.fixture(scope="module")
def pool() -> list[list[int]]:
    generator = torch.Generator().manual_seed(11)
    return [torch.randint(3, 256, (n,), generator=generator).tolist() for n in LENGTHS]


def engine_of(dlm, name, options):
    return build_engine(name, dlm, block_length=8, **options)


def check_rows_equal_solo(engine, batch, prompts, max_new, **sampling) -> None:
    assert batch.batch_size == len(prompts)
    assert batch.wasted_row_passes == batch.row_passes - sum(row.total_forward_passes for row in batch.rows)
    for r, (prompt, row) in enumerate(zip(prompts, batch.rows)):
        alone = engine.generate(prompt, max_new, **sampling)
        assert row.tokens == alone.tokens, f"row {r} (prompt of {len(prompt)} tokens)"
        assert row.forward_passes == alone.forward_passes and row.extra == alone.extra, f"row {r}"
        assert row.stop_reason == alone.stop_reason and row.prompt_tokens == len(prompt)
        assert sum(count for _, count in row.commits) == row.new_tokens
        assert batch.start_time == row.start_time < row.end_time <= batch.end_time


@pytest.mark.parametrize("name, options", SETTINGS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in SETTINGS])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])
def test_every_row_equals_the_same_prompt_alone(dlm, pool, name, options, batch_size):
    engine = engine_of(dlm, name, options)
    prompts = pool[:batch_size]
    batch = engine.generate_batch(prompts, GEN)
    check_rows_equal_solo(engine, batch, prompts, GEN)
    for row in batch.rows:
        assert len(row.tokens) == GEN and MASK not in row.tokens


def test_threshold_rows_take_their_own_steps_and_the_waits_are_counted(dlm, pool):
    engine = engine_of(dlm, "fast_dllm", {"threshold": 0.02, "cache": "dual"})
    batch = engine.generate_batch(pool, GEN)
    check_rows_equal_solo(engine, batch, pool, GEN)
    steps = {row.extra["denoise_steps"] for row in batch.rows}
    assert len(steps) > 1  # rows unmask at different speeds ...
    assert batch.wasted_row_passes > 0  # ... so the faster ones sit out passes of the slower ones


def test_an_eos_ends_some_rows_only(dlm, pool):
    engine = engine_of(dlm, "fast_dllm", {"threshold": 0.02, "cache": "prefix"})
    plain = engine.generate_batch(pool, GEN)
    checked = 0
    for eos in dict.fromkeys(t for row in plain.rows for t in row.tokens[:8]):
        stops = [eos in row.tokens[:8] for row in plain.rows]
        if all(stops):
            continue
        batch = engine.generate_batch(pool, GEN, eos_token_id=eos)
        check_rows_equal_solo(engine, batch, pool, GEN, eos_token_id=eos)
        assert [row.stop_reason == "eos" for row in batch.rows] == stops
        assert all(row.tokens[-1] == eos for row, stop in zip(batch.rows, stops) if stop)
        checked += 1
        if checked == 2:
            break
    assert checked >= 1


def test_sampled_rows_are_complete_and_seeded(dlm, pool):
    engine = engine_of(dlm, "dlm", {"steps": 10})
    first = engine.generate_batch(pool[:4], GEN, temperature=1.0, seed=5)
    again = engine.generate_batch(pool[:4], GEN, temperature=1.0, seed=5)
    assert [r.tokens for r in first.rows] == [r.tokens for r in again.rows]  # reproducible
    assert all(len(r.tokens) == GEN and MASK not in r.tokens for r in first.rows)


def test_kv_bytes_are_the_batch_cache(dlm, pool):
    engine = engine_of(dlm, "fast_dllm", {"threshold": 0.02, "cache": "dual"})
    batch = engine.generate_batch(pool[:3], GEN)
    slots = max(len(p) for p in pool[:3]) + GEN
    assert batch.kv_cache_bytes_peak == 3 * slots * dlm.kv_bytes_per_token()


class _RemoteStub(torch.nn.Module):
    """A remote-code diffusion LM's call surface (``model(ids).logits``), over our DLM's weights."""

    def __init__(self, inner: Qwen3DiffusionLM) -> None:
        super().__init__()
        self.dlm = inner
        self.config = inner.config

    def forward(self, input_ids):
        return type("Out", (), {"logits": self.dlm(input_ids)})()


def test_a_model_without_a_padding_mask_batches_equal_lengths_only(dlm, pool):
    remote = RemoteDiffusionLM(_RemoteStub(dlm), MASK)
    engine = build_engine("dlm", remote, block_length=8)
    equal = [pool[1], pool[7][:7]]
    batch = engine.generate_batch(equal, GEN)
    check_rows_equal_solo(engine, batch, equal, GEN)
    with pytest.raises(CannotBatchError, match="different lengths .* batch size 1"):
        engine.generate_batch(pool[:2], GEN)
