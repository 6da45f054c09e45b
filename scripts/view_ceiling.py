"""Where is the ceiling of a diffusion view on this base? Evidence for tiny-orthrus's model card.

    python scripts/view_ceiling.py --model tiny-orthrus --prompts 50 --block 16
    python scripts/view_ceiling.py --model tiny-orthrus --checkpoint run1/checkpoint/state.pt ...

On the prompts of ``suites/diffusion_view.yaml`` (held-out text and code outside the training
corpus, 512-token contexts, 128 greedy new tokens), for every view given (``--model`` checkpoints
and/or ``--checkpoint`` training states, whose ``*_diff`` weights are rounded to fp16 as the zoo
ships them) it prints:

* accepted drafts per cycle at the block (token-weighted over full-size cycles), and the
  acceptance by draft position, unconditional (the fraction of cycles that kept draft j) and
  conditional (kept j given j-1 was kept);
* the base's own determinism along the same greedy text: at each draft position j of every cycle,
  the AR view's top-1 probability p_j of the token it then produced. ``chain reference`` is
  E[sum_j prod_{i<=j} p_i]: the accepted drafts per cycle of a drafter whose guess at every
  position is right exactly as often as the base's own top-1 probability says (a calibrated guesser
  of the base's text). A greedy target is a deterministic function of the prefix, so no drafter
  is bounded by it in principle; it is the reference for how much of the chain the base itself
  is sure of, position by position; with it, the mean of p over the generated tokens and the share
  of them the base produced with p >= 0.5.

Deterministic (no timing): run it on a busy machine if you must.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orthrus.bench.prompts import PromptFactory  # noqa: E402
from orthrus.bench.suite.validate import load_suite  # noqa: E402
from orthrus.engines import build_engine  # noqa: E402
from orthrus.models import resolve_model_path  # noqa: E402
from orthrus.models.modeling_orthrus import OrthrusForCausalLM, is_diffusion_param  # noqa: E402

SUITE = ROOT / "suites" / "diffusion_view.yaml"


def suite_prompts(count: int, context: int) -> dict[str, list[list[int]]]:
    suite = load_suite(SUITE, sets=[f"prompts[0].count={count}", f"prompts[1].count={count}"])
    factory = PromptFactory()
    model = suite.models["base"]
    return {source.name: [p.ids for p in factory.prompts(source, model, context)] for source in suite.prompts}


def load_view(base: OrthrusForCausalLM | None, spec: str) -> OrthrusForCausalLM:
    if spec.endswith(".pt"):
        assert base is not None
        state = torch.load(spec, map_location="cpu", weights_only=True)["model"]
        view = {k: v.half().float() for k, v in state.items() if is_diffusion_param(k)}  # as the zoo ships it
        return OrthrusForCausalLM._from_state(base.config, {**base.state_dict(), **view}, torch.float32).eval()
    path = resolve_model_path(spec)
    return OrthrusForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False).eval()


@torch.inference_mode()
def top1_probabilities(model: OrthrusForCausalLM, prompt: list[int], tokens: list[int]) -> list[float]:
    """p(token t | everything before it) under the AR view, for every generated token."""
    ids = torch.tensor([prompt + tokens])
    logits = model.forward_ar(ids, None, 0)[0, len(prompt) - 1 : -1]
    probs = torch.softmax(logits.float(), -1)
    return probs.gather(-1, torch.tensor(tokens).unsqueeze(-1)).squeeze(-1).tolist()


def measure(model: OrthrusForCausalLM, prompts: list[list[int]], block: int, new_tokens: int) -> dict[str, object]:
    engine = build_engine("orthrus", model, block_size=block)
    n = block - 1
    cycles = kept = 0
    by_position = [0] * n
    chain_reference = 0.0
    confidences: list[float] = []
    for prompt in prompts:
        result = engine.generate(prompt, new_tokens)
        confidence = top1_probabilities(model, prompt, result.tokens)
        confidences += confidence
        offset = 1  # the first token comes from the prefill; cycle c drafts the tokens after its anchor
        for drafted, accepted in zip(result.drafted_per_cycle, result.accepted_per_cycle):
            if drafted == n:
                cycles += 1
                kept += accepted
                for j in range(accepted):
                    by_position[j] += 1
                running = 1.0
                for p in confidence[offset : offset + n]:
                    running *= p
                    chain_reference += running
            offset += accepted + 1
    unconditional = [k / max(cycles, 1) for k in by_position]
    conditional = [unconditional[0]] + [
        b / a if a > 0 else 0.0 for a, b in zip(unconditional, unconditional[1:])
    ]
    return {
        "cycles": cycles,
        "accepted_per_cycle": kept / max(cycles, 1),
        "unconditional": unconditional,
        "conditional": conditional,
        "chain_reference": chain_reference / max(cycles, 1),
        "base_top1_mean": sum(confidences) / max(len(confidences), 1),
        "base_top1_at_least_half": sum(p >= 0.5 for p in confidences) / max(len(confidences), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="Orthrus checkpoint (zoo name or directory)")
    parser.add_argument("--checkpoint", action="append", default=[], help="a training state.pt (its *_diff weights)")
    parser.add_argument("--base", default="tiny-orthrus", help="the Orthrus checkpoint whose AR view the states attach to")
    parser.add_argument("--prompts", type=int, default=50, help="prompts per source")
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--positions", type=int, default=6, help="draft positions to print")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    specs = args.model + args.checkpoint or ["tiny-orthrus"]
    base = load_view(None, args.base)  # the AR view and config the training states attach to
    prompts = suite_prompts(args.prompts, args.context)
    show = args.positions
    for spec in specs:
        model = base if spec == args.base else load_view(base, spec)
        for source, ids in prompts.items():
            m = measure(model, ids, args.block, args.new_tokens)
            fmt = lambda xs: "[" + ", ".join(f"{x:.3f}" for x in xs[:show]) + "]"  # noqa: E731
            print(
                f"{Path(spec).name if spec.endswith('.pt') else spec} | {source} | K={args.block} | "
                f"accepted/cycle {m['accepted_per_cycle']:.3f} | chain reference {m['chain_reference']:.3f} | "
                f"base top-1 p mean {m['base_top1_mean']:.3f}, >= 0.5 on {m['base_top1_at_least_half']:.1%} | "
                f"by position {fmt(m['unconditional'])} | conditional {fmt(m['conditional'])} | cycles {m['cycles']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
