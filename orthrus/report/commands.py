"""Subcommands of ``python run_bench.py``: report, compare, gate, baseline.

Each takes its own argv (after the subcommand name) and returns an exit code; errors a user can
cause print one sentence and return 2. ``SUBCOMMANDS`` maps names to these functions for the
harness's dispatch table; ``python -m orthrus.report <subcommand> ...`` works on its own too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import wraps
from pathlib import Path

from orthrus.errors import ArgumentParser, UserInputError
from orthrus.report.outputs import check_output_dir, check_output_file, writable, write_error
from orthrus.results.rundir import skipping_damaged

SKIP_DAMAGED_HELP = (
    "read results.jsonl even when a line other than its unfinished last one is damaged: leave such lines "
    "out (a note says how many and which) instead of refusing"
)


def add_skip_damaged(parser: ArgumentParser) -> None:
    """``--skip-damaged``: the one escape from the reader's damaged-line error (orthrus.results.rundir)."""
    parser.add_argument("--skip-damaged", action="store_true", help=SKIP_DAMAGED_HELP)


def _reading(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``run(args)`` reading run directories under ``--skip-damaged`` when the command line gave it."""

    @wraps(run)
    def reading(args: argparse.Namespace) -> int:
        with skipping_damaged(bool(getattr(args, "skip_damaged", False))):
            return run(args)

    return reading


def _user_errors(func: Callable[[list[str]], int]) -> Callable[[Sequence[str] | None], int]:
    @wraps(func)
    def run(argv: Sequence[str] | None = None) -> int:
        try:
            return func(list(sys.argv[2:] if argv is None else argv))
        except UserInputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            print(f"error: {write_error(err)}", file=sys.stderr)
            return 2

    return run


@_user_errors
def cmd_report(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="run_bench.py report", description="Re-render report.html of runs from their results files."
    )
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR")
    parser.add_argument(
        "--index",
        nargs="?",
        const="reports",
        metavar="ROOT",
        help="also (or only) rewrite ROOT/index.html listing all runs (default ROOT: reports)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="write report.html and plots/ here instead of into the run directory (for a read-only, archived run)",
    )
    add_skip_damaged(parser)
    args = parser.parse_args(argv)
    return _report(args)


@_reading
def _report(args: argparse.Namespace) -> int:
    if not args.run_dirs and not args.index:
        raise UserInputError("report: pass a run directory (reports/<suite>/<run-id>) or --index.")
    if args.out and len(args.run_dirs) != 1:
        raise UserInputError("report --out DIR renders one run; pass one run directory.")
    from orthrus.report.html import render_index, render_run

    for run_dir in args.run_dirs:
        if args.out:
            print(f"report: {render_run(run_dir, update_index=False, out_dir=check_output_dir(args.out, '--out'))}")
            continue
        if Path(run_dir).is_dir() and not writable(Path(run_dir)):
            raise UserInputError(
                f"{run_dir} is read-only (an archived run?); render it elsewhere with "
                f"'report {run_dir} --out DIR', or copy the run directory first."
            )
        print(f"report: {render_run(run_dir)}")
    if args.index:
        root = Path(args.index)
        if not root.is_dir():  # a mistyped root would otherwise be created, holding an empty index
            raise UserInputError(
                f"report --index: {args.index!r} is not a directory; give the reports root holding <suite>/<run-id>/ "
                "folders (default: reports)."
            )
        print(f"index: {render_index(root)}")
    return 0


@_user_errors
def cmd_compare(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="run_bench.py compare", description="Side-by-side report of two runs (A = before, B = after)."
    )
    parser.add_argument("run_a", metavar="RUN_A")
    parser.add_argument("run_b", metavar="RUN_B")
    parser.add_argument("--out", help="HTML file to write (default: reports/compare/<A>_vs_<B>.html)")
    parser.add_argument("--fail-on-worse", action="store_true", help="exit 1 when a metric got worse beyond noise")
    add_skip_damaged(parser)
    args = parser.parse_args(argv)
    return _compare(args)


@_reading
def _compare(args: argparse.Namespace) -> int:
    from orthrus.report.compare import render_compare

    path, comparison = render_compare(args.run_a, args.run_b, args.out)
    print(comparison.format_text())
    print(f"compare report: {path}")
    worse = [c for c in comparison.flagged if c.direction == "worse"]
    return 1 if args.fail_on_worse and worse else 0


@_user_errors
def cmd_gate(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="run_bench.py gate",
        description="Check a run against performance gates (exit 0 pass, 1 regression, 2 bad input).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML file of rules (repeatable); default: the suite's gates: section",
    )
    parser.add_argument("--baseline", metavar="FILE", help="baseline JSON made by 'baseline save'")
    parser.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML")
    parser.add_argument("--quiet", action="store_true", help="print only the verdict when everything passes")
    parser.add_argument("--verbose", action="store_true", help="one line per checked cell, also when a rule passes")
    parser.add_argument("--no-report", action="store_true", help="do not re-render report.html with the results")
    add_skip_damaged(parser)
    args = parser.parse_args(argv)
    return _gate(args)


@_reading
def _gate(args: argparse.Namespace) -> int:
    from orthrus.report.gates import run_gates

    code = run_gates(args.run_dir, args.gate, args.baseline, args.junit, args.quiet, verbose=args.verbose)
    if not args.no_report and not writable(Path(args.run_dir)):
        print(f"note: {args.run_dir} is read-only, so its report.html was not re-rendered.", file=sys.stderr)
    elif not args.no_report:
        from orthrus.report.html import render_run

        path = render_run(args.run_dir)
        if not args.quiet:
            print(f"report: {path}")
    return code


@_user_errors
def cmd_baseline(argv: list[str]) -> int:
    parser = ArgumentParser(prog="run_bench.py baseline", description="Save a run's summary as a gate baseline.")
    sub = parser.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    save = sub.add_parser("save", help="baseline save RUN_DIR FILE")
    save.add_argument("run_dir", metavar="RUN_DIR")
    save.add_argument("file", metavar="FILE")
    add_skip_damaged(save)
    args = parser.parse_args(argv)
    return _baseline(args)


@_reading
def _baseline(args: argparse.Namespace) -> int:
    from orthrus.report.gates import save_baseline

    check_output_file(args.file, "baseline save: FILE", "baseline.json")
    print(f"baseline: {save_baseline(args.run_dir, args.file)}")
    return 0


def check_gate_inputs(
    suite_gates: object,
    gate_files: Sequence[str],
    baseline: str | None,
    cell_keys: Iterable[str] | None = None,
    suite_name: str | None = None,
) -> None:
    """Before a run starts: the rules parse, name known metrics (and, given ``cell_keys``, known cell
    parameters in ``where``), the files exist, a baseline is given when a rule needs one and (given
    ``suite_name``) is of that suite, so a mistake costs seconds, not a whole run. Raises UserInputError."""
    from orthrus.report.gates import check_rule_names, gates_config, load_baseline, load_gate_file
    from orthrus.report.gates.evaluation import check_baseline_suite

    rules, suite_baseline = gates_config(suite_gates, "gates")
    for file in gate_files:
        file_rules, file_baseline = load_gate_file(file)
        rules += file_rules
        suite_baseline = suite_baseline or file_baseline
    check_rule_names(rules, cell_keys)
    baseline = baseline or suite_baseline
    if baseline is not None:
        loaded = load_baseline(baseline)
        if suite_name is not None:
            check_baseline_suite(loaded, suite_name, "this run", str(baseline))
    elif any(rule.uses_baseline for rule in rules):
        needing = next(rule for rule in rules if rule.uses_baseline)
        raise UserInputError(f"gate {needing.text!r} compares with 'baseline'; pass --baseline FILE.")


def gate_after_run(
    run_dir: str, gate_files: Sequence[str], baseline: str | None, junit: str | None, quiet: bool, run_code: int
) -> int:
    """Evaluate the gates on a finished run, re-render its report with them, and combine the exit
    codes: bad gate input (2) wins, else the worse of the run's and the gates' codes."""
    from orthrus.report.gates import run_gates
    from orthrus.report.html import render_run

    code = run_gates(run_dir, list(gate_files), baseline, junit, quiet)
    render_run(run_dir)
    return 2 if code == 2 else max(run_code, code)


SUBCOMMANDS: dict[str, Callable[[Sequence[str] | None], int]] = {
    "report": cmd_report,
    "compare": cmd_compare,
    "gate": cmd_gate,
    "baseline": cmd_baseline,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        print(f"usage: python -m orthrus.report {{{','.join(SUBCOMMANDS)}}} ...", file=sys.stderr)
        return 2
    return SUBCOMMANDS[argv[0]](argv[1:])
