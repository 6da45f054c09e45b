"""`python -m orthrus train ...`: build the tokenizer and the tiny models that ship in the zoo.

Each target is one `add_parser` call plus one function, so other targets (the Orthrus diffusion
head, the diffusion-LM baseline, `all`) can be added next to these.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from orthrus.errors import ArgumentParser
from orthrus.models import DEFAULT_BLOCK_SIZE
from orthrus.models.zoo_index import TOKENIZER_DIR, ZOO_DIR
from orthrus.train.distill import LOSSES, DistillConfig


def _loop_settings(args: argparse.Namespace) -> dict[str, object]:
    """The training-loop flags every trainer takes (orthrus/train/loop.py's LoopConfig); the
    target's default step budget when neither --steps nor --max-minutes is given."""
    settings: dict[str, object] = {"seed": args.seed, "resume": args.resume, "quiet": args.quiet}
    if args.steps is None and args.max_minutes is None:
        settings["steps"] = args.default_steps
    else:
        settings.update(steps=args.steps, max_minutes=args.max_minutes)
    if args.threads:
        settings["num_threads"] = args.threads
    return settings


def _run_tokenizer(args: argparse.Namespace) -> None:
    from orthrus.train.tokenizer import train_tokenizer

    out = train_tokenizer(args.out or TOKENIZER_DIR, seed=args.seed)
    if not args.quiet:
        print(f"tokenizer saved to {out}")


def _lm_runner(preset: str) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        from orthrus.train.base import config_for, train

        out_dir = Path(args.out or ZOO_DIR / preset)
        config = config_for(preset, out_dir, tokenizer_dir=Path(args.tokenizer), **_loop_settings(args))
        train(config)
        if not args.quiet:
            print(f"{preset} saved to {config.out_dir}")

    return run


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: the package zoo)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar or log lines")


def _lm_args(parser: argparse.ArgumentParser, default_steps: int) -> None:
    _common_args(parser)
    parser.add_argument("--max-minutes", type=float, default=None, help="training time budget")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training step budget (default {default_steps} if no time budget)",
    )
    parser.set_defaults(default_steps=default_steps)
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint/")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2)")
    parser.add_argument("--tokenizer", default=str(TOKENIZER_DIR), help="tokenizer directory")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m orthrus train", description=__doc__.splitlines()[0])
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")

    tokenizer = targets.add_parser("tokenizer", help="byte-level BPE on the stdlib corpus")
    _common_args(tokenizer)
    tokenizer.set_defaults(run=_run_tokenizer)

    base = targets.add_parser("base", help="the tiny-base causal LM")
    _lm_args(base, default_steps=2000)
    base.set_defaults(run=_lm_runner("tiny-base"))

    draft = targets.add_parser("draft", help="the tiny-draft causal LM (speculative-decoding baseline)")
    _lm_args(draft, default_steps=2000)
    draft.set_defaults(run=_lm_runner("tiny-draft"))

    view = targets.add_parser("orthrus", help="the tiny-orthrus diffusion view (self-distillation from a Qwen3 base)")
    _lm_args(view, default_steps=500)
    view.add_argument("--base", default="tiny-base", help="Qwen3 checkpoint directory or zoo name")
    view.add_argument(
        "--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="the view's default block for inference"
    )
    view.add_argument("--data-sequences", type=int, default=None, help="self-distillation sequences")
    view.add_argument(
        "--prompt-len",
        type=int,
        default=None,
        help=f"corpus tokens before each continuation (default {DistillConfig.prompt_len}); anchors start at most "
        "64 tokens before its end (never in its first half)",
    )
    view.add_argument(
        "--continuation-len",
        type=int,
        default=None,
        help=f"greedy tokens the base writes after each prompt (default {DistillConfig.continuation_len})",
    )
    view.add_argument(
        "--extra-prompts",
        default=None,
        metavar="DIR",
        help="also take prompts from the Python files under DIR (code outside the corpus; never the "
        "evaluation's own code, this package)",
    )
    view.add_argument(
        "--extra-fraction",
        type=float,
        default=None,
        help=f"share of the sequences whose prompt comes from --extra-prompts (default {DistillConfig.extra_fraction:g})",
    )
    view.add_argument("--device", default="cpu")
    view.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {DistillConfig.lr:g})")
    view.add_argument(
        "--position-decay",
        type=float,
        default=None,
        help=f"loss weight decay per draft position (default {DistillConfig.position_decay:g})",
    )
    view.add_argument(
        "--loss",
        choices=LOSSES,
        default=None,
        help="kl: per-position KL; chain: also weight position j by the chance of reaching it (default kl)",
    )
    view.add_argument(
        "--init-from", default=None, help="start the view from this Orthrus checkpoint (continue training)"
    )
    view.set_defaults(run=_run_orthrus)

    dlm = targets.add_parser("dlm", help="the tiny-dlm masked-diffusion LM (adapted from a Qwen3 base)")
    _lm_args(dlm, default_steps=2000)
    dlm.add_argument("--base", default="tiny-base", help="Qwen3 checkpoint directory or zoo name")
    dlm.set_defaults(run=_run_dlm)

    everything = targets.add_parser("all", help="the whole zoo from nothing, in order, with the shipped budgets")
    _common_args(everything)
    everything.add_argument("--scale", type=float, default=1.0, help="multiply every time budget (e.g. 0.1 to try)")
    everything.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2)")
    everything.set_defaults(run=_run_all)
    return parser


# The budgets the shipped zoo was trained with (minutes on 2 CPU cores); see each model card.
ZOO_BUDGETS_MIN = {"draft": 10.0, "base": 28.0, "orthrus": 55.0, "dlm": 15.0}


def _run_all(args: argparse.Namespace) -> None:
    """tokenizer -> draft -> base -> orthrus (needs base) -> dlm (needs base), each into the zoo."""
    if args.out is not None:
        raise ValueError("train all writes the package zoo; train targets one by one to write elsewhere.")
    parser = build_parser()
    common = ["--seed", str(args.seed)] + (["--quiet"] if args.quiet else [])
    threads = ["--threads", str(args.threads)] if args.threads else []
    tokenizer_args = parser.parse_args(["tokenizer", *common])
    tokenizer_args.run(tokenizer_args)
    for target in ("draft", "base", "orthrus", "dlm"):
        minutes = str(ZOO_BUDGETS_MIN[target] * args.scale)
        target_args = parser.parse_args([target, "--max-minutes", minutes, *common, *threads])
        target_args.run(target_args)


def _run_dlm(args: argparse.Namespace) -> None:
    from orthrus.train.dlm import DLMConfig, train

    config = DLMConfig(out_dir=Path(args.out or ZOO_DIR / "tiny-dlm"), base=args.base, **_loop_settings(args))
    train(config)
    if not args.quiet:
        print(f"tiny-dlm saved to {config.out_dir}")


def _run_orthrus(args: argparse.Namespace) -> None:
    from orthrus.models import check_device
    from orthrus.train.distill import train

    check_device(args.device)
    if args.block_size < 2:
        raise ValueError(f"--block-size must be >= 2 to draft anything, got {args.block_size}.")
    recipe: dict[str, object] = {}  # flags left out keep DistillConfig's defaults (the shipped recipe)
    if args.lr is not None:
        recipe["lr"] = args.lr
    if args.position_decay is not None:
        recipe["position_decay"] = args.position_decay
    if args.loss is not None:
        recipe["loss"] = args.loss
    if args.data_sequences:
        recipe["data_sequences"] = args.data_sequences
    for flag in ("prompt_len", "continuation_len"):
        value = getattr(args, flag)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}.")
            recipe[flag] = value
    if args.extra_fraction is not None and not args.extra_prompts:
        raise ValueError("--extra-fraction needs --extra-prompts DIR.")
    if args.extra_prompts:
        recipe["extra_prompts"] = args.extra_prompts
    if args.extra_fraction is not None:
        recipe["extra_fraction"] = args.extra_fraction
    if args.init_from:  # a short continuation: warm up quickly
        recipe.update(init_from=args.init_from, warmup_frac=0.02)
    config = DistillConfig(
        out_dir=Path(args.out or ZOO_DIR / "tiny-orthrus"),
        base=args.base,
        block_size=args.block_size,
        device=args.device,
        **_loop_settings(args),
        **recipe,
    )
    train(config)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.run(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
