"""Orthrus decoding: the diffusion view drafts a block in one pass, the AR view verifies it in one.

Per cycle, with anchor t (the last committed token, not yet in the cache) at position a:
  draft   q = diffusion([t, MASK x (K-1)])      -> drafts d1..d_{K-1}   (cache read only)
  verify  p = AR([t, d1..d_{K-1}])              -> appends K entries to the cache
  accept  greedy: longest prefix with d_i == argmax p_{i-1}; sampling: speculative rejection
  commit  accepted drafts + the correction (or bonus) token; crop the cache to a + accepted + 1
The committed text is exactly what the AR view alone would produce.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from orthrus.engines.base import (
    DEFAULT_BLOCK_SIZE,
    Engine,
    GenerationResult,
    SamplingSettings,
    pick_token,
    sync,
    truncate_at_eos,
    warp_probs,
)
from orthrus.errors import UserInputError
from orthrus.models.modeling_orthrus import cache_storage_bytes

ACCEPT_RULES = ("exact", "accept_all")


class OrthrusEngine(Engine):
    name = "orthrus"
    model_kind = "dual_view"
    takes_block_size = True

    def __init__(
        self,
        model: Any,
        block_size: int | None = None,
        cache: str = "static",
        accept_rule: str = "exact",
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        if block_size is None:  # the model's own training block, else the one default
            block_size = getattr(model.config, "block_size", None) or DEFAULT_BLOCK_SIZE
        self.block_size = int(block_size)
        if self.block_size < 1:
            raise UserInputError(f"block_size must be >= 1, got {self.block_size}.")
        if cache not in ("static", "dynamic"):
            raise UserInputError(f"cache must be 'static' or 'dynamic', got {cache!r}.")
        if accept_rule not in ACCEPT_RULES:
            raise UserInputError(f"accept_rule must be one of {ACCEPT_RULES}, got {accept_rule!r}.")
        self.cache_kind = cache
        # 'accept_all' breaks losslessness on purpose: it exists to prove that tests and gates catch it
        self.accept_rule = accept_rule
        self.lossless = accept_rule == "exact"
        self.mask_token_id = int(model.config.mask_token_id)
        # called after every cycle as on_cycle(cache, cache_length, committed_tokens): lets tests inspect the cache
        self.on_cycle: Any = None

    @torch.inference_mode()
    def _generate(self, prompt, max_new_tokens, settings, generator, seed, eos_token_id) -> GenerationResult:
        model, device = self.model, self.device
        result = GenerationResult(tokens=[], prompt_tokens=len(prompt), listener=self.listener)
        cache = model.new_cache(len(prompt) + max_new_tokens if self.cache_kind == "static" else None)
        block_kv_bytes = model.kv_bytes_per_token() * self.block_size
        sync(device)
        result.start_time = time.perf_counter()
        logits = model.forward_ar(torch.tensor([prompt], device=device), cache, 0, last_only=True)
        result.forward_passes["prefill"] += 1
        anchor = pick_token(logits[0, -1], settings, generator)
        result.tokens.append(int(anchor))
        result.commit(1)
        past = len(prompt)  # cache length == position of the anchor
        peak = cache_storage_bytes(cache)
        done = int(anchor) == eos_token_id
        while not done and len(result.tokens) < max_new_tokens:
            size = min(self.block_size, max_new_tokens - len(result.tokens))  # shrink the last block
            if size == 1:  # nothing to draft: a plain AR step
                logits = model.forward_ar(anchor.view(1, 1), cache, past)
                result.forward_passes["decode"] += 1
                past += 1
                anchor = pick_token(logits[0, -1], settings, generator)
                new = [int(anchor)]
            else:
                new, anchor, accepted = self._cycle(anchor, size, cache, past, settings, generator)
                past += accepted + 1
                result.forward_passes["draft"] += 1
                result.forward_passes["verify"] += 1
                result.drafted_per_cycle.append(size - 1)
                result.accepted_per_cycle.append(accepted)
                if self.cache_kind == "dynamic":  # the draft pass held the block's K/V beside the cache
                    peak = max(peak, cache_storage_bytes(cache) + block_kv_bytes)
            new, done = truncate_at_eos(new, eos_token_id)
            result.tokens.extend(new)
            result.commit(len(new))
            if self.on_cycle is not None:
                self.on_cycle(cache, past, list(result.tokens))
        if done:
            result.stop_reason = "eos"
        result.end_time = time.perf_counter()
        result.kv_cache_bytes_peak = max(peak, cache_storage_bytes(cache))
        return result

    def _cycle(
        self,
        anchor: torch.Tensor,
        size: int,
        cache: Any,
        past: int,
        settings: SamplingSettings,
        generator: torch.Generator | None,
    ) -> tuple[list[int], torch.Tensor, int]:
        """One draft + verify round over a block of ``size`` tokens; returns (tokens, next anchor, accepted)."""
        model = self.model
        block = torch.full((1, size), self.mask_token_id, device=anchor.device)
        block[0, 0] = anchor
        draft_logits = model.forward_diffusion(block, cache, past)[0, : size - 1]  # rows predict positions 1..K-1
        if settings.greedy:
            drafts = draft_logits.argmax(-1)
        else:
            q = warp_probs(draft_logits, settings)
            drafts = torch.multinomial(q, 1, generator=generator).squeeze(-1)
        verify_logits = model.forward_ar(torch.cat([anchor.view(1), drafts]).view(1, -1), cache, past)[0]
        if settings.greedy:
            target = verify_logits.argmax(-1)
            host = torch.cat([drafts, target]).tolist()
            drafted, predicted = host[: size - 1], host[size - 1 :]
            accepted = 0
            while accepted < size - 1 and (
                self.accept_rule == "accept_all" or drafted[accepted] == predicted[accepted]
            ):
                accepted += 1
            next_token = target[accepted]
        else:
            p = warp_probs(verify_logits, settings)
            accepted, next_token = self._rejection_sample(p, q, drafts, generator)
            drafted = drafts.tolist()
        cache.crop(-(size - accepted - 1))  # keep the anchor and the accepted drafts
        return drafted[:accepted] + [int(next_token)], next_token, accepted

    def _rejection_sample(
        self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[int, torch.Tensor]:
        """Speculative rejection sampling: accept d_i w.p. min(1, p/q); resample from max(p - q, 0)."""
        n = drafts.shape[0]
        rows = torch.arange(n, device=drafts.device)
        ratio = p[rows, drafts] / q[rows, drafts]
        uniform = torch.rand(n, generator=generator, device=drafts.device)
        keep = (uniform < ratio).tolist()
        accepted = 0
        while accepted < n and (self.accept_rule == "accept_all" or keep[accepted]):
            accepted += 1
        if accepted == n:
            next_probs = p[n]  # bonus token from the AR distribution
        else:
            residual = (p[accepted] - q[accepted]).clamp_min(0)
            mass = float(residual.sum())
            next_probs = residual / mass if mass > 1e-12 else p[accepted]
        return accepted, torch.multinomial(next_probs, 1, generator=generator).squeeze(0)
