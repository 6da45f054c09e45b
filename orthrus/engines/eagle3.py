"""``eagle3``: speculative decoding with an EAGLE-3 drafter (SafeAILab; the model and its released
layouts: ``orthrus.models.eagle3``), drafting a chain of K - 1 tokens (as vLLM runs it), verified by the
target, lossless.

Per cycle (the loop and the accept rule: ``orthrus.engines.drafter_engine``), for row r with anchor t at
position L:
  take in  one drafter pass over the pairs (target feature f_i, token x_{i+1}) of the positions i
           committed since its last pass (the prefill's, then each verify pass's accepted ones),
           writing their K/V at slots i, so its cache holds 0 .. L - 1; its output at the last pair
           (i = L - 1, token t) gives d1
  chain    K - 2 more passes of one pair each: (the previous pass's output, d_{j-1}) at position
           L + j - 2 gives d_j (their K/V go into slots past the committed positions, overwritten next
           cycle)
  each draft: the draft vocabulary's argmax (greedy) or a draw from the warped q (sampling), mapped to
  a target id by d2t; q over the target's vocabulary is zero outside the draft vocabulary, so the
  rejection rule min(1, p/q) and the residual max(p - q, 0) stay exact
  verify / accept / commit as for every drafter engine
So a cycle is K - 1 drafter passes and one target pass.
"""

from __future__ import annotations

import torch

from orthrus.engines.base import DEFAULT_BLOCK_SIZE, warp_probs
from orthrus.engines.drafter_engine import DrafterEngine
from orthrus.models.drafting import spill_layout


class Eagle3Engine(DrafterEngine):
    """EAGLE-3 drafts a chain, the target verifies it in one pass (module docstring); ``block_size`` None:
    the checkpoint's speculative tokens + 1 when its config says (speculators format), else 16."""

    name = "eagle3"
    model_kind = "causal"
    draft_model_kind = "eagle3"
    batchable = True

    def _load_drafter(self, draft_model):
        drafter = super()._load_drafter(draft_model)
        drafter.bind_target(int(self.model.config.num_hidden_layers))
        return drafter

    def _drafter_block_size(self) -> int:
        tokens = self.drafter.settings.speculative_tokens
        return tokens + 1 if tokens else DEFAULT_BLOCK_SIZE

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        own = self.drafter.embed_tokens
        return (own if own is not None else self.model.model.embed_tokens)(tokens)

    def _choose(self, logits, settings, generator):
        """A draft per row from draft-vocabulary logits [B, Vd]: (target ids [B], q over the target's
        vocabulary [B, V], zero outside the draft vocabulary, or None when greedy)."""
        targets = self.drafter.draft_to_target
        if settings.greedy:
            return targets[logits.argmax(-1)], None
        q_draft = warp_probs(logits, settings)
        picked = torch.multinomial(q_draft, 1, generator=generator).squeeze(-1)
        q = q_draft.new_zeros((logits.shape[0], self.model.lm_head.out_features))
        return targets[picked], q.scatter_(-1, targets.expand(logits.shape[0], -1), q_draft)

    def _draft(self, drafter, anchors, size, limits, lengths, settings, generator):
        draft = self.drafter
        features, tokens, starts, counts = drafter.take()
        slots, positions, _ = spill_layout(starts, counts, tokens.shape[1], drafter.cache.capacity - 1, anchors.device)
        hidden, logits = draft.forward_pairs(draft.fuse(features), self._embed(tokens), slots, positions, drafter.cache)
        rows = torch.arange(anchors.shape[0], device=anchors.device)
        last = (torch.tensor(counts, device=anchors.device) - 1).clamp_min(0)  # each row's pair (f_{L-1}, t)
        hidden, logits = hidden[rows, last], logits[rows, last]
        drafts, qs = [], []
        for j in range(1, size):
            token, q = self._choose(logits, settings, generator)
            drafts.append(token)
            qs.append(q)
            if j == size - 1:
                break
            at = (torch.tensor(lengths, device=anchors.device) + j - 1).view(-1, 1)  # the pair (h, d_j)
            hidden, logits = draft.forward_pairs(
                hidden.unsqueeze(1), self._embed(token.view(-1, 1)), at, at, drafter.cache
            )
            hidden, logits = hidden[:, 0], logits[:, 0]
        q = None if settings.greedy else torch.stack(qs, 1)
        return torch.stack(drafts, 1), q, size - 1
