"""The shape of a suite: its key names and the typed specs a validated suite is made of.

Shape of a suite (defaults in brackets; see suites/long_context.yaml for a full example)::

    name: long_context            # [file stem] runs land in reports/<name>/<run-id>/
    description: ...
    models:                       # key -> checkpoint
      base: {path: tiny-base, dtype: float32, device: cpu, attn_implementation: sdpa,
             trust_remote_code: false, tokenizer: null}
    engines:                      # what is measured; each references a model by key
      - {engine: orthrus, label: orthrus, model: base, draft_model: null, options: {}}
    sweep:                        # lists expand to a matrix; scalars are one-element lists
      context_lengths: [512]      # synthetic prompts only
      block_sizes: [null]         # engines that take a block size; null = the model's own
      temperatures: [0.0]
      top_k: [0]
      top_p: [1.0]
      max_new_tokens: [64]
      batch_sizes: [1]
      exclude: []                 # mappings over the axes; a cell matching all keys is dropped
      include: []                 # mappings over the axes; cells added (unnamed axes expand)
    prompts:                      # one source or a list of sources (an axis of the matrix)
      - {source: synthetic, count: 2, corpus: heldout}
    measure: {repetitions: 3, warmup: 1, min_duration_s: 0, max_repetitions: 100, seed: 0,
              threads: 0, stop_at_eos: false, sample_interval_ms: 10,
              order: cells}           # rounds: repetition r of every cell before r+1 of any;
                                      # interleaved: as rounds, and prompt i of every cell before i+1
    reference: {engine: ar, model: <the ar engine's model>}   # null: no identity check
    gates: []                     # list of mappings, evaluated by orthrus.report
    quick: {measure.repetitions: 1}   # overrides that --quick applies (dotted key paths)
    select: {engines: [ar, orthrus]}  # what --engines sets: only these labels are measured
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from orthrus.results.vocabulary import MATRIX_AXES, SWEPT_AXES

DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
PROMPT_SOURCES = ("synthetic", "jsonl", "inline")
CORPUS_SPLITS = ("heldout", "train")
# the axes of the matrix and the sweep's keys, defaults and checks: orthrus.results.vocabulary
AXES = MATRIX_AXES
SWEEP_AXES = {axis.sweep_key: axis.name for axis in SWEPT_AXES}
SWEEP_DEFAULTS: dict[str, list[Any]] = {axis.sweep_key: list(axis.default) for axis in SWEPT_AXES}
TOP_KEYS = (
    "name",
    "description",
    "models",
    "engines",
    "sweep",
    "prompts",
    "measure",
    "reference",
    "gates",
    "quick",
    "select",
)
MODEL_KEYS = ("path", "dtype", "device", "attn_implementation", "trust_remote_code", "tokenizer")
ENGINE_KEYS = ("engine", "label", "model", "draft_model", "options")
SWEEP_KEYS = (*SWEEP_AXES, "exclude", "include")
MEASURE_KEYS = (
    "repetitions",
    "warmup",
    "min_duration_s",
    "max_repetitions",
    "seed",
    "threads",
    "stop_at_eos",
    "sample_interval_ms",
    "order",
)
MEASURE_ORDERS = ("cells", "rounds", "interleaved")
ROUND_ORDERS = ("rounds", "interleaved")  # exactly measure.repetitions per prompt, every model loaded
REFERENCE_KEYS = ("engine", "model")
SELECT_KEYS = ("engines",)
PROMPT_KEYS = {
    "synthetic": ("source", "name", "count", "corpus"),
    "jsonl": (
        "source",
        "name",
        "path",
        "count",
        "per_category",
        "prompt_field",
        "turn",
        "id_field",
        "category_field",
        "categories",
        "chat_template",
        "system_prompt",
    ),
    "inline": ("source", "name", "prompts", "chat_template", "system_prompt"),
}
INLINE_PROMPT_KEYS = ("id", "text", "ids", "category")


@dataclass
class ModelSpec:
    key: str
    path: str  # as written in the suite (a zoo name or a path): part of the cell's identity
    resolved: Path | None  # the directory; None for a zoo model that is not built yet
    dtype: str = "float32"
    device: str = "cpu"
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    tokenizer: Path | None = None  # directory with tokenizer files (default: the model's)
    max_positions: int | None = None  # config.json's max_position_embeddings (read without loading weights)
    vocab_size: int | None = None  # config.json's vocab_size: every prompt id is below it
    missing_reason: str | None = None  # set when resolved is None


@dataclass
class EngineSpec:
    index: int
    engine: str  # registry name (orthrus.engines.ENGINES)
    label: str  # unique name in this suite (cells and reports use it)
    model: str
    draft_model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptSourceSpec:
    index: int
    source: str
    name: str
    count: int | None = None
    corpus: str = "heldout"  # synthetic: 'heldout', 'train' or a text file / directory
    path: Path | None = None  # jsonl
    per_category: int | None = None
    prompt_field: str | None = None
    turn: int = 0
    id_field: str | None = None
    category_field: str = "category"
    categories: list[str] | None = None
    chat_template: bool = False
    system_prompt: str | None = None
    prompts: list[dict[str, Any]] = field(default_factory=list)  # inline

    @property
    def uses_context_length(self) -> bool:
        return self.source == "synthetic"


@dataclass
class MeasureSpec:
    repetitions: int = 3
    warmup: int = 1
    min_duration_s: float = 0.0
    max_repetitions: int = 100
    seed: int = 0
    threads: int = 0
    stop_at_eos: bool = False
    sample_interval_ms: float = 10.0
    # "cells": every repetition of a cell, then the next cell; "rounds": repetition r of every cell
    # (in suite order, each cell warmed up again) before repetition r + 1 of any, so that the cells
    # of one run are measured under the same machine load (their ratios hold on a shared machine);
    # "interleaved": as rounds, and within a round prompt i (batch i) of every cell before prompt
    # i + 1 of any, so the engines compared on one prompt are measured seconds apart, not a cell apart
    # (and take turns going first: orthrus.bench.schedule)
    order: str = "cells"


@dataclass
class ReferenceSpec:
    engine: str  # registry name
    model: str  # model key


@dataclass
class Sweep:
    axes: dict[str, list[Any]]  # cell axis -> values (block_size may hold None)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Sampling:
    """How tokens are chosen: greedy at temperature 0, else sampled after top-k and top-p."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True, eq=False)
class Cell:
    """One combination of settings: an engine (with its model) on a prompt source at one value of every
    axis. ``params`` is what records carry as ``cell`` and what ``cell_id`` hashes."""

    engine: EngineSpec
    model: ModelSpec
    draft_model: ModelSpec | None
    source: PromptSourceSpec
    context_length: int | None  # synthetic prompts only
    block_size: int | None  # as the suite asked (None: the engine's default; engines without one: None)
    sampling: Sampling
    max_new_tokens: int
    batch_size: int
    seed: int
    stop_at_eos: bool

    @property
    def label(self) -> str:
        return self.engine.label

    @cached_property
    def params(self) -> dict[str, Any]:
        draft = self.draft_model
        return {
            "engine": self.engine.engine,
            "label": self.engine.label,
            "engine_options": dict(self.engine.options),
            "model": self.engine.model,
            "model_path": self.model.path,
            "dtype": self.model.dtype,
            "device": self.model.device,
            "attn_implementation": self.model.attn_implementation,
            "draft_model": self.engine.draft_model,
            "draft_model_path": draft.path if draft else None,
            "prompt_source": self.source.name,
            "context_length": self.context_length,
            "block_size": self.block_size,
            **asdict(self.sampling),
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "stop_at_eos": self.stop_at_eos,
        }

    @cached_property
    def cell_id(self) -> str:
        return cell_id_of(self.params)


def cell_id_of(params: dict[str, Any]) -> str:
    """Stable across machines and runs: a hash of the settings as written (not of resolved paths)."""
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Suite:
    name: str
    description: str
    models: dict[str, ModelSpec]
    engines: list[EngineSpec]
    sweep: Sweep
    prompts: list[PromptSourceSpec]
    measure: MeasureSpec
    reference: ReferenceSpec | None
    gates: list[Any] | dict[str, Any]  # as written; parsed by orthrus.report.gates
    selected_engines: list[str] | None
    raw: dict[str, Any]  # the effective suite (after overrides), as written to the run's suite.yaml
    source_path: Path | None = None
    file_sha256: str | None = None
    cells: list[Cell] = field(default_factory=list)  # the expanded matrix in run order, set once by validation

    @property
    def sha256(self) -> str:
        return suite_hash(self.raw)

    def engine(self, label: str) -> EngineSpec:
        return next(e for e in self.engines if e.label == label)


def suite_hash(raw: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()
