"""Tokens/s and forward passes per token of every engine on the zoo models, on held-out prompts.

    python scripts/measure_baselines.py --threads 1 --contexts 512 2048 --prompts 10 --new-tokens 64

Prompts: the first held-out documents of the corpus (``orthrus.train.corpus``) that are at least
as long as the largest context, tokenized with the zoo tokenizer and cut to each context length.
Every engine decodes greedily exactly ``--new-tokens`` tokens (no EOS stop, so lengths match) after
one warm-up call. Models: ``ar``/``prompt_lookup`` on tiny-base, ``assisted`` on tiny-base with
tiny-draft, ``orthrus`` on tiny-orthrus (skipped if it is not built), ``dlm``/``fast_dllm`` on
tiny-dlm (block 32; ``dlm`` one token per step; ``fast_dllm`` threshold 0.9 with each cache mode,
and threshold 0.5 with the dual cache). ``hf_generate`` (tiny-base) is transformers' plain loop, the
one ``assisted`` and ``prompt_lookup`` run inside.
Per run: tokens/s = new tokens / end-to-end seconds (prefill included); forward passes per token
(all passes, draft-model passes included; ``target`` = without them); the match with ``ar``'s
tokens (``orthrus.quality.compare_tokens``) and tiny-base's NLL of the output (``ar_nll``). Rows go
to ``--out`` (JSONL) as they are measured; a median summary is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def held_out_prompts(count: int, length: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    from orthrus.models import resolve_model_path
    from orthrus.train.corpus import corpus_documents

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_path("tiny-base")))
    prompts = []
    for document in corpus_documents("heldout"):
        ids = tokenizer(document.text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            prompts.append(ids)
        if len(prompts) == count:
            return prompts
    raise SystemExit(f"only {len(prompts)} held-out documents have {length} tokens; lower --prompts or --contexts.")


def engine_specs(block_length: int) -> list[tuple[str, str, str, dict]]:
    """(label, engine, model, options)."""
    specs = [
        ("ar", "ar", "tiny-base", {}),
        ("hf_generate", "hf_generate", "tiny-base", {}),  # the loop assisted/prompt_lookup run in
        ("orthrus", "orthrus", "tiny-orthrus", {}),
        ("assisted", "assisted", "tiny-base", {"draft_model": "tiny-draft"}),
        ("prompt_lookup", "prompt_lookup", "tiny-base", {}),
        ("dlm", "dlm", "tiny-dlm", {"block_length": block_length}),
    ]
    for cache in ("none", "prefix", "dual"):
        options = {"block_length": block_length, "threshold": 0.9, "cache": cache}
        specs.append((f"fast_dllm[{cache}]", "fast_dllm", "tiny-dlm", options))
    # a lower threshold: more tokens per step, at a cost in quality
    specs.append(("fast_dllm[dual,t=0.5]", "fast_dllm", "tiny-dlm", {"block_length": block_length, "threshold": 0.5}))
    return specs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--engines", nargs="*", default=None, help="labels to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("reports/measure_baselines/results.jsonl"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from orthrus.engines import build_engine
    from orthrus.models import load_causal_lm, zoo_path
    from orthrus.models.dlm import load_diffusion_lm
    from orthrus.quality import ar_nll, compare_tokens

    documents = held_out_prompts(args.prompts, max(args.contexts))
    models: dict[str, object] = {}

    def model(name: str):
        if name not in models:
            models[name] = load_diffusion_lm(name) if name == "tiny-dlm" else load_causal_lm(name)
        return models[name]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    reference: dict[tuple[int, int], list[int]] = {}
    with args.out.open("w") as sink:
        for label, engine_name, model_name, options in engine_specs(args.block_length):
            if args.engines and label not in args.engines:
                continue
            if zoo_path(model_name) is None:
                print(f"skip {label}: zoo model {model_name} is not built", file=sys.stderr)
                continue
            engine = build_engine(engine_name, model(model_name), **options)
            for context in args.contexts:
                engine.generate(documents[0][:context], args.new_tokens)  # warm-up
                for index, document in enumerate(documents):
                    prompt = document[:context]
                    result = engine.generate(prompt, args.new_tokens)
                    passes = result.total_forward_passes or None  # hf_generate does not count its passes
                    row = {
                        "engine": label,
                        "model": model_name,
                        "context": context,
                        "prompt": index,
                        "new_tokens": result.new_tokens,
                        "e2e_s": result.e2e_ms / 1e3,
                        "tokens_per_s": result.new_tokens / (result.e2e_ms / 1e3),
                        "forward_passes": passes,
                        "forward_passes_per_token": passes and passes / result.new_tokens,
                        "target_passes_per_token": passes
                        and (passes - result.forward_passes["draft"]) / result.new_tokens,
                        "forward_passes_by_kind": result.forward_passes,
                        "acceptance_length": result.acceptance_length,
                        "kv_cache_bytes_peak": result.kv_cache_bytes_peak,
                    }
                    if label == "ar":
                        reference[(context, index)] = result.tokens
                    elif (context, index) in reference:
                        exact, first, fraction = compare_tokens(reference[(context, index)], result.tokens)
                        row.update(identity_exact=exact, first_divergence=first, match_fraction=fraction)
                    row["ar_nll"] = ar_nll(model("tiny-base"), prompt, result.tokens)
                    rows.append(row)
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                print(f"{label} @ {context}: done", file=sys.stderr, flush=True)

    print(
        f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
        f"{args.prompts} prompts, {args.new_tokens} new tokens, greedy; medians over prompts; {time.ctime()}"
    )
    header = f"{'engine':<22} {'ctx':>5} {'tok/s':>8} {'fwd/tok':>8} {'tgt fwd/tok':>11} {'match ar':>8} {'ar_nll':>7}"
    print(header)
    print("-" * len(header))
    for label in dict.fromkeys(r["engine"] for r in rows):
        for context in args.contexts:
            cell = [r for r in rows if r["engine"] == label and r["context"] == context]
            if not cell:
                continue

            def median(key: str, cell=cell) -> float | None:
                values = [r[key] for r in cell if r.get(key) is not None]
                return statistics.median(values) if values else None

            def show(key: str, digits: int) -> str:
                value = median(key)
                return "n/a" if value is None else f"{value:.{digits}f}"

            print(
                f"{label:<22} {context:>5} {show('tokens_per_s', 1):>8} {show('forward_passes_per_token', 3):>8} "
                f"{show('target_passes_per_token', 3):>11} {show('match_fraction', 2):>8} {show('ar_nll', 3):>7}"
            )
    print(f"\nrows: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
