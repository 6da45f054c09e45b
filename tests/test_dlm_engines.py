"""The diffusion-LM baselines `dlm` and `fast_dllm` on a small random Qwen3 run bidirectionally."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_qwen3

from orthrus.engines import build_engine
from orthrus.errors import UserInputError
from orthrus.models import load_causal_lm
from orthrus.models.dlm import Qwen3DiffusionLM, RemoteDiffusionLM, as_diffusion_lm, load_diffusion_lm

MASK = 2
GEN = 24
BLOCK = 8


@pytest.fixture(scope="module")
def dlm() -> Qwen3DiffusionLM:
    return Qwen3DiffusionLM.from_causal_lm(random_qwen3(seed=3, scale=3.0), mask_token_id=MASK)


@pytest.fixture(scope="module")
def prompt() -> list[int]:
    return torch.randint(3, 256, (20,), generator=torch.Generator().manual_seed(7)).tolist()


def run(dlm, prompt, engine="dlm", max_new_tokens=GEN, **options):
    sampling = {k: options.pop(k) for k in ("temperature", "seed", "eos_token_id") if k in options}
    return build_engine(engine, dlm, block_length=BLOCK, **options).generate(prompt, max_new_tokens, **sampling)


@pytest.mark.parametrize(
    "engine, options",
    [
        ("dlm", {}),
        ("dlm", {"steps": 6, "temperature": 1.0, "seed": 1}),
        ("dlm", {"remasking": "random", "steps": 12}),
        ("fast_dllm", {"threshold": 0.05, "cache": "none"}),
        ("fast_dllm", {"threshold": 0.05, "cache": "prefix"}),
        ("fast_dllm", {"threshold": None, "cache": "dual", "steps": 9, "temperature": 0.7, "seed": 2}),
    ],
)
def test_every_mask_is_resolved(dlm, prompt, engine, options):
    result = run(dlm, prompt, engine, **options)
    assert len(result.tokens) == GEN and MASK not in result.tokens
    assert sum(result.extra["tokens_per_step"]) == GEN
    assert result.extra["denoise_steps"] == result.forward_passes["denoise"] == result.total_forward_passes
    assert sum(count for _, count in result.commits) == GEN  # every token streamed exactly once


@pytest.mark.parametrize("steps", [GEN, 12, 10, 3])
def test_dlm_uses_exactly_steps_forward_passes(dlm, prompt, steps):
    result = run(dlm, prompt, steps=steps)
    assert result.forward_passes["denoise"] == steps
    assert result.extra["denoise_steps"] == steps
    assert result.kv_cache_bytes_peak == 0


def test_too_few_steps_for_the_blocks_is_a_user_error(dlm, prompt):
    with pytest.raises(UserInputError, match="steps"):
        run(dlm, prompt, steps=2)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_threshold_above_one_commits_one_token_per_step(dlm, prompt, cache):
    result = run(dlm, prompt, "fast_dllm", threshold=1.5, cache=cache)
    assert result.extra["tokens_per_step"] == [1] * GEN
    assert result.forward_passes["denoise"] == GEN


def test_threshold_zero_commits_each_block_in_one_step(dlm, prompt):
    result = run(dlm, prompt, "fast_dllm", threshold=0.0, cache="dual")
    assert result.extra["tokens_per_step"] == [BLOCK] * (GEN // BLOCK)


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "seed": 5}])
def test_fast_dllm_without_cache_and_threshold_equals_dlm(dlm, prompt, sampling):
    reference = run(dlm, prompt, steps=12, **sampling)
    fast = run(dlm, prompt, "fast_dllm", steps=12, cache="none", threshold=None, remasking="low_confidence", **sampling)
    assert fast.tokens == reference.tokens
    assert fast.extra["tokens_per_step"] == reference.extra["tokens_per_step"]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_caches_are_exact_when_every_step_is_a_full_pass(dlm, prompt, cache):
    # one step per block: each pass is the cache-building full pass, so nothing stale is reused
    reference = run(dlm, prompt, steps=GEN // BLOCK)
    cached = run(dlm, prompt, "fast_dllm", steps=GEN // BLOCK, cache=cache, threshold=None)
    assert cached.tokens == reference.tokens


def test_cache_bytes_by_mode(dlm, prompt):
    per_token = dlm.kv_bytes_per_token()
    total = len(prompt) + GEN
    assert run(dlm, prompt, "fast_dllm", cache="prefix").kv_cache_bytes_peak == (total - BLOCK) * per_token
    assert run(dlm, prompt, "fast_dllm", cache="dual").kv_cache_bytes_peak == total * per_token
    assert run(dlm, prompt, "fast_dllm", cache="none").kv_cache_bytes_peak == 0


@pytest.mark.parametrize("engine, options", [("dlm", {}), ("fast_dllm", {"cache": "dual", "threshold": 0.05})])
def test_eos_inside_a_block_truncates_the_output(dlm, prompt, engine, options):
    reference = run(dlm, prompt, engine, **options)
    eos = reference.tokens[BLOCK + 3]  # a token of the second block
    first = reference.tokens.index(eos)
    result = run(dlm, prompt, engine, eos_token_id=eos, **options)
    assert result.tokens == reference.tokens[: first + 1]
    assert result.stop_reason == "eos"
    assert sum(count for _, count in result.commits) == len(result.tokens)
    finished_blocks = first // BLOCK + 1  # generation stops at the end of the block holding the EOS
    assert sum(result.extra["tokens_per_step"]) == finished_blocks * BLOCK
    if engine == "dlm":
        assert result.forward_passes["denoise"] == finished_blocks * BLOCK


def test_uneven_last_block(dlm, prompt):
    result = run(dlm, prompt, max_new_tokens=GEN + 3, steps=8)
    assert len(result.tokens) == GEN + 3 and MASK not in result.tokens
    assert result.forward_passes["denoise"] == 8


def test_bidirectional_module_matches_transformers_bidirectional_qwen3(dlm, prompt):
    hf = random_qwen3(seed=3, scale=3.0)
    hf.config.is_causal = False  # transformers' own switch to bidirectional attention
    ids = torch.tensor([prompt + [MASK] * 8])
    with torch.no_grad():
        assert torch.allclose(dlm(ids), hf(ids).logits, atol=1e-5)
    remote = RemoteDiffusionLM(hf, mask_token_id=MASK)  # a model called as model(ids).logits, no cache
    assert run(remote, prompt, steps=12).tokens == run(dlm, prompt, steps=12).tokens
    with pytest.raises(UserInputError, match="cannot take a K/V cache"):
        build_engine("fast_dllm", remote, cache="dual")


def test_saved_checkpoint_loads_both_ways(dlm, prompt, tmp_path):
    dlm.save_dlm(tmp_path, dtype=None)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["is_causal"] is False and config["mask_token_id"] == MASK and config["model_type"] == "qwen3"
    reference = run(dlm, prompt, steps=12).tokens
    assert run(load_diffusion_lm(tmp_path), prompt, steps=12).tokens == reference
    assert run(load_causal_lm(tmp_path), prompt, steps=12).tokens == reference  # the harness's generic loader


def test_user_errors(dlm, prompt, qwen3_base, tmp_path):
    with pytest.raises(UserInputError, match="causal LM"):
        as_diffusion_lm(qwen3_base)
    qwen3_base.save_pretrained(tmp_path / "causal")
    with pytest.raises(UserInputError, match="causal Qwen3"):
        load_diffusion_lm(tmp_path / "causal")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "llada"}))
    with pytest.raises(UserInputError, match="trust_remote_code"):
        load_diffusion_lm(tmp_path / "other")
    for options in ({"cache": "full"}, {"remasking": "random"}, {"block_length": 0}):
        with pytest.raises(UserInputError):
            build_engine("fast_dllm", dlm, **options)
    with pytest.raises(UserInputError, match="remasking"):
        build_engine("dlm", dlm, remasking="lowest")
