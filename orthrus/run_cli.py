"""``python run_bench.py SUITE [options]`` and its subcommands: the composition root of a benchmark run.

It wires the harness (``orthrus.bench``: load the suite, plan, run, merge shards) to the reports
(``orthrus.report``: gates, report.html, compare, baselines), which know nothing of each other.
A run is: validate (suite, gate rules, baseline) -> run -> print the summary -> gates -> render
the report once.

Exit codes: 0 everything measured (and the gates pass), 1 some measurement or cell failed or a
gate found a regression, 2 bad input (one sentence on stderr, nothing written), 130 interrupted
(resume with --resume).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Only light modules here: torch, transformers and the harness are imported inside the commands, so
# that main() is running (and catches Ctrl-C as one line, exit 130) from the first moment of start-up.
import orthrus.report
from orthrus.errors import ArgumentParser, UserInputError, remembering_interrupts
from orthrus.report.commands import SUBCOMMANDS as REPORT_SUBCOMMANDS
from orthrus.report.commands import add_skip_damaged, check_gate_inputs
from orthrus.report.outputs import check_output_dir, check_output_file, write_error
from orthrus.results.rundir import RESULTS_FILE, read_records, skipping_damaged


def build_run_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="run_bench.py",
        description="Run a benchmark suite: python run_bench.py suites/long_context.yaml",
        epilog="subcommands: " + ", ".join(["merge DIR...", "project RUN_DIR --profile FILE", *REPORT_SUBCOMMANDS]),
    )
    parser.add_argument("suite", nargs="?", help="suite YAML file (optional with --resume: the run's own suite.yaml)")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a suite key, value read as YAML (e.g. --set sweep.context_lengths=[512,1024]); repeatable",
    )
    parser.add_argument("--engines", help="comma-separated engine labels to measure (the others are skipped)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small slice: 1 repetition, one full batch of the largest batch size per source (1 prompt without "
        "batching; one per category for a per-category source), plus the suite's quick: overrides",
    )
    parser.add_argument("--device", help="run every model on this device (cpu, cuda, cuda:N)")
    parser.add_argument(
        "--out", default="reports", help="reports root; runs land in OUT/<suite>/<run-id>/ (default: reports)"
    )
    parser.add_argument("--run-id", help="name of the run directory (default: the start time)")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate, print the expanded matrix and the work; run and write nothing"
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run: skip every (cell, prompt, repeat) already recorded"
    )
    add_skip_damaged(parser)  # with --resume: measure again what a damaged line of results.jsonl held
    parser.add_argument(
        "--shard", metavar="I/N", help="run slice I (0-based) of N of the matrix; merge the slices with 'merge'"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no table (for CI)")
    # where the cells are measured (orthrus.bench.executors)
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: workers on a Ray cluster, cells grouped by model "
        '(pip install -e ".[ray]")',
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="with --executor ray: auto (the cluster this machine belongs to), HOST:PORT or ray://HOST:PORT "
        "(default: a local Ray instance on this machine)",
    )
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        metavar="N",
        help="with --executor ray: GPUs each worker asks for (default: 1 on a cluster with GPUs when a model "
        "runs on cuda, else 0 and one CPU)",
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="with --executor ray: at most N workers (default: the cluster's slots)"
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=2,
        metavar="N",
        help="with --executor ray: retry the cell of a worker that died on another worker N times (default 2)",
    )
    # performance gates (orthrus.report), checked after the run: exit 1 on a regression
    parser.add_argument(
        "--gate", action="append", default=[], metavar="FILE", help="gate rules file (default: the suite's gates:)"
    )
    parser.add_argument("--baseline", metavar="FILE", help="baseline for the gates (made by 'baseline save')")
    parser.add_argument("--junit", metavar="FILE", help="also write the gate results as JUnit XML")
    return parser


def check_run_id(run_id: str) -> None:
    """A --run-id names one folder inside OUT/<suite>/: no path separator, no '..', not absolute."""
    if (
        not run_id.strip()
        or run_id in (".", "..")
        or "/" in run_id
        or "\\" in run_id
        or "\0" in run_id
        or Path(run_id).is_absolute()
    ):
        raise UserInputError(
            f"--run-id {run_id!r} must be a plain folder name (no '/', '\\' or '..'); "
            "the run always lands in OUT/<suite>/<run-id>, so pick the folder with --out."
        )


def make_run_executor(args: argparse.Namespace) -> Any:
    """The executor the flags ask for; Ray flags without --executor ray, --workers 0 or a missing Ray
    are one sentence (exit 2) before anything is loaded or written."""
    from orthrus.bench.executors import RayOptions, make_executor

    ray_flags = [
        flag
        for flag, value in (
            ("--ray-address", args.ray_address),
            ("--gpus-per-worker", args.gpus_per_worker),
            ("--workers", args.workers),
        )
        if value is not None
    ]
    if args.executor != "ray":
        if ray_flags:
            raise UserInputError(f"{ray_flags[0]} applies to --executor ray only; add --executor ray or drop it.")
        return None
    if args.workers is not None and args.workers < 1:
        raise UserInputError(f"--workers {args.workers}: give at least 1 worker.")
    if args.max_retries < 0:
        raise UserInputError(f"--max-retries {args.max_retries}: give 0 or more retries.")
    if args.gpus_per_worker is not None and not 0 <= args.gpus_per_worker < float("inf"):
        raise UserInputError(f"--gpus-per-worker {args.gpus_per_worker:g}: give 0 or more GPUs.")
    options = RayOptions(args.ray_address, args.gpus_per_worker, args.workers, args.max_retries)
    return make_executor("ray", options)


def cmd_run(argv: list[str]) -> int:
    args = build_run_parser().parse_args(argv)
    if args.skip_damaged and not args.resume:
        raise UserInputError("--skip-damaged applies to --resume RUN_DIR (a new run has no results to read yet).")
    with skipping_damaged(args.skip_damaged):
        return _run(args, argv)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from orthrus.bench.planning import describe_plan, plan
    from orthrus.bench.prompts import PromptFactory
    from orthrus.bench.resume import resumed_suite
    from orthrus.bench.runner import RunOptions, run_suite
    from orthrus.bench.schedule import parse_shard
    from orthrus.bench.suite.validate import load_suite
    from orthrus.bench.summary import print_summary

    executor = make_run_executor(args)
    if args.run_id is not None:
        check_run_id(args.run_id)
    if not args.dry_run:  # a file, a read-only folder: refused before anything is measured
        if args.resume:
            check_output_dir(args.resume, "--resume")
        else:
            check_output_dir(args.out, "--out")
        if args.junit:
            check_output_file(args.junit, "--junit", "gates.xml")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()] if args.engines else None
    shard = parse_shard(args.shard) if args.shard else None
    resume_dir = Path(args.resume) if args.resume else None
    if resume_dir is not None:
        read_records(resume_dir / RESULTS_FILE)  # a damaged line is refused (or noted) before anything loads
        suite, shard = resumed_suite(resume_dir, args.suite, args.sets, args.quick, args.device, engines, shard)
    elif not args.suite:
        raise UserInputError("give a suite file, e.g. python run_bench.py suites/long_context.yaml.")
    else:
        suite = load_suite(args.suite, args.sets, args.quick, args.device, engines)
    gated = bool(suite.gates or args.gate)
    if gated:  # the rules parse and the baseline is there before anything runs
        check_gate_inputs(suite.gates, args.gate, args.baseline, cell_keys=suite.cells[0].params, suite_name=suite.name)
    if args.dry_run:
        print(describe_plan(suite, plan(suite, shard, PromptFactory())))
        print("dry run: nothing was run or written.")
        return 0
    options = RunOptions(
        out_root=Path(args.out),
        run_id=args.run_id,
        resume_dir=resume_dir,
        shard=shard,
        quiet=args.quiet,
        argv=["run_bench.py", *argv],
        executor=executor,
    )
    outcome = run_suite(suite, options)
    if outcome.code == 130:
        return 130
    print_summary(outcome.run_dir, outcome.frame, outcome.records, outcome.info, args.quiet)
    code = outcome.code
    if gated:
        gate_code = orthrus.report.run_gates(outcome.run_dir, args.gate, args.baseline, args.junit, args.quiet)
        code = 2 if gate_code == 2 else max(code, gate_code)
    _render(outcome.run_dir)
    return code


def cmd_merge(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="run_bench.py merge",
        description="Merge the shard run directories of one run (--shard I/N) into one run directory.",
        epilog="The inputs must cover the suite's cells exactly once and have finished; otherwise merge names "
        "the shards and cells missing, given twice or overlapping, and writes nothing. The merged run is gated "
        "as a whole run is (the suite's gates, or --gate). Exit codes: 0 merged, every measurement ok and the "
        "gates pass; 1 merged, but some measurements failed, a gate found a regression, or --partial merged an "
        "incomplete set; 2 refused (missing, duplicated, overlapping or unfinished inputs, not run directories, "
        "bad gate input).",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="DIR")
    parser.add_argument("--out", help="merged run directory (default: <first shard's run id>-merged beside it)")
    parser.add_argument(
        "--partial",
        action="store_true",
        help="merge incomplete or overlapping inputs anyway (each measurement once); run.json says status partial",
    )
    parser.add_argument("--quiet", action="store_true")
    add_skip_damaged(parser)
    parser.add_argument(
        "--gate", action="append", default=[], metavar="FILE", help="gate rules file (default: the suite's gates:)"
    )
    parser.add_argument("--baseline", metavar="FILE", help="baseline for the gates (made by 'baseline save')")
    parser.add_argument("--junit", metavar="FILE", help="also write the gate results as JUnit XML")
    args = parser.parse_args(argv)
    with skipping_damaged(args.skip_damaged):
        return _merge(args)


def _merge(args: argparse.Namespace) -> int:
    from orthrus.bench.merge import merge_runs
    from orthrus.bench.summary import print_summary
    from orthrus.results.rundir import RUN_INFO_FILE, read_json
    from orthrus.results.summary import summarize

    if args.out:  # a file, or a folder that cannot be written: refused before anything is merged
        check_output_dir(args.out, "merge --out")
    if args.junit:
        check_output_file(args.junit, "--junit", "gates.xml")
    gated = _merged_suite_gates(Path(args.run_dirs[0]), args.gate, args.baseline)
    out_dir, records = merge_runs(
        [Path(d) for d in args.run_dirs], Path(args.out) if args.out else None, partial=args.partial
    )
    ok = sum(1 for r in records if r.get("status") == "ok")
    info = {"ok": ok, "failed": len(records) - ok, "harness_overhead": {}}
    print_summary(out_dir, summarize(records), records, info, args.quiet)
    problems = read_json(out_dir / RUN_INFO_FILE).get("problems") or []
    if problems:
        print(f"warning: {out_dir} is a partial run: {'; '.join(problems)}.", file=sys.stderr)
    code = 1 if info["failed"] or problems else 0
    if gated and problems:
        print("note: the gates were not checked: a partial run cannot pass them.", file=sys.stderr)
    elif gated:  # the whole run's gates, as after an unsharded run (each shard saw only its own cells)
        gate_code = orthrus.report.run_gates(out_dir, args.gate, args.baseline, args.junit, args.quiet)
        code = 2 if gate_code == 2 else max(code, gate_code)
    _render(out_dir)
    return code


def _merged_suite_gates(run_dir: Path, gate_files: list[str], baseline: str | None) -> bool:
    """Whether a merge is gated (its suite has gates, or --gate was given); the rules and the baseline
    are checked before anything is merged."""
    from orthrus.bench.suite.load import read_suite_file
    from orthrus.report.gates import gates_config

    suite_file = run_dir / "suite.yaml"
    if not suite_file.is_file():
        return bool(gate_files)  # merge_runs names the problem with the input
    raw, _ = read_suite_file(suite_file)
    rules, _ = gates_config(raw.get("gates"), "gates")
    if not rules and not gate_files:
        return False
    check_gate_inputs(raw.get("gates"), gate_files, baseline, suite_name=str(raw.get("name") or run_dir.parent.name))
    return True


def _render(run_dir: Path) -> Path | None:
    """report.html for the run, once; a failure to render leaves the results (re-render with 'report')."""
    from orthrus.bench.loading import one_line

    try:
        path = Path(orthrus.report.render_run(run_dir))
    except Exception as err:  # noqa: BLE001 - the results are safe on disk; the report can be re-rendered
        print(
            f"warning: the report could not be rendered ({one_line(err)}); the results are in {run_dir}.",
            file=sys.stderr,
        )
        return None
    print(f"report: {path}")
    return path


def cmd_project(argv: list[str]) -> int:
    """``project RUN_DIR --profile FILE ...``: projected speedups on other devices (orthrus.profile)."""
    from orthrus.profile.cli import main_project

    return main_project(argv)


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "run": cmd_run,
    "merge": cmd_merge,
    "project": cmd_project,
    **REPORT_SUBCOMMANDS,  # report, compare, gate, baseline
}


INTERRUPTED = "interrupted; what was measured before is kept (a started run continues with --resume)."


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return remembering_interrupts(lambda: _main(argv), INTERRUPTED)


def _main(argv: list[str]) -> int:
    try:
        _quiet_libraries()
        if argv and argv[0] in SUBCOMMANDS and (argv[0] in ("run", "merge") or not Path(argv[0]).exists()):
            return int(SUBCOMMANDS[argv[0]](argv[1:]) or 0)
        return cmd_run(argv)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # start-up (imports, suite, prompts) or the report; the runner has its own
        print(f"\n{INTERRUPTED}", file=sys.stderr)
        return 130
    except OSError as err:  # a write the checks could not foresee (a disk filling up, a race)
        print(f"error: {write_error(err)}", file=sys.stderr)
        return 2


def _quiet_libraries() -> None:
    try:
        from transformers.utils import logging

        logging.set_verbosity_error()
    except ImportError:
        pass
