"""Moved: ``python run_bench.py``'s main is ``orthrus.run_cli.main`` (a composition root above both
the harness and the reports). This shim remains only until tests/test_gates.py imports it from
there; it is the one upward import tests/test_architecture.py is expected to report."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from orthrus.run_cli import main as run_main

    return run_main(argv)
