"""Autoregressive baselines: our own KV-cache loop, and transformers' generate() as the reference."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.generation.streamers import BaseStreamer

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
from orthrus.engines.decoding import CachedEngine
from orthrus.errors import UserInputError
from orthrus.models.modeling_orthrus import build_from_state, is_diffusion_param


class AREngine(CachedEngine):
    """Prefill, then one token per forward pass over the project's K/V cache (gpt-fast style).

    A single prompt is a batch of one. In a batch all rows take one pass per step; rows are
    left-aligned, not left-padded: row r's tokens sit at positions and cache slots 0 .. len_r - 1
    exactly as when it is decoded alone, and each step writes row r's new K/V at its own slot len_r;
    the attention mask hides every slot past a row's own length. A finished row keeps its length (its
    passes are counted as wasted) until the last row finishes.
    """

    name = "ar"

    def _decode(self, state, max_new_tokens, settings, generator, eos_token_id, max_steps=None) -> BatchResult:
        batch, lengths, active = state.batch, state.lengths, state.active
        token, steps = state.last, 0
        while any(active) and (max_steps is None or steps < max_steps):
            steps += 1
            logits = self.forward(token.view(-1, 1), state.cache, lengths)
            batch.record_pass("decode", active)
            token = pick_token(logits[:, -1], settings, generator)
            for r, (row, new) in enumerate(zip(batch.rows, token.tolist())):
                if active[r]:
                    lengths[r] += 1
                    row.record_step("decode", [new])
                    active[r] = not row_finished(row, max_new_tokens, eos_token_id)
        return batch.finish(kv_bytes=state.cache.storage_bytes())


class _TimingStreamer(BaseStreamer):
    """Records when generate() hands each new token to the host."""

    def __init__(self, result: GenerationResult) -> None:
        self.result = result
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first put() is the prompt
            self.prompt_seen = True
            return
        self.result.tokens.extend(value.view(-1).tolist())
        self.result.commit(int(value.numel()))

    def end(self) -> None:
        pass


def as_qwen3(model: Any) -> Qwen3ForCausalLM:
    """The AR view as a transformers Qwen3ForCausalLM sharing the same weight tensors."""
    config_dict = model.config.to_dict()
    if config_dict.get("lm_head_size"):
        raise UserInputError("hf_generate cannot run a model whose mask token was added as an extra row.")
    for key in ("model_type", "architectures", "block_size", "mask_token_id", "lm_head_size"):
        config_dict.pop(key, None)
    config = Qwen3Config(**config_dict)
    config._attn_implementation = getattr(model.config, "_attn_implementation", None) or "sdpa"  # as the model
    state = {k: v for k, v in model.state_dict().items() if not is_diffusion_param(k)}
    return build_from_state(Qwen3ForCausalLM, config, state, None, "Qwen3").eval()


class _BatchTimingStreamer(BaseStreamer):
    """Records, per row, when generate() hands each new token to the host, until the row ends."""

    def __init__(self, batch: BatchResult, max_new_tokens: int, eos_token_id: int | None) -> None:
        self.batch, self.max_new_tokens, self.eos_token_id = batch, max_new_tokens, eos_token_id
        self.prompt_seen = False
        self.active = [True] * batch.batch_size

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first put() is the prompts
            self.prompt_seen = True
            return
        kind = "decode" if self.batch.forward_passes["prefill"] else "prefill"
        self.batch.record_pass(kind, self.active)
        for r, (row, token) in enumerate(zip(self.batch.rows, value.view(-1).tolist())):
            if self.active[r]:  # generate() pads a finished row; those tokens are not the row's
                row.record_step(kind, [token])
                self.active[r] = not row_finished(row, self.max_new_tokens, self.eos_token_id)

    def end(self) -> None:
        pass


class HFGenerateEngine(Engine):
    """transformers' generate() on the same weights: the reference implementation.

    ``generate_batch`` is one generate() call over the prompts left-padded to one length with an
    attention mask (transformers' own way to batch a decoder); a row's output ends at its EOS.
    """

    name = "hf_generate"
    batchable = True

    def __init__(self, model: Any, **options: Any) -> None:
        super().__init__(model, **options)
        self.hf_model = model if isinstance(model, Qwen3ForCausalLM) else as_qwen3(model)

    @torch.inference_mode()
    def _generate(self, prompt, max_new_tokens, settings, generator, seed, eos_token_id) -> GenerationResult:
        result = GenerationResult(tokens=[], prompt_tokens=len(prompt), listener=self.listener)
        return run_hf_generate(self.hf_model, prompt, max_new_tokens, settings, seed, eos_token_id, result, {})

    @torch.inference_mode()
    def _generate_batch(self, prompts, max_new_tokens, settings, generator, seed, eos_token_id) -> BatchResult:
        hf_model, batch = self.hf_model, new_batch(prompts)
        device = hf_model.device
        pad = eos_token_id if eos_token_id is not None else 0
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        kwargs = _generate_kwargs(settings, max_new_tokens, eos_token_id, seed)
        kwargs.update(attention_mask=attention_mask, streamer=_BatchTimingStreamer(batch, max_new_tokens, eos_token_id))
        with watching_cache(hf_model) as watch:
            sync(device)
            batch.start()
            hf_model.generate(input_ids, **kwargs)
            sync(device)
        for row in batch.rows:
            if not row.end_time:  # (every row ends in the streamer; this is a guard)
                row.finish("max_new_tokens")
        return batch.finish(kv_bytes=watch.peak_bytes)


def run_hf_generate(
    hf_model: Any,
    prompt: list[int],
    max_new_tokens: int,
    settings: SamplingSettings,
    seed: int | None,
    eos_token_id: int | None,
    result: GenerationResult,
    extra_kwargs: dict[str, Any],
) -> GenerationResult:
    """Call generate() with explicit settings and fill ``result`` (shared by the transformers engines)."""
    device = hf_model.device
    input_ids = torch.tensor([prompt], device=device)
    kwargs = _generate_kwargs(settings, max_new_tokens, eos_token_id, seed)
    kwargs.update(
        attention_mask=torch.ones_like(input_ids),  # explicit: never inferred from the pad id
        streamer=_TimingStreamer(result),
        **extra_kwargs,
    )
    with watching_cache(hf_model) as watch:
        sync(device)
        result.start()
        out = hf_model.generate(input_ids, **kwargs)
        sync(device)
    result.end_time = time.perf_counter()
    result.tokens = out.sequences[0, len(prompt) :].tolist()
    if eos_token_id is not None and eos_token_id in result.tokens:
        result.stop_reason = "eos"
    result.kv_cache_bytes_peak = watch.peak_bytes
    return result


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of K and V one position of one row occupies in a Qwen3-layout model's cache, all layers."""
    config = model.config
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    itemsize = next(model.parameters()).element_size()
    return 2 * int(config.num_hidden_layers) * kv_heads * head_dim * itemsize


@dataclass
class CacheWatch:
    """The largest K/V cache a transformers model held during generate() (see ``watching_cache``)."""

    bytes_per_token: int
    peak_bytes: int | None = None

    def see(self, entries: int, rows: int) -> None:
        self.peak_bytes = max(self.peak_bytes or 0, entries * rows * self.bytes_per_token)


@contextmanager
def watching_cache(model: nn.Module) -> Iterator[CacheWatch]:
    """Watch the cache of every forward call of ``model`` (generate() hands it over as the
    ``past_key_values`` argument): after each call, the entries it holds (``Cache.get_seq_length()``,
    public in every supported transformers release) times the rows times the bytes per entry. A
    transformers cache concatenates, so its storage is what it holds; the peak is kept. Nothing
    here reads the cache classes' internals, which differ between releases."""
    watch = CacheWatch(kv_bytes_per_token(model))

    def after_forward(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        cache = kwargs.get("past_key_values")
        if cache is None:
            cache = getattr(output, "past_key_values", None)
        logits = getattr(output, "logits", None)
        if cache is not None and hasattr(cache, "get_seq_length") and logits is not None:
            watch.see(int(cache.get_seq_length()), int(logits.shape[0]))

    handle = model.register_forward_hook(after_forward, with_kwargs=True)
    try:
        yield watch
    finally:
        handle.remove()


def _generate_kwargs(
    settings: SamplingSettings, max_new_tokens: int, eos_token_id: int | None, seed: int | None
) -> dict[str, Any]:
    """generate() settings spelled out (never the checkpoint's generation_config); seeds torch when sampling."""
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        do_sample=not settings.greedy,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id if eos_token_id is not None else 0,
        return_dict_in_generate=True,
    )
    if settings.greedy:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    else:
        kwargs.update(temperature=settings.temperature, top_k=settings.top_k or None, top_p=settings.top_p)
        torch.manual_seed(0 if seed is None else seed)
    return kwargs
