"""``python run_bench.py SUITE [options]`` and its subcommands (``merge DIR...``; more can be added).

Exit codes: 0 everything measured, 1 some measurement or cell failed (see the failed records),
2 bad input (one sentence on stderr, nothing written), 130 interrupted (resume with --resume).

Subcommands live in ``SUBCOMMANDS`` (name -> function of the remaining arguments returning the
exit code). ``orthrus.report`` can contribute its own (report, compare, baseline, gate) by
exposing a ``SUBCOMMANDS`` mapping of the same shape; they are merged in at start-up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from orthrus.errors import UserInputError

RESERVED = ("report", "compare", "baseline", "gate")  # provided by orthrus.report


class _Parser(argparse.ArgumentParser):
    """argparse with one-sentence errors and exit code 2 through UserInputError."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserInputError(f"{message} (see {self.prog} --help).")


def build_run_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="run_bench.py",
        description="Run a benchmark suite: python run_bench.py suites/long_context.yaml",
        epilog="subcommands: " + ", ".join(["merge DIR...", *RESERVED]),
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
        help="a small slice: 1 repetition, 1 prompt per source, plus the suite's quick: overrides",
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
    parser.add_argument(
        "--shard", metavar="I/N", help="run slice I (0-based) of N of the matrix; merge the slices with 'merge'"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no table (for CI)")
    # performance gates (orthrus.report.gates), checked after the run: exit 1 on a regression
    parser.add_argument(
        "--gate", action="append", default=[], metavar="FILE", help="gate rules file (default: the suite's gates:)"
    )
    parser.add_argument("--baseline", metavar="FILE", help="baseline for the gates (made by 'baseline save')")
    parser.add_argument("--junit", metavar="FILE", help="also write the gate results as JUnit XML")
    return parser


def cmd_run(argv: list[str]) -> int:
    from orthrus.bench.matrix import parse_shard
    from orthrus.bench.runner import PromptFactory, Runner, RunOptions, describe_plan, plan
    from orthrus.bench.schema import load_suite, parse_yaml, validate_suite

    args = build_run_parser().parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()] if args.engines else None
    shard_spec = parse_shard(args.shard) if args.shard else None
    resume_dir = None
    if args.resume:
        resume_dir = Path(args.resume)
        stored_file = resume_dir / "suite.yaml"
        if not stored_file.is_file():
            raise UserInputError(
                f"--resume {args.resume}: not a run directory (no suite.yaml); pass reports/<suite>/<run-id>."
            )
        stored = parse_yaml(stored_file.read_text(), str(stored_file))
        stored_suite = validate_suite(stored, _stored_suite_path(resume_dir))
        if args.suite or args.sets or engines or args.quick or args.device:
            suite = load_suite(
                args.suite, args.sets, args.quick, args.device, engines, raw=None if args.suite else stored
            )
            if suite.sha256 != stored_suite.sha256:
                raise UserInputError(
                    f"--resume {args.resume}: the suite and options given differ from the ones this run started with; "
                    "resume with the same ones (or none) or start a new run."
                )
        else:
            suite = stored_suite
        stored_shard = _stored_shard(resume_dir)
        if shard_spec is not None and stored_shard is not None and shard_spec != stored_shard:
            raise UserInputError(
                f"--resume {args.resume}: this run is shard {stored_shard[0]}/{stored_shard[1]}, not {args.shard}."
            )
        shard_spec = shard_spec or stored_shard
    else:
        if not args.suite:
            raise UserInputError("give a suite file, e.g. python run_bench.py suites/long_context.yaml.")
        if args.suite in RESERVED:
            raise UserInputError(
                f"the {args.suite!r} subcommand is not available in this installation (it comes with orthrus.report)."
            )
        suite = load_suite(args.suite, args.sets, args.quick, args.device, engines)

    gated = bool(suite.gates or args.gate)
    if gated:
        from orthrus.report.commands import check_gate_inputs

        check_gate_inputs(suite.gates, args.gate, args.baseline)
    if args.dry_run:
        planned = plan(suite, shard_spec, PromptFactory())
        print(describe_plan(suite, planned))
        print("dry run: nothing was run or written.")
        return 0
    options = RunOptions(
        out_root=Path(args.out),
        run_id=args.run_id,
        resume_dir=resume_dir,
        shard=shard_spec,
        quiet=args.quiet,
        argv=["run_bench.py", *argv],
    )
    runner = Runner(suite, options)
    code = runner.run()
    if gated and code in (0, 1) and runner.run_dir is not None:
        from orthrus.report.commands import gate_after_run

        code = gate_after_run(str(runner.run_dir), args.gate, args.baseline, args.junit, args.quiet, code)
    return code


def _stored_suite_path(run_dir: Path) -> Path | None:
    import json

    info = run_dir / "run.json"
    if info.is_file():
        try:
            path = json.loads(info.read_text()).get("suite_path")
        except ValueError:
            return None
        return Path(path) if path else None
    return None


def _stored_shard(run_dir: Path) -> tuple[int, int] | None:
    import json

    info = run_dir / "run.json"
    if info.is_file():
        try:
            shard = json.loads(info.read_text()).get("shard")
        except ValueError:
            return None
        if shard:
            return int(shard[0]), int(shard[1])
    return None


def cmd_merge(argv: list[str]) -> int:
    from orthrus.bench.merge import merge_runs
    from orthrus.bench.runner import print_summary, render_report
    from orthrus.bench.summary import summarize

    parser = _Parser(prog="run_bench.py merge", description="merge shard run directories into one run")
    parser.add_argument("run_dirs", nargs="+", metavar="DIR")
    parser.add_argument("--out", help="merged run directory (default: <first shard's run id>-merged beside it)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    out_dir, records = merge_runs([Path(d) for d in args.run_dirs], Path(args.out) if args.out else None)
    ok = sum(1 for r in records if r.get("status") == "ok")
    info = {"ok": ok, "failed": len(records) - ok, "harness_overhead": {}}
    report = render_report(out_dir, args.quiet)
    print_summary(out_dir, summarize(records), records, info, report, args.quiet)
    return 1 if info["failed"] else 0


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "run": cmd_run,
    "merge": cmd_merge,
}


def _subcommands() -> dict[str, Callable[[list[str]], int]]:
    """Ours plus those orthrus.report provides (report, compare, baseline, gate) when it has them."""
    commands = dict(SUBCOMMANDS)
    try:
        from orthrus.report import SUBCOMMANDS as report_commands  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return commands
    for name, func in dict(report_commands).items():
        commands.setdefault(name, func)
    return commands


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _quiet_libraries()
        if argv and argv[0] in SUBCOMMANDS:
            return int(SUBCOMMANDS[argv[0]](argv[1:]) or 0)
        if argv and not argv[0].startswith("-") and not Path(argv[0]).exists():
            commands = _subcommands()  # imports orthrus.report only when a name may be its subcommand
            if argv[0] in commands:
                return int(commands[argv[0]](argv[1:]) or 0)
        return cmd_run(argv)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _quiet_libraries() -> None:
    try:
        from transformers.utils import logging

        logging.set_verbosity_error()
    except ImportError:
        pass
