"""The local executor: every cell in this process, one after another (the harness's original loop)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orthrus.bench.runner import PlannedCell, Runner
    from orthrus.bench.suite.spec import Suite
    from orthrus.results.rundir import ResultsWriter


class LocalExecutor:
    name = "local"

    def prepare(self, suite: Suite) -> None:
        pass

    def run(self, runner: Runner, planned: list[PlannedCell], writer: ResultsWriter, bar: Any) -> None:
        for index, item in enumerate(planned):
            runner._run_cell(item, writer, bar)
            runner.pool.release(runner._models_needed(planned[index + 1 :]))

    def info(self) -> dict[str, Any]:
        return {"kind": self.name}

    def close(self) -> None:
        pass
