"""Orthrus decoding: the diffusion view drafts a block in one pass, the AR view verifies it in one.

Per cycle, with anchor t (the last committed token, not yet in the cache) at position a:
  draft   q = diffusion([t, MASK x (K-1)])      -> drafts d1..d_{K-1}   (cache read only)
  verify  p = AR([t, d1..d_{K-1}])              -> appends K entries to the cache
  accept  keep the longest prefix of drafts the AR view agrees with (greedy: d_i == argmax p_{i-1};
          sampling: speculative rejection, d_i kept with probability min(1, p/q))
  commit  accepted drafts + the correction (or bonus) token; the cache's committed length becomes
          a + accepted + 1 (the entries past it, of rejected drafts, are never read and are overwritten)
The committed text is exactly what the AR view alone would produce.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from orthrus.engines.base import (
    DEFAULT_BLOCK_SIZE,
    BatchResult,
    EngineDescription,
    SamplingSettings,
    pick_token,
    row_finished,
    truncate_at_eos,
    warp_probs,
)
from orthrus.engines.block_choice import (
    CANDIDATES,
    COST_ROUNDS,
    BlockChooser,
    CostTable,
    contexts_between,
    read_profile,
    synthetic_acceptance_rates,
    timed_rounds,
)
from orthrus.engines.decoding import CachedEngine
from orthrus.errors import UserInputError


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


def checked_accept_rule(block_size: int, accept_rule: str) -> Callable[[list[bool]], int]:
    """The accept rule called ``accept_rule``, once the block size and the name are checked (one
    sentence for either mistake; every drafting engine takes both options)."""
    if block_size < 1:
        raise UserInputError(f"block_size must be >= 1, got {block_size}.")
    if accept_rule not in ACCEPT_RULES:
        raise UserInputError(f"accept_rule must be one of {', '.join(ACCEPT_RULES)}, got {accept_rule!r}.")
    return ACCEPT_RULES[accept_rule]
LOSSLESS_ACCEPT_RULES = ("exact",)
AUTO = "auto"  # block_size: auto (orthrus.engines.block_choice)


class OrthrusEngine(CachedEngine):
    """Draft a block with the diffusion view, verify it with the AR view, keep what AR would produce.

    A single prompt is a batch of one: every row drafts and verifies its own block in the same two
    passes per cycle and commits its own accepted count, so rows advance at different speeds (see
    KVCache for the layout); the five steps of a cycle (draft, choose, verify, accept, commit) are
    written once, in ``_cycle``.
    """

    name = "orthrus"
    model_kind = "dual_view"
    takes_block_size = True

    def __init__(
        self,
        model: Any,
        block_size: int | str | None = None,
        cache: str = "static",
        accept_rule: str = "exact",
        compile: bool = False,
        profile: str | None = None,
        synthetic_acceptance_length: float | None = None,
        synthetic_rates: list[float] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, cache=cache, compile=compile, **options)
        self.chooser: BlockChooser | None = None
        if block_size == AUTO:  # a K per cycle that follows the load (orthrus.engines.block_choice)
            self.block_size = max(CANDIDATES)
            dtype = str(model.model.embed_tokens.weight.dtype).removeprefix("torch.")
            table = read_profile(profile, model.config, self.device.type, dtype) if profile else None
            self.chooser = BlockChooser(CostTable(self._measured_cost, table))
        else:
            if profile is not None:
                raise UserInputError("profile is read by block_size: auto only; set block_size: auto or drop profile.")
            if block_size is None:  # the model's own training block, else the one default
                block_size = getattr(model.config, "block_size", None) or DEFAULT_BLOCK_SIZE
            if isinstance(block_size, str) and not block_size.isdigit():
                raise UserInputError(f"block_size must be an integer >= 1 or auto, got {block_size!r}.")
            self.block_size = int(block_size)
        self.accept_rule = accept_rule
        self.accept = checked_accept_rule(self.block_size, accept_rule)
        self.synthetic = synthetic_acceptance_rates(synthetic_acceptance_length, synthetic_rates, self.block_size)
        self.lossless = accept_rule in LOSSLESS_ACCEPT_RULES and self.synthetic is None
        self.mask_token_id = int(model.config.mask_token_id)
        self._synthetic_generator: torch.Generator | None = None

    def describe(self) -> EngineDescription:
        facts = super().describe()
        block = None if self.chooser is not None else facts.block_size  # auto: several, per cycle
        return replace(facts, block_size=block, synthetic=self.synthetic is not None)

    def before_clock(self, prompts: list[list[int]], max_new_tokens: int, seed: int | None) -> None:
        if self.synthetic is not None:  # its own draws: the output does not depend on sampling's generator
            self._synthetic_generator = torch.Generator(device=self.device).manual_seed(0 if seed is None else seed)
        if self.chooser is not None:  # every cost this call may need, measured (or read) now
            low, high = min(map(len, prompts)), max(map(len, prompts)) + max_new_tokens
            for context in contexts_between(low, high):
                self.chooser.costs.prepare(len(prompts), context, self.chooser.candidates)

    def _measured_cost(self, batch: int, context: int, blocks: Sequence[int]) -> dict[int, float]:
        """Seconds of one step at each of ``blocks`` (decode at 1; draft + verify otherwise) on this
        engine's own passes over a scratch cache holding ``context`` entries per row (values do not
        matter), measured in interleaved rounds."""
        width = max(blocks)
        cache = self.model.new_cache(batch, context + width)
        starts = [context] * batch

        def step(block: int) -> Callable[[], None]:
            ids = torch.full((batch, block), self.mask_token_id, dtype=torch.long, device=self.device)

            def run() -> None:
                if block > 1:
                    self.forward(ids, cache, starts, [block] * batch).argmax(-1)
                self.forward(ids, cache, starts)[:, -1].argmax(-1).tolist()

            return run

        def synchronize() -> None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        with torch.inference_mode():
            return timed_rounds({block: step(block) for block in blocks}, COST_ROUNDS, synchronize)

    def extra_parameter_tensors(self) -> list:
        return self.model.diffusion_parameters()  # the *_diff projections and norms of the diffusion view

    def spare_slots(self, batch_size: int) -> int:
        # A finished row of a batch stays in it with its length frozen and still gets a block written
        # past it, as an unfinished one does: one block of slots beyond the AR engine's cache. A
        # single row never drafts past its budget, so its cache is exactly AR's, unless compiled:
        # a compiled step always drafts and verifies whole blocks (its shapes are fixed).
        return self.block_size if batch_size > 1 or self.compiled else 0

    def static_shapes(self) -> list[tuple[int, bool]]:
        blocks = [(self.block_size, True), (self.block_size, False)] if self.block_size > 1 else []
        return [(1, False), *blocks]

    def after_cycle(self, cache: Any, committed_lengths: list[int], tokens: list[list[int]]) -> None:
        """Hook called after every cycle (and every plain AR step); does nothing here.

        Row r of ``cache`` holds its committed prefix in slots [0, committed_lengths[r]): its prompt
        and every token it committed but the last (its next anchor). ``tokens[r]`` is row r's output
        so far (read only; a finished row's no longer grows). A test subclass overrides this to
        inspect the cache.
        """

    # ------------------------------------------------------------------ the decoding loop
    def _decode(self, state, max_new_tokens, settings, generator, eos_token_id, max_steps=None) -> BatchResult:
        batch, cache, lengths, active = state.batch, state.cache, state.lengths, state.active
        rows, anchors, steps = batch.rows, state.last, 0
        while any(active) and (max_steps is None or steps < max_steps):
            steps += 1
            budgets = [max_new_tokens - row.new_tokens if live else 0 for row, live in zip(rows, active)]
            block, context, began = self.block_size, 0, 0.0
            if self.chooser is not None:  # one K for every row of the batch, from the load at hand
                context = max(length for length, live in zip(lengths, active) if live)
                asked = time.perf_counter()
                block = self.chooser.choose(len(rows), context, max(budgets))
                began = time.perf_counter()
                self.chooser.own_seconds += began - asked
            # the last blocks shrink; a compiled engine keeps whole blocks (fixed shapes) and caps
            # what each row may keep by its budget instead, which commits the same tokens
            size = min(block, max(budgets))
            if self.compiled and size > 1:
                size = block
            if size == 1:  # no live row has anything left to draft: one plain AR step
                logits = self.forward(anchors.view(-1, 1), cache, lengths)
                anchors = pick_token(logits[:, -1], settings, generator)
                commits, passes = [[t] for t in anchors.tolist()], ("decode",)
                limits, accepted = [0] * len(rows), [0] * len(rows)
            else:
                limits = [max(min(size, budget) - 1, 0) for budget in budgets]  # drafts row r may keep (its budget)
                commits, anchors, accepted = self._cycle(anchors, size, limits, cache, lengths, settings, generator)
                passes = ("draft", "verify")
            # A live row with one token left rides along in a cycle: its token is the verify pass's
            # AR prediction after its anchor, booked as that row's one decode pass, and the draft
            # pass did no work for it (a wasted row-pass).
            drafting = [live and limit > 0 for live, limit in zip(active, limits)]
            if self.chooser is not None:  # what the step cost and what each drafting row kept
                kept = [(limit, acc) for limit, acc, d in zip(limits, accepted, drafting) if d]
                done = time.perf_counter()
                self.chooser.observe(size, len(rows), context, done - began, [k[0] for k in kept], [k[1] for k in kept])
                self.chooser.own_seconds += time.perf_counter() - done
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
                if self.chooser is not None:
                    row.chosen_blocks.append(size if drafting[r] else 1)
                active[r] = not row_finished(row, max_new_tokens, eos_token_id)
            self.after_cycle(cache, lengths, [row.tokens for row in rows])
        result = batch.finish(kv_bytes=cache.storage_bytes())
        if self.chooser is not None:  # what it believed, for diagnosing its choices: after the clock stopped
            reached = [row.prompt_tokens for row in rows] + list(lengths)
            belief = self.chooser.snapshot(len(rows), contexts_between(min(reached), max(reached)))
            for row in rows:
                row.extra["block_chooser"] = belief
        return result

    def _cycle(
        self,
        anchors: torch.Tensor,
        size: int,
        limits: list[int],
        cache: Any,
        lengths: list[int],
        settings: SamplingSettings,
        generator: torch.Generator | None,
    ) -> tuple[list[list[int]], torch.Tensor, list[int]]:
        """One draft-verify cycle of every row: row r's block [anchor_r, MASK x (size - 1)] sits at
        positions lengths[r].., and at most its first ``limits[r]`` drafts may be kept (its budget).

        Returns (per row: accepted drafts + next anchor, the next anchors [B], per row accepted).
        """
        n, count = size - 1, anchors.shape[0]

        # 1. draft: the diffusion view fills each row's [anchor, MASK x n] in one pass (row r's
        #    committed slots are only read); row r's block is only as wide as it would be alone
        #    (limits[r] + 1: the drafts depend on it)
        block = torch.full((count, size), self.mask_token_id, device=anchors.device)
        block[:, 0] = anchors
        widths = [limit + 1 for limit in limits]
        draft_logits = self.forward(block, cache, lengths, widths)[:, :n]  # [B, n, V]

        # 2. choose drafts: the diffusion view's argmax, or a sample from its warped distribution q
        q = None if settings.greedy else warp_probs(draft_logits, settings)
        if q is None:
            drafts = draft_logits.argmax(-1)
        else:
            drafts = torch.multinomial(q.reshape(count * n, -1), 1, generator=generator).view(count, n)

        # 3. verify: the AR view over [anchor, d1..dn] of every row writes row r's K/V at slots
        #    lengths[r] .. lengths[r] + n; row j of row r predicts draft j+1 (row n: the bonus)
        verify_logits = self.forward(torch.cat([anchors.view(-1, 1), drafts], 1), cache, lengths)

        # 4. accept per row a prefix of its first limits[r] drafts, then the AR view's own next token
        #    after it (a capped row's next token is the bonus after its last usable draft, exactly as
        #    in a block shrunk to its budget). Greedy is the degenerate case of the sampling rule:
        #    with one-hot p and q, "keep d_i with probability min(1, p/q)" means d_i == argmax p, and
        #    max(p - q, 0) puts all mass on argmax p.
        if self.synthetic is not None:  # the verifier keeps draft j with a set probability, whatever it is
            return self._synthetic_cycle(drafts, verify_logits, limits, settings, generator)
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
                [next_token_probs(p[r, : limits[r] + 1], q[r, : limits[r]], accepted[r]) for r in range(count)]
            )
            next_anchors = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            drafted = drafts.tolist()
            commits = [drafted[r][: accepted[r]] + [t] for r, t in enumerate(next_anchors.tolist())]

        # 5. commit, no crop: row r's committed length grows by accepted + 1 (the caller's
        #    `lengths`). The verify K/V of a token depends only on the tokens before it (causal), so
        #    those of its anchor and accepted drafts are exactly what AR decoding writes for them;
        #    the slots of rejected drafts lie past the committed length, hidden from every query and
        #    overwritten by the next block.
        return commits, next_anchors, accepted

    def _synthetic_cycle(
        self,
        drafts: torch.Tensor,
        verify_logits: torch.Tensor,
        limits: list[int],
        settings: SamplingSettings,
        generator: torch.Generator | None,
    ) -> tuple[list[list[int]], torch.Tensor, list[int]]:
        """Synthetic acceptance: row r keeps drafts while a draw stays below the rate of their position
        (at most limits[r]), then commits the AR view's own next token after them (its argmax, or a
        sample of its distribution). Not the AR model's output; its cost is a real cycle's."""
        assert self.synthetic is not None
        count, n = drafts.shape
        rates = torch.tensor([self.synthetic[min(j, len(self.synthetic) - 1)] for j in range(n)], device=drafts.device)
        draws = torch.rand((count, n), generator=self._synthetic_generator, device=drafts.device)
        verdicts = (draws < rates).tolist()
        accepted = [self.accept(verdicts[r][: limits[r]]) for r in range(count)]
        rows = torch.arange(count, device=drafts.device)
        after = verify_logits[rows, torch.tensor(accepted, device=drafts.device)]  # [B, V]
        next_anchors = pick_token(after, settings, generator)
        drafted = drafts.tolist()
        commits = [drafted[r][: accepted[r]] + [t] for r, t in enumerate(next_anchors.tolist())]
        return commits, next_anchors, accepted


def next_token_probs(p: torch.Tensor, q: torch.Tensor, accepted: int) -> torch.Tensor:
    """Where the token after ``accepted`` drafts is sampled from: the AR distribution p for the
    bonus (every draft kept), else the residual normalize(max(p - q, 0)) at the first rejection
    (p itself when the residual has no mass)."""
    if accepted == q.shape[0]:
        return p[accepted]
    residual = (p[accepted] - q[accepted]).clamp_min(0)
    mass = float(residual.sum())
    return residual / mass if mass > 1e-12 else p[accepted]
