"""Command line: ``python -m orthrus {generate,evaluate,profile,train}``; suites run with ``python run_bench.py``.

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
    if args.warmup < 0:
        raise UserInputError(f"--warmup must be >= 0 (0 = time the first, cold call), got {args.warmup}.")


def engine_options(name: str, cls: Any, pairs: Sequence[str], block_size: int | None) -> dict[str, Any]:
    """The engine's options from ``--option KEY=VALUE`` (the value read as YAML: 8, 0.9, null, dual) and
    ``--block-size``, each checked against what the engine's class takes (``Engine.options()``) by the
    rules a suite's ``engines[i].options`` follow; a mistake is one sentence naming the option."""
    from orthrus.bench.suite.engines import MODEL_OPTIONS, validate_engine_options
    from orthrus.bench.suite.load import parse_yaml
    from orthrus.engines import engine_class, engine_names

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserInputError(f"--option {pair!r}: write it as KEY=VALUE, e.g. --option steps=8.")
        if key in MODEL_OPTIONS:
            raise UserInputError(f"--option {key}: name the draft model with --draft-model PATH.")
        if key in options:
            raise UserInputError(f"--option {key} is given twice; give each option once.")
        options[key] = parse_yaml(text, f"--option {key}") if text.strip() else None
    if block_size is not None:
        if not cls.takes_block_size:
            takers = ", ".join(repr(n) for n in engine_names() if engine_class(n).takes_block_size)
            raise UserInputError(f"--block-size applies to engines that take a block size ({takers}), not {name!r}.")
        if "block_size" in options:
            raise UserInputError("--block-size and --option block_size both set the block size; give one of them.")
        options["block_size"] = block_size
    try:
        validate_engine_options(name, options, "--option")
    except UserInputError as err:
        raise UserInputError(str(err).replace("--option.", "--option ", 1)) from None
    return options


def describe_engines() -> str:
    """The engines of the registry with the model each needs and its options and defaults (for --help)."""
    from orthrus.bench.suite.engines import MODEL_OPTIONS
    from orthrus.bench.suite.models import MODEL_KIND_WORDS
    from orthrus.engines import DEFAULT_ENGINE, engine_class, engine_names

    lines = ["engines (--engine NAME; --option KEY=VALUE sets an option, repeatable; [default]):"]
    for name in engine_names():
        cls = engine_class(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        summary = re.sub(r"\s*\(see [^)]*\)", "", summary).rstrip(".")
        lines.append(f"  {name}{' (the default)' if name == DEFAULT_ENGINE else ''}: {summary}")
        needs = MODEL_KIND_WORDS.get(cls.model_kind, cls.model_kind)
        if cls.needs_draft_model:
            needs += ", plus --draft-model (a causal LM with the same tokenizer)"
        lines.append(f"      model: {needs}")
        options = [
            f"{key} [{_default_text(param.default)}]"
            for key, param in cls.options().items()
            if key not in MODEL_OPTIONS
        ]
        lines.append(f"      options: {', '.join(options) if options else 'none'}")
    lines.append("  [null]: the engine chooses (e.g. block_size: the model's own; see the engine's docstring)")
    return "\n".join(lines)


def _default_text(value: Any) -> str:
    import inspect

    if value is inspect.Parameter.empty:
        return "required"
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def cmd_generate(args: argparse.Namespace) -> int:
    check_generate_args(args)
    from orthrus.bench.suite.models import checkpoint_kind, fresh_view_note, model_mismatch
    from orthrus.engines import DEFAULT_ENGINE, build_engine, engine_class
    from orthrus.models import ZOO_NAMES, load_causal_lm, resolve_model_path
    from orthrus.models.checkpoint import check_remote_code, load_tokenizer
    from orthrus.models.drafters import DRAFTER_KINDS, load_drafter

    name = args.engine or DEFAULT_ENGINE
    cls = engine_class(name)  # an unknown name is one sentence with a did-you-mean
    options = engine_options(name, cls, args.option, args.block_size)
    model_dir = resolve_model_path(args.model)
    where = f"--model {args.model}"
    # which model the engine needs, read from config.json before anything loads: trusting code is
    # never the fix for a checkpoint of the wrong kind
    found = checkpoint_kind(model_dir)
    problem = model_mismatch(repr(name), cls.model_kind, found, where, "--model tiny-dlm", "--model tiny-orthrus")
    if problem:
        raise UserInputError(problem)
    draft_dir = None
    if args.draft_model is not None:
        if not cls.needs_draft_model:
            takers = ", ".join(repr(n) for n in _engines_needing_a_draft())
            raise UserInputError(f"--draft-model applies to engines that take a draft model ({takers}), not {name!r}.")
        draft_dir = resolve_model_path(args.draft_model)
        draft_kind = checkpoint_kind(draft_dir)
        problem = model_mismatch(
            repr(name), "causal", draft_kind, f"--draft-model {args.draft_model}", "", "tiny-draft", False
        )
        if problem:
            raise UserInputError(problem)
    elif cls.needs_draft_model:
        option = cls.options().get("draft_model")
        default = option.default if option is not None and isinstance(option.default, str) else None
        if default not in ZOO_NAMES or args.model not in ZOO_NAMES:  # a zoo draft fits the zoo's tokenizer only
            also = f" (the default, {default}, pairs only with the zoo models)" if default in ZOO_NAMES else ""
            raise UserInputError(
                f"engine {name!r} needs a draft model with {args.model}'s tokenizer; pass --draft-model PATH{also}."
            )
        print(
            f"note: engine {name!r} drafts with the zoo's {default}; --draft-model PATH picks another.", file=sys.stderr
        )
    trust = args.trust_remote_code
    fix = "pass --trust-remote-code, only if you trust that code"
    check_remote_code(model_dir, trust, where, fix)  # before any load: transformers never gets to ask on stdin
    if draft_dir is not None:
        check_remote_code(draft_dir, trust, f"--draft-model {args.draft_model}", fix)
    note = fresh_view_note(repr(name), cls.model_kind, found, where)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    load_options = dict(
        dtype=args.dtype, device=args.device, attn_implementation=args.attn_implementation, trust_remote_code=trust
    )
    if cls.model_kind == "dlm":
        from orthrus.models.dlm import load_diffusion_lm

        model = load_diffusion_lm(args.model, **load_options)
    else:
        model = load_causal_lm(args.model, **load_options)
    if draft_dir is not None and cls.draft_model_kind in DRAFTER_KINDS:  # a DFlash / EAGLE-3 drafter
        options["draft_model"] = load_drafter(cls.draft_model_kind, args.draft_model, **load_options)
    elif draft_dir is not None:
        options["draft_model"] = load_causal_lm(args.draft_model, **load_options)
    tokenizer = None
    if (model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(model_dir, trust, where, fix)
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
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, eos_token_id=eos)
    for _ in range(args.warmup):  # one-time costs (allocations, kernels, caches) before the timed call
        engine.generate(prompt_ids, args.max_new_tokens, **sampling)
    if not args.json and tokenizer is not None:
        engine.listener = _text_streamer(tokenizer, args.show_cycles)
    result = engine.generate(prompt_ids, args.max_new_tokens, **sampling)
    counted = result.total_forward_passes > 0  # transformers' generate() runs its passes uncounted
    if args.json:
        record = result.to_dict()
        out = {
            "tokens": result.tokens,
            "forward_passes": record["forward_passes_by_kind"] if counted else None,
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
        if not counted:
            out[FIELD.tokens_per_forward] = None
        out["warmup_calls"] = args.warmup
        print(json.dumps(out))
        return 0
    if tokenizer is None:
        print(" ".join(map(str, result.tokens)))
    else:
        print()
    passes = (
        f"{result.total_forward_passes} forward passes ({result.tokens_per_forward:.2f} tokens/forward)"
        if counted
        else "forward passes not counted (transformers' generate() runs them)"
    )
    timing = (
        f"after {args.warmup} warm-up call{'s' if args.warmup != 1 else ''}" if args.warmup else "cold: the first call"
    )
    print(
        f"[{name}] {result.new_tokens} tokens, {passes}, {result.e2e_ms:.0f} ms ({timing}; one call, not a "
        "benchmark: run_bench.py measures repetitions)",
        file=sys.stderr,
    )
    return 0


def _engines_needing_a_draft() -> list[str]:
    from orthrus.engines import engine_class, engine_names

    return [n for n in engine_names() if engine_class(n).needs_draft_model]


EVALUATE_DEFAULTS = {"model": "tiny-orthrus", "block_sizes": "4,8,16,32", "prompts": 50, "max_new_tokens": 128}


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run suites/diffusion_view.yaml through the harness with the flags as overrides (or continue an
    interrupted evaluation with --resume), then print (and with --write-card, --json-out write) the
    evaluation read back from the run directory."""
    from pathlib import Path

    from orthrus.models import resolve_model_path
    from orthrus.report.outputs import check_output_dir
    from orthrus.train.evaluate import (
        DRAFTER_ENGINES,
        SUITE_FILE,
        VIEW_LABEL,
        drafter_sets,
        evaluation,
        format_report,
        suite_sets,
    )

    measuring = [
        flag
        for flag, value in (
            ("--model", args.model),
            ("--draft-model", args.draft_model),
            ("--block-sizes", args.block_sizes),
            ("--prompts", args.prompts),
            ("--max-new-tokens", args.max_new_tokens),
            ("--untrained-base", args.untrained_base),
            ("--threads", args.threads),
        )
        if value is not None
    ]
    if args.resume and measuring:
        raise UserInputError(
            f"--resume continues the evaluation with the settings it started with; drop {measuring[0]} "
            "(or start a new evaluation without --resume)."
        )
    for key, value in EVALUATE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
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
    if (args.threads or 0) < 0:
        raise UserInputError(f"--threads must be >= 0 (0 = torch's default), got {args.threads}.")
    if args.json_out and Path(args.json_out).is_dir():
        raise UserInputError(f"--json-out {args.json_out} is a folder; give the path of a file to write.")
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
    label = args.engine if drafter else VIEW_LABEL

    import orthrus.report
    from orthrus.bench.runner import RunOptions, run_suite

    resume_dir = Path(args.resume) if args.resume else None
    if resume_dir is not None:
        from orthrus.bench.resume import resumed_suite

        check_output_dir(args.resume, "--resume")
        suite, _ = resumed_suite(resume_dir)
        if suite.name != "diffusion_view":
            raise UserInputError(
                f"--resume {resume_dir} is a run of suite {suite.name!r}, not an evaluation; continue it with "
                f"python run_bench.py --resume {resume_dir}."
            )
        measured = next((e for e in suite.engines if e.engine != "ar"), None)
        label = measured.label if measured is not None else VIEW_LABEL
        # a drafter's evaluation writes the drafter's card; a view's, its model's
        carded = measured.draft_model if measured is not None and measured.draft_model else "base"
        model = suite.models["base"].path
        card = resolve_model_path(suite.models[carded].path) / "README.md"
    else:
        check_output_dir(args.out, "--out")  # a file or a read-only folder: refused before anything runs
        model = args.model
        sets = drafter_sets(args.engine, args.draft_model) if drafter else []
        suite, card = _evaluation_suite(args, blocks, label, SUITE_FILE, suite_sets, sets)
    resume_command = "python -m orthrus evaluate" + (" --write-card" if args.write_card else "") + " --resume"
    options = RunOptions(
        out_root=Path(args.out),
        resume_dir=resume_dir,
        quiet=args.quiet,
        argv=list(sys.argv),
        resume_command=resume_command,
    )
    outcome = run_suite(suite, options)
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

        head = card.read_text().split(EVALUATION_HEADING)[0] if card.is_file() else f"# {model}\n\n"
        command = _started_with(outcome.run_dir)
        card.write_text(head + f"{EVALUATION_HEADING}\nCommand: `{command}`\n\n{text}\n")
        (card.parent / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _evaluation_suite(
    args: argparse.Namespace, blocks: list[int], view: str, suite_file: Any, suite_sets: Any, drafter: list[str]
) -> Any:
    """The evaluation suite for the flags, and the model card it writes; the model and the untrained
    base are checked to be of the kind evaluate measures before anything runs. ``drafter`` holds the
    overrides that measure a DFlash or EAGLE-3 drafter in the view's place (its card is written then)."""
    from orthrus.bench.suite.load import read_suite_file
    from orthrus.bench.suite.models import checkpoint_kind, model_mismatch
    from orthrus.bench.suite.validate import load_suite
    from orthrus.models import resolve_model_path

    model_dir = resolve_model_path(args.model)  # a missing model is one sentence before anything runs
    if drafter:  # the drafter and its target are checked against each other at planning
        card = resolve_model_path(args.draft_model) / "README.md"
    else:  # evaluate measures the diffusion view of a causal checkpoint
        found = checkpoint_kind(model_dir)
        problem = model_mismatch(repr(view), "dual_view", found, f"--model {args.model}", "", "tiny-orthrus", False)
        if problem:
            raise UserInputError(problem)
        card = model_dir / "README.md"
    if args.untrained_base:
        found = checkpoint_kind(resolve_model_path(args.untrained_base))
        if found != "causal" and found is not None:
            what = "a diffusion view of its own" if found == "dual_view" else "no causal LM (a masked-diffusion LM)"
            raise UserInputError(
                f"--untrained-base {args.untrained_base} has {what}, so no fresh, untrained view would be measured; "
                "give the plain Qwen3 checkpoint the view was trained on (e.g. tiny-base)."
            )
    raw, _ = read_suite_file(suite_file)
    # the untrained view is the suite's base checkpoint with a copied view: it only fits the suite's own
    # model, or a model whose base --untrained-base names
    same_model = args.model == raw["models"]["base"]["path"]
    engines = None if ((same_model or args.untrained_base) and not drafter) else [view, "ar"]
    sets = suite_sets(
        model=args.model,
        block_sizes=blocks,
        prompts=args.prompts,
        max_new_tokens=args.max_new_tokens,
        threads=args.threads or None,
        untrained_base=args.untrained_base,
    )
    return load_suite(suite_file, sets + drafter, engines=engines), card


def _started_with(run_dir: Any) -> str:
    """The command that started a run (its first session's argv in run.json), as a user would type it."""
    import shlex
    from pathlib import Path

    from orthrus.results.rundir import RUN_INFO_FILE, read_json

    info = read_json(Path(run_dir) / RUN_INFO_FILE) or {}
    sessions = info.get("sessions") if isinstance(info, dict) else None
    argv = sessions[0].get("argv") if sessions and isinstance(sessions[0], dict) else None
    argv = argv if isinstance(argv, list) and argv else list(sys.argv)
    program = "-m orthrus" if Path(str(argv[0])).name == "__main__.py" else str(argv[0])
    return " ".join(["python", *program.split(), *map(shlex.quote, map(str, argv[1:]))])


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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs as written (the engine list), and an option's default in its help when it has one
    (not for flags, nor where the help already says what happens without it)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m orthrus",
        description=__doc__.splitlines()[0],
        epilog="Benchmark suites: python run_bench.py SUITE (see python run_bench.py --help).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate",
        help="decode one prompt with one engine",
        description="Decode one prompt with one engine and print the text (or --json) and what it took.",
        epilog=describe_engines(),
        formatter_class=HelpFormatter,
    )
    gen.add_argument("--model", required=True, help="checkpoint directory or zoo name (e.g. tiny-orthrus)")
    from orthrus.engines import DEFAULT_ENGINE

    gen.add_argument("--engine", help=f"a registered engine name, listed below (default: {DEFAULT_ENGINE})")
    gen.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an engine option (listed below with its default), value read as YAML; repeatable",
    )
    gen.add_argument(
        "--draft-model",
        metavar="PATH",
        help="the draft model of an engine that takes one (a causal LM with the model's tokenizer; "
        "default for the zoo models: tiny-draft)",
    )
    gen.add_argument(
        "--block-size", type=int, help="for engines that take one (default: the model's own); = --option block_size=K"
    )
    gen.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1 = off)")
    gen.add_argument("--seed", type=int, help="seed of the sampler (default: 0 when sampling)")
    gen.add_argument("--eos-token-id", type=int, help="stop at this token (default: the tokenizer's EOS)")
    gen.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    gen.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    gen.add_argument("--attn-implementation", default="sdpa", help="attention: sdpa or eager")
    gen.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    gen.add_argument(
        "--warmup",
        type=int,
        default=1,
        metavar="N",
        help="untimed calls before the timed one (0: time the first, cold call, start-up costs included)",
    )
    gen.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the checkpoint's own code (auto_map in its config or tokenizer files) to run; off by default",
    )
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (tokenized with the model's tokenizer)")
    prompt.add_argument("--prompt-ids", help="prompt token ids, comma-separated")
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    gen.add_argument("--show-cycles", action="store_true", help="colour each committed block")
    gen.set_defaults(func=cmd_generate)

    ev = sub.add_parser(
        "evaluate",
        help="measure a diffusion view or a drafter: acceptance, TPF, speedup vs the cost model",
        description="Run suites/diffusion_view.yaml on a model through the harness and print its evaluation.",
        formatter_class=HelpFormatter,
    )
    ev.add_argument("--model", help="the Orthrus checkpoint (directory or zoo name), or a drafter's target (default: tiny-orthrus)")
    ev.add_argument(
        "--engine",
        choices=("orthrus", "dflash", "eagle3"),
        default="orthrus",
        help="what drafts: the model's diffusion view (default) or a DFlash / EAGLE-3 drafter (--draft-model)",
    )
    ev.add_argument("--draft-model", help="the drafter directory or zoo name, with --engine dflash or eagle3")
    ev.add_argument("--block-sizes", help="comma-separated block sizes K >= 2 (default: 4,8,16,32)")
    ev.add_argument("--prompts", type=int, help="prompts per source, held-out text and code (default: 50)")
    ev.add_argument("--max-new-tokens", type=int, help="tokens generated per prompt (default: 128)")
    ev.add_argument("--threads", type=int, help="torch CPU threads (default: 0, torch's default)")
    ev.add_argument("--json-out", help="also write the evaluation as JSON to this file")
    ev.add_argument("--out", default="reports", help="reports root; the run lands in OUT/diffusion_view/<run-id>/")
    ev.add_argument(
        "--untrained-base",
        help="the plain checkpoint the view was trained on, measured with a fresh (copied) view at block 16 "
        "(default: the suite's, for the suite's own model; other models skip it)",
    )
    ev.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted evaluation (its own settings), then print it (and --write-card, --json-out)",
    )
    ev.add_argument("--write-card", action="store_true", help="replace the Evaluation section of the model's README.md (the drafter's, with --engine dflash or eagle3)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar and no table")
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
