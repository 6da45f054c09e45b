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
    BatchResult,
    Engine,
    GenerationResult,
    SamplingSettings,
    new_batch,
    pick_token,
    prefill_rows,
    row_finished,
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
    batchable = True  # generate_batch always uses a preallocated RowCache; `cache` applies to generate

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

    def after_batch_cycle(self, cache: Any, committed_lengths: list[int], tokens: list[list[int]]) -> None:
        """Hook called after every cycle (and every plain AR step) of ``generate_batch``; does nothing here.

        Row r of the RowCache ``cache`` holds its committed prefix in slots [0, committed_lengths[r]):
        its prompt and every token it committed but the last (its next anchor). ``tokens[r]`` is
        row r's output so far (read only; a finished row's no longer grows).
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
        result.record_step("prefill", [int(anchor)], kv_bytes=cache_storage_bytes(cache))
        return self._decode(result, cache, len(prompt), anchor, max_new_tokens, settings, generator, eos_token_id)

    def _decode(
        self, result, cache, past, anchor, max_new_tokens, settings, generator, eos_token_id, max_steps=None
    ) -> GenerationResult:
        """The decoding loop after prefill: ``cache`` holds ``past`` entries, every committed token
        before the anchor (already in ``result``). ``orthrus profile`` times its cycles from a cache
        filled without a prefill, ``max_steps`` cycles at a time."""
        model = self.model
        done = eos_token_id is not None and result.tokens[-1] == eos_token_id
        steps = 0
        while not done and result.new_tokens < max_new_tokens and (max_steps is None or steps < max_steps):
            steps += 1
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

    # ------------------------------------------------------------------ a batch of rows
    @torch.inference_mode()
    def _generate_batch(self, prompts, max_new_tokens, settings, generator, seed, eos_token_id) -> BatchResult:
        """Every row drafts and verifies its own block in the same two passes per cycle and commits
        its own accepted count, so rows advance at different speeds (see RowCache for the layout)."""
        model, device = self.model, self.device
        batch = new_batch(prompts)
        rows = batch.rows
        # A finished row stays in the batch with its length frozen and still gets a block written
        # past it, as an unfinished one does: one block of slots beyond the AR engine's cache.
        cache = model.new_row_cache(len(prompts), max(len(p) for p in prompts) + max_new_tokens + self.block_size)
        sync(device)
        batch.start()
        anchors = pick_token(prefill_rows(model, prompts, cache), settings, generator)  # [B]
        active = [True] * len(prompts)
        batch.record_pass("prefill", active)
        for r, token in enumerate(anchors.tolist()):
            rows[r].record_step("prefill", [token])
            active[r] = not row_finished(rows[r], max_new_tokens, eos_token_id)
        lengths = [len(p) for p in prompts]  # entries in row r's cache: its committed tokens before its anchor
        while any(active):
            budgets = [max_new_tokens - row.new_tokens if live else 0 for row, live in zip(rows, active)]
            size = min(self.block_size, max(budgets))  # the last blocks shrink, as in generate
            if size == 1:  # no live row has anything left to draft: one plain AR step
                logits = model.forward_ar_rows(anchors.view(-1, 1), cache, lengths)
                anchors = pick_token(logits[:, -1], settings, generator)
                commits, passes = [[t] for t in anchors.tolist()], ("decode",)
                limits, accepted = [0] * len(rows), [0] * len(rows)
            else:
                limits = [max(min(size, budget) - 1, 0) for budget in budgets]  # drafts row r may keep (its budget)
                commits, anchors, accepted = self._batch_cycle(
                    anchors, size, limits, cache, lengths, settings, generator
                )
                passes = ("draft", "verify")
            # A live row with one token left rides along in a cycle: its token is the verify pass's
            # AR prediction after its anchor, booked as that row's one decode pass (as generate
            # books it), and the draft pass did no work for it (a wasted row-pass).
            drafting = [live and limit > 0 for live, limit in zip(active, limits)]
            for kind in passes:
                batch.record_pass(kind, drafting if kind == "draft" else active)
            for r, row in enumerate(rows):
                if not active[r]:
                    continue
                new, _ = truncate_at_eos(commits[r], eos_token_id)
                lengths[r] += len(new)
                if drafting[r]:
                    row.record_step(passes, new, limits[r], accepted[r])
                else:
                    row.record_step("decode", new)
                active[r] = not row_finished(row, max_new_tokens, eos_token_id)
            self.after_batch_cycle(cache, lengths, [row.tokens for row in rows])
        return batch.finish(kv_bytes=cache_storage_bytes(cache))

    def _batch_cycle(
        self,
        anchors: torch.Tensor,
        size: int,
        limits: list[int],
        cache: Any,
        lengths: list[int],
        settings: SamplingSettings,
        generator: torch.Generator | None,
    ) -> tuple[list[list[int]], torch.Tensor, list[int]]:
        """``_cycle`` for every row at once: row r's block [anchor_r, MASK x (size - 1)] sits at positions
        lengths[r].., and at most its first ``limits[r]`` drafts may be kept (its token budget).

        Returns (per row: accepted drafts + next anchor, the next anchors [B], per row accepted).
        """
        model, n, count = self.model, size - 1, anchors.shape[0]

        # 1. draft: each row's block in one diffusion pass (row r's committed slots are only read)
        block = torch.full((count, size), self.mask_token_id, device=anchors.device)
        block[:, 0] = anchors
        # row r's block is only as wide as it would be alone (limits[r] + 1: the drafts depend on it)
        widths = [limit + 1 for limit in limits]
        draft_logits = model.forward_diffusion_rows(block, cache, lengths, widths)[:, :n]  # [B, n, V]

        # 2. choose drafts
        q = None if settings.greedy else warp_probs(draft_logits, settings)
        if q is None:
            drafts = draft_logits.argmax(-1)
        else:
            drafts = torch.multinomial(q.reshape(count * n, -1), 1, generator=generator).view(count, n)

        # 3. verify: the AR view over [anchor, d1..dn] of every row writes row r's K/V at slots
        #    lengths[r] .. lengths[r] + n; row j of row r predicts draft j+1 (row n: the bonus)
        verify_logits = model.forward_ar_rows(torch.cat([anchors.view(-1, 1), drafts], 1), cache, lengths)

        # 4. accept per row, over its first limits[r] drafts (a capped row's next token is then the
        #    bonus after its last usable draft, exactly as in a block shrunk to its budget)
        if q is None:
            predicted = verify_logits.argmax(-1)  # [B, size]
            host = torch.cat([drafts, predicted], 1).tolist()  # one device -> host copy per cycle
            accepted = [self.accept([d == t for d, t in zip(row[: limits[r]], row[n:])]) for r, row in enumerate(host)]
            commits = [row[:kept] + [row[n + kept]] for row, kept in zip(host, accepted)]
            next_anchors = torch.tensor([c[-1] for c in commits], device=anchors.device)
        else:
            p = warp_probs(verify_logits, settings)  # [B, size, V]
            picked = drafts.unsqueeze(-1)
            ratio = (p[:, :n].gather(-1, picked) / q.gather(-1, picked)).squeeze(-1)  # [B, n]
            uniform = torch.rand((count, n), generator=generator, device=drafts.device)
            verdicts = (uniform < ratio).tolist()
            accepted = [self.accept(verdicts[r][: limits[r]]) for r in range(count)]
            probs = torch.stack(
                [_next_token_probs(p[r, : limits[r] + 1], q[r, : limits[r]], accepted[r]) for r in range(count)]
            )
            next_anchors = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            drafted = drafts.tolist()
            commits = [drafted[r][: accepted[r]] + [t] for r, t in enumerate(next_anchors.tolist())]

        # 5. no crop: row r's committed length grows by accepted + 1 (the caller's `lengths`); the
        #    verify K/V of its anchor and accepted drafts are exactly what AR decoding writes (causal),
        #    and the slots of rejected drafts lie past the committed length, hidden by the mask and
        #    overwritten by the next block.
        return commits, next_anchors, accepted

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
