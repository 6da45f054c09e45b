"""Where the cells of a run are measured: the executor seam between the runner and the machines.

The runner plans the run, owns the run directory and its one ``ResultsWriter``, and hands the
planned cells to an executor, which measures them and appends every record through that writer:

- ``local`` (``LocalExecutor``): today's loop, in this process, one cell after another;
- ``ray`` (``orthrus.bench.executors.ray.RayExecutor``): cells grouped by model, each group run by a
  worker on a Ray cluster, every record streamed back to this process and written here.

``--shard I/N`` + ``merge`` (``orthrus.bench.matrix``/``orthrus.bench.merge``) is the third way: any
scheduler runs one process per slice. This module imports no Ray: ``import orthrus`` never does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from orthrus.errors import UserInputError

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


def ray_available() -> bool:
    """Ray can be imported (only asked when --executor ray is chosen, which imports it anyway)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def make_executor(name: str, ray_options: RayOptions | None = None) -> Executor:
    """The executor called ``name``; ``ray`` without Ray installed is one sentence (UserInputError)."""
    if name == "local":
        from orthrus.bench.executors.local import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        if not ray_available():
            raise UserInputError(
                f"--executor ray needs Ray, which is not installed; install it with: {RAY_INSTALL_HINT}"
            )
        from orthrus.bench.executors.ray import RayExecutor

        return RayExecutor(ray_options or RayOptions())
    raise UserInputError(f"unknown executor {name!r}; use one of: {', '.join(EXECUTORS)}.")
