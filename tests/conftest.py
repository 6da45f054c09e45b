"""Real small Qwen3 models with random weights, scaled so that greedy outputs are varied."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from orthrus.models import OrthrusForCausalLM

torch.set_num_threads(int(os.environ.get("ORTHRUS_TEST_THREADS", "1")))


def random_qwen3(
    vocab: int = 256, hidden: int = 64, layers: int = 2, seed: int = 0, scale: float = 6.0, max_positions: int = 4096
) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        intermediate_size=2 * hidden,
        tie_word_embeddings=True,
        max_position_embeddings=max_positions,
        eos_token_id=0,
        pad_token_id=1,
        bos_token_id=0,
    )
    config._attn_implementation = "sdpa"
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:  # larger weights: sharper, more varied next-token distributions
                param.mul_(scale)
    return model


def perturb_diffusion_view(model: OrthrusForCausalLM, seed: int = 1, scale: float = 0.5) -> None:
    """Make the diffusion view differ from a copy of the AR view (a stand-in for a trained one)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.diffusion_parameters():
            param.add_(scale * param.std() * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="session")
def qwen3_base() -> Qwen3ForCausalLM:
    return random_qwen3()


@pytest.fixture(scope="session")
def orthrus_model(qwen3_base) -> OrthrusForCausalLM:
    """A fresh (copied, untrained) diffusion view on the random base; mask token = id 2."""
    return OrthrusForCausalLM.from_base(qwen3_base, block_size=8, mask_token_id=2)


@pytest.fixture(scope="session")
def prompts() -> dict[int, list[int]]:
    generator = torch.Generator().manual_seed(123)
    return {n: torch.randint(3, 256, (n,), generator=generator).tolist() for n in (1, 7, 300)}
