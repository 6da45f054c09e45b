"""What the engines that decode over the project's own K/V cache share: one prefill, and the state a
decoding loop starts from. A single prompt is a batch of one: ``generate`` runs ``generate_batch``'s
code, so every step of a decoding algorithm is written once for one row and for a batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from orthrus.engines.base import (
    BatchResult,
    Engine,
    GenerationResult,
    SamplingSettings,
    new_batch,
    pick_token,
    row_finished,
    sync,
)
from orthrus.errors import UserInputError
from orthrus.models.kv_cache import KVCache

CACHE_KINDS = ("static", "dynamic")


@dataclass
class DecodeState:
    """Where a decoding loop stands: row r's cache holds ``lengths[r]`` committed entries, every token
    it committed but the last, ``last[r]`` (not yet in the cache); ``active[r]`` until it finished.
    ``features``: the target hidden states the prefill kept (``CachedEngine.hidden_layers``), [B, T, F];
    ``prompts``: the rows' prompts."""

    batch: BatchResult
    cache: KVCache
    lengths: list[int]
    last: torch.Tensor  # [B]
    active: list[bool]
    features: torch.Tensor | None = None
    prompts: list[list[int]] | None = None


class CachedEngine(Engine):
    """An engine that prefills every prompt in one AR pass over a KVCache, then runs ``_decode``.

    ``cache``: ``static`` preallocates prompt + budget slots per row (rows left-aligned, see
    KVCache); ``dynamic`` grows the cache to fit each write, so its storage is what was written.
    """

    batchable = True
    # the target hidden states (forward_ar's hidden_layers) the prefill keeps for a drafter; None: none
    hidden_layers: Sequence[int] | None = None

    def __init__(self, model: Any, cache: str = "static", **options: Any) -> None:
        super().__init__(model, **options)
        if cache not in CACHE_KINDS:
            raise UserInputError(f"cache must be 'static' or 'dynamic', got {cache!r}.")
        self.cache_kind = cache

    def spare_slots(self, batch_size: int) -> int:
        """Slots a static cache needs per row beyond prompt + budget (none here)."""
        return 0

    @torch.inference_mode()
    def _generate(self, prompt, max_new_tokens, settings, generator, seed, eos_token_id) -> GenerationResult:
        return self._generate_batch([prompt], max_new_tokens, settings, generator, seed, eos_token_id).rows[0]

    @torch.inference_mode()
    def _generate_batch(self, prompts, max_new_tokens, settings, generator, seed, eos_token_id) -> BatchResult:
        state = self.prefill(prompts, max_new_tokens, settings, generator, eos_token_id)
        return self._decode(state, max_new_tokens, settings, generator, eos_token_id)

    def prefill(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        settings: SamplingSettings,
        generator: torch.Generator | None,
        eos_token_id: int | None,
    ) -> DecodeState:
        """Start the clock, then every prompt in one AR pass and each row's first token. Rows are
        left-aligned (row r at positions 0 .. len_r - 1) and right-padded to the longest; a real
        token attends causally to real tokens only, so the padding changes nothing it sees."""
        model, device = self.model, self.device
        batch = new_batch(prompts, self.listener)
        longest = max(len(p) for p in prompts)
        capacity = None
        if self.cache_kind == "static":
            capacity = longest + max_new_tokens + self.spare_slots(len(prompts))
        cache = model.new_cache(len(prompts), capacity)
        ids = torch.tensor([p + [0] * (longest - len(p)) for p in prompts], device=device)
        sync(device)
        batch.start()
        last = [len(p) - 1 for p in prompts]
        features = None
        if self.hidden_layers is None:
            logits = model.forward_ar(ids, cache, 0, last=last)
        else:
            logits, features = model.forward_ar(ids, cache, 0, last=last, hidden_layers=self.hidden_layers)
        tokens = pick_token(logits, settings, generator)  # [B]
        active = [True] * len(prompts)
        batch.record_pass("prefill", active)
        for r, (row, token) in enumerate(zip(batch.rows, tokens.tolist())):
            row.record_step("prefill", [token])
            active[r] = not row_finished(row, max_new_tokens, eos_token_id)
        return DecodeState(batch, cache, [len(p) for p in prompts], tokens, active, features, prompts)

    def _decode(
        self,
        state: DecodeState,
        max_new_tokens: int,
        settings: SamplingSettings,
        generator: torch.Generator | None,
        eos_token_id: int | None,
        max_steps: int | None = None,
    ) -> BatchResult:
        """The decoding loop after prefill, until every row finished (or ``max_steps`` steps: ``orthrus
        profile`` times the steps of this loop from a cache filled without a prefill)."""
        raise NotImplementedError
