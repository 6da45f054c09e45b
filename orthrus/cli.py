"""Command line: ``python -m orthrus {generate,train,bench,...}``.

Errors a user can cause print one sentence on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from orthrus.errors import UserInputError

COLOURS = ("\033[38;5;33m", "\033[38;5;208m")  # alternating per committed block
RESET = "\033[0m"


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise UserInputError(f"--prompt-ids must be comma-separated integers, got {text!r}.") from err


def cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoTokenizer

    from orthrus.engines import DEFAULT_ENGINE, build_engine, engine_class, engine_names
    from orthrus.models import load_causal_lm, resolve_model_path
    from orthrus.models.dlm import load_diffusion_lm

    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.engine or DEFAULT_ENGINE
    cls = engine_class(name)  # an unknown name is one sentence with a did-you-mean
    options: dict[str, Any] = {}
    if args.block_size is not None:
        if not cls.takes_block_size:
            takers = ", ".join(repr(n) for n in engine_names() if engine_class(n).takes_block_size)
            raise UserInputError(f"--block-size applies to engines that take a block size ({takers}), not {name!r}.")
        options["block_size"] = args.block_size
    load = load_diffusion_lm if cls.model_kind == "dlm" else load_causal_lm
    model = load(args.model, dtype=args.dtype, device=args.device, attn_implementation=args.attn_implementation)
    tokenizer = None
    model_dir = resolve_model_path(args.model)
    if (model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if args.prompt is not None:
        if tokenizer is None:
            raise UserInputError(f"{args.model} has no tokenizer files; pass --prompt-ids instead of --prompt.")
        prompt_ids = tokenizer(args.prompt)["input_ids"]
    else:
        prompt_ids = _parse_ids(args.prompt_ids)
    engine = build_engine(name, model, **options)
    eos = args.eos_token_id
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if not args.json and tokenizer is not None:
        engine.listener = _text_streamer(tokenizer, args.show_cycles)
    result = engine.generate(
        prompt_ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        eos_token_id=eos,
    )
    if args.json:
        record = result.to_dict()
        out = {
            "tokens": result.tokens,
            "forward_passes": record["forward_passes_by_kind"],
            "accepted_per_cycle": result.accepted_per_cycle,
        }
        out.update(
            {
                k: record[k]
                for k in (
                    "new_tokens",
                    "tokens_per_forward",
                    "acceptance_length",
                    "e2e_ms",
                    "ttft_ms",
                    "kv_cache_bytes_peak",
                    "stop_reason",
                )
            }
        )
        print(json.dumps(out))
        return 0
    if tokenizer is None:
        print(" ".join(map(str, result.tokens)))
    else:
        print()
    tpf = result.tokens_per_forward
    print(
        f"[{name}] {result.new_tokens} tokens, {result.total_forward_passes} forward passes "
        f"({tpf:.2f} tokens/forward), {result.e2e_ms:.0f} ms",
        file=sys.stderr,
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from orthrus.train.evaluate import evaluate_view, format_report

    if args.threads:
        torch.set_num_threads(args.threads)
    blocks = _parse_ids(args.block_sizes)
    if not blocks or min(blocks) < 2:
        raise UserInputError(f"--block-sizes must be integers >= 2, got {args.block_sizes!r}.")
    report = evaluate_view(args.model, blocks, args.prompts, args.max_new_tokens, quiet=args.quiet)
    print(format_report(report))
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump(report, handle, indent=2)
    if args.write_card:
        from orthrus.models import resolve_model_path
        from orthrus.train.base import invocation
        from orthrus.train.distill import EVALUATION_HEADING

        card = resolve_model_path(args.model) / "README.md"
        head = card.read_text().split(EVALUATION_HEADING)[0] if card.is_file() else f"# {args.model}\n\n"
        section = f"{EVALUATION_HEADING}\nCommand: `{invocation()}`\n\n{format_report(report)}\n"
        card.write_text(head + section)
        (card.parent / "eval.json").write_text(json.dumps(report, indent=2))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from orthrus.profile.cli import cmd_profile as measure_and_write

    return measure_and_write(args)


def _text_streamer(tokenizer: Any, show_cycles: bool) -> Callable[[list[int]], None]:
    """Prints text as it is committed; with show_cycles, each commit in an alternating colour."""
    state = {"ids": [], "printed": 0, "block": 0}

    def listen(new: list[int]) -> None:
        state["ids"].extend(new)
        text = tokenizer.decode(state["ids"], skip_special_tokens=False)
        piece = text[state["printed"] :]
        state["printed"] = len(text)
        if show_cycles:
            piece = f"{COLOURS[state['block'] % 2]}{piece}{RESET}"
            state["block"] += 1
        sys.stdout.write(piece)
        sys.stdout.flush()

    return listen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orthrus", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="decode one prompt with one engine")
    gen.add_argument("--model", required=True, help="checkpoint directory or zoo name (e.g. tiny-orthrus)")
    gen.add_argument("--engine", help="a registered engine name (default: the Orthrus dual-view engine)")
    gen.add_argument("--block-size", type=int, help="for engines that take one (default: the model's own)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--eos-token-id", type=int)
    gen.add_argument("--dtype", default="float32")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--attn-implementation", default="sdpa", help="attention: sdpa or eager")
    gen.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt")
    prompt.add_argument("--prompt-ids")
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    gen.add_argument("--show-cycles", action="store_true", help="colour each committed block")
    gen.set_defaults(func=cmd_generate)

    ev = sub.add_parser("evaluate", help="measure a diffusion view: acceptance, TPF, speedup vs the cost model")
    ev.add_argument("--model", default="tiny-orthrus")
    ev.add_argument("--block-sizes", default="4,8,16,32")
    ev.add_argument("--prompts", type=int, default=50)
    ev.add_argument("--max-new-tokens", type=int, default=128)
    ev.add_argument("--threads", type=int, default=0)
    ev.add_argument("--json-out", help="also write the report as JSON to this file")
    ev.add_argument("--write-card", action="store_true", help="replace the Evaluation section of the model's README.md")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_evaluate)

    prof = sub.add_parser("profile", help="time decode/verify/draft passes on a device: one latency profile JSON")
    from orthrus.profile.cli import add_profile_arguments

    add_profile_arguments(prof)
    prof.set_defaults(func=cmd_profile)

    sub.add_parser("train", help="train the tokenizer and the zoo models (see: train --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "train":
            from orthrus.train.cli import main as train_main

            return int(train_main(argv[1:]) or 0)
        parser = build_parser()
        args = parser.parse_args(argv)
        _quiet_transformers()
        return int(args.func(args) or 0)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
