"""The Ray executor: a suite's cells measured by workers on a Ray cluster, every record written here.

Design (``python run_bench.py SUITE --executor ray``):

- **Groups.** Cells are grouped by model (``cell.model.key``, in plan order): one worker loads a
  checkpoint once and measures every unit of its group in the order the suite asks for (the
  schedule applied to the group: cells, rounds or interleaved, so the AR and Orthrus cells a ratio
  compares, which share a model, are interleaved on one worker). A worker is a Ray actor asking for
  ``num_cpus=1`` and ``num_gpus=--gpus-per-worker`` (1 on a cluster with GPUs when a model asks for
  cuda); ``--workers`` actors at most, each taking the next group when it finishes one.
- **Identity.** A worker keeps its own ``Measurer`` and with it its own ``Reference``: the reference
  cell's measured tokens when the group holds that cell (a group of the reference model does: it
  comes first, as in the plan), else the reference model's greedy tokens, computed on the worker
  itself (the reference is a small AR model; greedy decoding is deterministic), so identity figures
  equal a local run's.
- **Streaming.** A worker's ``run_cells`` is a Ray streaming generator: the worker measures its
  group's units (``Measurer.measure``) in a thread that yields each record as soon as it is measured;
  the driver takes each one off the stream (``ray.wait`` over all workers' streams) and hands it to
  ``Job.record``, which appends it to results.jsonl (fsynced per record), so a finished measurement
  that reached the driver is never lost, and each (cell, prompt, repeat) is written once.
- **Nodes.** A worker first sends its node's environment (``node.node_environment``); the driver
  keeps it in environment.json under ``nodes``, and every record names its ``node``.
- **Scheduling overhead.** Per record, ``scheduling_overhead_ms``: the driver's time between two
  records of a worker's stream minus the worker's own time between producing them (the first also
  counts dispatch and the worker's start-up); a cell's overhead is the sum over its records.
- **Faults.** A worker that dies (killed process, lost node) or whose stream fails: its unfinished
  cells go back to the queue for a fresh worker; the cell it was measuring counts one attempt, and
  after ``--max-retries`` retries it is recorded as failed with the reason. Ctrl-C kills the workers
  and propagates, so the runner leaves a resumable run (exit 130).
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray

from orthrus.bench.executors.base import RayOptions
from orthrus.bench.executors.node import node_environment, node_name
from orthrus.bench.loading import one_line
from orthrus.bench.measurer import closing_record
from orthrus.bench.schedule import CELL_PROMPT, schedule
from orthrus.errors import UserInputError
from orthrus.results.record import MeasurementRecord

if TYPE_CHECKING:
    from orthrus.bench.executors.base import Job
    from orthrus.bench.schedule import PlannedCell
    from orthrus.bench.suite.spec import Suite

WAIT_S = 1.0  # the driver wakes at least this often (Ctrl-C stays prompt)
CONNECT_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------- the worker
class Worker:
    """One Ray actor: a measurer of its own (models, reference, trackers) that measures groups of cells."""

    def __init__(self, suite: Suite, run_id: str) -> None:
        import os

        import torch

        from orthrus.bench.measurer import Measurer

        if suite.measure.threads:
            torch.set_num_threads(suite.measure.threads)
        self.suite = suite
        self.existing: dict[tuple, dict[str, Any]] = {}
        self.measurer = Measurer(suite, run_id, self.existing)
        self.pid = os.getpid()
        self.node = node_name()
        self.devices = sorted({m.device for m in suite.models.values()})
        self.sent_environment = False

    def run_cells(self, items: list[PlannedCell], existing: dict[tuple, dict[str, Any]]) -> Any:
        """A stream of events, each (kind, payload, worker_ms since the previous event):
        ('node', {node, environment}) once per worker, ('start', cell_id), ('record', record dict)."""
        from orthrus.bench.loading import models_needed, one_line
        from orthrus.bench.schedule import schedule

        events: queue.Queue = queue.Queue()
        last = [time.perf_counter()]

        def emit(kind: str, payload: Any) -> None:
            now = time.perf_counter()
            events.put((kind, payload, (now - last[0]) * 1e3))
            last[0] = now

        self.existing.clear()  # what the driver knows of this group (a retried group resumes)
        self.existing.update(existing)

        def work() -> None:
            try:
                if not self.sent_environment:
                    emit("node", {"node": self.node, "pid": self.pid, "environment": node_environment(self.devices)})
                    self.sent_environment = True
                current = None
                for unit in schedule(items, self.suite.measure, self.existing):
                    if unit.item is not current:
                        current = unit.item
                        emit("start", unit.cell.cell_id)
                    try:
                        records = self.measurer.measure(unit)
                    except Exception as err:  # noqa: BLE001 - the cell fails, the worker goes on
                        records = [closing_record(self.measurer.run_id, unit.cell, "failed", f"worker error: {one_line(err)}")]
                    for record in records:
                        data = {**record.to_dict(), "node": self.node}
                        self.existing[(record.cell_id, record.prompt_id, record.repeat)] = data
                        emit("record", data)
                self.measurer.release(models_needed([]), done=[item.cell for item in items])
            except BaseException as err:  # noqa: BLE001 - said to the driver, which retries the cells
                emit("crash", one_line(err))
            finally:
                events.put(None)

        thread = threading.Thread(target=work, name="orthrus-cells", daemon=True)
        thread.start()
        while (event := events.get()) is not None:
            kind, payload, worker_ms = event
            if kind == "record":
                payload = {**payload, "extra": {**(payload.get("extra") or {}), "worker_pid": self.pid}}
            yield kind, payload, worker_ms
        thread.join()


# --------------------------------------------------------------------------- the driver
@dataclass
class _Slot:
    actor: Any
    items: list[PlannedCell]
    last: float  # driver time of the dispatch or of the last event
    current: PlannedCell | None = None
    overhead_ms: float = 0.0  # not yet attached to a record
    node: str | None = None


@dataclass
class _Stats:
    workers_started: int = 0
    workers_lost: int = 0
    retried_cells: set[str] = field(default_factory=set)
    failed_cells: set[str] = field(default_factory=set)
    scheduling_overhead_ms: float = 0.0
    nodes: dict[str, str] = field(default_factory=dict)  # node -> device kind


def group_by_model(planned: list[PlannedCell]) -> list[list[PlannedCell]]:
    """Cells grouped by their model (plan order kept within and across groups)."""
    groups: dict[str, list[PlannedCell]] = {}
    for item in planned:
        groups.setdefault(item.cell.model.key, []).append(item)
    return list(groups.values())


def _host_port(address: str) -> tuple[str, int] | None:
    rest = address.split("://", 1)[1] if "://" in address else address
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class RayExecutor:
    name = "ray"

    def __init__(self, options: RayOptions) -> None:
        self.options = options
        self._owned = False
        self._actor_class: Any = None
        self.gpus_per_worker = 0.0
        self.slots = 1
        self.stats = _Stats()

    # ---------------------------------------------------------------- before the run directory exists
    def prepare(self, suite: Suite) -> None:
        """Join (or start) the cluster and check its resources; every problem is one sentence."""
        options = self.options
        where = f"the Ray cluster at {options.address}" if options.address else "the local Ray instance"
        if options.workers is not None and options.workers < 1:
            raise UserInputError(f"--workers {options.workers}: give at least 1 worker.")
        if options.max_retries < 0:
            raise UserInputError(f"--max-retries {options.max_retries}: give 0 or more retries.")
        if not ray.is_initialized():
            address = options.address
            target = _host_port(address) if address and address != "auto" else None
            if address and address != "auto" and target is None:
                raise UserInputError(f"--ray-address {address!r} is not auto, HOST:PORT or ray://HOST:PORT.")
            if target is not None:
                try:
                    socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
                except OSError as err:
                    raise UserInputError(
                        f"cannot reach {where} ({err.strerror or err}); start it (ray start --head) or fix --ray-address."
                    ) from None
            kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
            if address is None:  # a private instance on this machine, on loopback only
                kwargs.update(include_dashboard=False, _node_ip_address="127.0.0.1")
            try:
                ray.init(address=address, **kwargs)
            except Exception as err:  # noqa: BLE001 - ConnectionError, RuntimeError, ...: one sentence
                raise UserInputError(
                    f"cannot connect to {where} ({one_line(err)}); start it (ray start --head) or fix --ray-address."
                ) from None
            self._owned = True
        try:
            self._check_resources(suite, where)
        except UserInputError:
            self.close()
            raise
        self._actor_class = ray.remote(num_cpus=1, num_gpus=self.gpus_per_worker, max_restarts=0)(Worker)

    def _check_resources(self, suite: Suite, where: str) -> None:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        cpus = float(resources.get("CPU", 0))
        wants_cuda = any(str(m.device).startswith("cuda") for m in suite.models.values())
        asked = self.options.gpus_per_worker
        if asked is not None and asked < 0:
            raise UserInputError(f"--gpus-per-worker {asked:g}: give 0 or more GPUs.")
        per_worker = asked if asked is not None else (1.0 if gpus and wants_cuda else 0.0)
        if per_worker > 0 and gpus < per_worker:
            raise UserInputError(
                f"--gpus-per-worker {per_worker:g} asks for GPUs, but {where} has {gpus:g}; "
                "run on a cluster with GPUs or use --gpus-per-worker 0 with --device cpu."
            )
        if wants_cuda and per_worker == 0:
            raise UserInputError(
                f"the suite runs models on cuda but the workers get no GPU ({where} has {gpus:g}); "
                "give --gpus-per-worker 1 on a cluster with GPUs, or --device cpu."
            )
        if cpus < 1:
            raise UserInputError(f"{where} has no CPU slot for a worker; add a node with CPUs.")
        self.gpus_per_worker = per_worker
        self.slots = int(gpus // per_worker) if per_worker else int(cpus)

    # ---------------------------------------------------------------- the run
    def run(self, job: Job) -> None:
        self.job = job
        todo: deque[list[PlannedCell]] = deque()
        for group in group_by_model(job.planned):
            for item in group:
                if item.failure or item.skip:  # a cell that cannot run is recorded here, without a worker
                    for unit in schedule([item], job.suite.measure, job.existing):
                        job.record(closing_record(job.run_id, item.cell, unit.close or "failed", unit.reason or ""), unit)
            pending = [item for item in group if not (item.failure or item.skip) and self._pending(item)]
            if pending:
                todo.append(pending)
        limit = max(1, min(self.options.workers or self.slots, len(todo) or 1))
        self.workers = limit
        attempts: dict[str, int] = {}
        active: dict[Any, _Slot] = {}
        idle: list[Any] = []
        alive = 0
        try:
            while todo or active:
                while todo and (idle or alive < limit):
                    if idle:
                        actor = idle.pop()
                    else:
                        actor = self._actor_class.remote(job.suite, job.run_id)
                        alive += 1
                        self.stats.workers_started += 1
                    items = todo.popleft()
                    ids = {item.cell.cell_id for item in items}
                    existing = {k: v for k, v in job.existing.items() if k[0] in ids}
                    stream = actor.run_cells.options(num_returns="streaming").remote(items, existing)
                    active[stream] = _Slot(actor, items, last=time.perf_counter())
                ready, _ = ray.wait(list(active), num_returns=1, timeout=WAIT_S)
                for stream in ready:
                    slot = active[stream]
                    try:
                        kind, payload, worker_ms = ray.get(next(stream))
                    except StopIteration:
                        del active[stream]
                        idle.append(slot.actor)
                        continue
                    except ray.exceptions.RayError as err:
                        del active[stream]
                        alive -= 1
                        self._lost(slot, one_line(err), attempts, todo)
                        continue
                    now = time.perf_counter()
                    slot.overhead_ms += max(0.0, (now - slot.last) * 1e3 - worker_ms)
                    slot.last = now
                    if kind == "crash":
                        del active[stream]
                        alive -= 1
                        self._lost(slot, str(payload), attempts, todo)
                    else:
                        self._event(slot, kind, payload)
        finally:
            for actor in [*idle, *(slot.actor for slot in active.values())]:
                _kill(actor)

    def _pending(self, item: PlannedCell) -> bool:
        """Whether the schedule still has a unit of this cell to measure (what the driver knows)."""
        return next(schedule([item], self.job.suite.measure, self.job.existing), None) is not None

    def _event(self, slot: _Slot, kind: str, payload: Any) -> None:
        job = self.job
        if kind == "node":
            slot.node = payload["node"]
            self._record_node(payload["node"], payload["environment"])
        elif kind == "start":
            slot.current = next(item for item in slot.items if item.cell.cell_id == payload)
            context = slot.current.cell.context_length
            job.describe(f"{slot.current.cell.label} ctx={'-' if context is None else context}")
        elif kind == "record":
            key = (str(payload["cell_id"]), str(payload["prompt_id"]), int(payload["repeat"]))
            if key in job.existing:
                return  # measured before (a retried cell's stream): each measurement is written once
            # the driver's own figure, known only here, goes into the record as it is built
            record = MeasurementRecord.from_dict({**payload, "scheduling_overhead_ms": slot.overhead_ms})
            self.stats.scheduling_overhead_ms += slot.overhead_ms
            slot.overhead_ms = 0.0
            job.record(record, _record_unit(slot.current, record) if slot.current is not None else None)
            if record.status == "failed":
                self.stats.failed_cells.add(record.cell_id)

    def _lost(self, slot: _Slot, reason: str, attempts: dict[str, int], todo: deque[list[PlannedCell]]) -> None:
        """A worker died: its unfinished cells go back to the queue; the one it was measuring counts an attempt."""
        job = self.job
        _kill(slot.actor)
        self.stats.workers_lost += 1
        unfinished = [item for item in slot.items if self._pending(item)]
        current = slot.current if slot.current in unfinished else (unfinished[0] if unfinished else None)
        if current is not None:
            cell_id = current.cell.cell_id
            attempts[cell_id] = attempts.get(cell_id, 0) + 1
            if attempts[cell_id] > self.options.max_retries:
                message = (
                    f"its worker died {attempts[cell_id]} times while measuring it "
                    f"(--max-retries {self.options.max_retries}): {reason}"
                )
                job.record(closing_record(job.run_id, current.cell, "failed", message), _record_unit(current, None))
                unfinished.remove(current)
            else:
                self.stats.retried_cells.add(cell_id)
        where = f" on {slot.node}" if slot.node else ""
        job.say(f"a worker{where} died ({reason}); {len(unfinished)} unfinished cell(s) go to another worker")
        if unfinished:
            todo.appendleft(unfinished)

    def _record_node(self, node: str, environment: dict[str, Any]) -> None:
        self.stats.nodes[node] = str(environment.get("device_kind"))
        self.job.add_node(node, environment)

    # ---------------------------------------------------------------- after the run
    def info(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "address": self.options.address,
            "workers": getattr(self, "workers", None),
            "gpus_per_worker": self.gpus_per_worker,
            "max_retries": self.options.max_retries,
            "workers_started": self.stats.workers_started,
            "workers_lost": self.stats.workers_lost,
            "retried_cells": sorted(self.stats.retried_cells),
            "nodes": dict(self.stats.nodes),
            "scheduling_overhead_ms_total": self.stats.scheduling_overhead_ms,
        }

    def close(self) -> None:
        if self._owned and ray.is_initialized():
            ray.shutdown()
        self._owned = False


def _record_unit(item: PlannedCell, record: MeasurementRecord | None) -> Any:
    """The unit a streamed record belongs to (for the progress bar's accounting)."""
    from orthrus.bench.schedule import Unit

    if record is None or record.prompt_id == CELL_PROMPT:
        return Unit(item, close="failed")
    batch_id = record.batch_id if record.batch_id is not None else 0
    return Unit(item, batch_id=batch_id, repeat=record.repeat)


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass
