"""Masked-diffusion decoding baselines: LLaDA-style (`dlm`) and Fast-dLLM (`fast_dllm`).

Both append ``gen_length = max_new_tokens`` MASK tokens to the prompt and unmask them in blocks of
``block_length`` positions, left to right. Each denoising step is one bidirectional forward pass;
it predicts every masked position of the current block and commits some of them:

* ``remasking: low_confidence`` commits the positions whose predicted token has the highest
  probability, ``random`` commits random positions (LLaDA's two rules). Committed tokens are never
  masked again.
* ``dlm`` and ``fast_dllm`` without ``threshold``: ``steps`` forward passes in total, split evenly
  over the blocks (earlier blocks get the remainder); a block's masks are split evenly over its
  steps, as LLaDA's ``get_num_transfer_tokens``. Exactly ``steps`` passes unless EOS stops early.
* ``fast_dllm`` with ``threshold``: every masked position of the block whose confidence is above
  ``threshold`` is committed, and at least the most confident one; ``steps`` is then unused and a
  block takes as many steps as it needs.

Temperature > 0 samples each prediction by the Gumbel-max trick over the temperature/top-k/top-p
distribution (LLaDA's ``add_gumbel_noise``, with the shared ``warp_probs`` rule); the confidence of
``low_confidence`` is the model's unscaled probability of the sampled token, as in LLaDA.

Fast-dLLM's approximate block cache (``cache``):

* ``none``: every step runs the whole sequence (prompt + all generation positions).
* ``prefix``: the first step of each block runs the whole sequence and keeps every position's
  K/V; the other steps of the block run only the block and the masked suffix after it and reuse
  the cached K/V of everything before the block (stale within the block by design).
* ``dual``: as ``prefix``, but the other steps run only the block and also reuse the cached K/V
  of the masked suffix after it.

Every pass commits tokens, the cache-building one included, so all of them count as
``forward_passes["denoise"]`` (none as "prefill"). ``kv_cache_bytes_peak`` is the K/V kept from one
pass to the next: 0 for ``cache: none``, the positions before the block for ``prefix``, the whole
sequence for ``dual`` (the largest over blocks).

Output: the block's tokens, in order, are final as soon as every position before them is
unmasked; each growth of that decoded prefix is one commit (streaming order). A block that ends
with an EOS among its tokens ends generation; the output is cut after the first EOS.

Batches (``generate_batch``): the prompts are left-padded to one length, so every row's generation
region, and so every block, sits at the same slots; the padding is hidden from every query and each
row's real tokens keep the positions they have alone. Blocks advance in lockstep (as Fast-dLLM's
batched decoder): within a block each row follows its own schedule (its own transfer counts, or with
``threshold`` as many steps as it needs), and a row whose block is already unmasked, or that has
finished, sits out the remaining passes of the block, which are counted as wasted row-passes. A row
ends after the block in which its EOS became final. A decode alone is the batch of one.
"""

from __future__ import annotations

from typing import Any

import torch

from orthrus.engines.base import (
    BatchResult,
    CannotBatchError,
    Engine,
    GenerationResult,
    SamplingSettings,
    new_batch,
    sync,
    truncate_at_eos,
    warp_probs,
)
from orthrus.errors import UserInputError
from orthrus.models.dlm import as_diffusion_lm

REMASKING = ("low_confidence", "random")
# LLaDA's and Fast-dLLM's own default block length; a different notion from Orthrus' draft block size
DEFAULT_BLOCK_LENGTH = 32
CACHES = ("none", "prefix", "dual")


class DLMEngine(Engine):
    """LLaDA-style masked diffusion: fixed step budget, no cache.

    Options: ``steps`` (total forward passes, default = max_new_tokens, i.e. one token per step),
    ``block_length`` (default DEFAULT_BLOCK_LENGTH, 32), ``remasking`` (``low_confidence`` | ``random``),
    ``mask_token_id`` (default: the model's ``config.mask_token_id``).
    """

    name = "dlm"
    model_kind = "dlm"
    lossless = False
    batchable = True

    def __init__(
        self,
        model: Any,
        steps: int | None = None,
        block_length: int = DEFAULT_BLOCK_LENGTH,
        remasking: str = "low_confidence",
        mask_token_id: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(as_diffusion_lm(model), **options)
        if steps is not None and steps < 1:
            raise UserInputError(f"steps must be >= 1, got {steps}.")
        if block_length < 1:
            raise UserInputError(f"block_length must be >= 1, got {block_length}.")
        if remasking not in REMASKING:
            raise UserInputError(f"remasking must be one of {', '.join(REMASKING)}, got {remasking!r}.")
        self.steps = steps
        self.block_length = int(block_length)
        self.remasking = remasking
        mask = self.model.mask_token_id if mask_token_id is None else mask_token_id
        if mask is None:
            raise UserInputError("the model's config names no mask_token_id; pass the engine option mask_token_id.")
        self.mask_token_id = int(mask)
        self.threshold: float | None = None
        self.cache = "none"

    def extra_parameter_tensors(self) -> None:
        return None  # a diffusion LM is a model of its own, not weights added to the AR base model

    # ------------------------------------------------------------------ schedule
    def _block_steps(self, num_blocks: int, gen_length: int) -> list[int]:
        """Forward passes per block: ``steps`` split evenly, the remainder to the first blocks."""
        steps = gen_length if self.steps is None else self.steps
        if steps < num_blocks:
            raise UserInputError(
                f"steps ({steps}) is smaller than the number of blocks ({num_blocks} = ceil(max_new_tokens / "
                "block_length)); raise steps or block_length."
            )
        return [steps // num_blocks + (1 if b < steps % num_blocks else 0) for b in range(num_blocks)]

    @staticmethod
    def _transfer_counts(masked: int, steps: int) -> list[int]:
        """Tokens to commit at each step of a block (LLaDA's get_num_transfer_tokens)."""
        return [masked // steps + (1 if i < masked % steps else 0) for i in range(steps)]

    # ------------------------------------------------------------------ one step
    def _predict(
        self, logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted tokens [N] and their confidence [N] from block logits [N, V]."""
        logits = logits.float()
        logits[:, self.mask_token_id] = float("-inf")  # a MASK is never a prediction
        if settings.greedy:
            tokens = logits.argmax(-1)
        else:  # Gumbel-max sampling from the warped distribution
            probs = warp_probs(logits, settings)
            uniform = torch.rand(probs.shape, generator=generator, device=probs.device).clamp_(1e-20, 1.0)
            tokens = (probs.log() - (-uniform.log()).log()).argmax(-1)
        if self.remasking == "low_confidence":
            confidence = torch.softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        else:
            confidence = torch.rand(tokens.shape, generator=generator, device=tokens.device)
        return tokens, confidence

    def _select(self, confidence: torch.Tensor, masked: torch.Tensor, count: int) -> torch.Tensor:
        """Indices of the block positions to commit this step."""
        confidence = confidence.masked_fill(~masked, float("-inf"))
        if self.threshold is not None:
            chosen = (confidence > self.threshold) & masked
            if not bool(chosen.any()):
                return confidence.argmax().view(1)
            return chosen.nonzero().view(-1)
        return torch.topk(confidence, count).indices if count > 0 else confidence.new_empty(0, dtype=torch.long)

    def _forward_block(
        self, x: torch.Tensor, start: int, end: int, first_step: bool, kv: Any, pad: list[int]
    ) -> torch.Tensor:
        """Logits [B, end - start, V] of the block positions, by cache mode."""
        model, block = self.model, slice(start, end)
        if self.cache == "none":
            return model(x, rows=block, pad=pad)
        if first_step:  # full pass, refreshing every position's K/V
            return model(x, 0, kv, rows=block, pad=pad)
        if self.cache == "prefix":  # block + masked suffix, cached prefix
            return model(x[:, start:], start, kv, rows=slice(0, end - start), pad=pad)
        return model(x[:, start:end], start, kv, pad=pad)  # dual: block only, cached prefix and suffix

    # ------------------------------------------------------------------ decoding loop
    @torch.inference_mode()
    def _generate(self, prompt, max_new_tokens, settings, generator, seed, eos_token_id) -> GenerationResult:
        return self._decode([prompt], max_new_tokens, settings, seed, eos_token_id, self.listener).rows[0]

    @torch.inference_mode()
    def _generate_batch(self, prompts, max_new_tokens, settings, generator, seed, eos_token_id) -> BatchResult:
        if len({len(p) for p in prompts}) > 1 and not getattr(self.model, "supports_padding", False):
            raise CannotBatchError(
                f"engine {self.name!r} cannot batch prompts of different lengths on "
                f"{type(getattr(self.model, 'inner', self.model)).__name__}, which takes no padding mask; "
                "run it at batch size 1."
            )
        return self._decode(prompts, max_new_tokens, settings, seed, eos_token_id, None)

    def _decode(self, prompts, max_new_tokens, settings, seed, eos_token_id, listener) -> BatchResult:
        """The block schedule for every row of a left-padded batch (see the module docstring).

        Every row draws its random numbers (Gumbel noise, random remasking) from its own generator
        seeded with ``seed`` (0 if None), and only on the passes it works in, so a sampled row is
        exactly the same prompt sampled alone with the same seed."""
        model, device = self.model, self.device
        random = not settings.greedy or self.remasking == "random"
        generators = [
            torch.Generator(device=device).manual_seed(0 if seed is None else seed) if random else None
            for _ in prompts
        ]
        batch = new_batch(prompts)
        rows = batch.rows
        for row in rows:
            row.listener = listener
        size, gen_length = len(prompts), max_new_tokens
        prompt_end = max(len(p) for p in prompts)  # every row's generation starts at this slot
        pad = [prompt_end - len(p) for p in prompts]
        num_blocks = -(-gen_length // self.block_length)
        block_steps = self._block_steps(num_blocks, gen_length)
        x = torch.full((size, prompt_end + gen_length), self.mask_token_id, dtype=torch.long, device=device)
        for r, prompt in enumerate(prompts):
            x[r, : pad[r]] = 0  # padding: hidden from every query, its value never matters
            x[r, pad[r] : prompt_end] = torch.tensor(prompt, device=device)
        kv_peak = 0
        tokens_per_step: list[list[int]] = [[] for _ in prompts]
        decoded = [0] * size  # generation positions decoded contiguously from the start (already streamed)
        stopped = [False] * size  # an EOS reached the row's decoded prefix: its later tokens are discarded
        live = [True] * size  # the row still decodes (it ends after the block in which it stopped)

        sync(device)
        batch.start()
        kv = model.new_kv(x.shape[1], size) if self.cache != "none" else None
        for block in range(num_blocks):
            start = prompt_end + block * self.block_length
            end = min(start + self.block_length, x.shape[1])
            if self.cache == "prefix":
                kv_peak = max(kv_peak, size * start * model.kv_bytes_per_token())
            elif self.cache == "dual":
                kv_peak = max(kv_peak, size * x.shape[1] * model.kv_bytes_per_token())
            counts = self._transfer_counts(end - start, block_steps[block])
            step = 0
            while True:
                masked = x[:, start:end] == self.mask_token_id  # [B, n]
                if self.threshold is None:  # a fixed number of steps per block, the same for every row
                    if step >= len(counts):
                        break
                    working = list(live)
                else:  # each row until its block is unmasked
                    working = [live[r] and bool(masked[r].any()) for r in range(size)]
                    if not any(working):
                        break
                logits = self._forward_block(x, start, end, step == 0, kv, pad)  # [B, n, V]
                batch.record_pass("denoise", working)
                for r in range(size):
                    if not working[r]:
                        continue
                    tokens, confidence = self._predict(logits[r], settings, generators[r])
                    chosen = self._select(confidence, masked[r], counts[step] if self.threshold is None else 0)
                    x[r, start + chosen] = tokens[chosen]
                    tokens_per_step[r].append(int(chosen.numel()))
                    final: list[int] = []
                    if not stopped[r]:
                        final, decoded[r], stopped[r] = self._newly_final(x[r], prompt_end, decoded[r], eos_token_id)
                    rows[r].record_step("denoise", final)
                step += 1
            for r in range(size):
                if live[r] and stopped[r]:
                    live[r] = False
                    rows[r].finish("eos")
            if not any(live):
                break

        sync(device)
        for r, row in enumerate(rows):
            if live[r]:
                row.finish("max_new_tokens")
            row.extra = {"denoise_steps": len(tokens_per_step[r]), "tokens_per_step": tokens_per_step[r]}
        return batch.finish(kv_bytes=kv_peak)

    def _newly_final(
        self, row: torch.Tensor, prompt_end: int, decoded: int, eos_token_id: int | None
    ) -> tuple[list[int], int, bool]:
        """The tokens of one row (its slots [L]) that just became final (the growth of the decoded
        prefix, cut after an EOS), the new decoded length, and whether an EOS is among them."""
        generated = row[prompt_end:]
        still_masked = (generated == self.mask_token_id).nonzero()
        upto = int(still_masked[0]) if still_masked.numel() else generated.numel()
        if upto <= decoded:
            return [], decoded, False
        new, stopped = truncate_at_eos(generated[decoded:upto].tolist(), eos_token_id)
        return new, upto, stopped


class FastDLLMEngine(DLMEngine):
    """Fast-dLLM: DLM decoding plus threshold parallel commit and an approximate block K/V cache.

    Options: those of ``dlm`` plus ``threshold`` (float or None = off: commit every masked position
    with confidence above it, at least one per step; needs ``remasking: low_confidence``) and
    ``cache`` (``none`` | ``prefix`` | ``dual``). With ``threshold`` off and ``cache: none`` it is
    exactly ``dlm``.
    """

    name = "fast_dllm"

    def __init__(
        self,
        model: Any,
        steps: int | None = None,
        block_length: int = DEFAULT_BLOCK_LENGTH,
        remasking: str = "low_confidence",
        mask_token_id: int | None = None,
        threshold: float | None = 0.9,
        cache: str = "dual",
        **options: Any,
    ) -> None:
        super().__init__(model, steps, block_length, remasking, mask_token_id, **options)
        if cache not in CACHES:
            raise UserInputError(f"cache must be one of {', '.join(CACHES)}, got {cache!r}.")
        if cache != "none" and not getattr(self.model, "supports_kv_cache", False):
            raise UserInputError(
                f"{type(self.model).__name__} cannot take a K/V cache, which cache {cache!r} needs; use cache 'none'."
            )
        if threshold is not None and remasking != "low_confidence":
            raise UserInputError("threshold compares model confidences, so it needs remasking 'low_confidence'.")
        self.threshold = None if threshold is None else float(threshold)
        self.cache = cache
