"""Speculative decoding with a drafter that reads the target's hidden states (DFlash, EAGLE-3): what the
two engines share. The target is the suite's model (its AR view); the drafter is a small model in a
released layout (``orthrus.models.drafters``) with its own K/V cache.

Per cycle, for every row of the batch, with anchor t (the last committed token, not yet in the
target's cache) at position L:
  take in  the drafter writes the target hidden states of the positions committed since its last pass
           into its own cache (their K/V), so that it holds positions 0 .. L - 1 (engine-specific)
  draft    it proposes d1..d_{K-1} after t (engine-specific: one block pass, or a chain of K - 1 passes)
  verify   the target's AR view over [t, d1..d_{K-1}] writes K entries after the committed prefix and
           returns the logits and the hidden states the drafter reads
  accept   the longest prefix of drafts the target agrees with (greedy: d_i == argmax p_{i-1};
           sampling: speculative rejection, d_i kept with probability min(1, p/q), the next token
           from normalize(max(p - q, 0)) at the first rejection, from p after the last draft)
  commit   accepted drafts + the target's own next token; the target's committed length grows by
           accepted + 1, and the verify pass's hidden states of those positions wait for the
           drafter's next pass (what either cache holds past a committed length is never read and
           is overwritten: nothing is cropped)
The committed text is exactly what the target alone would produce (greedy: token for token).

Memory is recorded by source: ``kv_cache_bytes_peak`` is the target's cache, as for ``ar``;
``draft_kv_cache_bytes_peak`` the drafter's own, preallocated for prompt + budget (one entry per
position, so it grows with the context) plus one block for a batch's finished rows and the spill slot
(``orthrus.models.drafting``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from orthrus.engines.base import (
    DEFAULT_BLOCK_SIZE,
    BatchResult,
    SamplingSettings,
    pick_token,
    row_finished,
    truncate_at_eos,
    warp_probs,
)
from orthrus.engines.decoding import CachedEngine, DecodeState
from orthrus.engines.orthrus_engine import LOSSLESS_ACCEPT_RULES, checked_accept_rule, next_token_probs
from orthrus.errors import UserInputError
from orthrus.models.drafters import NAMES, check_drafter_config, is_drafter, load_drafter
from orthrus.models.kv_cache import KVCache


@dataclass
class DrafterState:
    """The drafter's side of a decoding loop: its cache holds row r's positions 0 .. lengths[r] - 1;
    ``features[r]`` are the target hidden states of the positions after those that it has not taken in
    yet [n_r, F], and ``tokens[r]`` the token that follows each of them (the committed text)."""

    cache: KVCache
    lengths: list[int]
    features: list[torch.Tensor]
    tokens: list[list[int]]

    def wait(self, row: int, features: torch.Tensor, tokens: list[int]) -> None:
        """Newly committed positions of ``row``: their target hidden states and the tokens after them."""
        self.features[row] = torch.cat([self.features[row], features])
        self.tokens[row] = self.tokens[row] + list(tokens)

    def take(self) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
        """What is waiting, padded to the longest row: (features [B, N, F], tokens [B, N], starts (the
        first position of each row's), counts); the lengths advance past it."""
        counts = [len(t) for t in self.tokens]
        width = max(counts)
        sample = self.features[0]
        padded = sample.new_zeros((len(counts), width, sample.shape[-1]))
        tokens = torch.zeros((len(counts), width), dtype=torch.long, device=sample.device)
        for r, count in enumerate(counts):
            if count:
                padded[r, :count] = self.features[r]
                tokens[r, :count] = torch.tensor(self.tokens[r], device=sample.device)
        starts = list(self.lengths)
        for r, count in enumerate(counts):
            self.lengths[r] += count
            self.features[r] = self.features[r][:0]
            self.tokens[r] = []
        return padded, tokens, starts, counts


def accept_drafts(
    drafts: torch.Tensor,
    q: torch.Tensor | None,
    verify_logits: torch.Tensor,
    limits: list[int],
    settings: SamplingSettings,
    generator: torch.Generator | None,
    accept: Any,
) -> tuple[list[list[int]], torch.Tensor, list[int]]:
    """Per row, a prefix of its first limits[r] drafts [B, n] the target keeps, then the target's own next
    token after it. ``q`` [B, n, V] is the distribution each draft was sampled from (None: greedy drafts);
    ``verify_logits`` [B, n + 1, V]: row j predicts the token after input j. Greedy is the degenerate
    case of the sampling rule (one-hot p and q). Returns (per row: accepted drafts + next token, the
    next tokens [B], per row accepted)."""
    count, n = drafts.shape
    if q is None:
        predicted = verify_logits.argmax(-1)  # [B, n + 1]
        host = torch.cat([drafts, predicted], 1).tolist()  # one device -> host copy per cycle
        accepted = [accept([d == t for d, t in zip(row[: limits[r]], row[n:])]) for r, row in enumerate(host)]
        commits = [row[:kept] + [row[n + kept]] for row, kept in zip(host, accepted)]
        return commits, torch.tensor([c[-1] for c in commits], device=drafts.device), accepted
    p = warp_probs(verify_logits, settings)  # [B, n + 1, V]
    picked = drafts.unsqueeze(-1)
    ratio = (p[:, :n].gather(-1, picked) / q.gather(-1, picked)).squeeze(-1)  # q > 0: the draft was drawn from it
    uniform = torch.rand((count, n), generator=generator, device=drafts.device)
    verdicts = (uniform < ratio).tolist()
    accepted = [accept(verdicts[r][: limits[r]]) for r in range(count)]
    probs = torch.stack([next_token_probs(p[r, : limits[r] + 1], q[r, : limits[r]], accepted[r]) for r in range(count)])
    nexts = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    drafted = drafts.tolist()
    return [drafted[r][: accepted[r]] + [t] for r, t in enumerate(nexts.tolist())], nexts, accepted


class DrafterEngine(CachedEngine):
    """A target verified against the drafts of a drafter that reads its hidden states (see the module
    docstring). Options: ``draft_model`` (a drafter directory or zoo name, or a loaded drafter; in a
    suite the engine's ``draft_model`` key), ``block_size`` K (K - 1 drafts per cycle, as Orthrus; None:
    the drafter's own), ``cache`` (the target's: static or dynamic; the drafter's is preallocated) and
    ``accept_rule`` (``exact``; ``accept_all`` is lossy on purpose, for tests and gates).

    A single prompt is a batch of one: every row drafts and verifies in the same passes and commits its
    own accepted count over its own rows of both caches (rows advance at different speeds)."""

    takes_block_size = True
    needs_draft_model = True
    draft_model_kind: ClassVar[str] = ""
    compilable = False
    cannot_compile_reason = (
        "its verify pass also returns the target's hidden states at the drafter's layers and its drafter runs "
        "passes of its own, which the compiled step (OrthrusForCausalLM.forward_static) does not cover yet"
    )

    def __init__(
        self,
        model: Any,
        draft_model: Any = None,
        block_size: int | None = None,
        cache: str = "static",
        accept_rule: str = "exact",
        **options: Any,
    ) -> None:
        super().__init__(model, cache=cache, **options)
        self.drafter = self._load_drafter(draft_model)
        self.block_size = int(block_size if block_size is not None else self._drafter_block_size())
        self.accept_rule = accept_rule
        self.accept = checked_accept_rule(self.block_size, accept_rule)
        self.lossless = accept_rule in LOSSLESS_ACCEPT_RULES
        # what the prefill and every verify pass keep for the drafter (at K = 1 it never drafts: none)
        self.hidden_layers = self.drafter.hidden_layers if self.block_size > 1 else None

    # ------------------------------------------------------------------ the drafter
    def _load_drafter(self, draft_model: Any) -> Any:
        kind, what = self.draft_model_kind, NAMES[self.draft_model_kind]
        if draft_model is None:
            raise UserInputError(
                f"engine {self.name!r} needs a draft_model: a {what} drafter directory (in a suite, the engine's "
                "draft_model key naming a model whose path is that directory)."
            )
        if isinstance(draft_model, (str, Path)):
            param = next(self.model.parameters())
            attn = getattr(self.model.config, "_attn_implementation", None)
            drafter = load_drafter(kind, draft_model, param.dtype, str(param.device), attn_implementation=attn)
        elif is_drafter(kind, draft_model):
            drafter = draft_model
        else:
            raise UserInputError(
                f"engine {self.name!r} needs a {what} drafter as its draft model, got {type(draft_model).__name__}; "
                "give a drafter directory."
            )
        check_drafter_config(kind, drafter.config_dict, self.model.config.to_dict())
        if drafter.fc.weight.device != self.device:
            raise UserInputError(
                f"the {what} drafter is on {drafter.fc.weight.device} and the target on {self.device}; put both "
                "models on one device."
            )
        return drafter

    def _drafter_block_size(self) -> int:
        return DEFAULT_BLOCK_SIZE

    def extra_parameter_tensors(self) -> list[torch.Tensor]:
        return list(self.drafter.parameters())  # its own weights; the target's it borrows are not extra

    def draft_kv_bytes_per_token(self) -> int:
        return int(self.drafter.kv_bytes_per_token())

    def spare_slots(self, batch_size: int) -> int:
        # A finished row of a batch keeps its length and still gets a block written past it (as Orthrus)
        return self.block_size if batch_size > 1 else 0

    def _start_drafter(self, state: DecodeState, max_new_tokens: int) -> DrafterState:
        """The drafter's cache (prompt + budget + spare slots + the spill slot per row) and, waiting for
        it, every prompt position's target hidden states and the token after each (the first output)."""
        prompts = state.prompts or []
        if state.features is None:  # K = 1: plain AR decoding, the drafter holds nothing
            return DrafterState(self.drafter.new_cache(len(prompts), 0), [0] * len(prompts), [], [])
        capacity = max(len(p) for p in prompts) + max_new_tokens + self.spare_slots(len(prompts)) + 1
        first = state.last.tolist()
        return DrafterState(
            cache=self.drafter.new_cache(len(prompts), capacity),
            lengths=[0] * len(prompts),
            features=[state.features[r, : len(p)] for r, p in enumerate(prompts)],
            tokens=[p[1:] + [first[r]] for r, p in enumerate(prompts)],
        )

    def after_cycle(self, cache: Any, lengths: list[int], drafter: DrafterState, tokens: list[list[int]]) -> None:
        """Hook called after every cycle (and every plain AR step); does nothing here. Row r of ``cache``
        holds its committed prefix in slots [0, lengths[r]); ``drafter.cache`` holds its positions
        [0, drafter.lengths[r]) and the rest of the committed positions wait in ``drafter``. ``tokens[r]``
        is row r's output so far. A test subclass overrides this to inspect both caches."""

    # ------------------------------------------------------------------ the decoding loop
    def _decode(self, state, max_new_tokens, settings, generator, eos_token_id, max_steps=None) -> BatchResult:
        model, batch, cache, lengths, active = self.model, state.batch, state.cache, state.lengths, state.active
        rows, anchors, steps = batch.rows, state.last, 0
        drafter = self._start_drafter(state, max_new_tokens)
        while any(active) and (max_steps is None or steps < max_steps):
            steps += 1
            budgets = [max_new_tokens - row.new_tokens if live else 0 for row, live in zip(rows, active)]
            size = min(self.block_size, max(budgets))  # the last blocks shrink
            if size == 1:  # no live row has anything left to draft (or K = 1): one plain AR step
                if self.hidden_layers is None:
                    logits, features = model.forward_ar(anchors.view(-1, 1), cache, lengths), None
                else:
                    logits, features = model.forward_ar(
                        anchors.view(-1, 1), cache, lengths, hidden_layers=self.hidden_layers
                    )
                anchors = pick_token(logits[:, -1], settings, generator)
                commits, passes = [[t] for t in anchors.tolist()], ("decode",)
                limits, accepted = [0] * len(rows), [0] * len(rows)
            else:
                limits = [max(min(size, budget) - 1, 0) for budget in budgets]  # drafts row r may keep (its budget)
                drafts, q, draft_passes = self._draft(drafter, anchors, size, limits, lengths, settings, generator)
                block = torch.cat([anchors.view(-1, 1), drafts], 1)
                logits, features = model.forward_ar(block, cache, lengths, hidden_layers=self.hidden_layers)
                commits, anchors, accepted = accept_drafts(drafts, q, logits, limits, settings, generator, self.accept)
                passes = ("draft",) * draft_passes + ("verify",)
            # A live row with one token left rides along in a cycle: its token is the verify pass's AR
            # prediction after its anchor, booked as that row's one decode pass (its drafts were wasted).
            drafting = [live and limit > 0 for live, limit in zip(active, limits)]
            for kind in passes:
                batch.record_pass(kind, drafting if kind == "draft" else active)
            for r, row in enumerate(rows):
                if not active[r]:
                    continue
                new, _ = truncate_at_eos(commits[r], eos_token_id)
                if features is not None:  # positions lengths[r] .. get their hidden states
                    drafter.wait(r, features[r, : len(new)], new)
                lengths[r] += len(new)
                if drafting[r]:
                    row.record_step(passes, new, limits[r], accepted[r])
                else:
                    row.record_step("decode", new)
                active[r] = not row_finished(row, max_new_tokens, eos_token_id)
            self.after_cycle(cache, lengths, drafter, [row.tokens for row in rows])
        return batch.finish(kv_bytes=cache.storage_bytes(), draft_kv_bytes=drafter.cache.storage_bytes())

    def _draft(
        self,
        drafter: DrafterState,
        anchors: torch.Tensor,
        size: int,
        limits: list[int],
        lengths: list[int],
        settings: SamplingSettings,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Take in what waits, then draft size - 1 tokens after each row's anchor (row r's at most
        limits[r] of them are kept). Returns (drafts [B, size - 1] as target ids, the distribution
        each was sampled from [B, size - 1, V] or None when greedy, the drafter passes it took)."""
        raise NotImplementedError
