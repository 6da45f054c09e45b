"""The runner: make the run directory, hand the schedule's units to an executor, append each record,
write the summary.

Where a measurement goes (docs/architecture.md): planning (``planning.plan``: cells and prompts,
data errors stop the run before anything is written) -> the schedule (``schedule.schedule``: which
unit when, resume, shards, failure skips) -> an executor (``executors``: where) -> the measurer
(``measurer.Measurer``: the one timed region, records built whole) -> ``Job.record`` here (appended
to results.jsonl and fsynced at once) -> summary.csv/json and run.json at the end. The caller (the
composition root) prints the summary, runs the gates and renders the report.

A failure inside a cell becomes a failed record with its error and the run goes on; the exit code
then says that something failed.
"""

from __future__ import annotations

import errno
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from orthrus.bench.environment import collect_environment, git_commit
from orthrus.bench.executors.base import Executor, Job
from orthrus.bench.planning import plan
from orthrus.bench.progress import progress_bar
from orthrus.bench.prompts import PromptFactory
from orthrus.bench.schedule import CELL_PROMPT, PlannedCell, Unit
from orthrus.bench.suite.spec import Suite
from orthrus.errors import UserInputError
from orthrus.results.record import MeasurementRecord, record_key
from orthrus.results.rundir import (
    ENVIRONMENT_FILE,
    RESULTS_FILE,
    ResultsWriter,
    RunLock,
    add_node_environment,
    read_records,
    read_run_info,
    write_environment,
    write_prompts,
    write_run_info,
    write_suite_copy,
)
from orthrus.results.summary import overhead_stats, write_summary


@dataclass
class RunOptions:
    out_root: Path = Path("reports")
    run_id: str | None = None
    resume_dir: Path | None = None
    shard: tuple[int, int] | None = None
    quiet: bool = False
    argv: list[str] = field(default_factory=list)
    executor: Executor | None = None  # where the cells are measured (orthrus.bench.executors); None: this process
    resume_command: str = "python run_bench.py --resume"  # how the caller's user continues this run


@dataclass
class RunOutcome:
    """What a run leaves for its caller: the exit code and what the printed summary needs."""

    code: int  # 0 everything measured, 1 some measurement or cell failed, 130 interrupted
    run_dir: Path
    records: list[dict[str, Any]]
    info: dict[str, Any]
    frame: Any = None  # the summary table (None when interrupted)


DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def run_suite(suite: Suite, options: RunOptions) -> RunOutcome:
    """Measure every (cell, prompt, repeat) of ``suite`` not yet recorded; write results and summary.
    A full disk ends the run with one sentence (UserInputError): what was recorded stays, resumable."""
    runner = Runner(suite, options)
    try:
        return runner.run()
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise UserInputError(disk_full_message(err, runner.run_dir, options.resume_command)) from err


def disk_full_message(err: OSError, run_dir: Path | None, resume: str = "python run_bench.py --resume") -> str:
    """One sentence: the disk is full, what is safe, how to go on."""
    where = f"writing {err.filename}" if err.filename else (err.strerror or "No space left on device")
    if run_dir is None:
        return f"the disk is full ({where}) before the run started; free some space and run again."
    kept = len(read_records(run_dir / RESULTS_FILE))
    return (
        f"the disk is full ({where}); the {kept} measurement(s) recorded so far are safe in {run_dir}; "
        f"free some space and continue with: {resume} {run_dir}"
    )


class Runner:
    def __init__(self, suite: Suite, options: RunOptions) -> None:
        self.suite = suite
        self.options = options
        self.run_dir: Path | None = None
        self.run_id = ""
        self.write_ms_total = 0.0
        self.existing: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.executor: Executor | None = None
        self._lock: RunLock | None = None

    def run(self) -> RunOutcome:
        """Measure what is not yet recorded, holding the run directory's lock throughout."""
        try:
            return self._run()
        finally:
            if self.executor is not None:
                self.executor.close()
            if self._lock is not None:
                self._lock.release()

    def _run(self) -> RunOutcome:
        suite, measure = self.suite, self.suite.measure
        if measure.threads:
            torch.set_num_threads(measure.threads)
        notes: list[str] = []  # printed once the run has started (a refused resume prints only its error)
        planned = plan(suite, self.options.shard, PromptFactory(), notes)
        if self.options.executor is None:
            from orthrus.bench.executors.local import LocalExecutor

            self.options.executor = LocalExecutor()
        executor = self.options.executor
        executor.prepare(suite)  # cluster reachable, resources there: checked before the run directory exists
        self.executor = executor
        run_dir = self.run_dir = self._make_run_dir()
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        self.run_id = run_dir.name
        results = run_dir / RESULTS_FILE
        for record in read_records(results):
            self.existing.setdefault(record_key(record), record)
        self._write_metadata(planned)
        started = time.time()
        self._run_info("running", started)
        planned_count = sum(item.measurements(measure.repetitions) for item in planned)
        bar = progress_bar(planned_count - len(self.existing), self.options.quiet)
        status = "finished"
        try:
            with ResultsWriter(results) as writer:
                executor.run(self._job(planned, writer, bar))
        except KeyboardInterrupt:
            status = "interrupted"
            bar.close()
            print(f"\ninterrupted; continue with: {self.options.resume_command} {run_dir}", file=sys.stderr)
            records = read_records(results)
            return RunOutcome(130, run_dir, records, self._run_info(status, started, records))
        finally:
            bar.close()
        records = read_records(results)
        frame = write_summary(run_dir, records)
        info = self._run_info(status, started, records)
        return RunOutcome(1 if info["failed"] else 0, run_dir, records, info, frame)

    def _job(self, planned: list[PlannedCell], writer: ResultsWriter, bar: Any) -> Job:
        repetitions, quiet = self.suite.measure.repetitions, self.options.quiet

        def record(rec: MeasurementRecord, unit: Unit | None) -> None:
            key = (rec.cell_id, rec.prompt_id, rec.repeat)
            if key in self.existing:
                return  # measured before (a retried cell's stream): each measurement is written once
            start = time.perf_counter()
            data = rec.to_dict()
            writer.append(data)
            self.existing[key] = data
            self.write_ms_total += (time.perf_counter() - start) * 1e3
            if rec.prompt_id == CELL_PROMPT:  # the cell's measurements not yet counted are not coming
                before = sum(1 for k in self.existing if k[0] == rec.cell_id) - 1
                bar.update(max(1, unit.item.measurements(repetitions) - before) if unit is not None else 1)
                if not quiet:
                    where = f" ctx={rec.cell.get('context_length') or '-'}"
                    bar.write(f"cell {rec.status}: {rec.cell.get('label')}{where}: {rec.error or rec.skip_reason}")
                return
            bar.update(1)
            if unit is not None and unit.repeat >= repetitions:
                bar.total += 1  # a repetition beyond measure.repetitions (measure.min_duration_s)
            if rec.status != "ok":
                if unit is not None and rec.batch_index in (None, 0):  # its later repetitions are not measured
                    bar.update(max(0, repetitions - unit.repeat - 1) * len(unit.prompts))
                if not quiet:
                    bar.write(f"failed: {rec.cell.get('label')} {rec.prompt_id} repeat {rec.repeat}: {rec.error}")

        return Job(
            suite=self.suite,
            run_id=self.run_id,
            planned=planned,
            existing=self.existing,
            record=record,
            describe=bar.set_description,
            say=(lambda _text: None) if quiet else bar.write,
            add_node=lambda node, environment: add_node_environment(self.run_dir, node, environment),
        )

    # ---------------------------------------------------------------- the run directory
    def _make_run_dir(self) -> Path:
        """The run directory, locked for this process (a second process on it is refused)."""
        if self.options.resume_dir is not None:
            self._lock = RunLock(self.options.resume_dir)  # before anything in it is read or changed
            return self.options.resume_dir
        run_id = self.options.run_id or time.strftime("%Y%m%d-%H%M%S")
        if self.options.shard is not None:
            index, count = self.options.shard
            run_id = f"{run_id}-shard{index}of{count}"
        base = self.options.out_root / self.suite.name
        run_dir = base / run_id
        if run_dir.exists():
            if self.options.run_id:
                raise UserInputError(
                    f"{run_dir} already exists; resume it with --resume {run_dir} or pick another --run-id."
                )
            suffix = 2
            while (base / f"{run_id}-{suffix}").exists():
                suffix += 1
            run_dir = base / f"{run_id}-{suffix}"
        run_dir.mkdir(parents=True)
        self._lock = RunLock(run_dir)  # a --resume of it while this run measures is refused
        return run_dir

    def _write_metadata(self, planned: list[PlannedCell]) -> None:
        assert self.run_dir is not None
        suite = self.suite
        if self.options.resume_dir is None:
            write_suite_copy(self.run_dir, self.run_id, suite.raw)
        if not (self.run_dir / ENVIRONMENT_FILE).is_file():  # a resumed run keeps the one it started with
            devices = sorted({m.device for m in suite.models.values()})
            dtypes = sorted({m.dtype for m in suite.models.values()})
            environment = collect_environment(devices, dtypes, suite.sha256, suite.file_sha256)
            write_environment(self.run_dir, {**environment, "run_id": self.run_id, "suite_name": suite.name})
        prompts: dict[tuple[str, str], dict[str, Any]] = {}
        for item in planned:
            for p in item.prompts:
                prompts.setdefault(
                    (p.source, p.prompt_id), {**vars(p), "prompt_tokens": len(p.ids)}
                )
        write_prompts(self.run_dir, prompts.values())

    def _run_info(self, status: str, started: float, records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        assert self.run_dir is not None
        suite = self.suite
        source = str(suite.source_path.resolve()) if suite.source_path else read_run_info(self.run_dir).get("suite_path")
        head = {
            "run_id": self.run_id,
            "suite_name": suite.name,
            "suite_sha256": suite.sha256,
            "suite_path": source,
            "shard": list(self.options.shard) if self.options.shard else None,
        }
        session = {"argv": self.options.argv, "git": git_commit(), "host_python": platform.python_version()}
        counts: dict[str, Any] = {}
        if records is not None:
            ok = sum(1 for r in records if r.get("status") == "ok")
            skipped = sum(1 for r in records if r.get("status") == "skipped")  # on purpose: not failed
            overhead = overhead_stats(records)
            measured = overhead.get("measured_ms_total") or 0.0
            overhead["write_ms_total"] = self.write_ms_total
            if measured:
                overhead["overhead_pct_with_writes"] = (
                    100 * ((overhead.get("overhead_ms_total") or 0) + self.write_ms_total) / measured
                )
            counts = dict(records=len(records), ok=ok, failed=len(records) - ok - skipped, skipped=skipped)
            counts["harness_overhead"] = overhead
        if self.executor is not None:
            counts["executor"] = self.executor.info()
        return write_run_info(self.run_dir, status, started, session, head, counts)
