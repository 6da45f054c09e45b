"""The one small interface every decoding method implements, and the record it returns."""

from __future__ import annotations

import difflib
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from orthrus.errors import UserInputError
from orthrus.models.modeling_orthrus import DEFAULT_BLOCK_SIZE  # noqa: F401 - re-exported for the engines

FORWARD_KINDS = ("prefill", "draft", "verify", "decode", "denoise")
# which model an engine loads: a causal LM (the AR view of any checkpoint), the dual-view Orthrus
# model (AR view + diffusion view sharing one cache), or a masked-diffusion LM
MODEL_KINDS = ("causal", "dual_view", "dlm")
# which draft model an engine that needs one loads: a causal LM (assisted), or a drafter conditioned on
# the target's hidden states in a released layout (orthrus.models.drafters)
DRAFT_MODEL_KINDS = ("causal", "dflash", "eagle3")


@dataclass(frozen=True)
class EngineDescription:
    """What is known about one constructed engine: the facts a harness or report records with a cell."""

    name: str
    model_kind: str
    lossless: bool
    block_size: int | None  # the block size it actually uses (None: the engine takes none)
    kv_bytes_per_token: int | None  # bytes of K and V one position occupies in its model's cache
    needs_draft_model: bool = False
    compile_s: float | None = None  # compiled engines: seconds spent compiling so far (None: eager)
    compiled_graphs: int | None = None  # compiled engines: graphs compiled so far
    # the weights the method adds over the base model (Orthrus's *_diff projections and norms, a
    # drafter's own weights, a draft model); None: the method runs a model of its own (a DLM)
    extra_parameters: int | None = None
    extra_parameter_bytes: int | None = None
    # bytes of K and V one position occupies in the draft model's own cache (None: it keeps none)
    draft_kv_bytes_per_token: int | None = None
    # its verifier accepts at a set rate (synthetic acceptance): its cost is real, its output is not AR's
    synthetic: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "model_kind": self.model_kind,
            "lossless": self.lossless,
            "block_size": self.block_size,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "compile_s": self.compile_s,
            "compiled_graphs": self.compiled_graphs,
            "extra_parameters": self.extra_parameters,
            "extra_parameter_bytes": self.extra_parameter_bytes,
            "draft_kv_bytes_per_token": self.draft_kv_bytes_per_token,
            "synthetic": self.synthetic,
        }


@dataclass
class GenerationResult:
    """What one ``generate`` call produced and how; metric names as in docs/metrics.md."""

    tokens: list[int]
    prompt_tokens: int
    forward_passes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FORWARD_KINDS, 0))
    drafted_per_cycle: list[int] = field(default_factory=list)
    accepted_per_cycle: list[int] = field(default_factory=list)
    # block_size: auto: the K chosen at each step (1: a plain AR step); empty for a fixed block
    chosen_blocks: list[int] = field(default_factory=list)
    start_time: float = 0.0
    # (host time, tokens committed at that moment), one entry per commit event
    commits: list[tuple[float, int]] = field(default_factory=list)
    end_time: float = 0.0
    kv_cache_bytes_peak: int | None = None  # the target model's cache (the one Orthrus's views share)
    draft_kv_cache_bytes_peak: int | None = None  # a draft model's own cache, beside it (None: none kept)
    stop_reason: str = "max_new_tokens"
    extra: dict[str, Any] = field(default_factory=dict)
    # called with the newly committed tokens at each commit (streaming); not part of the record
    listener: Callable[[list[int]], None] | None = field(default=None, repr=False, compare=False)

    # ----------------------------------------------------------- derived metrics
    @property
    def new_tokens(self) -> int:
        return len(self.tokens)

    @property
    def total_forward_passes(self) -> int:
        return sum(self.forward_passes.values())

    @property
    def tokens_per_forward(self) -> float:
        return self.new_tokens / max(self.total_forward_passes, 1)

    @property
    def cycles(self) -> int:
        return len(self.accepted_per_cycle)

    @property
    def acceptance_length(self) -> float | None:
        if not self.accepted_per_cycle:
            return None
        return sum(self.accepted_per_cycle) / len(self.accepted_per_cycle)

    @property
    def acceptance_by_position(self) -> list[float]:
        """Fraction of cycles that drafted position j (1-based, index j-1) in which it was accepted."""
        width = max(self.drafted_per_cycle, default=0)
        rates = []
        for j in range(1, width + 1):
            tried = sum(1 for d in self.drafted_per_cycle if d >= j)
            kept = sum(1 for d, a in zip(self.drafted_per_cycle, self.accepted_per_cycle) if d >= j and a >= j)
            rates.append(kept / tried)
        return rates

    @property
    def e2e_ms(self) -> float:
        return (self.end_time - self.start_time) * 1e3

    @property
    def ttft_ms(self) -> float | None:
        return (self.commits[0][0] - self.start_time) * 1e3 if self.commits else None

    @property
    def itl_ms(self) -> list[float]:
        """Gaps between consecutive token commits; a block committed at once gives one gap and zeros."""
        gaps: list[float] = []
        previous = None
        for when, count in self.commits:
            if previous is not None:
                gaps.append((when - previous) * 1e3)
                gaps.extend([0.0] * (count - 1))
            else:
                gaps.extend([0.0] * (count - 1))
            previous = when
        return gaps

    @property
    def tpot_ms(self) -> float | None:
        if self.new_tokens < 2 or self.ttft_ms is None:
            return None
        return (self.e2e_ms - self.ttft_ms) / (self.new_tokens - 1)

    @property
    def decode_tokens_per_s(self) -> float | None:
        if self.new_tokens < 2 or self.ttft_ms is None or self.e2e_ms <= self.ttft_ms:
            return None
        return (self.new_tokens - 1) / ((self.e2e_ms - self.ttft_ms) / 1e3)

    # ----------------------------------------------------------- bookkeeping (engines call these)
    def start(self) -> None:
        """Start the clock (after the caller synchronised the device)."""
        self.start_time = time.perf_counter()

    def record_step(
        self,
        passes: str | Sequence[str],
        tokens: Sequence[int] = (),
        drafted: int | None = None,
        accepted: int | None = None,
        kv_bytes: int | None = None,
    ) -> None:
        """Book one step of a decoding loop in one call: the forward passes it ran (kinds from
        FORWARD_KINDS), the tokens it committed (appended and time-stamped now), for a draft-verify
        cycle the drafted and accepted counts, and the K/V bytes held (the peak keeps the largest)."""
        for kind in (passes,) if isinstance(passes, str) else passes:
            self.record_pass(kind)
        if drafted is not None:
            self.record_cycle(drafted, 0 if accepted is None else accepted)
        if kv_bytes is not None:
            self.record_kv_bytes(kv_bytes)
        self.tokens.extend(tokens)
        self.commit(len(tokens))

    def record_pass(self, kind: str, count: int = 1) -> None:
        """``count`` more forward passes of one kind."""
        if kind not in self.forward_passes:
            raise ValueError(f"unknown forward pass kind {kind!r}; one of {', '.join(FORWARD_KINDS)}.")
        self.forward_passes[kind] += count

    def record_cycle(self, drafted: int, accepted: int) -> None:
        """One verification of ``drafted`` proposed tokens, of which the first ``accepted`` were kept."""
        self.drafted_per_cycle.append(drafted)
        self.accepted_per_cycle.append(accepted)

    def record_kv_bytes(self, kv_bytes: int) -> None:
        """K/V bytes held at some moment; ``kv_cache_bytes_peak`` keeps the largest."""
        self.kv_cache_bytes_peak = max(self.kv_cache_bytes_peak or 0, kv_bytes)

    def record_draft_kv_bytes(self, kv_bytes: int) -> None:
        """K/V bytes the draft model's own cache held at some moment; the peak keeps the largest."""
        self.draft_kv_cache_bytes_peak = max(self.draft_kv_cache_bytes_peak or 0, kv_bytes)

    def commit(self, count: int) -> None:
        """Record that the last ``count`` tokens became available on the host now."""
        if count > 0:
            self.commits.append((time.perf_counter(), count))
            if self.listener is not None:
                self.listener(self.tokens[-count:])

    def finish(self, stop_reason: str, kv_bytes: int | None = None) -> GenerationResult:
        """Stop the clock; why generation ended, and the K/V bytes held at the end."""
        self.end_time = time.perf_counter()
        self.stop_reason = stop_reason
        if kv_bytes is not None:
            self.record_kv_bytes(kv_bytes)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: raw fields plus every derived metric."""
        return {
            "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "forward_passes": self.total_forward_passes,
            "forward_passes_by_kind": dict(self.forward_passes),
            "tokens_per_forward": self.tokens_per_forward,
            "cycles": self.cycles,
            "drafted_per_cycle": self.drafted_per_cycle,
            "accepted_per_cycle": self.accepted_per_cycle,
            "chosen_blocks": self.chosen_blocks,
            "acceptance_length": self.acceptance_length,
            "acceptance_by_position": self.acceptance_by_position,
            "ttft_ms": self.ttft_ms,
            "tpot_ms": self.tpot_ms,
            "itl_ms": self.itl_ms,
            "e2e_ms": self.e2e_ms,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "kv_cache_bytes_peak": self.kv_cache_bytes_peak,
            "draft_kv_cache_bytes_peak": self.draft_kv_cache_bytes_peak,
            "stop_reason": self.stop_reason,
            **self.extra,
        }


class CannotBatchError(UserInputError):
    """The engine decodes one prompt at a time; a harness records the cell as skipped with this reason."""


@dataclass
class BatchResult:
    """What one ``generate_batch`` call produced: one GenerationResult per row (in prompt order;
    each row's passes, cycles and commits are those it took part in until it finished, its
    ``end_time`` is when it finished) plus the batch's own timing and pass counts.

    ``forward_passes`` counts forward calls of the whole batch (each over every row);
    ``wasted_row_passes`` counts the row-passes that did no work for their row: rows that had
    already finished (a finished row stays in the batch until the last one ends) and, for Orthrus,
    the draft pass of a row with one token left; ``kv_cache_bytes_peak`` is the batch's cache and
    ``draft_kv_cache_bytes_peak`` its draft model's own cache (each row is given its equal share of both).
    """

    rows: list[GenerationResult]
    forward_passes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FORWARD_KINDS, 0))
    wasted_row_passes: int = 0
    start_time: float = 0.0
    end_time: float = 0.0
    kv_cache_bytes_peak: int | None = None
    draft_kv_cache_bytes_peak: int | None = None

    @classmethod
    def of_single(cls, row: GenerationResult) -> BatchResult:
        """A batch of one around a solo result (engines that cannot batch)."""
        return cls(
            rows=[row],
            forward_passes=dict(row.forward_passes),
            start_time=row.start_time,
            end_time=row.end_time,
            kv_cache_bytes_peak=row.kv_cache_bytes_peak,
            draft_kv_cache_bytes_peak=row.draft_kv_cache_bytes_peak,
        )

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    @property
    def new_tokens(self) -> int:
        return sum(row.new_tokens for row in self.rows)

    @property
    def total_forward_passes(self) -> int:
        return sum(self.forward_passes.values())

    @property
    def row_passes(self) -> int:
        """Forward passes times rows: the work the batch did, counted per row."""
        return self.total_forward_passes * self.batch_size

    @property
    def wasted_row_pass_fraction(self) -> float:
        return self.wasted_row_passes / max(self.row_passes, 1)

    @property
    def tokens_per_forward(self) -> float:
        """New tokens per row-pass spent on a live row: the batch's TPF, comparable with batch 1
        (all rows' tokens over all rows' own passes)."""
        return self.new_tokens / max(sum(row.total_forward_passes for row in self.rows), 1)

    @property
    def e2e_ms(self) -> float:
        return (self.end_time - self.start_time) * 1e3

    @property
    def tokens_per_s(self) -> float | None:
        """Total throughput: new tokens of every row per second of the whole call."""
        return self.new_tokens / (self.e2e_ms / 1e3) if self.end_time > self.start_time else None

    def start(self) -> None:
        """Start the clock for the batch and every row (after the caller synchronised the device)."""
        self.start_time = time.perf_counter()
        for row in self.rows:
            row.start_time = self.start_time

    def record_pass(self, kind: str, active: Sequence[bool]) -> None:
        """One forward pass of the batch; rows it does no work for (``active`` False) make it partly wasted."""
        if kind not in self.forward_passes:
            raise ValueError(f"unknown forward pass kind {kind!r}; one of {', '.join(FORWARD_KINDS)}.")
        self.forward_passes[kind] += 1
        self.wasted_row_passes += sum(1 for live in active if not live)

    def finish(self, kv_bytes: int | None = None, draft_kv_bytes: int | None = None) -> BatchResult:
        """Stop the batch clock; the K/V bytes the batch held, and those its draft model's own cache
        held (each row is given its equal share of each)."""
        self.end_time = time.perf_counter()
        if kv_bytes is not None:
            self.kv_cache_bytes_peak = max(self.kv_cache_bytes_peak or 0, kv_bytes)
            for row in self.rows:  # every row owns an equal slice of the batch's cache
                row.record_kv_bytes(self.kv_cache_bytes_peak // self.batch_size)
        if draft_kv_bytes is not None:
            self.draft_kv_cache_bytes_peak = max(self.draft_kv_cache_bytes_peak or 0, draft_kv_bytes)
            for row in self.rows:
                row.record_draft_kv_bytes(self.draft_kv_cache_bytes_peak // self.batch_size)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record of the batch (the rows have their own ``to_dict``)."""
        return {
            "batch_size": self.batch_size,
            "new_tokens": self.new_tokens,
            "forward_passes": self.total_forward_passes,
            "forward_passes_by_kind": dict(self.forward_passes),
            "row_passes": self.row_passes,
            "wasted_row_passes": self.wasted_row_passes,
            "wasted_row_pass_fraction": self.wasted_row_pass_fraction,
            "tokens_per_forward": self.tokens_per_forward,
            "e2e_ms": self.e2e_ms,
            "tokens_per_s": self.tokens_per_s,
            "kv_cache_bytes_peak": self.kv_cache_bytes_peak,
            "draft_kv_cache_bytes_peak": self.draft_kv_cache_bytes_peak,
        }


@dataclass
class SamplingSettings:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> None:
        if self.temperature < 0:
            raise UserInputError(f"temperature must be >= 0, got {self.temperature}.")
        if self.top_k < 0:
            raise UserInputError(f"top_k must be >= 0 (0 = off), got {self.top_k}.")
        if not 0.0 < self.top_p <= 1.0:
            raise UserInputError(f"top_p must be in (0, 1], got {self.top_p}.")


def warp_probs(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p (the same rule for every engine and view)."""
    logits = logits.float() / settings.temperature
    if settings.top_k > 0 and settings.top_k < logits.shape[-1]:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) >= settings.top_p  # keep the first past p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)


def pick_token(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy argmax or one sample per row of ``logits`` [..., V] -> [...]."""
    if settings.greedy:
        return logits.argmax(-1)
    probs = warp_probs(logits, settings)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


class Engine:
    """A decoding method. Subclasses implement ``_generate``; ``generate`` checks the input.

    The class describes itself, so that a harness asks it instead of keeping lists of names:
    ``model_kind`` (which model it loads, one of MODEL_KINDS), ``takes_block_size``,
    ``needs_draft_model`` and ``draft_model_kind`` (which loader its draft model goes through, one of
    DRAFT_MODEL_KINDS), ``batchable`` (``generate_batch`` at batch > 1), ``compilable`` (``compile:
    true``), ``lossless`` (an instance may switch it off, e.g. a lossy accept rule),
    ``options()`` (the constructor options it accepts, with their defaults) and, once built,
    ``describe()`` (the effective settings it will actually use, and the weights it adds over the
    base model: ``extra_parameter_tensors()``).
    """

    name: ClassVar[str] = ""
    model_kind: ClassVar[str] = "causal"
    takes_block_size: ClassVar[bool] = False
    needs_draft_model: ClassVar[bool] = False
    draft_model_kind: ClassVar[str | None] = None  # one of DRAFT_MODEL_KINDS when needs_draft_model
    # whether generate_batch decodes several prompts in one batch; if not, why (CannotBatchError says it)
    batchable: ClassVar[bool] = False
    cannot_batch_reason: ClassVar[str] = "it decodes one prompt at a time"
    # whether ``compile: true`` runs its steps through torch.compile (see orthrus.engines.decoding); if not, why
    compilable: ClassVar[bool] = False
    cannot_compile_reason: ClassVar[str] = (
        "compile: true is implemented for the engines that decode over the project's preallocated K/V cache "
        "(fixed shapes per step), and this one does not"
    )
    lossless: bool = True  # class default; an instance may set its own

    def __init__(self, model: Any, compile: bool = False, **options: Any) -> None:
        if options:
            raise UserInputError(_unknown_options_message(type(self), options))
        if compile and not self.compilable:
            raise UserInputError(
                f"engine {self.name!r} cannot run compiled ({self.cannot_compile_reason}); set compile: false for it."
            )
        self.model = model
        self.listener: Callable[[list[int]], None] | None = None  # streaming hook, see GenerationResult

    @classmethod
    def options(cls) -> dict[str, inspect.Parameter]:
        """The options the constructor takes (beyond the model), over the whole class hierarchy."""
        named: dict[str, inspect.Parameter] = {}
        for klass in cls.__mro__:  # the class's own order first; a base class adds what it alone takes
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for i, (key, param) in enumerate(inspect.signature(init).parameters.items()):
                if i == 0 or key == "model" or key in named:
                    continue
                if param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
                    named[key] = param
        return named

    def describe(self) -> EngineDescription:
        kv = getattr(self.model, "kv_bytes_per_token", None)
        extra = self.extra_parameter_tensors()
        unique = list({t.data_ptr(): t for t in extra}.values()) if extra is not None else None  # tied weights once
        return EngineDescription(
            name=self.name,
            model_kind=self.model_kind,
            lossless=bool(self.lossless),
            block_size=int(self.block_size) if self.takes_block_size else None,  # type: ignore[attr-defined]
            kv_bytes_per_token=int(kv()) if callable(kv) else None,
            needs_draft_model=self.needs_draft_model,
            extra_parameters=sum(t.numel() for t in unique) if unique is not None else None,
            extra_parameter_bytes=sum(t.numel() * t.element_size() for t in unique) if unique is not None else None,
            draft_kv_bytes_per_token=self.draft_kv_bytes_per_token(),
        )

    def extra_parameter_tensors(self) -> list[torch.Tensor] | None:
        """The weights this method adds over the base model it decodes for (none here: it runs the
        base model alone); None for a method that runs a model of its own instead of the base model."""
        return []

    def draft_kv_bytes_per_token(self) -> int | None:
        """Bytes of K and V one position occupies in the draft model's own cache (None: it keeps none)."""
        return None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_positions(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 1 << 30))

    def generate(
        self,
        prompt_ids: list[int] | torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        eos_token_id: int | None = None,
    ) -> GenerationResult:
        prompt = self._check_prompt(prompt_ids, max_new_tokens)
        settings, generator = self._sampling(temperature, top_k, top_p, seed)
        return self._generate(prompt, max_new_tokens, settings, generator, seed, eos_token_id)

    def generate_batch(
        self,
        prompts: Sequence[list[int] | torch.Tensor],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        eos_token_id: int | None = None,
    ) -> BatchResult:
        """Decode several prompts (ragged lengths) together: one GenerationResult per row, in order,
        plus the batch's own timing and pass counts. Each row stops on its own (EOS or
        ``max_new_tokens``). An engine that cannot batch raises CannotBatchError at batch > 1 and
        runs a batch of one through ``generate``."""
        if len(prompts) == 0:
            raise UserInputError("the batch is empty; give at least one prompt.")
        rows = [
            self._check_prompt(p, max_new_tokens, row=i if len(prompts) > 1 else None) for i, p in enumerate(prompts)
        ]
        settings, generator = self._sampling(temperature, top_k, top_p, seed)
        if self.batchable:
            return self._generate_batch(rows, max_new_tokens, settings, generator, seed, eos_token_id)
        if len(rows) > 1:
            raise CannotBatchError(
                f"engine {self.name!r} cannot batch ({self.cannot_batch_reason}); run it at batch size 1."
            )
        return BatchResult.of_single(self._generate(rows[0], max_new_tokens, settings, generator, seed, eos_token_id))

    def _check_prompt(
        self, prompt_ids: list[int] | torch.Tensor, max_new_tokens: int, row: int | None = None
    ) -> list[int]:
        """The prompt as a list of ints, or one sentence on what is wrong with it (naming the row of a batch)."""
        what = "the prompt" if row is None else f"prompt {row} of the batch"
        prompt = [int(t) for t in (prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else prompt_ids)]
        if not prompt:
            raise UserInputError(f"{what} is empty; give at least one token.")
        if max_new_tokens < 1:
            raise UserInputError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        if len(prompt) + max_new_tokens > self.max_positions:
            raise UserInputError(
                f"{what} ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's context "
                f"of {self.max_positions} tokens; shorten the prompt or lower max_new_tokens."
            )
        vocab = self.model.config.vocab_size
        if max(prompt) >= vocab or min(prompt) < 0:
            raise UserInputError(f"token ids of {what} must be in [0, {vocab}); got {min(prompt)}..{max(prompt)}.")
        return prompt

    def _sampling(
        self, temperature: float, top_k: int, top_p: float, seed: int | None
    ) -> tuple[SamplingSettings, torch.Generator | None]:
        settings = SamplingSettings(temperature, top_k, top_p)
        settings.validate()
        generator = None
        if not settings.greedy:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(0 if seed is None else seed)
        return settings, generator

    def _generate(
        self,
        prompt: list[int],
        max_new_tokens: int,
        settings: SamplingSettings,
        generator: torch.Generator | None,
        seed: int | None,
        eos_token_id: int | None,
    ) -> GenerationResult:
        raise NotImplementedError

    def _generate_batch(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        settings: SamplingSettings,
        generator: torch.Generator | None,
        seed: int | None,
        eos_token_id: int | None,
    ) -> BatchResult:
        raise NotImplementedError


def _unknown_options_message(cls: type[Engine], options: dict[str, Any]) -> str:
    accepted = sorted(cls.options())
    parts = []
    for key in sorted(options):
        close = difflib.get_close_matches(key, accepted, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    takes = f"it takes {', '.join(accepted)}" if accepted else "it takes no options"
    return f"engine {cls.name!r} has no option {', '.join(parts)}; {takes}."


def truncate_at_eos(tokens: list[int], eos_token_id: int | None) -> tuple[list[int], bool]:
    """Tokens up to and including the first EOS, and whether an EOS was found."""
    if eos_token_id is not None and eos_token_id in tokens:
        return tokens[: tokens.index(eos_token_id) + 1], True
    return tokens, False


def new_batch(prompts: list[list[int]], listener: Callable[[list[int]], None] | None = None) -> BatchResult:
    """An empty BatchResult with one row per prompt; ``listener`` streams the row of a batch of one."""
    rows = [GenerationResult(tokens=[], prompt_tokens=len(p)) for p in prompts]
    if len(rows) == 1:
        rows[0].listener = listener
    return BatchResult(rows=rows)


def row_finished(row: GenerationResult, max_new_tokens: int, eos_token_id: int | None) -> bool:
    """After a row's commit: whether it is done (EOS or its budget); a done row's clock stops now."""
    if eos_token_id is not None and row.tokens and row.tokens[-1] == eos_token_id:
        row.finish("eos")
    elif row.new_tokens >= max_new_tokens:
        row.finish("max_new_tokens")
    else:
        return False
    return True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
