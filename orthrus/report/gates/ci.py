"""The gates' CI step: evaluate a run's rules, print the table, write gates.json, the GitHub step
summary and JUnit XML, and return the exit code."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from orthrus.errors import UserInputError
from orthrus.report.gates import outputs
from orthrus.report.gates.evaluation import evaluate_gates
from orthrus.report.gates.rules import GateRule, load_gate_file
from orthrus.report.outputs import check_output_file, writable


def run_gates(
    run_dir: str | Path,
    gate_files: Sequence[str | Path] = (),
    baseline: str | Path | None = None,
    junit: str | Path | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
    verbose: bool = False,
) -> int:
    """The whole CI step: evaluate, print the table, write gates.json, the GitHub step summary and
    JUnit XML; returns the exit code (0 pass, 1 regression, 2 bad input)."""
    if junit:  # a folder or a read-only place is refused before anything is evaluated
        check_output_file(junit, "--junit", "gates.xml")
    rules: list[GateRule] | None = None
    if gate_files:
        rules = []
        for file in gate_files:
            file_rules, file_baseline = load_gate_file(file)
            rules += file_rules
            baseline = baseline or file_baseline
    # an archived (read-only) run is still checked; its gates.json is then not rewritten
    report = evaluate_gates(run_dir, rules, baseline, write=writable(Path(run_dir)))
    if not report.results:
        raise UserInputError(f"no gates to check for {run_dir}; add a gates: section to the suite or pass --gate FILE.")
    echo(report.headline() if quiet and report.exit_code == 0 else outputs.table(report, verbose))
    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        try:
            with open(summary_path, "a", encoding="utf-8") as handle:
                handle.write(outputs.markdown(report))
        except OSError as err:  # the step summary is a courtesy: the gates still decide the exit code
            print(
                f"warning: the step summary was not written to $GITHUB_STEP_SUMMARY={summary_path} "
                f"({err.strerror or err}); the gate results are above.",
                file=sys.stderr,
            )
    if junit:
        Path(junit).parent.mkdir(parents=True, exist_ok=True)
        Path(junit).write_text(outputs.junit(report))
    return report.exit_code
