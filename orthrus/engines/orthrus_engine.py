"""Orthrus decoding: the diffusion view drafts a block in one pass, the AR view verifies it in one.

Per cycle, with anchor t (the last committed token, not yet in the cache) at position a:
  draft   q = diffusion([t, MASK x (K-1)])      -> drafts d1..d_{K-1}   (cache read only)
  verify  p = AR([t, d1..d_{K-1}])              -> appends K entries to the cache
  accept  keep the longest prefix of drafts the AR view agrees with (greedy: d_i == argmax p_{i-1};
          sampling: speculative rejection, d_i kept with probability min(1, p/q))
  commit  accepted drafts + the correction (or bonus) token; crop the cache to a + accepted + 1
The committed text is exactly what the AR view alone would produce.
"""

from __future__ import annotations

from collections.abc import Callable
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
from orthrus.models.modeling_orthrus import cache_storage_bytes, crop_cache


# ---------------------------------------------------------------------- accept rules
# An accept rule turns the per-draft verdicts of the consensus test (True: the AR view agrees with
# draft i) into how many drafts to keep. The engine option ``accept_rule`` picks one by name; a test
# may register its own here.
def accept_agreed_prefix(agrees: list[bool]) -> int:
    """The lossless rule: keep drafts up to the first one the AR view rejects."""
    accepted = 0
    while accepted < len(agrees) and agrees[accepted]:
        accepted += 1
    return accepted


def accept_all(agrees: list[bool]) -> int:
    """Lossy on purpose: keeps every draft. It exists to prove that tests and gates catch a lossy engine."""
    return len(agrees)


ACCEPT_RULES: dict[str, Callable[[list[bool]], int]] = {"exact": accept_agreed_prefix, "accept_all": accept_all}
LOSSLESS_ACCEPT_RULES = ("exact",)


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
            raise UserInputError(f"accept_rule must be one of {', '.join(ACCEPT_RULES)}, got {accept_rule!r}.")
        self.cache_kind = cache
        self.accept_rule = accept_rule
        self.accept = ACCEPT_RULES[accept_rule]
        self.lossless = accept_rule in LOSSLESS_ACCEPT_RULES
        self.mask_token_id = int(model.config.mask_token_id)

    def after_cycle(self, cache: Any, committed_length: int, tokens: list[int]) -> None:
        """Hook called after every cycle (and every plain AR step); does nothing here.

        ``cache`` holds exactly ``committed_length`` entries: the prompt and every committed token
        but the last (the next anchor). ``tokens`` is the output so far (read only). A test
        subclass overrides this to inspect the cache.
        """

    # ------------------------------------------------------------------ the decoding loop
    @torch.inference_mode()
    def _generate(self, prompt, max_new_tokens, settings, generator, seed, eos_token_id) -> GenerationResult:
        model, device = self.model, self.device
        result = GenerationResult(tokens=[], prompt_tokens=len(prompt), listener=self.listener)
        cache = model.new_cache(len(prompt) + max_new_tokens if self.cache_kind == "static" else None)
        sync(device)
        result.start()
        logits = model.forward_ar(torch.tensor([prompt], device=device), cache, 0, last_only=True)
        anchor = pick_token(logits[0, -1], settings, generator)
        new, done = truncate_at_eos([int(anchor)], eos_token_id)
        result.record_step("prefill", new, kv_bytes=cache_storage_bytes(cache))
        past = len(prompt)  # entries in the cache: every committed token before the anchor
        while not done and result.new_tokens < max_new_tokens:
            size = min(self.block_size, max_new_tokens - result.new_tokens)  # the last block shrinks
            if size == 1:  # nothing left to draft: one plain AR step
                logits = model.forward_ar(anchor.view(1, 1), cache, past)
                anchor = pick_token(logits[0, -1], settings, generator)
                new, passes, drafted, accepted = [int(anchor)], ("decode",), None, None
            else:
                new, anchor, accepted = self._cycle(anchor, size, cache, past, settings, generator)
                passes, drafted = ("draft", "verify"), size - 1
            past += len(new)
            new, done = truncate_at_eos(new, eos_token_id)
            result.record_step(passes, new, drafted, accepted, kv_bytes=self._kv_bytes_held(cache, drafted))
            self.after_cycle(cache, past, result.tokens)
        return result.finish("eos" if done else "max_new_tokens", kv_bytes=cache_storage_bytes(cache))

    def _cycle(
        self,
        anchor: torch.Tensor,
        size: int,
        cache: Any,
        past: int,
        settings: SamplingSettings,
        generator: torch.Generator | None,
    ) -> tuple[list[int], torch.Tensor, int]:
        """One draft-verify cycle over a block of ``size`` positions starting at the anchor (position ``past``).

        Returns (the committed tokens: accepted drafts + the next anchor, the next anchor, accepted).
        """
        model, n = self.model, size - 1

        # 1. draft: the diffusion view fills [anchor, MASK x n] in one pass (reads the cache, writes nothing)
        block = torch.full((1, size), self.mask_token_id, device=anchor.device)
        block[0, 0] = anchor
        draft_logits = model.forward_diffusion(block, cache, past)[0, :n]  # row j predicts position past + j + 1

        # 2. choose drafts: the diffusion view's argmax, or a sample from its warped distribution q
        q = None if settings.greedy else warp_probs(draft_logits, settings)
        drafts = draft_logits.argmax(-1) if q is None else torch.multinomial(q, 1, generator=generator).squeeze(-1)

        # 3. verify: the AR view over [anchor, d1..dn] appends `size` entries to the cache;
        #    row j is the AR prediction for position past + j + 1, i.e. for draft j+1 (row n: the bonus)
        verify_logits = model.forward_ar(torch.cat([anchor.view(1), drafts]).view(1, -1), cache, past)[0]

        # 4. accept a prefix of the drafts, then the AR view's own next token after it.
        #    Greedy is the degenerate case of the sampling rule: with one-hot p and q, "keep d_i with
        #    probability min(1, p/q)" means d_i == argmax p, and max(p - q, 0) puts all mass on argmax p.
        if q is None:
            predicted = verify_logits.argmax(-1)
            host = torch.cat([drafts, predicted]).tolist()  # one device -> host copy per cycle
            drafted = host[:n]
            accepted = self.accept([d == t for d, t in zip(drafted, host[n:])])
            next_token = predicted[accepted]  # the correction, or the bonus when all n were kept
        else:
            p = warp_probs(verify_logits, settings)
            rows = torch.arange(n, device=drafts.device)
            ratio = p[rows, drafts] / q[rows, drafts]
            uniform = torch.rand(n, generator=generator, device=drafts.device)
            accepted = self.accept((uniform < ratio).tolist())
            next_token = torch.multinomial(_next_token_probs(p, q, accepted), 1, generator=generator).squeeze(0)
            drafted = drafts.tolist()

        # 5. crop. Invariant: before this cycle the cache held exactly the `past` committed tokens
        #    before the anchor. Verification appended causal AR K/V for [anchor, d1..dn]; the entry
        #    of a token depends only on the tokens before it, so the first 1 + accepted new entries
        #    (anchor and accepted drafts, all now committed) are exactly what AR decoding writes for
        #    them, and the rest belong to rejected drafts. Keeping past + accepted + 1 >= 1 entries
        #    restores the invariant for the next anchor (next_token, not yet in the cache).
        crop_cache(cache, past + accepted + 1, held=past + size)
        return drafted[:accepted] + [int(next_token)], next_token, accepted

    def _kv_bytes_held(self, cache: Any, drafted: int | None) -> int | None:
        """K/V bytes held during the step just taken (None: nothing beyond the fixed static cache)."""
        if self.cache_kind == "static":  # preallocated; the draft pass writes into its free slots
            return None
        extra = self.model.kv_bytes_per_token() * self.block_size if drafted else 0  # the block's K/V beside it
        return cache_storage_bytes(cache) + extra


def _next_token_probs(p: torch.Tensor, q: torch.Tensor, accepted: int) -> torch.Tensor:
    """Where the token after ``accepted`` drafts is sampled from: the AR distribution p for the
    bonus (every draft kept), else the residual normalize(max(p - q, 0)) at the first rejection
    (p itself when the residual has no mass)."""
    if accepted == q.shape[0]:
        return p[accepted]
    residual = (p[accepted] - q[accepted]).clamp_min(0)
    mass = float(residual.sum())
    return residual / mass if mass > 1e-12 else p[accepted]
