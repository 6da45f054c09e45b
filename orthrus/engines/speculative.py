"""Speculative-decoding baselines on transformers' generate(): `assisted` and `prompt_lookup`.

* ``assisted``: a separate draft model proposes tokens, the target verifies them in one forward
  pass (transformers assisted generation; with sampling, speculative rejection sampling). Options:
  ``draft_model`` (a zoo name or local checkpoint directory, default ``tiny-draft``, or a loaded
  causal LM), ``num_assistant_tokens``, ``num_assistant_tokens_schedule`` (``constant`` |
  ``heuristic`` | ``heuristic_transient``) and ``assistant_confidence_threshold`` (None leaves
  transformers' defaults: 20, ``constant``, 0.4).
* ``prompt_lookup``: drafts are copied from the prompt after the latest matching n-gram. Options:
  ``prompt_lookup_num_tokens`` (default 10) and ``max_matching_ngram_size`` (default 2).

Both are lossless: greedy output equals AR greedy output. Statistics come from wrapping the
candidate generator of each call: a *cycle* is one target pass that verified at least one drafted
token (``drafted_per_cycle``, ``accepted_per_cycle``); a target pass with nothing drafted (no
n-gram match, or the length limit) is a plain ``decode``. The first target pass processes the
prompt and is the ``prefill`` (it also verifies the first drafts, whose cycle is recorded).
``forward_passes["draft"]`` counts the draft model's forward calls. Memory is recorded by source:
``kv_cache_bytes_peak`` is the largest K/V cache the target held during the call, and
``draft_kv_cache_bytes_peak`` the largest the separate draft model held beside it (not added into
the target's figure; each watched after every forward call through the public
``Cache.get_seq_length()``; see ``orthrus.engines.ar.watching_cache``). The draft model's weights are
the parameters ``assisted`` adds over the base model (``describe().extra_parameters``).
"""

from __future__ import annotations

import copy
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn
from transformers import Qwen3ForCausalLM

from orthrus.engines.ar import as_qwen3, kv_bytes_per_token, run_hf_generate, watching_cache
from orthrus.engines.base import Engine, GenerationResult
from orthrus.errors import UserInputError

SCHEDULES = ("constant", "heuristic", "heuristic_transient")


class _CycleLog:
    """Drafted/accepted counts and pass counts of one generate() call."""

    def __init__(self) -> None:
        self.drafted: list[int] = []  # per target pass
        self.accepted: list[int] = []
        self.generator: Any = None
        self.target_calls = 0
        self.draft_calls = 0


@contextmanager
def _recording(hf_model: nn.Module, draft: nn.Module | None, log: _CycleLog):
    """Count forward calls and wrap the candidate generator that generate() builds, for one call."""

    def count_target(*_: Any) -> None:
        log.target_calls += 1

    def count_draft(*_: Any) -> None:
        log.draft_calls += 1

    def candidate_generator(*args: Any, **kwargs: Any) -> Any:
        generator = type(hf_model)._get_candidate_generator(hf_model, *args, **kwargs)
        get_candidates, update = generator.get_candidates, generator.update_candidate_strategy

        def get_candidates_logged(input_ids: torch.Tensor, *a: Any, **kw: Any) -> Any:
            candidate_ids, logits = get_candidates(input_ids, *a, **kw)
            log.drafted.append(int(candidate_ids.shape[1] - input_ids.shape[1]))
            return candidate_ids, logits

        def update_logged(input_ids: torch.Tensor, scores: torch.Tensor, num_matches: Any) -> Any:
            log.accepted.append(int(num_matches))
            return update(input_ids, scores, num_matches)

        generator.get_candidates = get_candidates_logged
        generator.update_candidate_strategy = update_logged
        log.generator = generator
        return generator

    handles = [hf_model.register_forward_hook(count_target)]
    if draft is not None and draft is not hf_model:
        handles.append(draft.register_forward_hook(count_draft))
    hf_model._get_candidate_generator = candidate_generator
    try:
        yield log
    finally:
        del hf_model._get_candidate_generator
        for handle in handles:
            handle.remove()


def _target_model(model: Any) -> Qwen3ForCausalLM:
    return model if isinstance(model, Qwen3ForCausalLM) else as_qwen3(model)


class _SpeculativeEngine(Engine):
    """Shared body: run generate() with extra kwargs and turn the cycle log into the record."""

    draft: nn.Module | None = None
    cannot_batch_reason = "transformers' assisted generation and prompt lookup decode batch size 1 only"
    cannot_compile_reason = (
        "it runs transformers' generate(), whose candidate length and dynamic cache change shape at every step, "
        "so a compiled step would recompile at every step"
    )

    def __init__(self, model: Any, **options: Any) -> None:
        super().__init__(model, **options)
        self.hf_model = _target_model(model)

    def _generate_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    @torch.inference_mode()
    def _generate(self, prompt, max_new_tokens, settings, generator, seed, eos_token_id) -> GenerationResult:
        result = GenerationResult(tokens=[], prompt_tokens=len(prompt), listener=self.listener)
        separate_draft = self.draft is not None and self.draft is not self.hf_model
        with _recording(self.hf_model, self.draft, _CycleLog()) as log, ExitStack() as stack:
            draft_watch = stack.enter_context(watching_cache(self.draft)) if separate_draft else None
            run_hf_generate(
                self.hf_model, prompt, max_new_tokens, settings, seed, eos_token_id, result, self._generate_kwargs()
            )
        for index, (drafted, accepted) in enumerate(zip(log.drafted, log.accepted)):
            kind = "prefill" if index == 0 else "verify" if drafted > 0 else "decode"
            result.record_pass(kind)
            if drafted > 0:
                result.record_cycle(drafted, accepted)
        if self.draft is self.hf_model:  # self-drafting: one module, one hook for both roles
            log.draft_calls = log.target_calls - len(log.accepted)
        result.record_pass("draft", log.draft_calls)
        if draft_watch is not None and draft_watch.peak_bytes is not None:  # the draft model's own cache, apart
            result.record_draft_kv_bytes(draft_watch.peak_bytes)
        return result


class AssistedEngine(_SpeculativeEngine):
    """transformers assisted generation with a separate draft model (see the module docstring)."""

    name = "assisted"
    needs_draft_model = True
    draft_model_kind = "causal"

    def __init__(
        self,
        model: Any,
        draft_model: str | nn.Module = "tiny-draft",
        num_assistant_tokens: int | None = None,
        num_assistant_tokens_schedule: str | None = None,
        assistant_confidence_threshold: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        if num_assistant_tokens is not None and num_assistant_tokens < 1:
            raise UserInputError(f"num_assistant_tokens must be >= 1, got {num_assistant_tokens}.")
        if num_assistant_tokens_schedule is not None and num_assistant_tokens_schedule not in SCHEDULES:
            raise UserInputError(
                f"num_assistant_tokens_schedule must be one of {', '.join(SCHEDULES)}, "
                f"got {num_assistant_tokens_schedule!r}."
            )
        self.draft = self._load_draft(draft_model)
        config = copy.deepcopy(self.draft.generation_config)
        for key, value in (
            ("num_assistant_tokens", num_assistant_tokens),
            ("num_assistant_tokens_schedule", num_assistant_tokens_schedule),
            ("assistant_confidence_threshold", assistant_confidence_threshold),
        ):
            if value is not None:
                setattr(config, key, value)
        self.draft.generation_config = config

    def _load_draft(self, draft_model: str | nn.Module) -> nn.Module:
        target = self.hf_model
        param = next(target.parameters())
        if isinstance(draft_model, nn.Module):
            draft = draft_model if hasattr(draft_model, "generate") else _target_model(draft_model)
        else:
            from orthrus.models import load_causal_lm

            draft = as_qwen3(load_causal_lm(draft_model, dtype=param.dtype, device=str(param.device)))
        draft_vocab = draft.get_output_embeddings().weight.shape[0]
        target_vocab = target.get_output_embeddings().weight.shape[0]
        if draft_vocab != target_vocab:
            raise UserInputError(
                f"the draft model's vocabulary ({draft_vocab} tokens) differs from the target's ({target_vocab}); "
                "use a draft model trained with the same tokenizer."
            )
        return draft.eval()

    def _generate_kwargs(self) -> dict[str, Any]:
        return {"assistant_model": self.draft}

    def extra_parameter_tensors(self) -> list[torch.Tensor]:
        return [] if self.draft is self.hf_model else list(self.draft.parameters())

    def draft_kv_bytes_per_token(self) -> int | None:
        return None if self.draft is self.hf_model else kv_bytes_per_token(self.draft)


class PromptLookupEngine(_SpeculativeEngine):
    """transformers prompt-lookup decoding (see the module docstring)."""

    name = "prompt_lookup"

    def __init__(
        self, model: Any, prompt_lookup_num_tokens: int = 10, max_matching_ngram_size: int = 2, **options: Any
    ) -> None:
        super().__init__(model, **options)
        if prompt_lookup_num_tokens < 1:
            raise UserInputError(f"prompt_lookup_num_tokens must be >= 1, got {prompt_lookup_num_tokens}.")
        if max_matching_ngram_size < 1:
            raise UserInputError(f"max_matching_ngram_size must be >= 1, got {max_matching_ngram_size}.")
        self.prompt_lookup_num_tokens = int(prompt_lookup_num_tokens)
        self.max_matching_ngram_size = int(max_matching_ngram_size)

    def _generate_kwargs(self) -> dict[str, Any]:
        return {
            "prompt_lookup_num_tokens": self.prompt_lookup_num_tokens,
            "max_matching_ngram_size": self.max_matching_ngram_size,
        }
