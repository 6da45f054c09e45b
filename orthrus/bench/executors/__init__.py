"""Where the cells of a run are measured: the executor seam between the runner and the machines.

The runner plans the run, owns the run directory and its one ``ResultsWriter``, and hands the
planned cells to an executor as a ``Job`` (``base.py``), which measures their units in the
schedule's order and hands every record back through ``Job.record``:

- ``local`` (``orthrus.bench.executors.local.LocalExecutor``): every unit in this process, in the schedule's order;
- ``ray`` (``orthrus.bench.executors.ray.RayExecutor``): cells grouped by model, each group run by a
  worker on a Ray cluster in the schedule's order, every record streamed back to this process and
  written here.

``--shard I/N`` + ``merge`` (``orthrus.bench.schedule.shard``/``orthrus.bench.merge``) is the third way: any
scheduler runs one process per slice. This module imports no Ray: ``import orthrus`` never does.
"""

from __future__ import annotations

from orthrus.bench.executors.base import EXECUTORS, RAY_INSTALL_HINT, Executor, Job, RayOptions
from orthrus.errors import UserInputError

__all__ = ["EXECUTORS", "RAY_INSTALL_HINT", "Executor", "Job", "RayOptions", "make_executor", "ray_available"]


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
