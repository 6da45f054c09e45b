"""`python -m orthrus train ...`: build the tokenizer and the tiny models that ship in the zoo.

Each target is one `add_parser` call plus one function, so other targets (the Orthrus diffusion
head, the diffusion-LM baseline, `all`) can be added next to these.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from orthrus.errors import ArgumentParser
from orthrus.models import DEFAULT_BLOCK_SIZE
from orthrus.models.zoo_index import TOKENIZER_DIR, ZOO_DIR
from orthrus.train.dflash import DFLASH_LOSSES, DFlashTrainConfig
from orthrus.train.distill import LOSSES, DistillConfig
from orthrus.train.eagle3 import CHAIN_TOKENS, Eagle3TrainConfig


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
    if args.budget_clock != "wall":
        settings["budget_clock"] = args.budget_clock
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
    parser.add_argument(
        "--budget-clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what --max-minutes counts: wall-clock time (default) or this process's CPU time (equal budgets for "
        "runs that share a machine)",
    )
    parser.add_argument("--tokenizer", default=str(TOKENIZER_DIR), help="tokenizer directory")


def _self_distillation_args(parser: argparse.ArgumentParser, config: type) -> None:
    """The flags of the trainers on a base's own text (``train orthrus``, ``dflash``, ``eagle3``): the
    base, the data recipe (the same flags give the three the same text) and the learning rate."""
    parser.add_argument("--base", default="tiny-base", help="Qwen3 checkpoint directory or zoo name")
    parser.add_argument(
        "--data-sequences", type=int, default=None, help=f"self-distillation sequences (default {config.data_sequences})"
    )
    parser.add_argument(
        "--prompt-len",
        type=int,
        default=None,
        help=f"corpus tokens before each continuation (default {config.prompt_len}); anchors start at most "
        "64 tokens before its end (never in its first half)",
    )
    parser.add_argument(
        "--continuation-len",
        type=int,
        default=None,
        help=f"greedy tokens the base writes after each prompt (default {config.continuation_len})",
    )
    parser.add_argument(
        "--extra-prompts",
        default=None,
        metavar="DIR",
        help="also take prompts from the Python files under DIR (code outside the corpus; never the "
        "evaluation's own code, this package)",
    )
    parser.add_argument(
        "--extra-fraction",
        type=float,
        default=None,
        help=f"share of the sequences whose prompt comes from --extra-prompts (default {config.extra_fraction:g})",
    )
    parser.add_argument(
        "--data-cache",
        default=None,
        metavar="DIR",
        help="keep the generated text in DIR, one file per data recipe, and reuse it: runs of the three drafters "
        "with the same data flags then train on the very same text (default: the run's checkpoint folder)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {config.lr:g})")


def _data_recipe(args: argparse.Namespace) -> dict[str, object]:
    """The self-distillation flags given (checked); those left out keep the trainer's defaults."""
    from orthrus.models import check_device

    check_device(args.device)
    recipe: dict[str, object] = {"device": args.device}
    if args.lr is not None:
        if args.lr <= 0:
            raise ValueError(f"--lr must be positive, got {args.lr}.")
        recipe["lr"] = args.lr
    if args.data_sequences is not None:
        if args.data_sequences < 1:
            raise ValueError(f"--data-sequences must be >= 1, got {args.data_sequences}.")
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
    if args.data_cache:
        if Path(args.data_cache).exists() and not Path(args.data_cache).is_dir():
            raise ValueError(f"--data-cache {args.data_cache} is a file; give a folder.")
        recipe["data_cache"] = args.data_cache
    return recipe


def _int_list(text: str | None, flag: str, example: str = "0,2,4") -> tuple[int, ...] | None:
    """'0,2,4' -> (0, 2, 4); None stays None; anything else is one sentence."""
    if text is None:
        return None
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values:
        raise ValueError(f"{flag} must be comma-separated integers, e.g. {example}; got {text!r}.")
    return values


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
    _self_distillation_args(view, DistillConfig)
    view.add_argument(
        "--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="the view's default block for inference"
    )
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

    dflash = targets.add_parser(
        "dflash", help="the tiny-dflash DFlash drafter for a Qwen3 target (block diffusion on its own text)"
    )
    _lm_args(dflash, default_steps=500)
    _self_distillation_args(dflash, DFlashTrainConfig)
    dflash.add_argument("--layers", type=int, default=None, help=f"drafter layers (default {DFlashTrainConfig.layers})")
    dflash.add_argument(
        "--target-layers",
        default=None,
        metavar="I,J,...",
        help="the target layers whose outputs it reads (default "
        f"{','.join(map(str, DFlashTrainConfig.target_layer_ids))})",
    )
    dflash.add_argument(
        "--block-size",
        type=int,
        default=None,
        help=f"the block the engine drafts by default, saved in its config (default {DFlashTrainConfig.block_size})",
    )
    dflash.add_argument(
        "--train-block-sizes",
        default=None,
        metavar="K,K,...",
        help=f"block sizes, one per step, cycling (default {','.join(map(str, DFlashTrainConfig.train_block_sizes))})",
    )
    dflash.add_argument(
        "--anchors", type=int, default=None, help=f"anchors per sequence (default {DFlashTrainConfig.anchors_per_seq})"
    )
    dflash.add_argument(
        "--loss",
        choices=DFLASH_LOSSES,
        default=None,
        help="ce: cross-entropy to the target's greedy tokens (default, DFlash's); kl: forward KL to its distribution",
    )
    dflash.add_argument(
        "--decay-gamma",
        type=float,
        default=None,
        help=f"block position j weighs exp(-(j-1)/gamma) (default {DFlashTrainConfig.decay_gamma:g}; 0: all equal)",
    )
    dflash.set_defaults(run=_run_dflash)

    eagle3 = targets.add_parser(
        "eagle3", help="the tiny-eagle3 EAGLE-3 drafter for a Qwen3 target (training-time test on its own text)"
    )
    _lm_args(eagle3, default_steps=500)
    _self_distillation_args(eagle3, Eagle3TrainConfig)
    eagle3.add_argument(
        "--aux-layers",
        default=None,
        metavar="I,J,K",
        help="the 3 target layers whose inputs it fuses (default "
        f"{','.join(map(str, Eagle3TrainConfig.aux_layer_ids))})",
    )
    eagle3.add_argument(
        "--draft-vocab",
        type=int,
        default=None,
        help=f"draft vocabulary: the most frequent target tokens of the data (default {Eagle3TrainConfig.draft_vocab})",
    )
    eagle3.add_argument(
        "--ttt-steps",
        type=int,
        default=None,
        help=f"draft steps unrolled by the training-time test (default {Eagle3TrainConfig.ttt_steps})",
    )
    eagle3.add_argument(
        "--step-decay",
        type=float,
        default=None,
        help=f"loss weight of step k: decay^k (default {Eagle3TrainConfig.step_decay:g})",
    )
    eagle3.add_argument(
        "--chain-tokens",
        choices=CHAIN_TOKENS,
        default=None,
        help="the token a chain step takes: the text's (default; the target's greedy token) or the drafter's own argmax",
    )
    eagle3.set_defaults(run=_run_eagle3)

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
ZOO_BUDGETS_MIN = {"draft": 10.0, "base": 28.0, "orthrus": 55.0, "dlm": 15.0, "dflash": 25.0, "eagle3": 25.0}
# flags beyond the budget: the drafters' budgets are CPU minutes of one thread (their cards), and both
# train on one copy of the base's text (kept with tiny-dflash's checkpoint, which git ignores)
ZOO_FLAGS = {
    target: ["--threads", "1", "--budget-clock", "cpu", "--data-cache", str(ZOO_DIR / "tiny-dflash" / "checkpoint")]
    for target in ("dflash", "eagle3")
}


def _run_all(args: argparse.Namespace) -> None:
    """tokenizer -> draft -> base -> orthrus, dlm, dflash, eagle3 (each needs base), each into the zoo."""
    if args.out is not None:
        raise ValueError("train all writes the package zoo; train targets one by one to write elsewhere.")
    parser = build_parser()
    common = ["--seed", str(args.seed)] + (["--quiet"] if args.quiet else [])
    threads = ["--threads", str(args.threads)] if args.threads else []
    tokenizer_args = parser.parse_args(["tokenizer", *common])
    tokenizer_args.run(tokenizer_args)
    for target in ("draft", "base", "orthrus", "dlm", "dflash", "eagle3"):
        minutes = str(ZOO_BUDGETS_MIN[target] * args.scale)
        flags = ZOO_FLAGS.get(target) or threads
        target_args = parser.parse_args([target, "--max-minutes", minutes, *common, *flags])
        target_args.run(target_args)


def _run_dlm(args: argparse.Namespace) -> None:
    from orthrus.train.dlm import DLMConfig, train

    config = DLMConfig(out_dir=Path(args.out or ZOO_DIR / "tiny-dlm"), base=args.base, **_loop_settings(args))
    train(config)
    if not args.quiet:
        print(f"tiny-dlm saved to {config.out_dir}")


def _run_orthrus(args: argparse.Namespace) -> None:
    from orthrus.train.distill import train

    if args.block_size < 2:
        raise ValueError(f"--block-size must be >= 2 to draft anything, got {args.block_size}.")
    recipe = _data_recipe(args)  # flags left out keep DistillConfig's defaults (the shipped recipe)
    if args.position_decay is not None:
        recipe["position_decay"] = args.position_decay
    if args.loss is not None:
        recipe["loss"] = args.loss
    if args.init_from:  # a short continuation: warm up quickly
        recipe.update(init_from=args.init_from, warmup_frac=0.02)
    config = DistillConfig(
        out_dir=Path(args.out or ZOO_DIR / "tiny-orthrus"),
        base=args.base,
        block_size=args.block_size,
        **_loop_settings(args),
        **recipe,
    )
    train(config)


def _run_dflash(args: argparse.Namespace) -> None:
    _run_drafter(
        "dflash",
        args,
        {
            "layers": args.layers,
            "target_layer_ids": _int_list(args.target_layers, "--target-layers"),
            "block_size": args.block_size,
            "train_block_sizes": _int_list(args.train_block_sizes, "--train-block-sizes", "8,16"),
            "anchors_per_seq": args.anchors,
            "loss": args.loss,
            "decay_gamma": args.decay_gamma,
        },
    )


def _run_eagle3(args: argparse.Namespace) -> None:
    _run_drafter(
        "eagle3",
        args,
        {
            "aux_layer_ids": _int_list(args.aux_layers, "--aux-layers", "1,2,4"),
            "draft_vocab": args.draft_vocab,
            "ttt_steps": args.ttt_steps,
            "step_decay": args.step_decay,
            "chain_tokens": args.chain_tokens,
        },
    )


def _run_drafter(kind: str, args: argparse.Namespace, options: dict[str, Any]) -> None:
    """Train a DFlash or EAGLE-3 drafter: the shared data and loop flags, then the kind's own
    ``options`` (flags left out keep its config's defaults: the zoo drafter's recipe)."""
    if kind == "dflash":
        from orthrus.train.dflash import train
    else:
        from orthrus.train.eagle3 import train

    recipe = _data_recipe(args)
    recipe.update({key: value for key, value in options.items() if value is not None})
    config_class = DFlashTrainConfig if kind == "dflash" else Eagle3TrainConfig
    config = config_class(out_dir=Path(args.out or ZOO_DIR / f"tiny-{kind}"), base=args.base, **_loop_settings(args), **recipe)
    train(config)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.run(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
