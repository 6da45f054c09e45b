"""``dflash``: speculative decoding with a DFlash drafter (block diffusion, z-lab; the model and its
released layout: ``orthrus.models.dflash``), verified by the target, lossless.

Per cycle (the loop and the accept rule: ``orthrus.engines.drafter_engine``), for row r with anchor t at
position L:
  take in  the target hidden states of the positions committed since the drafter's last pass (the
           prefill's, then each verify pass's accepted positions): projected once and written as K/V
           into every drafter layer's slots of those positions, so the drafter's cache holds 0 .. L - 1
  draft    one bidirectional pass over the block [t, MASK x (K - 1)] at positions L .. L + K - 1,
           attending to that context and to the block; block position j drafts the token at L + j
           through the target's LM head (greedy: argmax; sampling: a draw from the warped q)
  verify / accept / commit as for every drafter engine
So a cycle is two forward passes, as Orthrus's: one drafter pass, one target pass.
"""

from __future__ import annotations

import torch

from orthrus.engines.base import warp_probs
from orthrus.engines.drafter_engine import DrafterEngine


class DFlashEngine(DrafterEngine):
    """DFlash drafts a block in one pass, the target verifies it in one (module docstring); ``block_size``
    None: the drafter's own (its config's block_size, 16 when it names none)."""

    name = "dflash"
    model_kind = "causal"
    draft_model_kind = "dflash"
    batchable = True

    def _drafter_block_size(self) -> int:
        return self.drafter.block_size

    def _draft(self, drafter, anchors, size, limits, lengths, settings, generator):
        draft = self.drafter
        features, _, starts, counts = drafter.take()
        draft.write_context(features, starts, counts, drafter.cache)
        block = torch.full((anchors.shape[0], size), draft.mask_token_id, device=anchors.device)
        block[:, 0] = anchors
        embeds = self.model.model.embed_tokens(block) * draft.settings.input_embedding_scale
        # row r's block is only as wide as it would be alone (its budget): the drafts depend on it
        hidden = draft.draft_block(embeds, lengths, [limit + 1 for limit in limits], drafter.cache)
        logits = draft.logits(hidden[:, 1:].to(self.model.lm_head.weight.dtype), self.model.lm_head)  # [B, K-1, V]
        if settings.greedy:
            return logits.argmax(-1), None, 1
        q = warp_probs(logits, settings)
        drafts = torch.multinomial(q.reshape(-1, q.shape[-1]), 1, generator=generator).view(q.shape[:2])
        return drafts, q, 1
