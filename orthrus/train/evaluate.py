"""Measure a diffusion view: draft accuracy by position, accepted drafts per cycle, tokens per
forward, identity with AR, and wall-clock speedup against the cost model, all in one run.

    python -m orthrus evaluate --model tiny-orthrus --block-sizes 4,8,16,32 --prompts 50
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoTokenizer

from orthrus.engines import build_engine
from orthrus.models import OrthrusForCausalLM, load_causal_lm, resolve_model_path
from orthrus.train.corpus import corpus_documents


@dataclass
class HeldoutPrompt:
    name: str
    ids: list[int]


def heldout_prompts(tokenizer: Any, count: int, min_len: int = 128, max_len: int = 1024) -> list[HeldoutPrompt]:
    """``count`` prompts from held-out files, lengths spread evenly over [min_len, max_len], each
    ending right after a newline so that the continuation starts at a line boundary."""
    documents = corpus_documents("heldout")
    encoded = [(d.name, tokenizer(d.text, add_special_tokens=False)["input_ids"]) for d in documents]
    newline_ends = {}
    prompts: list[HeldoutPrompt] = []
    doc_index = 0
    for i in range(count):
        length = min_len + (i * (max_len - min_len)) // max(count - 1, 1)
        for _ in range(len(encoded)):
            name, ids = encoded[doc_index % len(encoded)]
            doc_index += 1
            if name not in newline_ends:
                newline_ends[name] = [p + 1 for p, t in enumerate(ids) if "\n" in tokenizer.decode([t])]
            ends = [p for p in newline_ends[name] if p >= length]
            if ends:
                end = ends[0]
                prompts.append(HeldoutPrompt(f"{name}@{end - length}:{end}", ids[end - length : end]))
                break
    return prompts


@torch.inference_mode()
def forward_time_ms(model: OrthrusForCausalLM, context: int, tokens: int, repeats: int = 20) -> float:
    """Median time of one AR forward over ``tokens`` new tokens after ``context`` cached ones."""
    cache = model.new_cache(context + tokens)
    model.forward_ar(torch.randint(3, 100, (1, context)), cache, 0)
    block = torch.randint(3, 100, (1, tokens))
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        model.forward_ar(block, cache, context)
        times.append((time.perf_counter() - start) * 1e3)
        cache.crop(-tokens)
    return statistics.median(times[2:])


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def evaluate_view(
    model_name: str,
    block_sizes: list[int],
    prompt_count: int,
    max_new_tokens: int = 128,
    untrained_block: int | None = 16,
    quiet: bool = False,
) -> dict[str, Any]:
    model = load_causal_lm(model_name)
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_path(model_name)))
    prompts = heldout_prompts(tokenizer, prompt_count)
    ar = build_engine("ar", model)
    bar = tqdm(total=len(prompts) * (len(block_sizes) + 1), disable=quiet, desc="evaluate", unit="gen")
    reference, ar_ms = {}, {}
    for prompt in prompts:
        ar.generate(prompt.ids[:16], 4)  # warm-up
        result = ar.generate(prompt.ids, max_new_tokens)
        reference[prompt.name], ar_ms[prompt.name] = result.tokens, result.e2e_ms
        bar.update(1)
    context = int(statistics.median(len(p.ids) for p in prompts))
    t1 = forward_time_ms(model, context, 1)
    report: dict[str, Any] = {
        "model": model_name,
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "prompt_tokens_min": min(len(p.ids) for p in prompts),
        "prompt_tokens_max": max(len(p.ids) for p in prompts),
        "threads": torch.get_num_threads(),
        "t_fwd_1_ms": t1,
        "cost_model_context": context,
        "block_sizes": {},
    }
    for block in block_sizes:
        engine = build_engine("orthrus", model, block_size=block)
        accepted, drafted, identical, speedups, tpf, per_request = [], [], 0, [], [], []
        for prompt in prompts:
            result = engine.generate(prompt.ids, max_new_tokens)
            identical += result.tokens == reference[prompt.name]
            accepted += result.accepted_per_cycle
            drafted += result.drafted_per_cycle
            speedups.append(ar_ms[prompt.name] / result.e2e_ms)
            tpf.append(result.tokens_per_forward)
            if result.acceptance_length is not None:
                per_request.append(result.acceptance_length)
            bar.update(1)
        tk = forward_time_ms(model, context, block)
        mean_accepted = sum(accepted) / len(accepted)
        predicted = (mean_accepted + 1) / 2 * t1 / tk
        measured = geometric_mean(speedups)
        report["block_sizes"][str(block)] = {
            "identical_to_ar": f"{identical}/{len(prompts)}",
            "accepted_per_cycle_token_weighted": round(mean_accepted, 3),
            "accepted_per_cycle_per_request_mean": round(statistics.mean(per_request), 3),
            "acceptance_by_position": [
                round(
                    sum(1 for d, a in zip(drafted, accepted) if d >= j and a >= j)
                    / max(sum(1 for d in drafted if d >= j), 1),
                    3,
                )
                for j in range(1, block)
            ],
            "tokens_per_forward_median": round(statistics.median(tpf), 3),
            "t_fwd_k_ms": round(tk, 3),
            "t_fwd_k_over_t_fwd_1": round(tk / t1, 3),
            "speedup_vs_ar_measured": round(measured, 3),
            "speedup_vs_ar_cost_model": round(predicted, 3),
            "measured_over_predicted": round(measured / predicted, 3),
        }
    bar.close()
    if untrained_block:
        fresh = OrthrusForCausalLM.from_base(
            model, block_size=untrained_block, mask_token_id=model.config.mask_token_id
        )
        engine = build_engine("orthrus", fresh, block_size=untrained_block)
        accepted = []
        for prompt in prompts:
            accepted += engine.generate(prompt.ids, max_new_tokens).accepted_per_cycle
        report["untrained_view"] = {
            "block_size": untrained_block,
            "accepted_per_cycle_token_weighted": round(sum(accepted) / len(accepted), 3),
        }
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['prompts']} held-out prompts ({report['prompt_tokens_min']}-{report['prompt_tokens_max']} tokens), "
        f"{report['max_new_tokens']} new tokens, greedy, {report['threads']} threads; "
        f"t_fwd(1) = {report['t_fwd_1_ms']:.2f} ms at {report['cost_model_context']} context",
        "",
        "| block | identical to AR | accepted/cycle | TPF (median) | t_fwd(K)/t_fwd(1) | speedup measured | cost model | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for block, row in report["block_sizes"].items():
        lines.append(
            f"| {block} | {row['identical_to_ar']} | {row['accepted_per_cycle_token_weighted']} | "
            f"{row['tokens_per_forward_median']} | {row['t_fwd_k_over_t_fwd_1']} | {row['speedup_vs_ar_measured']}x | "
            f"{row['speedup_vs_ar_cost_model']}x | {row['measured_over_predicted']} |"
        )
    lines.append("")
    for block, row in report["block_sizes"].items():
        lines.append(f"- draft accuracy by position, block {block}: {row['acceptance_by_position']}")
    if "untrained_view" in report:
        u = report["untrained_view"]
        lines.append(
            f"- untrained (copied) view, block {u['block_size']}: "
            f"{u['accepted_per_cycle_token_weighted']} accepted drafts per cycle"
        )
    return "\n".join(lines)
