"""Command line: ``python -m orthrus {generate,train,bench,...}``.

Errors a user can cause print one sentence on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from orthrus.errors import ArgumentParser, UserInputError, remembering_interrupts
from orthrus.results.vocabulary import FIELD

COLOURS = ("\033[38;5;33m", "\033[38;5;208m")  # alternating per committed block
RESET = "\033[0m"


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise UserInputError(f"--prompt-ids must be comma-separated integers, got {text!r}.") from err


DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def check_generate_args(args: argparse.Namespace) -> None:
    """Values argparse lets through (NaN, negatives, devices torch was not built for), refused before
    anything is loaded."""
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UserInputError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}.")
    if not math.isfinite(args.top_p) or not 0 < args.top_p <= 1:
        raise UserInputError(f"--top-p must be a number in (0, 1], got {args.top_p}.")
    if args.top_k < 0:
        raise UserInputError(f"--top-k must be >= 0 (0 = off), got {args.top_k}.")
    if args.max_new_tokens < 1:
        raise UserInputError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    if args.block_size is not None and args.block_size < 1:
        raise UserInputError(f"--block-size must be at least 1, got {args.block_size}.")
    if args.threads < 0:
        raise UserInputError(f"--threads must be >= 0 (0 = torch's default), got {args.threads}.")
    if not DEVICE.fullmatch(args.device):
        raise UserInputError(f"--device {args.device!r} is not supported; use cpu, cuda or cuda:N.")


def cmd_generate(args: argparse.Namespace) -> int:
    check_generate_args(args)
    import torch

    from orthrus.engines import DEFAULT_ENGINE, build_engine, engine_class, engine_names
    from orthrus.models import load_causal_lm, resolve_model_path
    from orthrus.models.checkpoint import check_remote_code, load_tokenizer
    from orthrus.models.dlm import load_diffusion_lm
    from orthrus.models.drafters import DRAFTER_KINDS, load_drafter

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
    if args.draft_model is not None:
        if not cls.needs_draft_model:
            takers = ", ".join(repr(n) for n in engine_names() if engine_class(n).needs_draft_model)
            raise UserInputError(f"--draft-model applies to engines that need one ({takers}), not {name!r}.")
        options["draft_model"] = args.draft_model
    model_dir = resolve_model_path(args.model)
    trust, where = args.trust_remote_code, f"--model {args.model}"
    fix = "pass --trust-remote-code, only if you trust that code"
    check_remote_code(model_dir, trust, where, fix)  # before any load: transformers never gets to ask on stdin
    load = load_diffusion_lm if cls.model_kind == "dlm" else load_causal_lm
    model = load(
        args.model,
        dtype=args.dtype,
        device=args.device,
        attn_implementation=args.attn_implementation,
        trust_remote_code=trust,
    )
    tokenizer = None
    if (model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(model_dir, trust, where, fix)
    if args.prompt is not None:
        if tokenizer is None:
            raise UserInputError(f"{args.model} has no tokenizer files; pass --prompt-ids instead of --prompt.")
        prompt_ids = tokenizer(args.prompt)["input_ids"]
    else:
        prompt_ids = _parse_ids(args.prompt_ids)
    if args.draft_model is not None and cls.draft_model_kind in DRAFTER_KINDS:  # its code allowed as the model's
        options["draft_model"] = load_drafter(
            cls.draft_model_kind,
            args.draft_model,
            dtype=args.dtype,
            device=args.device,
            trust_remote_code=trust,
            attn_implementation=args.attn_implementation,
        )
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
                    FIELD.new_tokens,
                    FIELD.tokens_per_forward,
                    FIELD.acceptance_length,
                    FIELD.e2e_ms,
                    FIELD.ttft_ms,
                    FIELD.kv_cache_bytes_peak,
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
    """Run suites/diffusion_view.yaml through the harness with the flags as overrides, then print
    (and with --write-card, --json-out write) the evaluation read back from the run directory."""
    from pathlib import Path

    from orthrus.models import resolve_model_path
    from orthrus.train.evaluate import (
        DRAFTER_ENGINES,
        SUITE_FILE,
        VIEW_LABEL,
        drafter_sets,
        evaluation,
        format_report,
        suite_sets,
    )

    try:
        blocks = [int(x) for x in args.block_sizes.split(",") if x.strip()]
    except ValueError:
        blocks = []
    if not blocks or min(blocks) < 2:
        raise UserInputError(f"--block-sizes must be comma-separated integers >= 2, got {args.block_sizes!r}.")
    if args.prompts < 1:
        raise UserInputError(f"--prompts must be at least 1, got {args.prompts}.")
    if args.max_new_tokens < 1:
        raise UserInputError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    if args.json_out and not Path(args.json_out).resolve().parent.is_dir():
        raise UserInputError(
            f"--json-out {args.json_out}: the folder {Path(args.json_out).parent} does not exist; create it first."
        )
    drafter = args.engine in DRAFTER_ENGINES
    if drafter and not args.draft_model:
        raise UserInputError(f"--engine {args.engine} needs --draft-model: the drafter to evaluate (e.g. tiny-{args.engine}).")
    if not drafter and args.draft_model:
        raise UserInputError("--draft-model goes with --engine dflash or eagle3; a diffusion view needs none.")
    if drafter and args.untrained_base:
        raise UserInputError("--untrained-base measures an untrained diffusion view; it does not go with a drafter.")
    # the card the evaluation is written into (a missing model is one sentence before anything runs)
    card = resolve_model_path(args.draft_model if drafter else args.model) / "README.md"
    resolve_model_path(args.model)
    label = args.engine if drafter else VIEW_LABEL

    import orthrus.report
    from orthrus.bench.runner import RunOptions, run_suite
    from orthrus.bench.suite.load import read_suite_file
    from orthrus.bench.suite.validate import load_suite

    raw, _ = read_suite_file(SUITE_FILE)
    # the untrained view is the suite's base checkpoint with a copied view: it only fits the suite's own
    # model, or a model whose base --untrained-base names
    same_model = args.model == raw["models"]["base"]["path"]
    engines = None if ((same_model or args.untrained_base) and not drafter) else [label, "ar"]
    sets = suite_sets(
        model=args.model,
        block_sizes=blocks,
        prompts=args.prompts,
        max_new_tokens=args.max_new_tokens,
        threads=args.threads or None,
        untrained_base=args.untrained_base,
    )
    if drafter:
        sets += drafter_sets(args.engine, args.draft_model)
    suite = load_suite(SUITE_FILE, sets, engines=engines)
    outcome = run_suite(suite, RunOptions(out_root=Path(args.out), quiet=args.quiet, argv=list(sys.argv)))
    if outcome.code == 130:
        return 130
    try:
        print(f"report: {orthrus.report.render_run(outcome.run_dir)}", file=sys.stderr)
    except Exception as err:  # noqa: BLE001 - the results are on disk; 'run_bench.py report DIR' redraws it
        print(f"warning: the report could not be rendered ({type(err).__name__}: {err}).", file=sys.stderr)
    report = evaluation(outcome.run_dir, label)
    text = format_report(report)
    print(text)
    if outcome.code != 0:
        failed = outcome.info.get("failed")
        print(
            f"error: {failed} measurement(s) failed (see {outcome.run_dir}); nothing written to the card or --json-out.",
            file=sys.stderr,
        )
        return outcome.code
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    if args.write_card:
        from orthrus.train.distill import EVALUATION_HEADING
        from orthrus.train.loop import invocation

        head = card.read_text().split(EVALUATION_HEADING)[0] if card.is_file() else f"# {args.model}\n\n"
        card.write_text(head + f"{EVALUATION_HEADING}\nCommand: `{invocation()}`\n\n{text}\n")
        (card.parent / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
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
    parser = ArgumentParser(prog="python -m orthrus", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="decode one prompt with one engine")
    gen.add_argument("--model", required=True, help="checkpoint directory or zoo name (e.g. tiny-orthrus)")
    gen.add_argument("--engine", help="a registered engine name (default: the Orthrus dual-view engine)")
    gen.add_argument("--block-size", type=int, help="for engines that take one (default: the model's own)")
    gen.add_argument(
        "--draft-model",
        help="for engines that need one: a draft model (assisted; default tiny-draft) or a DFlash or EAGLE-3 "
        "drafter directory (dflash, eagle3)",
    )
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
    gen.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the checkpoint's own code (auto_map in its config or tokenizer files) to run; off by default",
    )
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt")
    prompt.add_argument("--prompt-ids")
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    gen.add_argument("--show-cycles", action="store_true", help="colour each committed block")
    gen.set_defaults(func=cmd_generate)

    ev = sub.add_parser(
        "evaluate", help="measure a diffusion view or a drafter: acceptance, TPF, speedup vs the cost model"
    )
    ev.add_argument("--model", default="tiny-orthrus", help="the Orthrus checkpoint, or a drafter's target")
    ev.add_argument(
        "--engine",
        choices=("orthrus", "dflash", "eagle3"),
        default="orthrus",
        help="what drafts: the model's diffusion view (default) or a DFlash / EAGLE-3 drafter (--draft-model)",
    )
    ev.add_argument("--draft-model", help="the drafter directory or zoo name, with --engine dflash or eagle3")
    ev.add_argument("--block-sizes", default="4,8,16,32")
    ev.add_argument("--prompts", type=int, default=50)
    ev.add_argument("--max-new-tokens", type=int, default=128)
    ev.add_argument("--threads", type=int, default=0)
    ev.add_argument("--json-out", help="also write the evaluation as JSON to this file")
    ev.add_argument("--out", default="reports", help="reports root; the run lands in OUT/diffusion_view/<run-id>/")
    ev.add_argument(
        "--untrained-base",
        help="the plain checkpoint the view was trained on, measured with a fresh (copied) view at block 16 "
        "(default: the suite's, for the suite's own model; other models skip it)",
    )
    ev.add_argument(
        "--write-card",
        action="store_true",
        help="replace the Evaluation section of the model's README.md (the drafter's, with --engine dflash or eagle3)",
    )
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
    return remembering_interrupts(lambda: _main(argv), "interrupted.")


def _main(argv: list[str]) -> int:
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
    except KeyboardInterrupt:  # also during start-up (imports, model loading): one line, no traceback
        print("\ninterrupted.", file=sys.stderr)
        return 130


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
