"""The runner: for each (cell, prompt, repeat) one timed ``generate`` call, trackers alongside, one record.

The runner knows nothing about how an engine decodes: it builds engines by name, feeds them token
ids and turns each ``GenerationResult`` into a ``MeasurementRecord``. Order of work:

1. take the suite's cells (expanded once at validation, reference engine first), this shard's slice;
2. build every prompt (so data problems stop the run before anything is written);
3. per cell: load its model(s) once (kept while later cells need them), build the engine, run the
   warm-up generations (not recorded), then per prompt the repetitions: at least
   ``measure.repetitions`` and until their total time reaches ``measure.min_duration_s``;
4. per measurement: memory trackers around the call, identity against the reference engine's
   greedy tokens (greedy cells), AR NLL (engines that are not lossless); the record is appended to
   results.jsonl and fsynced at once;
5. summary.csv/json and run.json; the caller (the composition root) prints the summary, runs the
   gates and renders the report.

A failure inside a cell (an exception, out of memory, a missing engine or model) becomes a failed
record with its error and the run goes on; the exit code then says that something failed.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from orthrus.bench.environment import collect_environment, git_commit
from orthrus.bench.matrix import shard
from orthrus.bench.prompts import Prompt, PromptFactory
from orthrus.bench.suite.spec import ROUND_ORDERS, Cell, ModelSpec, Suite
from orthrus.bench.summary import format_table
from orthrus.bench.trackers import MemoryTracker
from orthrus.engines import DEFAULT_BLOCK_SIZE, engine_class
from orthrus.errors import UserInputError
from orthrus.results.record import MeasurementRecord, record_key
from orthrus.results.rundir import RESULTS_FILE, ResultsWriter, RunLock, read_records, write_json
from orthrus.results.summary import overhead_stats, write_summary

CELL_PROMPT = "*"  # prompt_id of a record that fails a whole cell (model, engine or prompts unavailable)


@dataclass
class RunOptions:
    out_root: Path = Path("reports")
    run_id: str | None = None
    resume_dir: Path | None = None
    shard: tuple[int, int] | None = None
    quiet: bool = False
    argv: list[str] = field(default_factory=list)
    executor: Any = None  # where the cells are measured (orthrus.bench.executors); None: this process


@dataclass
class RunOutcome:
    """What a run leaves for its caller: the exit code and what the printed summary needs."""

    code: int  # 0 everything measured, 1 some measurement or cell failed, 130 interrupted
    run_dir: Path
    records: list[dict[str, Any]]
    info: dict[str, Any]
    frame: Any = None  # the summary table (None when interrupted)


def run_suite(suite: Suite, options: RunOptions) -> RunOutcome:
    """Measure every (cell, prompt, repeat) of ``suite`` not yet recorded; write results and summary.
    A full disk ends the run with one sentence (UserInputError): what was recorded stays, resumable."""
    runner = Runner(suite, options)
    try:
        return runner.run()
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise UserInputError(disk_full_message(err, runner.run_dir)) from err


DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def disk_full_message(err: OSError, run_dir: Path | None) -> str:
    """One sentence: the disk is full, what is safe, how to go on."""
    where = f"writing {err.filename}" if err.filename else (err.strerror or "No space left on device")
    if run_dir is None:
        return f"the disk is full ({where}) before the run started; free some space and run again."
    kept = len(read_records(run_dir / RESULTS_FILE))
    return (
        f"the disk is full ({where}); the {kept} measurement(s) recorded so far are safe in {run_dir}; "
        f"free some space and continue with: python run_bench.py --resume {run_dir}"
    )


class CellFailure(Exception):
    """A whole cell cannot run (its message is the record's error)."""


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    line = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return line[:500]


# --------------------------------------------------------------------------- models and engines
def loader_key(model_key: str, model_kind: str) -> tuple[str, str]:
    """A model is loaded once per loader: the DLM loader for ``dlm`` engines, else the causal loader,
    whose model has both views (so ``causal`` and ``dual_view`` engines share it)."""
    return (model_key, "dlm" if model_kind == "dlm" else "causal")


class ModelPool:
    """Loads each (model, loader) once; frees models no remaining cell needs."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], Any] = {}
        self.failures: dict[tuple[str, str], str] = {}
        self._weight_bytes: dict[int, int] = {}

    def get(self, spec: ModelSpec, model_kind: str = "causal") -> Any:
        key = loader_key(spec.key, model_kind)
        if key in self.failures:
            raise CellFailure(self.failures[key])
        if key not in self.models:
            try:
                self.models[key] = load_model(spec, key[1])
            except CellFailure as err:
                self.failures[key] = str(err)
                raise
            except Exception as err:  # noqa: BLE001 - any load failure fails the cells of that model
                self.failures[key] = f"loading model {spec.key!r} failed: {one_line(err)}"
                raise CellFailure(self.failures[key]) from err
        return self.models[key]

    def release(self, keep: set[tuple[str, str]]) -> None:
        dropped = [key for key in self.models if key not in keep]
        for key in dropped:
            del self.models[key]
        if dropped:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def weight_bytes(self, model: Any) -> int:
        """Bytes of the weights one forward pass reads (unique tensors; the AR view of an Orthrus model)."""
        if id(model) not in self._weight_bytes:
            from orthrus.models.modeling_orthrus import is_diffusion_param

            seen: set[int] = set()
            total = 0
            for name, param in model.named_parameters():
                if is_diffusion_param(name) or param.data_ptr() in seen:
                    continue
                seen.add(param.data_ptr())
                total += param.numel() * param.element_size()
            self._weight_bytes[id(model)] = total
        return self._weight_bytes[id(model)]


def load_model(spec: ModelSpec, loader: str) -> Any:
    """The model behind ``spec`` through ``loader`` ('dlm' or 'causal'), in eval mode."""
    if spec.resolved is None:
        raise CellFailure(spec.missing_reason or f"model {spec.key!r} is not available")
    if loader == "dlm":
        from orthrus.models.dlm import load_diffusion_lm

        model = load_diffusion_lm(
            spec.resolved,
            dtype=spec.dtype,
            device=spec.device,
            trust_remote_code=spec.trust_remote_code,
            attn_implementation=spec.attn_implementation,
        )
    else:
        model = _load_causal(spec)
    model.eval()
    return model


def _load_causal(spec: ModelSpec) -> Any:
    """load_causal_lm; a plain Qwen3 whose tokenizer names a mask token gets its view with that id.

    (Without it, load_causal_lm adds an extra embedding row for the mask, and the transformers-based
    engines, which need the plain vocabulary, cannot run the model.)
    """
    from orthrus.models import OrthrusForCausalLM, load_causal_lm, parse_dtype
    from orthrus.models.checkpoint import check_remote_code, read_json_object

    assert spec.resolved is not None
    check_remote_code(spec.resolved, spec.trust_remote_code, f"models.{spec.key}")
    config = read_json_object(spec.resolved / "config.json")
    tokenizer_dir = spec.tokenizer or spec.resolved
    mask_id = None
    if config.get("model_type") == "qwen3" and "mask_token_id" not in config:
        tokenizer_config = tokenizer_dir / "tokenizer_config.json"
        tokenizer_file = tokenizer_dir / "tokenizer.json"
        if tokenizer_config.is_file() and tokenizer_file.is_file():
            mask = read_json_object(tokenizer_config).get("mask_token")
            mask = mask.get("content") if isinstance(mask, dict) else mask
            for token in read_json_object(tokenizer_file).get("added_tokens", []):
                if mask is not None and token.get("content") == mask:
                    mask_id = int(token["id"])
    if mask_id is None or mask_id >= int(config.get("vocab_size", 0)):
        return load_causal_lm(
            spec.resolved,
            dtype=spec.dtype,
            device=spec.device,
            attn_implementation=spec.attn_implementation,
            trust_remote_code=spec.trust_remote_code,
        )
    model = OrthrusForCausalLM.from_base(
        spec.resolved,
        block_size=DEFAULT_BLOCK_SIZE,
        mask_token_id=mask_id,
        dtype=parse_dtype(spec.dtype),
        attn_implementation=spec.attn_implementation,
        trust_remote_code=spec.trust_remote_code,
    )
    model.name_or_path = spec.path
    return model.to(spec.device)


def build_cell_engine(cell: Cell, pool: ModelPool) -> Any:
    from orthrus.engines import build_engine

    name = cell.engine.engine
    model = pool.get(cell.model, engine_class(name).model_kind)
    options = dict(cell.engine.options)
    if cell.params["block_size"] is not None:
        options["block_size"] = cell.params["block_size"]
    if cell.draft_model is not None:
        options["draft_model"] = pool.get(cell.draft_model)
    try:
        return build_engine(name, model, **options)
    except UserInputError as err:
        raise CellFailure(f"engine {cell.params['label']!r}: {err}") from err
    except Exception as err:  # noqa: BLE001
        raise CellFailure(f"building engine {cell.params['label']!r} failed: {one_line(err)}") from err


# --------------------------------------------------------------------------- reference and quality
def _tokenizer_fingerprint(directory: Path | None) -> str | None:
    if directory is None:
        return None
    file = directory / "tokenizer.json"
    if file.is_file():
        return hashlib.sha1(file.read_bytes()).hexdigest()
    return str(directory.resolve())


class Reference:
    """The reference engine's greedy tokens per prompt, the top-2 margins and AR NLLs (cached)."""

    def __init__(self, suite: Suite, pool: ModelPool, factory: PromptFactory) -> None:
        self.spec = suite.reference
        self.suite = suite
        self.pool = pool
        self.factory = factory
        self.tokens_cache: dict[tuple, list[int]] = {}
        self.margins: dict[tuple, float] = {}
        self.nlls: dict[tuple, float | None] = {}
        self._engine: Any = None
        self.fingerprint = None
        if self.spec is not None:
            self.model_spec = suite.models[self.spec.model]
            self.fingerprint = _tokenizer_fingerprint(factory.tokenizer_dir(self.model_spec))

    @property
    def needed_models(self) -> set[tuple[str, str]]:
        return set() if self.spec is None else {loader_key(self.spec.model, "causal")}

    def compatible(self, cell: Cell) -> bool:
        """Token ids mean the same to the reference model (same tokenizer file)."""
        if self.spec is None:
            return False
        if cell.model.key == self.spec.model:
            return True
        return self.fingerprint is not None and self.fingerprint == _tokenizer_fingerprint(
            self.factory.tokenizer_dir(cell.model)
        )

    def is_reference_cell(self, cell: Cell) -> bool:
        return (
            self.spec is not None
            and cell.engine.engine == self.spec.engine
            and cell.model.key == self.spec.model
            and cell.params["temperature"] == 0.0
            and not cell.engine.options
            and cell.params.get("batch_size") in (1, None)  # the reference is solo AR
        )

    @staticmethod
    def _key(prompt: Prompt, cell: Cell) -> tuple:
        digest = hashlib.sha1(str(prompt.ids).encode()).hexdigest()
        return (digest, cell.params["max_new_tokens"], cell.params["stop_at_eos"])

    def offer(self, cell: Cell, prompt: Prompt, tokens: list[int]) -> None:
        if self.is_reference_cell(cell):
            self.tokens_cache.setdefault(self._key(prompt, cell), list(tokens))

    def model(self) -> Any:
        assert self.spec is not None
        return self.pool.get(self.model_spec)

    def tokens(self, prompt: Prompt, cell: Cell, eos: int | None) -> list[int]:
        key = self._key(prompt, cell)
        if key not in self.tokens_cache:
            from orthrus.engines import build_engine

            assert self.spec is not None
            if self._engine is None or self._engine.model is not self.model():
                self._engine = build_engine(self.spec.engine, self.model())
            result = self._engine.generate(prompt.ids, cell.params["max_new_tokens"], eos_token_id=eos)
            self.tokens_cache[key] = list(result.tokens)
        return self.tokens_cache[key]

    def margin(self, prompt: Prompt, cell: Cell, reference_tokens: list[int], position: int) -> float:
        from orthrus.quality import divergence_margin

        key = (*self._key(prompt, cell), position)
        if key not in self.margins:
            self.margins[key] = divergence_margin(self.model(), prompt.ids, reference_tokens, position)
        return self.margins[key]

    def nll(self, prompt: Prompt, tokens: list[int]) -> float | None:
        from orthrus.quality import ar_nll

        key = (hashlib.sha1(str(prompt.ids).encode()).hexdigest(), tuple(tokens))
        if key not in self.nlls:
            self.nlls[key] = ar_nll(self.model(), prompt.ids, tokens)
        return self.nlls[key]


# --------------------------------------------------------------------------- planning
@dataclass
class PlannedCell:
    cell: Cell
    prompts: list[Prompt]
    failure: str | None = None  # the cell cannot run (reason); recorded as one failed record
    skip: str | None = None  # the cell is not measured on purpose (reason); recorded as one skipped record

    @property
    def batches(self) -> list[list[Prompt]]:
        """The prompts grouped in order, batch_size at a time; the last batch holds the rest (fewer rows)."""
        size = batch_size_of(self.cell)
        return [self.prompts[i : i + size] for i in range(0, len(self.prompts), size)]


def batch_size_of(cell: Cell) -> int:
    return int(cell.params.get("batch_size") or 1)


def plan(suite: Suite, shard_spec: tuple[int, int] | None, factory: PromptFactory) -> list[PlannedCell]:
    """Cells of this shard with their prompts; data errors raise UserInputError (nothing written yet).

    Cells at batch size 1 run before batched ones (otherwise in suite order), so that every batched
    row finds the same engine's batch-1 tokens (batch invariance). A cell whose engine cannot batch
    is planned as skipped above batch size 1 (its reason recorded), never run at batch 1 instead.
    """
    cells = sorted(suite.cells, key=lambda c: batch_size_of(c) != 1)  # expanded once, at validation
    if shard_spec is not None:
        cells = shard(cells, *shard_spec)
    planned = []
    ragged: set[tuple[int, int]] = set()
    for cell in cells:
        size = batch_size_of(cell)
        engine = engine_class(cell.engine.engine)
        if size > 1 and not engine.batchable:
            reason = f"engine {cell.engine.engine!r} cannot batch ({engine.cannot_batch_reason}); batch size {size}"
            planned.append(PlannedCell(cell, [], skip=reason))
            continue
        try:
            prompts = factory.prompts(cell.source, cell.model, cell.params["context_length"])
        except UserInputError as err:
            if cell.model.resolved is None:  # an unbuilt zoo model fails its cells, not the suite
                planned.append(PlannedCell(cell, [], failure=cell.model.missing_reason or str(err)))
                continue
            raise
        if not prompts:
            raise UserInputError(
                f"prompt source {cell.params['prompt_source']!r} gives no prompts for engine "
                f"{cell.params['label']!r}, so its batches would be empty; give the source at least one prompt."
            )
        _check_prompts_fit(cell, prompts)
        if len(prompts) % size and (len(prompts), size) not in ragged:
            ragged.add((len(prompts), size))
            print(
                f"note: {len(prompts)} prompts at batch size {size}: the last batch of each such cell holds "
                f"{len(prompts) % size} row(s) (recorded as batch_rows); use a multiple of {size} for full batches.",
                file=sys.stderr,
            )
        planned.append(PlannedCell(cell, prompts))
    return planned


def _check_prompts_fit(cell: Cell, prompts: list[Prompt]) -> None:
    """Every prompt id is in the vocabulary, and prompt plus budget fit the positions of each model
    the cell runs (config.json's vocab_size and max_position_embeddings), so a cell cannot fail on
    them at run time."""
    where = f"prompt source {cell.params['prompt_source']!r} on engine {cell.params['label']!r}"
    if batch_size_of(cell) > 1:
        where += f" at batch size {batch_size_of(cell)}"
    new = cell.params["max_new_tokens"]
    for model in (cell.model, cell.draft_model):
        if model is None:
            continue
        for prompt in prompts:
            if model.vocab_size is not None:
                bad = next((t for t in prompt.ids if not 0 <= t < model.vocab_size), None)
                if bad is not None:
                    raise UserInputError(
                        f"{where}: prompt {prompt.prompt_id!r} holds token id {bad}, outside the {model.vocab_size} "
                        f"ids of model {model.key!r}; use ids from 0 to {model.vocab_size - 1}."
                    )
            if model.max_positions is not None and len(prompt.ids) + new > model.max_positions:
                raise UserInputError(
                    f"{where}: prompt {prompt.prompt_id!r} ({len(prompt.ids):,} tokens) + max_new_tokens {new:,} "
                    f"exceeds the {model.max_positions:,} positions of model {model.key!r}; shorten the prompt "
                    "or lower max_new_tokens."
                )


def describe_plan(suite: Suite, planned: list[PlannedCell]) -> str:
    """The expanded matrix and the work it implies (for --dry-run)."""
    measure = suite.measure
    lines = [
        f"suite {suite.name!r}: {len(planned)} cells, repetitions {measure.repetitions} "
        f"(min duration {measure.min_duration_s:g} s, at most {measure.max_repetitions}), warm-up {measure.warmup} per cell",
        f"{'#':>3} {'cell_id':<16} {'engine':<16} {'model':<10} {'source':<14} {'ctx':>5} {'blk':>4} {'T':>4} "
        f"{'new':>4} {'prompts':>7} {'calls':>5}",
    ]
    calls = new_tokens = prompt_tokens = 0
    for i, item in enumerate(planned):
        p = item.cell.params
        n_calls = len(item.batches) * measure.repetitions + (measure.warmup if item.prompts else 0)
        calls += n_calls
        new_tokens += n_calls * p["max_new_tokens"]
        new_tokens += (len(item.prompts) - len(item.batches)) * measure.repetitions * p["max_new_tokens"]
        prompt_tokens += sum(len(x.ids) for x in item.prompts) * measure.repetitions
        if item.prompts and measure.warmup:
            prompt_tokens += sum(len(x.ids) for x in item.batches[0]) * measure.warmup
        note = f"  (fails: {item.failure})" if item.failure else f"  (skipped: {item.skip})" if item.skip else ""
        if batch_size_of(item.cell) > 1 and item.prompts:
            note = f"  batch {batch_size_of(item.cell)}{note}"
        lines.append(
            f"{i:>3} {item.cell.cell_id:<16} {p['label'][:16]:<16} {p['model'][:10]:<10} {p['prompt_source'][:14]:<14} "
            f"{_s(p['context_length']):>5} {_s(p['block_size']):>4} {p['temperature']:>4g} {p['max_new_tokens']:>4} "
            f"{len(item.prompts):>7} {n_calls:>5}{note}"
        )
    lines.append(
        f"estimated work: {calls} generate calls (at least), {new_tokens:,} new tokens, "
        f"{prompt_tokens:,} prompt tokens to prefill"
    )
    return "\n".join(lines)


def _s(value: Any) -> str:
    return "-" if value is None else str(value)


# --------------------------------------------------------------------------- the run


class LocalExecutor:
    """Every cell in this process, one after another (the default executor; the Ray one lives in
    orthrus.bench.executors and is handed in through RunOptions.executor by the command line)."""

    name = "local"

    def prepare(self, suite: Suite) -> None:
        pass

    def run(self, runner: Runner, planned: list[PlannedCell], writer: ResultsWriter, bar: Any) -> None:
        order = runner.suite.measure.order
        if order in ROUND_ORDERS:  # every model stays loaded: each round needs them all
            for round_ in range(runner.suite.measure.repetitions):
                if order == "rounds":
                    for item in planned:
                        runner._run_cell(item, writer, bar, round_)
                    continue
                # batched cells after every batch-1 unit of the round: their rows are checked against
                # the batch-1 tokens of repetition 0 (see plan)
                for solo in (True, False):
                    group = [item for item in planned if (batch_size_of(item.cell) == 1) == solo]
                    units = [max(len(item.batches), 1) for item in group]  # a cell without units still records why
                    for unit in range(max(units, default=0)):
                        for item, count in zip(group, units):
                            if unit < count:
                                runner._run_cell(item, writer, bar, round_, unit)
            return
        for index, item in enumerate(planned):
            runner._run_cell(item, writer, bar)
            runner.pool.release(runner._models_needed(planned[index + 1 :]))

    def info(self) -> dict[str, Any]:
        return {"kind": self.name}

    def close(self) -> None:
        pass


class Runner:
    def __init__(self, suite: Suite, options: RunOptions) -> None:
        self.suite = suite
        self.options = options
        self.factory = PromptFactory()
        self.pool = ModelPool()
        self.reference = Reference(suite, self.pool, self.factory)
        self.run_dir: Path | None = None
        self.run_id = ""
        self.write_ms_total = 0.0
        self.existing: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.executor: Any = None

    # ---------------------------------------------------------------- setup
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
        run_dir = self.run_dir
        resumed = self.options.resume_dir is not None
        if not resumed:
            (run_dir / "suite.yaml").write_text(
                f"# effective suite of run {self.run_id} (after command-line overrides)\n"
                + yaml.safe_dump(self.suite.raw, sort_keys=False, allow_unicode=True)
            )
        if not (run_dir / "environment.json").is_file():
            devices = sorted({m.device for m in self.suite.models.values()})
            dtypes = sorted({m.dtype for m in self.suite.models.values()})
            env = collect_environment(devices, dtypes, self.suite.sha256, self.suite.file_sha256)
            env.update(run_id=self.run_id, suite_name=self.suite.name)
            write_json(run_dir / "environment.json", env)
        prompts: dict[tuple[str, str], Prompt] = {}
        for item in planned:
            for prompt in item.prompts:
                prompts.setdefault((prompt.source, prompt.prompt_id), prompt)
        import json

        with (run_dir / "prompts.jsonl").open("w", encoding="utf-8") as handle:
            for prompt in prompts.values():
                handle.write(
                    json.dumps(
                        {
                            "prompt_id": prompt.prompt_id,
                            "source": prompt.source,
                            "category": prompt.category,
                            "context_length": prompt.context_length,
                            "prompt_tokens": len(prompt.ids),
                            "text": prompt.text,
                            "ids": prompt.ids,
                            "meta": prompt.meta,
                        }
                    )
                    + "\n"
                )

    def _run_info(self, status: str, started: float, records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        assert self.run_dir is not None
        previous = {}
        info_file = self.run_dir / "run.json"
        if info_file.is_file():
            import json

            try:
                previous = json.loads(info_file.read_text())
            except ValueError:
                previous = {}
        sessions = previous.get("sessions", [])
        session = {
            "started": started,
            "finished": time.time() if status != "running" else None,
            "status": status,
            "argv": self.options.argv,
            "git": git_commit(),
            "host_python": platform.python_version(),
        }
        if sessions and sessions[-1].get("started") == started:
            sessions[-1] = session
        else:
            sessions.append(session)
        info: dict[str, Any] = {
            "run_id": self.run_id,
            "suite_name": self.suite.name,
            "suite_sha256": self.suite.sha256,
            "suite_path": str(self.suite.source_path.resolve())
            if self.suite.source_path
            else previous.get("suite_path"),
            "shard": list(self.options.shard) if self.options.shard else None,
            "status": status,
            "sessions": sessions,
        }
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
            info.update(
                records=len(records),
                ok=ok,
                failed=len(records) - ok - skipped,
                skipped=skipped,
                harness_overhead=overhead,
            )
        if self.executor is not None:
            info["executor"] = self.executor.info()
        write_json(info_file, info)
        return info

    # ---------------------------------------------------------------- main loop
    def run(self) -> RunOutcome:
        """Measure what is not yet recorded, holding the run directory's lock throughout."""
        self._lock: RunLock | None = None
        try:
            return self._run()
        finally:
            if self.executor is not None:
                self.executor.close()
            if self._lock is not None:
                self._lock.release()

    def _run(self) -> RunOutcome:
        suite = self.suite
        if suite.measure.threads:
            torch.set_num_threads(suite.measure.threads)
        planned = plan(suite, self.options.shard, self.factory)
        executor = self.options.executor or LocalExecutor()
        executor.prepare(suite)  # cluster reachable, resources there: checked before the run directory exists
        self.executor = executor
        self.run_dir = self._make_run_dir()
        self.run_id = self.run_dir.name
        results = self.run_dir / RESULTS_FILE
        for record in read_records(results):
            self.existing.setdefault(record_key(record), record)
        self._write_metadata(planned)
        started = time.time()
        self._run_info("running", started)
        total = sum(
            (len(item.prompts) * suite.measure.repetitions if not item.failure else 1) for item in planned
        ) - len(self.existing)
        bar = _progress(max(total, 0), self.options.quiet)
        status = "finished"
        try:
            with ResultsWriter(results) as writer:
                executor.run(self, planned, writer, bar)
        except KeyboardInterrupt:
            status = "interrupted"
            bar.close()
            print(f"\ninterrupted; continue with: python run_bench.py --resume {self.run_dir}", file=sys.stderr)
            records = read_records(results)
            return RunOutcome(130, self.run_dir, records, self._run_info(status, started, records))
        finally:
            bar.close()
        records = read_records(results)
        frame = write_summary(self.run_dir, records)
        info = self._run_info(status, started, records)
        return RunOutcome(1 if info["failed"] else 0, self.run_dir, records, info, frame)

    def _models_needed(self, remaining: list[PlannedCell]) -> set[tuple[str, str]]:
        keep = set(self.reference.needed_models)
        for item in remaining:
            keep.add(loader_key(item.cell.model.key, engine_class(item.cell.engine.engine).model_kind))
            if item.cell.draft_model is not None:
                keep.add(loader_key(item.cell.draft_model.key, "causal"))
        return keep

    def _write(self, writer: ResultsWriter, record: MeasurementRecord) -> None:
        start = time.perf_counter()
        data = record.to_dict()
        writer.append(data)
        self.existing[record_key(data)] = data
        self.write_ms_total += (time.perf_counter() - start) * 1e3

    def _fail_cell(self, item: PlannedCell, message: str, writer: ResultsWriter, bar: Any) -> None:
        self._close_cell(item, "failed", message, writer, bar)

    def _skip_cell(self, item: PlannedCell, reason: str, writer: ResultsWriter, bar: Any) -> None:
        """One skipped record for a cell not measured on purpose (never counted as failed)."""
        self._close_cell(item, "skipped", reason, writer, bar)

    def _close_cell(self, item: PlannedCell, status: str, message: str, writer: ResultsWriter, bar: Any) -> None:
        """One record standing for a whole cell (prompt CELL_PROMPT) that ended without measurements."""
        cell = item.cell
        if (cell.cell_id, CELL_PROMPT, 0) in self.existing:
            return
        make = MeasurementRecord.failed if status == "failed" else MeasurementRecord.skipped
        record = make(
            message,
            run_id=self.run_id,
            cell_id=cell.cell_id,
            cell=cell.params,
            prompt_id=CELL_PROMPT,
            repeat=0,
            timestamp=time.time(),
        )
        self._write(writer, record)
        bar.update(max(1, len(item.prompts) * self.suite.measure.repetitions))
        if not self.options.quiet:
            bar.write(f"cell {status}: {cell.params['label']} ctx={_s(cell.params['context_length'])}: {message}")

    def _pending(self, item: PlannedCell, round_: int | None = None) -> bool:
        cell_id = item.cell.cell_id
        if (cell_id, CELL_PROMPT, 0) in self.existing:
            return False
        if round_ is None:
            reps = self.suite.measure.repetitions
            return any((cell_id, p.prompt_id, r) not in self.existing for p in item.prompts for r in range(reps))
        return any(  # round order: a prompt that failed in an earlier round is not measured again
            (cell_id, p.prompt_id, round_) not in self.existing and not self._failed_before(cell_id, p, round_)
            for p in item.prompts
        )

    def _failed_before(self, cell_id: str, prompt: Prompt, repeat: int) -> bool:
        """Whether an earlier repetition of this prompt failed (in round order, later rounds skip it)."""
        return any(
            self.existing.get((cell_id, prompt.prompt_id, r), {}).get("status", "ok") != "ok" for r in range(repeat)
        )

    def _run_cell(
        self, item: PlannedCell, writer: ResultsWriter, bar: Any, round_: int | None = None, unit: int | None = None
    ) -> None:
        """Measure the cell: all its repetitions, or with ``round_`` (measure.order rounds) only that
        repetition of each prompt, after its own warm-up; with ``unit`` too (measure.order
        interleaved) only that prompt (or batch), warmed up before unit 0 of each round."""
        cell = item.cell
        for prompt in item.prompts:  # measured tokens of the reference cell serve as the reference
            done = self.existing.get((cell.cell_id, prompt.prompt_id, 0))
            if done is not None and done.get("status") == "ok":
                self.reference.offer(cell, prompt, done["tokens"])
        if item.failure:
            self._fail_cell(item, item.failure, writer, bar)
            return
        if item.skip:
            self._skip_cell(item, item.skip, writer, bar)
            return
        if not self._pending(item, round_):
            return
        bar.set_description(f"{cell.params['label']} ctx={_s(cell.params['context_length'])}")
        try:
            engine = build_cell_engine(cell, self.pool)
        except CellFailure as err:
            self._fail_cell(item, str(err), writer, bar)
            return
        measure = self.suite.measure
        tokenizer_dir = self.factory.tokenizer_dir(cell.model)
        tokenizer = self.factory.tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
        eos = tokenizer.eos_token_id if (measure.stop_at_eos and tokenizer is not None) else None
        tracker = MemoryTracker(engine.device, measure.sample_interval_ms)
        weight_bytes = self.pool.weight_bytes(engine.model)
        warmup = measure.warmup if unit in (None, 0) else 0
        if batch_size_of(cell) > 1:
            self._run_batches(item, engine, eos, tokenizer, tracker, weight_bytes, writer, bar, round_, unit, warmup)
            return
        p = cell.params
        try:
            for _ in range(warmup):
                engine.generate(
                    item.prompts[0].ids, p["max_new_tokens"], p["temperature"], p["top_k"], p["top_p"], p["seed"], eos
                )
        except Exception as err:  # noqa: BLE001 - the cell cannot run
            _free_after_error(err)
            self._fail_cell(item, f"warm-up: {one_line(err)}", writer, bar)
            return

        def measure_one(index: int, prompts: list[Prompt], repeat: int) -> list[MeasurementRecord]:
            prompt = prompts[0]
            record = self._measure(cell, engine, prompt, repeat, eos, tokenizer, tracker, weight_bytes)
            if record.status == "ok":  # a batch of one: batch figures are this call's own
                record.batch_id, record.batch_index, record.batch_rows = index, 0, 1
                record.batch_prompt_ids = [prompt.prompt_id]
            return [record]

        units = [(prompt.prompt_id, [prompt]) for prompt in item.prompts]
        self._repeat_units(item, units, measure_one, writer, bar, round_, unit)

    def _run_batches(
        self,
        item: PlannedCell,
        engine: Any,
        eos: int | None,
        tokenizer: Any,
        tracker: MemoryTracker,
        weight_bytes: int,
        writer: ResultsWriter,
        bar: Any,
        round_: int | None = None,
        unit: int | None = None,
        warmup: int = 0,
    ) -> None:
        """A cell at batch size B > 1: each batch of prompts decoded by one generate_batch call per
        repetition."""
        from orthrus.engines import CannotBatchError

        cell, p = item.cell, item.cell.params
        try:
            for _ in range(warmup):
                engine.generate_batch(
                    [x.ids for x in item.batches[0]],
                    p["max_new_tokens"],
                    p["temperature"],
                    p["top_k"],
                    p["top_p"],
                    p["seed"],
                    eos,
                )
        except CannotBatchError as err:
            self._skip_cell(item, str(err), writer, bar)
            return
        except Exception as err:  # noqa: BLE001 - the cell cannot run
            _free_after_error(err)
            self._fail_cell(item, f"warm-up: {one_line(err)}", writer, bar)
            return

        def measure_batch(batch_id: int, batch: list[Prompt], repeat: int) -> list[MeasurementRecord] | None:
            return self._measure_batch(cell, engine, batch_id, batch, repeat, eos, tokenizer, tracker, weight_bytes)

        units = [(f"batch {batch_id}", batch) for batch_id, batch in enumerate(item.batches)]
        self._repeat_units(item, units, measure_batch, writer, bar, round_, unit)

    def _repeat_units(
        self,
        item: PlannedCell,
        units: list[tuple[str, list[Prompt]]],
        measure_unit: Callable[[int, list[Prompt], int], list[MeasurementRecord] | None],
        writer: ResultsWriter,
        bar: Any,
        round_: int | None,
        only: int | None = None,
    ) -> None:
        """The repetitions of each unit (one prompt, or one batch decoded by one call): at least
        ``measure.repetitions`` and until their calls reach min_duration_s, or with ``round_`` just
        that repetition (and with ``only``, of that unit alone). Records already in the run are kept (resume); a unit stops at its first
        failed measurement, in later rounds too. ``measure_unit`` returning None (the engine refused
        to batch at run time) ends the cell, which it has recorded as skipped."""
        cell, measure = item.cell, self.suite.measure
        first, last = (0, None) if round_ is None else (round_, round_)
        for index, (name, prompts) in enumerate(units):
            if only is not None and index != only:
                continue
            rows = len(prompts)
            if round_ is not None and any(self._failed_before(cell.cell_id, x, round_) for x in prompts):
                if (cell.cell_id, prompts[0].prompt_id, round_) not in self.existing:
                    bar.update(rows)  # a failed unit is not measured again in later rounds
                continue
            repeat, spent_ms = first, 0.0
            while True:
                keys = [(cell.cell_id, x.prompt_id, repeat) for x in prompts]
                enough = repeat >= measure.repetitions and spent_ms >= measure.min_duration_s * 1e3
                if enough or repeat >= measure.max_repetitions or (last is not None and repeat > last):
                    break
                if all(key in self.existing for key in keys):
                    done = self.existing[keys[0]]
                    spent_ms += done.get("batch_e2e_ms") or done.get("e2e_ms") or 0.0
                    repeat += 1
                    continue
                if repeat >= measure.repetitions:
                    bar.total += rows
                records = measure_unit(index, prompts, repeat)
                if records is None:
                    return
                for key, record in zip(keys, records):
                    if key not in self.existing:
                        self._write(writer, record)
                    bar.update(1)
                failed = next((r for r in records if r.status != "ok"), None)
                if failed is not None:
                    if not self.options.quiet:
                        bar.write(f"failed: {cell.params['label']} {name} repeat {repeat}: {failed.error}")
                    if round_ is None:  # in round order, later rounds account for their own skips
                        bar.update(max(0, measure.repetitions - repeat - 1) * rows)
                    break
                spent_ms += records[0].batch_e2e_ms or records[0].e2e_ms or 0.0
                repeat += 1

    def _measure_batch(
        self,
        cell: Cell,
        engine: Any,
        batch_id: int,
        batch: list[Prompt],
        repeat: int,
        eos: int | None,
        tokenizer: Any,
        tracker: MemoryTracker,
        weight_bytes: int,
    ) -> list[MeasurementRecord] | None:
        """One generate_batch call: one record per row (its own latency, tokens, identity), each
        carrying the batch's figures (MeasurementRecord.set_batch). None: the engine cannot batch."""
        from orthrus.engines import CannotBatchError
        from orthrus.engines.base import sync

        p = cell.params
        ids = [x.prompt_id for x in batch]

        def identity(prompt: Prompt) -> dict[str, Any]:
            return dict(
                run_id=self.run_id,
                cell_id=cell.cell_id,
                cell=p,
                prompt_id=prompt.prompt_id,
                repeat=repeat,
                category=prompt.category,
            )

        description = engine.describe()
        begin = time.perf_counter()
        device = engine.device
        try:
            sync(device)
            tracker.start()
            call_start = time.perf_counter()
            result = engine.generate_batch(
                [x.ids for x in batch], p["max_new_tokens"], p["temperature"], p["top_k"], p["top_p"], p["seed"], eos
            )
            sync(device)
            call_ms = (time.perf_counter() - call_start) * 1e3
            memory = tracker.stop()
        except CannotBatchError:
            tracker.stop()
            return None
        except Exception as err:  # noqa: BLE001 - OOM or an engine error fails this batch only
            tracker.stop()
            _free_after_error(err)
            failed = []
            for index, prompt in enumerate(batch):
                record = MeasurementRecord.failed(
                    one_line(err), description, prompt_tokens=len(prompt.ids), timestamp=time.time(), **identity(prompt)
                )
                record.batch_id, record.batch_index, record.batch_rows, record.batch_prompt_ids = (
                    batch_id,
                    index,
                    len(batch),
                    ids,
                )
                if not isinstance(err, (UserInputError, torch.OutOfMemoryError)):
                    record.extra["traceback"] = traceback.format_exc(limit=-3)[-2000:]
                failed.append(record)
            return failed
        records, quality_ms = [], 0.0
        for index, (prompt, row) in enumerate(zip(batch, result.rows)):
            record = MeasurementRecord.from_generation(
                row, description, memory=memory.as_dict(), weight_bytes=weight_bytes, **identity(prompt)
            )
            record.set_batch(result, batch_id, index, ids)
            record.extra["call_ms"] = call_ms
            if tokenizer is not None:
                record.extra["output_text"] = tokenizer.decode(row.tokens)
            quality_start = time.perf_counter()
            try:
                self._quality(record, cell, prompt, list(row.tokens), eos)
            except Exception as err:  # noqa: BLE001 - a quality check must not lose the measurement
                _free_after_error(err)
                record.extra["quality_error"] = one_line(err)
            record.extra["quality_ms"] = (time.perf_counter() - quality_start) * 1e3
            quality_ms += record.extra["quality_ms"]
            record.timestamp = time.time()
            records.append(record)
        # time outside generate_batch, shared equally by the rows of the batch
        overhead_ms = max(0.0, (time.perf_counter() - begin) * 1e3 - quality_ms - result.e2e_ms) / len(records)
        for record in records:
            record.harness_overhead_ms = overhead_ms
        return records

    def _measure(
        self,
        cell: Cell,
        engine: Any,
        prompt: Prompt,
        repeat: int,
        eos: int | None,
        tokenizer: Any,
        tracker: MemoryTracker,
        weight_bytes: int,
    ) -> MeasurementRecord:
        from orthrus.engines.base import sync

        p = cell.params
        identity = dict(
            run_id=self.run_id,
            cell_id=cell.cell_id,
            cell=p,
            prompt_id=prompt.prompt_id,
            repeat=repeat,
            category=prompt.category,
        )
        description = engine.describe()
        begin = time.perf_counter()
        device = engine.device
        try:
            sync(device)
            tracker.start()
            call_start = time.perf_counter()
            result = engine.generate(
                prompt.ids, p["max_new_tokens"], p["temperature"], p["top_k"], p["top_p"], p["seed"], eos
            )
            sync(device)
            call_ms = (time.perf_counter() - call_start) * 1e3
            memory = tracker.stop()
        except Exception as err:  # noqa: BLE001 - OOM or an engine error fails this measurement only
            tracker.stop()
            _free_after_error(err)
            record = MeasurementRecord.failed(
                one_line(err), description, prompt_tokens=len(prompt.ids), timestamp=time.time(), **identity
            )
            if not isinstance(err, (UserInputError, torch.OutOfMemoryError)):
                record.extra["traceback"] = traceback.format_exc(limit=-3)[-2000:]
            return record
        record = MeasurementRecord.from_generation(
            result, description, memory=memory.as_dict(), weight_bytes=weight_bytes, **identity
        )
        record.extra["call_ms"] = call_ms
        from orthrus.engines.base import BatchResult

        record.set_batch(BatchResult.of_single(result), 0, 0, [prompt.prompt_id])  # batch id set by the caller
        if tokenizer is not None:
            record.extra["output_text"] = tokenizer.decode(result.tokens)
        quality_start = time.perf_counter()
        try:
            self._quality(record, cell, prompt, list(result.tokens), eos)
        except Exception as err:  # noqa: BLE001 - a quality check must not lose the measurement
            _free_after_error(err)
            record.extra["quality_error"] = one_line(err)
        quality_ms = (time.perf_counter() - quality_start) * 1e3
        record.extra["quality_ms"] = quality_ms
        record.timestamp = time.time()
        elapsed_ms = (time.perf_counter() - begin) * 1e3 - quality_ms
        record.harness_overhead_ms = max(0.0, elapsed_ms - (record.e2e_ms or 0.0))
        return record

    def _quality(
        self, record: MeasurementRecord, cell: Cell, prompt: Prompt, tokens: list[int], eos: int | None
    ) -> None:
        self._batch_invariance(record, cell, prompt, tokens)
        reference = self.reference
        if reference.spec is None or not reference.compatible(cell):
            return
        reference.offer(cell, prompt, tokens)
        record.reference_engine = reference.spec.engine
        if cell.params["temperature"] == 0.0:
            expected = reference.tokens(prompt, cell, eos)
            from orthrus.quality import compare_tokens

            exact, first, fraction = compare_tokens(expected, tokens)
            record.identity_exact, record.first_divergence, record.match_fraction = exact, first, fraction
            if first is not None:
                record.divergence_margin = reference.margin(prompt, cell, expected, first)
        if not record.lossless:
            record.ar_nll = reference.nll(prompt, tokens)

    def _batch_invariance(self, record: MeasurementRecord, cell: Cell, prompt: Prompt, tokens: list[int]) -> None:
        """A batched row against the same engine and settings at batch size 1 in this run (measured
        first: plan orders batch-1 cells first), with the reference model's margin at a divergence."""
        if batch_size_of(cell) == 1:
            return
        from orthrus.results.derived import batch1_counterpart

        one = batch1_counterpart(
            {**cell.params, "cell_id": cell.cell_id}, [{**c.params, "cell_id": c.cell_id} for c in self.suite.cells]
        )
        solo = self.existing.get((one["cell_id"], prompt.prompt_id, 0)) if one is not None else None
        if solo is None or solo.get("status") != "ok" or solo.get("tokens") is None:
            return
        from orthrus.quality import compare_tokens, divergence_margin

        expected = list(solo["tokens"])
        exact, first, _ = compare_tokens(expected, tokens)
        record.identity_vs_batch1_exact, record.first_divergence_vs_batch1 = exact, first
        if first is not None and self.reference.spec is not None and self.reference.compatible(cell):
            record.divergence_margin_vs_batch1 = divergence_margin(self.reference.model(), prompt.ids, expected, first)


def _free_after_error(err: BaseException) -> None:
    if isinstance(err, torch.OutOfMemoryError) and torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


class NoBar:
    """The progress bar's interface without a bar: messages go to stderr (or nowhere, ``echo=False``)."""

    total = 0

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo

    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def write(self, text: str) -> None:
        if self.echo:
            print(text, file=sys.stderr)

    def close(self) -> None:
        pass


def _progress(total: int, quiet: bool) -> Any:
    if quiet:
        return NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="gen", dynamic_ncols=True, file=sys.stderr, smoothing=0.1)


# --------------------------------------------------------------------------- end of a run
def print_summary(
    run_dir: Path,
    frame: Any,
    records: list[dict[str, Any]],
    info: dict[str, Any],
    quiet: bool,
) -> None:
    """The summary table, harness overhead and failures (unless quiet), then where the files are."""
    failed = [r for r in records if r.get("status") not in ("ok", "skipped")]
    skipped = [r for r in records if r.get("status") == "skipped"]
    overhead = info.get("harness_overhead") or {}
    if not quiet:
        print(format_table(frame))
        pct = overhead.get("overhead_pct_with_writes", overhead.get("overhead_pct"))
        if overhead.get("measurements"):
            print(
                f"harness overhead: median {overhead['overhead_ms_median']:.2f} ms per measurement, "
                f"{pct:.2f}% of the measured time ({overhead['measurements']} measurements)"
            )
        for record in failed[:10]:
            print(f"failed: {record['cell'].get('label')} {record['prompt_id']}: {record.get('error')}")
        if len(failed) > 10:
            print(f"... and {len(failed) - 10} more failed records (see results.jsonl)")
        for record in skipped[:10]:
            print(
                f"skipped: {record['cell'].get('label')} batch {record['cell'].get('batch_size')}: {record.get('skip_reason')}"
            )
    skipped_text = f", {info['skipped']} skipped" if info.get("skipped") else ""
    print(f"results: {run_dir} ({info.get('ok', 0)} ok, {info.get('failed', 0)} failed{skipped_text})")
    print(f"summary: {run_dir / 'summary.csv'}")
