"""What every executor offers the runner, and the Ray executor's options (no Ray imported here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from orthrus.bench.runner import PlannedCell, Runner
    from orthrus.bench.suite.spec import Suite
    from orthrus.results.rundir import ResultsWriter

EXECUTORS = ("local", "ray")
RAY_INSTALL_HINT = 'pip install -e ".[ray]"'


class Executor(Protocol):
    name: str

    def prepare(self, suite: Suite) -> None:
        """Check that the cells can run here (cluster reachable, resources there); raise
        UserInputError before the run directory exists otherwise."""

    def run(self, runner: Runner, planned: list[PlannedCell], writer: ResultsWriter, bar: Any) -> None:
        """Measure every pending (cell, prompt, repeat) of ``planned``, appending each record through
        ``runner``'s writer path; Ctrl-C (KeyboardInterrupt) stops the work and propagates."""

    def info(self) -> dict[str, Any]:
        """What run.json says about the executor (kind, workers, nodes, scheduling overhead)."""

    def close(self) -> None:
        """Release what ``prepare`` acquired (a Ray connection this executor started)."""


@dataclass
class RayOptions:
    address: str | None = None  # None: a local Ray instance (or the one this process already joined)
    gpus_per_worker: float | None = None  # None: 1 on a cluster with GPUs when a model asks for cuda, else 0
    workers: int | None = None  # None: as many as the cluster has slots (CPUs, or GPUs / gpus_per_worker)
    max_retries: int = 2  # times a cell is retried on another worker after its worker died
