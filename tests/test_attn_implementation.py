"""attn_implementation is real: "sdpa" and "eager" both run, agree in fp32, and anything else is refused."""

from __future__ import annotations

import pytest
import torch

from orthrus.engines import build_engine
from orthrus.errors import UserInputError
from orthrus.models import SUPPORTED_ATTN_IMPLEMENTATIONS, load_causal_lm
from orthrus.models.dlm import load_diffusion_lm

# logits of the zoo models reach ~17; fp32 SDPA and the written-out softmax differ by a few ulps
ATOL = RTOL = 1e-5


@pytest.fixture(scope="module")
def views():
    return {name: load_causal_lm("tiny-orthrus", attn_implementation=name) for name in SUPPORTED_ATTN_IMPLEMENTATIONS}


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(3, 4000, (1, 120), generator=torch.Generator().manual_seed(11))


def test_loaders_set_the_implementation_the_forward_passes_use(views, monkeypatch):
    assert SUPPORTED_ATTN_IMPLEMENTATIONS == ("sdpa", "eager")
    for name, model in views.items():
        assert model.config._attn_implementation == name
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    with torch.no_grad():
        views["eager"](torch.tensor([[5, 6, 7]]))
        assert not calls  # the eager model never reaches SDPA
        views["sdpa"](torch.tensor([[5, 6, 7]]))
        assert calls


def test_eager_and_sdpa_logits_agree_for_both_views(views, prompt):
    block = torch.tensor([[int(prompt[0, -1])] + [views["sdpa"].config.mask_token_id] * 15])
    with torch.no_grad():
        outputs = {}
        for name, model in views.items():
            cache = model.new_cache(1, 200)
            ar = model.forward_ar(prompt[:, :100], cache, 0)  # causal prefill
            step = model.forward_ar(prompt[:, 100:108], cache, 100)  # a verify-shaped pass over a cached prefix
            diffusion = model.forward_diffusion(block, cache, 108)  # bidirectional block over the cache
            outputs[name] = (ar, step, diffusion)
    for got, want in zip(outputs["eager"], outputs["sdpa"]):
        assert torch.allclose(got, want, atol=ATOL, rtol=RTOL), (got - want).abs().max()


@pytest.mark.parametrize("engine", ["ar", "orthrus", "hf_generate"])
def test_eager_and_sdpa_give_the_same_greedy_tokens(views, prompt, engine):
    tokens = {
        name: build_engine(engine, model).generate(prompt[0].tolist(), 48).tokens for name, model in views.items()
    }
    assert tokens["eager"] == tokens["sdpa"]
    assert len(set(tokens["sdpa"])) > 5


def test_diffusion_lm_honours_it_too(prompt):
    runs = {}
    for name in SUPPORTED_ATTN_IMPLEMENTATIONS:
        model = load_diffusion_lm("tiny-dlm", attn_implementation=name)
        assert model.config._attn_implementation == name
        ids = torch.cat([prompt[:, :40], torch.full((1, 16), model.mask_token_id)], dim=1)
        with torch.no_grad():
            logits = model(ids)
        tokens = build_engine("dlm", model, block_length=8).generate(prompt[0, :40].tolist(), 16).tokens
        runs[name] = (logits, tokens)
    assert torch.allclose(runs["eager"][0], runs["sdpa"][0], atol=ATOL, rtol=RTOL)
    assert runs["eager"][1] == runs["sdpa"][1]


def test_switching_after_loading_takes_effect_and_others_are_refused(prompt):
    model = load_causal_lm("tiny-orthrus")
    assert model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    assert all(layer.self_attn.config._attn_implementation == "eager" for layer in model.model.layers)
    for bad in ("flash_attention_2", "flex_attention"):
        with pytest.raises(UserInputError, match="sdpa, eager"):
            model.set_attn_implementation(bad)
        with pytest.raises(UserInputError, match="sdpa, eager"):
            load_causal_lm("tiny-orthrus", attn_implementation=bad)
        with pytest.raises(UserInputError, match="sdpa, eager"):
            load_diffusion_lm("tiny-dlm", attn_implementation=bad)
