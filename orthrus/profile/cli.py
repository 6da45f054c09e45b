"""Command-line entry points of the profile package.

* ``python -m orthrus profile ...``: ``add_profile_parser`` / ``cmd_profile`` (hooked into orthrus.cli);
* ``python run_bench.py project RUN_DIR --profile FILE ...``: ``main_project(argv) -> int``.

Errors a user can cause print one sentence and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orthrus.errors import ArgumentParser, UserInputError
from orthrus.profile.timing import DEFAULT_BLOCKS, DEFAULT_CONTEXTS, LatencyProfile


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise UserInputError(f"{flag} must be comma-separated integers, got {text!r}.") from err
    if not values:
        raise UserInputError(f"{flag} needs at least one integer.")
    return values


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint directory, zoo name (tiny-orthrus) or qwen3-shape:0.6b|1.7b|4b|8b|14b|32b",
    )
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--contexts", default=",".join(map(str, DEFAULT_CONTEXTS)), help="KV cache lengths to time at")
    parser.add_argument("--blocks", default=",".join(map(str, DEFAULT_BLOCKS)), help="block sizes K (tokens per pass)")
    parser.add_argument("--batches", default="1", help="batch sizes (rows per pass; block_size: auto reads them)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per (context, pass, K)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per (context, pass, K) first")
    parser.add_argument(
        "--warm-in",
        type=int,
        default=None,
        help="untimed repetitions before each timed burst, every round (default: 4 on a CPU, 1 on a GPU)",
    )
    parser.add_argument(
        "--no-engine-steps",
        action="store_true",
        help="time the bare passes only (enough for an assisted draft model's profile)",
    )
    parser.add_argument(
        "--save-checkpoint",
        metavar="DIR",
        help="with a qwen3-shape model: also save its random weights as a checkpoint there, before timing "
        "(so a suite can run the very model profiled, without building it again)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--out", help="profile file (default: reports/profiles/<device>-<model>-<dtype>.json)")
    parser.add_argument("--quiet", action="store_true")


def default_profile_path(profile: LatencyProfile) -> Path:
    def slug(text: str) -> str:
        return "".join(ch if ch.isalnum() or ch in ".-" else "-" for ch in text).strip("-").lower()

    model = profile.model.get("shape", {}).get("name", "model")
    spec = str(profile.model.get("spec"))
    name = Path(spec).name if not spec.startswith("qwen3-shape:") else model
    return Path("reports/profiles") / f"{slug(profile.device['name'])}-{slug(name)}-{profile.dtype}.json"


def cmd_profile(args: argparse.Namespace) -> int:
    """Measure and write one latency profile."""
    import torch

    from orthrus.profile.shapes import is_shape_spec, load_model, save_shape_checkpoint
    from orthrus.profile.timing import measure_profile

    if args.save_checkpoint and not is_shape_spec(args.model):
        raise UserInputError(
            f"--save-checkpoint is for qwen3-shape models (random weights); {args.model} already is a checkpoint."
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    contexts, blocks = _int_list(args.contexts, "--contexts"), _int_list(args.blocks, "--blocks")
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
    say(f"building {args.model} ({args.dtype}) on {args.device}")
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.save_checkpoint:
        say(f"saving its weights to {args.save_checkpoint}")
        save_shape_checkpoint(model, args.save_checkpoint)
    profile = measure_profile(
        model,
        args.model,
        contexts,
        blocks,
        repeats=args.repeats,
        warmup=args.warmup,
        progress=say,
        engine_steps=not args.no_engine_steps,
        warm_in=args.warm_in,
        batches=_int_list(args.batches, "--batches"),
    )
    path = profile.save(args.out or default_profile_path(profile))
    print(path)
    return 0


def _run_device(run_dir: Path) -> dict[str, Any] | None:
    """The device name and threads a run measured with (from its environment.json)."""
    path = run_dir / "environment.json"
    try:
        env = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    devices = env.get("devices") or []
    name = devices[0].get("name") if devices and isinstance(devices[0], dict) else None
    threads = (env.get("threads") or {}).get("torch_intra_op")
    return {"name": name, "threads": threads, "order": _measure_order(run_dir)} if name else None


def _measure_order(run_dir: Path) -> str | None:
    """The run's measure.order (cells unless its suite.yaml says otherwise); None if unreadable."""
    from orthrus.safe_yaml import read_yaml_file

    try:
        suite = read_yaml_file(run_dir / "suite.yaml", "the run's suite")
    except UserInputError:
        return None
    measure = suite.get("measure") if isinstance(suite, dict) else None
    order = measure.get("order", "cells") if isinstance(measure, dict) else "cells"
    return str(order)


def build_project_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python run_bench.py project",
        description="Project a run's (or published) acceptance onto device latency profiles: tokens/s, speedup "
        "over AR per block size and the best block size per device.",
    )
    parser.add_argument("run_dir", nargs="?", help="run directory (reports/<suite>/<run-id>)")
    parser.add_argument(
        "--profile", action="append", required=True, metavar="FILE", help="latency profile (repeatable)"
    )
    parser.add_argument(
        "--acceptance", metavar="YAML", help="published acceptance figures (reports/profiles/README.md)"
    )
    parser.add_argument(
        "--any-shape", action="store_true", help="allow a profile of another model shape than the run's (warned)"
    )
    parser.add_argument("--out", metavar="FILE", help="also write the projection JSON here")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


def run_project(args: argparse.Namespace) -> dict[str, Any]:
    from orthrus.profile.project import (
        PROJECTION_FILE,
        acceptance_from_run,
        acceptance_from_yaml,
        project,
        projection_document,
    )

    if args.run_dir is None and args.acceptance is None:
        raise UserInputError("give a run directory or --acceptance YAML (or both) to project.")
    sources = []
    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is not None:
        sources += acceptance_from_run(run_dir)
    if args.acceptance:
        sources += acceptance_from_yaml(args.acceptance)
    profiles = {path: LatencyProfile.load(path) for path in args.profile}
    projections = project(
        sources, profiles, any_shape=args.any_shape, run_device=_run_device(run_dir) if run_dir else None
    )
    document = projection_document(projections, sources, str(run_dir) if run_dir else None)
    text = json.dumps(document, indent=1) + "\n"
    if run_dir is not None:
        (run_dir / PROJECTION_FILE).write_text(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return document


def main_project(argv: Sequence[str] | None = None) -> int:
    """``run_bench.py project``: exit 0 on success, 2 on bad input (one sentence on stderr)."""
    from orthrus.profile.report import format_projection_text

    try:
        args = build_project_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        document = run_project(args)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        for device in document["devices"]:
            for warning in device["warnings"]:
                print(f"warning: {warning}", file=sys.stderr)
        print(format_projection_text(document))
    return 0
