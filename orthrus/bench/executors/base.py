"""What every executor is given and offers the runner, and the Ray executor's options (no Ray here).

The runner hands an executor a ``Job``: the run's planned cells, the records measured so far (a live
mapping the job's ``record`` keeps up to date) and ``record``, the one way a record reaches the run
directory. The executor decides *where* units are measured; *when* a unit runs is the schedule's
(``orthrus.bench.schedule.schedule``, which every executor applies to the cells it measures) and
*how* is the measurer's (``orthrus.bench.measurer.Measurer``). No executor reaches into another class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from orthrus.bench.schedule import Key, PlannedCell, Unit
    from orthrus.bench.suite.spec import Suite
    from orthrus.results.record import MeasurementRecord

EXECUTORS = ("local", "ray")
RAY_INSTALL_HINT = 'pip install -e ".[ray]"'


@dataclass
class Job:
    """A run as an executor sees it. ``record(record, unit)`` appends one record to results.jsonl
    (fsynced), adds it to ``existing`` and moves the progress bar; it ignores a record whose
    measurement is already there (each measurement is written once)."""

    suite: Suite
    run_id: str
    planned: list[PlannedCell]
    existing: dict[Key, dict[str, Any]]
    record: Callable[[MeasurementRecord, Unit | None], None]
    describe: Callable[[str], None]  # what is being measured now, for the progress bar
    say: Callable[[str], None]  # a line for the user (silent when quiet)
    add_node: Callable[[str, dict[str, Any]], None]  # a node's environment, kept in environment.json


class Executor(Protocol):
    name: str

    def prepare(self, suite: Suite) -> None:
        """Check that the cells can run here (cluster reachable, resources there); raise
        UserInputError before the run directory exists otherwise."""

    def run(self, job: Job) -> None:
        """Measure every pending unit of ``job.planned`` and hand each record to ``job.record``;
        Ctrl-C (KeyboardInterrupt) stops the work and propagates."""

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
