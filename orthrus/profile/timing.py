"""Device latency profiles: the three pass types the engines run, and the engines' own steps, timed
at each context length.

Per context length c (the KV cache holding c entries) and block size K, the bare passes:
  decode   AR view over 1 token        (one step of ``ar``; one AR step of any engine)
  verify   AR view over K tokens       (Orthrus's and speculative decoding's verification)
  draft    diffusion view over K tokens ([anchor, MASK x (K-1)], Orthrus's drafting)
Each timed pass includes what the engines do with its logits before the next step can start:
the greedy argmax and, for decode and verify, reading the chosen ids back to the host.

and the engines' own steps, each one step of the engine's real decoding loop (greedy), timed from
one committed token to the next, so they include all the host work between passes (building the
block, the consensus, advancing the committed length, bookkeeping):
  ar_step        one step of the ``ar`` engine
  orthrus_cycle  one draft-verify cycle of the ``orthrus`` engine at block K (cycles of K only)
An engine step costs more than its bare passes by that host work (on a 2-core CPU with the zoo
model it is below the timing noise; on a GPU, where a pass is short, it need not be); projections
use the engine steps where a profile has them, as they are what a run measures.

The cache is a preallocated (static) cache, one per context sized c + the largest block as an engine
sizes its own, whose committed length is set directly to c instead of running a prefill (values are
zeros: latency depends on how many keys each query attends to, not on what they hold). A pass
writes its block's K/V past c, which the next pass overwrites; the length stays c.
Timing: CUDA events around each pass on a GPU (then a synchronise), ``perf_counter`` on a CPU.
Passes run in the engines' own pattern: decode in runs of consecutive steps, draft(K) and verify(K)
alternating; each such group is warmed up, then the groups go round-robin until every cell has
``repeats`` samples, so that drift on a shared machine spreads over all cells alike. Each cell keeps
its median, p10 and p90.

The file format is documented in reports/profiles/README.md; ``LatencyProfile.load`` validates it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orthrus.errors import UserInputError
from orthrus.results.machine import cpu_model

PROFILE_FORMAT = "orthrus-latency-profile"
PROFILE_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # version 1: passes only, no engine steps; before 3: batch size 1 only
PASSES = ("decode", "verify", "draft")
ENGINE_STEPS = ("ar_step", "orthrus_cycle")
KINDS = PASSES + ENGINE_STEPS
DEFAULT_CONTEXTS = (1024, 8192, 32768)
DEFAULT_BLOCKS = (1, 2, 4, 8, 16, 32, 64)
BURST = 4  # consecutive repetitions of a pass pattern before the next group (see measure_profile)
# untimed repetitions of a group's pattern before its timed burst, each round: on a CPU the first
# AR steps after a pass of another shape run slow (about 4.0 ms falling to 3.7 ms over the first
# four with the zoo model), where an engine's decoding loop runs dozens of steps in a row
WARM_IN = {"cpu": 4, "cuda": 1}


@dataclass
class PassTiming:
    """Latency of one pass type at one (context, block): milliseconds over ``repeats`` runs."""

    context: int
    block: int  # tokens in the pass (1 for decode and ar_step)
    kind: str  # decode | verify | draft (bare passes) | ar_step | orthrus_cycle (engine steps)
    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    batch: int = 1  # rows decoded together (every row at the context, one pass or step for all)


@dataclass
class LatencyProfile:
    device: dict[str, Any]  # type, name (GPU or CPU model), and for CUDA memory and capability
    dtype: str
    model: dict[str, Any]  # spec, shape (orthrus.profile.shapes.model_shape), params_ar, params_diffusion
    timings: list[PassTiming]
    versions: dict[str, str | None] = field(default_factory=dict)  # python, torch, transformers
    threads: dict[str, Any] = field(default_factory=dict)  # torch intra/inter-op threads
    settings: dict[str, Any] = field(default_factory=dict)  # contexts, blocks, warmup, repeats, timer, cache
    created: str = ""
    format: str = PROFILE_FORMAT
    version: int = PROFILE_VERSION

    # ------------------------------------------------------------------ file
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data = {"format": data.pop("format"), "version": data.pop("version"), **data}
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "profile") -> LatencyProfile:
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise UserInputError(
                f'{where} is not an Orthrus latency profile (no "format": "{PROFILE_FORMAT}"); '
                "make one with 'python -m orthrus profile'."
            )
        if data.get("version") not in READABLE_VERSIONS:
            raise UserInputError(
                f"{where} has profile format version {data.get('version')!r}, this code reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}; re-measure it with 'python -m orthrus profile'."
            )
        try:
            timings = [PassTiming(**row) for row in data["timings"]]
            profile = cls(
                device=dict(data["device"]),
                dtype=str(data["dtype"]),
                model=dict(data["model"]),
                timings=timings,
                versions=dict(data.get("versions") or {}),
                threads=dict(data.get("threads") or {}),
                settings=dict(data.get("settings") or {}),
                created=str(data.get("created") or ""),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise UserInputError(f"{where} is a malformed latency profile ({type(err).__name__}: {err}).") from err
        problems = profile.problems()
        if problems:
            raise UserInputError(f"{where} is a malformed latency profile: {problems[0]}.")
        return profile

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyProfile:
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"latency profile {path} does not exist; make one with 'python -m orthrus profile'.")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserInputError(f"latency profile {path} is not valid JSON ({err}); re-measure or fix it.") from err
        return cls.from_dict(data, where=f"latency profile {path}")

    def problems(self) -> list[str]:
        out = []
        if "shape" not in self.model or not isinstance(self.model["shape"], dict):
            out.append("model.shape is missing")
        if not self.device.get("name"):
            out.append("device.name is missing")
        for row in self.timings:
            if row.kind not in KINDS:
                out.append(f"unknown pass {row.kind!r} (expected one of {', '.join(KINDS)})")
            values = (row.median_ms, row.p10_ms, row.p90_ms)
            if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
                out.append(f"{row.kind} at context {row.context}, block {row.block} has a non-positive time")
            if row.context < 0 or row.block < 1:
                out.append(f"{row.kind} has context {row.context} and block {row.block}")
        for kind in PASSES:
            if not any(r.kind == kind for r in self.timings):
                out.append(f"no {kind} timings")
        steps = [kind for kind in ENGINE_STEPS if any(r.kind == kind for r in self.timings)]
        if steps and len(steps) != len(ENGINE_STEPS):
            out.append(f"engine steps {steps[0]} without {[k for k in ENGINE_STEPS if k not in steps][0]}")
        return out

    @property
    def has_engine_steps(self) -> bool:
        return any(r.kind in ENGINE_STEPS for r in self.timings)

    # ------------------------------------------------------------------ lookup
    @property
    def label(self) -> str:
        return f"{self.device.get('name')} {self.dtype} {self.model.get('shape', {}).get('name')}"

    def grid(self, kind: str, batch: int = 1) -> tuple[list[int], list[int]]:
        rows = [r for r in self.timings if r.kind == kind and r.batch == batch]
        return sorted({r.context for r in rows}), sorted({r.block for r in rows})

    def time_ms(self, kind: str, context: float, block: int = 1, batch: int = 1) -> float:
        """Median ms of a pass (or step) at a batch size, linearly interpolated between measured
        contexts and blocks.

        Raises OutsideProfile for a point outside the measured range (no silent extrapolation).
        """
        table = {(r.context, r.block): r.median_ms for r in self.timings if r.kind == kind and r.batch == batch}
        contexts, blocks = self.grid(kind, batch)
        if kind in ("decode", "ar_step"):
            blocks, block = [1], 1
        c_lo, c_hi, c_w = _bracket(contexts, context, f"context {context:g}", kind)
        b_lo, b_hi, b_w = _bracket(blocks, block, f"block {block}", kind)

        def at(c: int, b: int) -> float:
            if (c, b) not in table:
                raise OutsideProfile(f"the profile has no {kind} timing at context {c}, block {b}")
            return table[(c, b)]

        low = at(c_lo, b_lo) * (1 - b_w) + at(c_lo, b_hi) * b_w
        high = at(c_hi, b_lo) * (1 - b_w) + at(c_hi, b_hi) * b_w
        return low * (1 - c_w) + high * c_w


class OutsideProfile(ValueError):
    """A projection asked for a context or block outside what a profile measured."""


def _bracket(points: Sequence[int], value: float, what: str, kind: str) -> tuple[int, int, float]:
    if not points:
        raise OutsideProfile(f"the profile has no {kind} timings")
    if value < points[0] or value > points[-1]:
        raise OutsideProfile(f"{what} is outside the profile's measured {kind} range {points[0]}..{points[-1]}")
    for lo, hi in zip(points, points[1:]):
        if lo <= value <= hi:
            return lo, hi, (value - lo) / (hi - lo)
    return points[0], points[0], 0.0  # a single measured point equal to value


# ---------------------------------------------------------------------- measuring
def device_description(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return {
            "type": "cuda",
            "name": props.name,
            "total_memory_mib": round(props.total_memory / 2**20),
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
        }
    return {"type": device.type, "name": cpu_model() or platform.machine(), "logical_cores": os.cpu_count()}


def library_versions() -> dict[str, str | None]:
    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:  # pragma: no cover - a dependency
        transformers_version = None
    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers_version}


class Timer:
    """Times one callable: CUDA events bracketing it on a GPU, perf_counter on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.name = "cuda_events" if self.cuda else "perf_counter"

    def __call__(self, fn: Callable[[], Any]) -> float:
        """Milliseconds fn took on the device (the device is idle before and after)."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3


class PassRunner:
    """The three passes over one preallocated cache at a settable context length."""

    def __init__(self, model: Any, max_context: int, max_block: int, batch: int = 1) -> None:
        self.model = model
        self.device = model.model.embed_tokens.weight.device
        self.batch = batch
        self.cache = model.new_cache(batch, max_context + max_block)
        self.context = 0
        self.mask_id = int(model.config.mask_token_id)

    def set_context(self, length: int) -> None:
        """The cache now holds ``length`` entries: the length is the caller's (see KVCache), so no
        prefill is needed; a decode or verify writes past it and leaves it as it was."""
        self.context = length

    def decode(self) -> None:
        ids = torch.zeros(self.batch, 1, dtype=torch.long, device=self.device)
        logits = self.model.forward_ar(ids, self.cache, self.context)
        logits[:, -1].argmax(-1).tolist()

    def verify(self, block: int) -> None:
        ids = torch.zeros(self.batch, block, dtype=torch.long, device=self.device)
        logits = self.model.forward_ar(ids, self.cache, self.context)
        logits.argmax(-1).tolist()

    def draft(self, block: int) -> None:
        ids = torch.full((self.batch, block), self.mask_id, dtype=torch.long, device=self.device)
        ids[:, 0] = 0
        logits = self.model.forward_diffusion(ids, self.cache, self.context)
        logits[:, : max(block - 1, 1)].argmax(-1)

    def run(self, kind: str, block: int) -> None:
        if kind == "decode":
            self.decode()
        elif kind == "verify":
            self.verify(block)
        else:
            self.draft(block)


class EngineLoops:
    """The ``ar`` and ``orthrus`` engines' own decoding loops, started from a filled cache.

    Each ``run`` starts from a cache holding the context (its length set, no prefill), books a
    stand-in first token, then runs the engine's loop (``_decode``, what ``generate`` runs after its
    prefill) for ``warm_in + steps`` steps and returns the milliseconds of the last ``steps``: the gap
    between one committed token and the next, as the runner's inter-token latency reads them (a
    commit follows the step's read-back to the host, so on a GPU the device work is inside).
    Orthrus keeps only cycles over a full block of K.
    """

    def __init__(
        self, model: Any, context: int, blocks: Sequence[int], steps: int, warm_in: int = 0, batch: int = 1
    ) -> None:
        from orthrus.engines.ar import AREngine
        from orthrus.engines.orthrus_engine import OrthrusEngine

        self.model, self.context, self.steps, self.warm_in, self.batch = model, context, steps, warm_in, batch
        self.ar = AREngine(model, cache="static")
        self.orthrus = {k: OrthrusEngine(model, block_size=k, cache="static") for k in blocks if k >= 2}
        self.settings, self.generator = self.ar._sampling(0.0, 0, 1.0, None)
        # room for every cycle to accept every draft, as an engine sizes its cache (prompt + budget)
        self.cache = model.new_cache(batch, context + 1 + (warm_in + steps) * max(blocks) + max(blocks))
        self.first = torch.zeros(batch, dtype=torch.long, device=timer_device(model))

    def run(self, kind: str, block: int) -> list[float]:
        from orthrus.engines.base import new_batch
        from orthrus.engines.decoding import DecodeState

        batch = new_batch([[0] * self.context] * self.batch)
        batch.start()
        for row in batch.rows:
            row.record_step("prefill", [0])
        state = DecodeState(batch, self.cache, [self.context] * self.batch, self.first, [True] * self.batch)
        args = (self.settings, self.generator, None)
        total = self.warm_in + self.steps
        if kind == "ar_step":
            self.ar._decode(state, 1 + total, *args)
            drafted = [None] * total
        else:
            self.orthrus[block]._decode(state, 1 + total * block, *args, max_steps=total)
            drafted = batch.rows[0].drafted_per_cycle
        times = [when for when, _ in batch.rows[0].commits]
        gaps = np.diff(times) * 1e3
        kept = zip(gaps[self.warm_in :], drafted[self.warm_in :])
        return [float(ms) for ms, d in kept if kind == "ar_step" or d == block - 1]


def _check_grid(model: Any, contexts: Sequence[int], blocks: Sequence[int], spec: str) -> None:
    if not contexts or not blocks:
        raise UserInputError("--contexts and --blocks each need at least one value.")
    if min(contexts) < 1 or min(blocks) < 1:
        raise UserInputError(f"contexts and blocks must be >= 1, got {list(contexts)} and {list(blocks)}.")
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    if limit and max(contexts) + max(blocks) > limit:
        raise UserInputError(
            f"context {max(contexts)} + block {max(blocks)} exceeds {spec}'s max_position_embeddings ({limit}); "
            "use smaller --contexts."
        )


def timer_device(model: Any) -> torch.device:
    return model.model.embed_tokens.weight.device


@torch.inference_mode()  # as the engines run: without it every pass also records autograd state
def measure_profile(
    model: Any,
    spec: str,
    contexts: Sequence[int] = DEFAULT_CONTEXTS,
    blocks: Sequence[int] = DEFAULT_BLOCKS,
    repeats: int = 10,
    warmup: int = 2,
    progress: Callable[[str], None] | None = None,
    engine_steps: bool = True,
    warm_in: int | None = None,
    batches: Sequence[int] = (1,),
) -> LatencyProfile:
    """Time decode(1), verify(K) and draft(K), and (``engine_steps``) the ``ar`` step and the
    ``orthrus`` cycle at each K >= 2, for every batch size, context and K on the model's device.
    ``warm_in``: untimed repetitions before each timed burst (default WARM_IN for the device type)."""
    from orthrus.profile.shapes import model_shape, parameter_counts

    contexts, blocks = sorted(set(int(c) for c in contexts)), sorted(set(int(b) for b in blocks))
    _check_grid(model, contexts, blocks, spec)
    if repeats < 1 or warmup < 0:
        raise UserInputError(f"--repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}.")
    if warm_in is not None and warm_in < 0:
        raise UserInputError(f"--warm-in must be >= 0, got {warm_in}.")
    timer = Timer(timer_device(model))
    if warm_in is None:
        warm_in = WARM_IN.get(timer_device(model).type, 1)
    # an engine group is one run of the engine's loop for warm_in + `burst` steps (EngineLoops.run)
    steps = [("ar_step", 1)] + [("orthrus_cycle", k) for k in blocks if k >= 2] if engine_steps else []
    cells = [("decode", 1)] + [(kind, k) for k in blocks for kind in ("verify", "draft")] + steps
    # Passes are timed in the pattern the engines run them: decode in runs of consecutive steps (an
    # AR loop), draft(K) and verify(K) alternating (Orthrus cycles). Timing single passes round-robin
    # over every shape put each pass after a different one and read t_AR(1) 10-15% slow on a CPU,
    # which inflated every projected speedup. Groups go round-robin so that drift on a shared
    # machine spreads over all of them alike.
    burst = min(BURST, repeats)
    rounds = -(-repeats // burst)
    patterns = [[("decode", 1)]] + [[("draft", k), ("verify", k)] for k in blocks]
    groups = [pattern * burst for pattern in patterns]
    batches = sorted(set(int(b) for b in batches))
    if not batches or min(batches) < 1:
        raise UserInputError(f"--batches must be sizes >= 1, got {list(batches)}.")
    timings: list[PassTiming] = []
    for batch, context in ((b, c) for b in batches for c in contexts):
        # a cache sized for this context, as an engine sizes its own (prompt + budget): attention over
        # a static cache spans its whole buffer, so one buffer sized for the largest context made every
        # smaller context as slow as the largest (projections then fell 20-35% short of measurements)
        runner = PassRunner(model, context, max(blocks), batch)
        runner.set_context(context)
        loops = EngineLoops(model, context, blocks, burst, warm_in, batch) if engine_steps else None
        samples: dict[tuple[str, int], list[float]] = {cell: [] for cell in cells}
        for group in groups:
            for _ in range(warmup):
                for kind, block in group[:2]:
                    runner.run(kind, block)
        for kind, block in steps if warmup else ():
            loops.run(kind, block)
        for _ in range(rounds):
            for group, pattern in zip(groups, patterns):
                for kind, block in pattern * warm_in:
                    runner.run(kind, block)
                for kind, block in group:
                    samples[(kind, block)].append(
                        timer(lambda kind=kind, block=block, runner=runner: runner.run(kind, block))
                    )
            for kind, block in steps:
                samples[(kind, block)].extend(loops.run(kind, block))
        for (kind, block), values in samples.items():
            if not values:  # every orthrus cycle ran short of a full block: cannot happen with budget 1 + steps*K
                raise RuntimeError(f"no {kind} at block {block} was timed at context {context}")
            arr = np.asarray(values)
            timings.append(
                PassTiming(
                    context=context,
                    block=block,
                    kind=kind,
                    median_ms=float(np.median(arr)),
                    p10_ms=float(np.percentile(arr, 10)),
                    p90_ms=float(np.percentile(arr, 90)),
                    repeats=len(values),
                    batch=batch,
                )
            )
        if progress is not None:
            decode = samples[("decode", 1)]
            progress(
                f"batch {batch}, context {context}: decode {np.median(decode):.2f} ms, {len(cells)} cells x {repeats}"
            )
    dtype = str(model.model.embed_tokens.weight.dtype).removeprefix("torch.")
    return LatencyProfile(
        device=device_description(timer_device(model)),
        dtype=dtype,
        model={"spec": spec, "shape": model_shape(model.config), **parameter_counts(model)},
        timings=timings,
        versions=library_versions(),
        threads={"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads()},
        settings={
            "contexts": contexts,
            "blocks": blocks,
            "batches": batches,
            "repeats": rounds * burst,
            "warmup": warmup,
            "warm_in": warm_in,
            "pattern": f"decode in runs of {burst} steps, draft(K) and verify(K) alternating {burst} times"
            + (f", each engine's loop for {burst} steps" if engine_steps else "")
            + f", each after {warm_in} untimed repetitions of its pattern; groups round-robin",
            "engine_steps": "greedy decoding loops of the ar and orthrus engines from the filled cache, "
            "each step timed from one committed token to the next"
            if engine_steps
            else None,
            "timer": timer.name,
            "cache": "static, one per context sized context + the largest block (the engine loops': context + "
            "room for every cycle to accept every draft), lengths set directly (no prefill)",
        },
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
