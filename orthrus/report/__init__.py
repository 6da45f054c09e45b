"""Reports, comparisons and CI gates made from a run's results files only (see orthrus.results).

Imports are deferred so that importing this package (the harness checks for ``render_run``) does
not load matplotlib until a report is actually drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orthrus.report.compare import Comparison
    from orthrus.report.gates import GateReport

from orthrus.report.commands import SUBCOMMANDS

__all__ = [
    "SUBCOMMANDS",
    "evaluate_gates",
    "render_compare",
    "render_index",
    "render_run",
    "run_gates",
    "save_baseline",
]


def render_run(run_dir: str | Path, update_index: bool = True) -> Path:
    """Plots and ``report.html`` for one run directory; returns the report's path. Also rewrites
    ``reports/index.html`` when the run lies in ``reports/<suite>/<run-id>`` (unless told not to)."""
    from orthrus.report.html import render_run as render

    return render(run_dir, update_index)


def render_index(root: str | Path = "reports") -> Path:
    from orthrus.report.html import render_index as render

    return render(root)


def render_compare(run_a: str | Path, run_b: str | Path, out: str | Path | None = None) -> tuple[Path, Comparison]:
    from orthrus.report.compare import render_compare as render

    return render(run_a, run_b, out)


def evaluate_gates(run_dir: str | Path, rules: Any = None, baseline: Any = None, write: bool = True) -> GateReport:
    """Check gate rules on a run and write ``gates.json`` (see orthrus.report.gates)."""
    from orthrus.report.gates import evaluate_gates as evaluate

    return evaluate(run_dir, rules, baseline, write)


def run_gates(
    run_dir: str | Path, gate_files: Any = (), baseline: Any = None, junit: Any = None, quiet: bool = False
) -> int:
    """The CI step: evaluate, print, write gates.json / step summary / JUnit; returns the exit code."""
    from orthrus.report.gates import run_gates as run

    return run(run_dir, gate_files, baseline, junit, quiet)


def save_baseline(run_dir: str | Path, file: str | Path) -> Path:
    from orthrus.report.gates import save_baseline as save

    return save(run_dir, file)
