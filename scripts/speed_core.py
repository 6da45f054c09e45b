"""ar vs hf_generate vs orthrus on a random ~12M-parameter Qwen3 (issue 2's speed check).

    python scripts/speed_core.py --threads 1 --runs 5

Greedy, a 256-token random prompt, 128 new tokens, no EOS. Prints tokens/s (new tokens / e2e)
per engine (median of --runs after one warm-up), the ar / hf_generate ratio, and checks that
orthrus used exactly 2 forward passes per cycle plus the prefill.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from orthrus.engines import build_engine
from orthrus.models import OrthrusForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=4096,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=1152,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
    )
    base = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for param in base.parameters():
            if param.dim() == 2:
                param.mul_(4.0)
    params = sum(p.numel() for p in base.parameters())
    model = OrthrusForCausalLM.from_base(base, block_size=16, mask_token_id=2)
    prompt = torch.randint(3, 4096, (256,), generator=torch.Generator().manual_seed(1)).tolist()
    engines = {name: build_engine(name, model) for name in ("ar", "hf_generate", "orthrus")}
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for run in range(args.runs + 1):
        for name, engine in engines.items():
            result = engine.generate(prompt, args.new_tokens)
            if name == "orthrus":
                passes = result.forward_passes
                assert passes["draft"] == passes["verify"] == result.cycles and passes["prefill"] == 1
            if run > 0:
                rates[name].append(result.new_tokens / (result.e2e_ms / 1e3))
    print(
        f"random Qwen3, {params / 1e6:.1f}M parameters, {args.threads} thread(s), prompt 256, "
        f"{args.new_tokens} new tokens, median of {args.runs} runs"
    )
    for name, values in rates.items():
        print(f"  {name:12s} {statistics.median(values):8.1f} tokens/s")
    ratios = [a / h for a, h in zip(rates["ar"], rates["hf_generate"])]
    print(
        f"  ar / hf_generate tokens/s: median {statistics.median(ratios):.3f} (per run: "
        + ", ".join(f"{r:.3f}" for r in ratios)
        + ")"
    )
    print("  orthrus: exactly 2 forward passes per cycle plus the prefill in every run")


if __name__ == "__main__":
    main()
