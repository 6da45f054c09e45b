"""The default executor: every unit in this process, in the schedule's order."""

from __future__ import annotations

from typing import Any

from orthrus.bench.executors.base import Job
from orthrus.bench.loading import models_needed
from orthrus.bench.measurer import Measurer
from orthrus.bench.schedule import schedule
from orthrus.bench.suite.spec import ROUND_ORDERS, Suite


class LocalExecutor:
    name = "local"

    def prepare(self, suite: Suite) -> None:
        pass

    def run(self, job: Job) -> None:
        measurer = Measurer(job.suite, job.run_id, job.existing)
        position = {id(item): index for index, item in enumerate(job.planned)}
        cell_by_cell = job.suite.measure.order not in ROUND_ORDERS  # round orders need every model loaded
        current = None
        for unit in schedule(job.planned, job.suite.measure, job.existing):
            if cell_by_cell and current is not None and unit.item is not current:
                later = job.planned[position[id(unit.item)] :]
                measurer.release(models_needed([item.cell for item in later]), done=[current.cell])
            current = unit.item
            context = unit.cell.context_length
            job.describe(f"{unit.cell.label} ctx={'-' if context is None else context}")
            for record in measurer.measure(unit):
                job.record(record, unit)

    def info(self) -> dict[str, Any]:
        return {"kind": self.name}

    def close(self) -> None:
        pass
