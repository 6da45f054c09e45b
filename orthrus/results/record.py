"""The record of one measurement: one field list, built from a ``GenerationResult`` plus the engine's
``EngineDescription`` plus the identity of the (cell, prompt, repeat) it measured.

Metric names and meanings are those of docs/metrics.md; memory fields carry their source in the name
and are null (None) when they could not be measured, never 0. Facts about the engine that ran
(``block_size`` it actually used, ``kv_bytes_per_token`` of its model, ``lossless``) are recorded
here, so that summaries, plots and gates read them instead of reconstructing them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from orthrus.engines.base import BatchResult, EngineDescription, GenerationResult

RECORD_VERSION = 2  # 2: block_size / kv_bytes_per_token / lossless are fields (1 kept two of them in extra)
# (batch_* and *_vs_batch1 fields, status "skipped", draft_kv_cache_bytes_peak and extra_parameter* came
# later as optional fields: older records read as None)
# what a record says about the engine that ran (from EngineDescription), copied into the summary row
ENGINE_FACTS = ("block_size", "kv_bytes_per_token", "lossless", "extra_parameters", "extra_parameter_bytes", "synthetic")


@dataclass
class MeasurementRecord:
    # identity of the measurement
    run_id: str
    cell_id: str  # stable hash of ``cell``; --resume skips (cell_id, prompt_id, repeat) already present
    cell: dict[str, Any]  # engine, label, engine_options, model, dtype, device, context_length, block_size
    # (as the suite asked; None = the engine's default), temperature, top_k, top_p, max_new_tokens, ...
    prompt_id: str
    repeat: int  # 0-based among the measured (non-warm-up) repetitions
    status: str = "ok"  # "ok" | "failed" | "skipped" (the cell cannot run as asked; never a failure)
    error: str | None = None  # one line: exception type and message (e.g. "OutOfMemoryError: ...")
    skip_reason: str | None = None  # why a skipped cell was not measured (e.g. the engine cannot batch)
    category: str | None = None  # e.g. Spec-Bench category
    # facts about the engine that ran (EngineDescription); None when no engine was built
    block_size: int | None = None  # the block size it actually used (None: the engine takes none)
    kv_bytes_per_token: int | None = None  # bytes of K and V one position occupies in its model's cache
    lossless: bool | None = None  # its output is the AR model's (greedy: identical tokens)
    synthetic: bool | None = None  # synthetic acceptance: a real cost, not the AR model's output (never exact)
    compile_s: float | None = None  # a compiled engine's seconds spent compiling so far (not in e2e)
    compiled_graphs: int | None = None  # a compiled engine's graphs compiled so far
    extra_parameters: int | None = None  # weights it adds over the base model (None: it runs its own model)
    extra_parameter_bytes: int | None = None  # their bytes
    # what was generated
    prompt_tokens: int | None = None
    new_tokens: int | None = None
    tokens: list[int] | None = None
    stop_reason: str | None = None
    # latency (ms) and throughput
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    itl_ms: list[float] | None = None
    e2e_ms: float | None = None
    decode_tokens_per_s: float | None = None
    # work
    forward_passes: int | None = None
    forward_passes_by_kind: dict[str, int] | None = None
    tokens_per_forward: float | None = None
    cycles: int | None = None
    drafted_per_cycle: list[int] | None = None
    accepted_per_cycle: list[int] | None = None
    acceptance_length: float | None = None  # per request mean of accepted_per_cycle
    acceptance_by_position: list[float] | None = None
    chosen_blocks: list[int] | None = None  # block_size: auto: the K chosen at each step (1: a plain AR step)
    denoise_steps: int | None = None  # DLM engines
    tokens_per_step: float | None = None  # DLM engines
    memory_bandwidth_gb_s: float | None = None  # weight bytes per forward x forwards per second
    # memory, labelled by source (None = not measurable here)
    kv_cache_bytes_peak: int | None = None  # the target model's K/V cache
    draft_kv_cache_bytes_peak: int | None = None  # a draft model's own K/V cache, beside it (None: none kept)
    nvml_device_used_mib: float | None = None
    nvml_process_used_mib: float | None = None
    torch_max_allocated_mib: float | None = None
    torch_max_reserved_mib: float | None = None
    rss_peak_mib: float | None = None
    # identity against the reference engine for the same prompt and settings
    reference_engine: str | None = None
    identity_exact: bool | None = None
    first_divergence: int | None = None
    match_fraction: float | None = None
    divergence_margin: float | None = None  # reference top-1 minus top-2 logit at first_divergence
    ar_nll: float | None = None
    # batching: the prompts of a cell are grouped in order, batch_size at a time (the last batch may
    # hold fewer rows: batch_rows); one record per row, carrying the figures of its batch
    batch_id: int | None = None  # which batch of the cell (0-based, in prompt order)
    batch_index: int | None = None  # the row within that batch
    batch_rows: int | None = None  # rows decoded together in that batch (<= the cell's batch_size)
    batch_prompt_ids: list[str] | None = None  # the prompts of that batch, in row order
    batch_new_tokens: int | None = None  # new tokens of every row of the batch
    batch_e2e_ms: float | None = None  # the whole generate_batch call
    batch_tokens_per_s: float | None = None  # total throughput: batch_new_tokens / batch_e2e_ms
    batch_forward_passes: int | None = None  # forward calls of the batch (each over every row)
    batch_tokens_per_forward: float | None = None  # all rows' tokens over all rows' own passes
    batch_acceptance_length: float | None = None  # accepted drafts per cycle, pooled over the batch's rows
    batch_wasted_row_pass_fraction: float | None = None  # row-passes spent on rows that had finished
    batch_kv_cache_bytes_peak: int | None = None  # K/V bytes the whole batch held
    # batch invariance: identity against the same engine and settings at batch size 1 (same run)
    identity_vs_batch1_exact: bool | None = None
    first_divergence_vs_batch1: int | None = None
    divergence_margin_vs_batch1: float | None = None  # reference model's top-1 minus top-2 logit there
    # harness bookkeeping
    harness_overhead_ms: float | None = None  # time per measurement spent outside generate()
    scheduling_overhead_ms: float | None = None  # distributed executors: time spent getting the work to a
    # worker and the record back, beyond the worker's own time (a cell's overhead: the sum over its records)
    node: str | None = None  # the host that measured it (distributed executors; None: the local executor)
    timestamp: float | None = None
    version: int = RECORD_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # harness notes and engine-specific figures

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_generation(
        cls,
        result: GenerationResult,
        description: EngineDescription,
        *,
        run_id: str,
        cell_id: str,
        cell: dict[str, Any],
        prompt_id: str,
        repeat: int,
        category: str | None = None,
        memory: dict[str, float | None] | None = None,
        weight_bytes: int | None = None,
        batch: BatchResult | None = None,
        batch_id: int = 0,
        batch_index: int = 0,
        batch_prompt_ids: list[str] | None = None,
        quality: dict[str, Any] | None = None,
        notes: dict[str, Any] | None = None,
        harness_overhead_ms: float | None = None,
        timestamp: float | None = None,
    ) -> MeasurementRecord:
        """The whole record of one row of a successful ``generate_batch`` call (a single prompt is a
        batch of one), built once: ``memory`` holds the trackers' figures and ``quality`` the checks'
        findings, by record field name; ``weight_bytes`` (bytes one forward pass reads) gives the
        bandwidth; ``batch`` the batch's own figures (BatchResult's definitions; default: the row's
        own); ``notes`` go to ``extra``."""
        batch = batch if batch is not None else BatchResult.of_single(result)
        passes = result.total_forward_passes
        fields_: dict[str, Any] = dict(
            run_id=run_id,
            cell_id=cell_id,
            cell=cell,
            prompt_id=prompt_id,
            repeat=repeat,
            category=category,
            **_facts(description),
            prompt_tokens=result.prompt_tokens,
            new_tokens=result.new_tokens,
            tokens=list(result.tokens),
            stop_reason=result.stop_reason,
            ttft_ms=result.ttft_ms,
            tpot_ms=result.tpot_ms,
            itl_ms=result.itl_ms,
            e2e_ms=result.e2e_ms,
            decode_tokens_per_s=result.decode_tokens_per_s,
            cycles=result.cycles,
            drafted_per_cycle=list(result.drafted_per_cycle),
            accepted_per_cycle=list(result.accepted_per_cycle),
            acceptance_length=result.acceptance_length,
            acceptance_by_position=result.acceptance_by_position,
            chosen_blocks=list(result.chosen_blocks) or None,
            kv_cache_bytes_peak=result.kv_cache_bytes_peak,
            draft_kv_cache_bytes_peak=result.draft_kv_cache_bytes_peak,
            harness_overhead_ms=harness_overhead_ms,
            timestamp=timestamp,
            **_batch_fields(batch, batch_id, batch_index, batch_prompt_ids or [prompt_id]),
        )
        extra: dict[str, Any] = {}
        if passes:
            fields_.update(
                forward_passes=passes,
                forward_passes_by_kind=dict(result.forward_passes),
                tokens_per_forward=result.tokens_per_forward,
            )
        else:  # the engine does not count its passes: unknown, not zero
            extra["forward_passes_counted"] = False
        engine_extra = dict(result.extra)
        per_step = engine_extra.pop("tokens_per_step", None)
        denoise_steps = engine_extra.pop("denoise_steps", None)
        if denoise_steps is None and result.forward_passes.get("denoise"):
            denoise_steps = int(result.forward_passes["denoise"])
        fields_["denoise_steps"] = denoise_steps
        if isinstance(per_step, list):
            extra["tokens_committed_per_step"] = per_step
            fields_["tokens_per_step"] = sum(per_step) / len(per_step) if per_step else None
        elif per_step is not None:
            fields_["tokens_per_step"] = float(per_step)
        elif denoise_steps:
            fields_["tokens_per_step"] = result.new_tokens / denoise_steps
        extra.update(engine_extra)
        extra.update(notes or {})
        if weight_bytes and passes and result.e2e_ms:
            fields_["memory_bandwidth_gb_s"] = weight_bytes * passes / (result.e2e_ms / 1e3) / 1e9
        for group in (memory or {}, quality or {}):
            for name, value in group.items():
                if name not in _FIELDS or name in _IDENTITY:
                    raise ValueError(f"figure {name!r} is not a field of MeasurementRecord")
                fields_[name] = value
        return cls(**fields_, extra=extra)

    @classmethod
    def failed(
        cls,
        error: str,
        description: EngineDescription | None = None,
        *,
        run_id: str,
        cell_id: str,
        cell: dict[str, Any],
        prompt_id: str,
        repeat: int,
        category: str | None = None,
        prompt_tokens: int | None = None,
        timestamp: float | None = None,
        batch_id: int | None = None,
        batch_index: int | None = None,
        batch_prompt_ids: list[str] | None = None,
        notes: dict[str, Any] | None = None,
    ) -> MeasurementRecord:
        """The record of a measurement (or, with no engine built, a whole cell) that failed; a row of
        a failed batch names its batch."""
        return cls(
            run_id=run_id,
            cell_id=cell_id,
            cell=cell,
            prompt_id=prompt_id,
            repeat=repeat,
            status="failed",
            error=error[:500],
            category=category,
            prompt_tokens=prompt_tokens,
            timestamp=timestamp,
            batch_id=batch_id,
            batch_index=batch_index,
            batch_rows=len(batch_prompt_ids) if batch_prompt_ids is not None else None,
            batch_prompt_ids=batch_prompt_ids,
            extra=dict(notes or {}),
            **(_facts(description) if description is not None else {}),
        )

    @classmethod
    def skipped(
        cls,
        reason: str,
        *,
        run_id: str,
        cell_id: str,
        cell: dict[str, Any],
        prompt_id: str,
        repeat: int,
        timestamp: float | None = None,
    ) -> MeasurementRecord:
        """The record of a cell that was not measured on purpose (e.g. an engine that cannot batch at
        the cell's batch size): counted as skipped, never as failed."""
        return cls(
            run_id=run_id,
            cell_id=cell_id,
            cell=cell,
            prompt_id=prompt_id,
            repeat=repeat,
            status="skipped",
            skip_reason=reason[:500],
            timestamp=timestamp,
        )

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """One line of results.jsonl: every field, in field order."""
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasurementRecord:
        """A record from one line of results.jsonl (any version); unknown keys go to ``extra``."""
        data = dict(data)
        extra = dict(data.pop("extra", None) or {})
        if int(data.get("version") or 1) < 2:  # version 1 kept two engine facts in extra
            data.setdefault("lossless", extra.pop("lossless", None))
            block = extra.pop("engine_block_size", None)
            cell = data.get("cell") or {}
            data.setdefault("block_size", block if block is not None else cell.get("block_size"))
            data["version"] = RECORD_VERSION
        known = {k: v for k, v in data.items() if k in _FIELDS}
        extra.update({k: v for k, v in data.items() if k not in _FIELDS})
        missing = [k for k in _IDENTITY if k not in known]
        if missing:
            raise ValueError(f"a measurement record needs {', '.join(missing)}")
        return cls(**known, extra=extra)


def _batch_fields(batch: BatchResult, batch_id: int, batch_index: int, prompt_ids: list[str]) -> dict[str, Any]:
    """The batch a row was decoded in and the batch's own figures (BatchResult's definitions)."""
    accepted = [a for row in batch.rows for a in row.accepted_per_cycle]
    counted = bool(batch.total_forward_passes)
    return dict(
        batch_id=batch_id,
        batch_index=batch_index,
        batch_rows=batch.batch_size,
        batch_prompt_ids=[str(p) for p in prompt_ids],
        batch_new_tokens=batch.new_tokens,
        batch_e2e_ms=batch.e2e_ms,
        batch_tokens_per_s=batch.tokens_per_s,
        batch_forward_passes=batch.total_forward_passes or None,
        batch_tokens_per_forward=batch.tokens_per_forward if counted else None,
        batch_acceptance_length=sum(accepted) / len(accepted) if accepted else None,
        batch_wasted_row_pass_fraction=batch.wasted_row_pass_fraction if counted else None,
        batch_kv_cache_bytes_peak=batch.kv_cache_bytes_peak,
    )


def _facts(description: EngineDescription) -> dict[str, Any]:
    return {
        "block_size": description.block_size,
        "kv_bytes_per_token": description.kv_bytes_per_token,
        "lossless": description.lossless,
        "synthetic": description.synthetic,
        "compile_s": description.compile_s,
        "compiled_graphs": description.compiled_graphs,
        "extra_parameters": description.extra_parameters,
        "extra_parameter_bytes": description.extra_parameter_bytes,
    }


_FIELDS = tuple(f.name for f in fields(MeasurementRecord))
_IDENTITY = ("run_id", "cell_id", "cell", "prompt_id", "repeat")


def record_key(record: dict[str, Any]) -> tuple[str, str, int]:
    """(cell_id, prompt_id, repeat): what a measurement is; --resume and merges keep each key once."""
    return (str(record["cell_id"]), str(record["prompt_id"]), int(record["repeat"]))
