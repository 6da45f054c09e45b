"""What the engines that decode over the project's own K/V cache share: one prefill, the state a
decoding loop starts from, and the passes of a step, eager or compiled. A single prompt is a batch
of one: ``generate`` runs ``generate_batch``'s code, so every step of a decoding algorithm is written
once for one row and for a batch.

Compiled (``compile: true``): the passes of a step (one decode token; a draft and a verify pass of
a whole block) run through ``torch.compile`` over a preallocated cache whose capacity is rounded up
to ``COMPILE_GRAIN`` slots, with positions and masks as tensors
(``OrthrusForCausalLM.forward_static``), so nothing in a step changes as the sequence grows and no
step recompiles; shapes are dynamic, so one graph per view serves every batch, block and capacity
(compiling one graph of the zoo model takes 20-60 s on a 2-core CPU). Compilation happens before the clock of the first call that needs
a graph (a harness's warm-up) and is counted apart (``compile_s``, ``compiled_graphs``). On a CPU
this is inductor's C++ backend; on CUDA each compiled step is also captured once as a CUDA graph and
replayed (the per-kernel launch overhead is what an eager loop at batch 1 is bound by).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from orthrus.engines.base import (
    BatchResult,
    Engine,
    EngineDescription,
    GenerationResult,
    SamplingSettings,
    new_batch,
    pick_token,
    row_finished,
    sync,
)
from orthrus.errors import UserInputError
from orthrus.models.kv_cache import KVCache

CACHE_KINDS = ("static", "dynamic")
COMPILE_GRAIN = 256  # a compiled engine's cache capacity, in slots per row, is a multiple of this
CPU_COMPILERS = ("g++", "c++", "clang++")  # what inductor's CPU backend builds its kernels with


def round_up(value: int, grain: int) -> int:
    return -(-value // grain) * grain


class CountingBackend:
    """torch.compile's inductor backend, counting the graphs it is asked to compile (dynamo calls its
    backend once per graph it captures, a recompile included)."""

    def __init__(self, name: str = "inductor") -> None:
        import torch._dynamo

        self.backend = torch._dynamo.lookup_backend(name)
        self.graphs = 0

    def __call__(self, graph: Any, example_inputs: Any) -> Any:
        self.graphs += 1
        return self.backend(graph, example_inputs)


class StaticSteps:
    """The compiled passes of one engine: ``torch.compile`` of the model's ``forward_static`` with
    dynamic shapes (one graph per view, whatever the batch, block or cache capacity; a capacity or
    batch never seen before may add one), and on CUDA a CUDA graph per concrete shape, captured over
    the engine's own persistent cache. ``compile_s`` (seconds of the calls that compiled something)
    and ``graphs`` (graphs compiled) count the work."""

    def __init__(self, model: Any) -> None:
        import torch._dynamo

        # every compiled engine adds its graphs to the one code object's cache (a suite builds several on
        # one model), more than dynamo's default 8; hitting the limit must be an error, never a silent
        # fall back to eager under a "compiled" label
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4096)
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        self.model = model
        self.device = next(model.parameters()).device
        if self.device.type == "cpu":  # compile in this process: a pool of compile workers competes with the
            import torch._inductor.config  # measured work for the cores and has hung at exit on a loaded 2-core host

            torch._inductor.config.compile_threads = 1
        self.backend = CountingBackend()
        self.function = torch.compile(model.forward_static, backend=self.backend, dynamic=True, fullgraph=True)
        self.cuda_graphs: dict[tuple, tuple[Any, list[torch.Tensor], torch.Tensor]] = {}
        self.compile_s = 0.0

    @property
    def graphs(self) -> int:
        return self.backend.graphs

    def __call__(self, ids: torch.Tensor, cache: KVCache, starts: list[int], ends: list[int] | None) -> torch.Tensor:
        """Logits [B, T, V] of ids [B, T] at positions starts[r].. (the diffusion view when ``ends``
        is given: row r sees slots below ends[r])."""
        batch, steps = ids.shape
        positions = torch.tensor(starts, device=self.device).view(-1, 1) + torch.arange(steps, device=self.device)
        diffusion = ends is not None
        limits = torch.tensor(ends, device=self.device) if diffusion else positions[:, -1] + 1
        key = (batch, steps, cache.capacity, diffusion, id(cache))
        capture = self.device.type == "cuda" and key not in self.cuda_graphs
        before, begin = self.graphs, time.perf_counter()
        out = self._run(key, ids, cache, positions, limits, diffusion)
        if capture or self.graphs != before:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.compile_s += time.perf_counter() - begin  # a call that compiled (or captured) counts whole
        return out

    def _run(self, key: tuple, ids, cache: KVCache, positions, limits, diffusion: bool) -> torch.Tensor:
        if self.device.type != "cuda":
            return self.function(ids, cache.keys, cache.values, positions, limits, diffusion)
        if key not in self.cuda_graphs:
            inputs = [ids.clone(), positions.clone(), limits.clone()]
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):  # compile and warm up outside the capture
                for _ in range(2):
                    self.function(inputs[0], cache.keys, cache.values, inputs[1], inputs[2], diffusion)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.function(inputs[0], cache.keys, cache.values, inputs[1], inputs[2], diffusion)
            self.cuda_graphs[key] = (graph, inputs, out)
        graph, inputs, out = self.cuda_graphs[key]
        for static, value in zip(inputs, (ids, positions, limits)):
            static.copy_(value)
        graph.replay()
        return out.clone()  # the next replay overwrites the graph's output


@dataclass
class DecodeState:
    """Where a decoding loop stands: row r's cache holds ``lengths[r]`` committed entries, every token
    it committed but the last, ``last[r]`` (not yet in the cache); ``active[r]`` until it finished.
    ``features``: the target hidden states the prefill kept (``CachedEngine.hidden_layers``), [B, T, F];
    ``prompts``: the rows' prompts."""

    batch: BatchResult
    cache: KVCache
    lengths: list[int]
    last: torch.Tensor  # [B]
    active: list[bool]
    features: torch.Tensor | None = None
    prompts: list[list[int]] | None = None


class CachedEngine(Engine):
    """An engine that prefills every prompt in one AR pass over a KVCache, then runs ``_decode``.

    ``cache``: ``static`` preallocates prompt + budget slots per row (rows left-aligned, see
    KVCache); ``dynamic`` grows the cache to fit each write, so its storage is what was written.
    """

    batchable = True
    compilable = True
    # the target hidden states (forward_ar's hidden_layers) the prefill keeps for a drafter; None: none
    hidden_layers: Sequence[int] | None = None

    def __init__(self, model: Any, cache: str = "static", compile: bool = False, **options: Any) -> None:
        super().__init__(model, compile=compile and not self.compilable, **options)  # refused there when it must be
        if cache not in CACHE_KINDS:
            raise UserInputError(f"cache must be 'static' or 'dynamic', got {cache!r}.")
        self.cache_kind = cache
        self.compiled = bool(compile)
        self.steps: StaticSteps | None = None
        self._caches: dict[tuple[int, int], KVCache] = {}
        if self.compiled:
            if cache != "static":
                raise UserInputError(
                    "compile: true needs the preallocated cache (its shapes are fixed); use cache: static or compile: false."
                )
            if self.device.type == "cpu" and not any(shutil.which(c) for c in CPU_COMPILERS):
                raise UserInputError(
                    "compile: true on the CPU needs a C++ compiler for torch.compile's inductor backend and none "
                    f"({', '.join(CPU_COMPILERS)}) is on PATH; install g++ or set compile: false."
                )
            self.steps = StaticSteps(model)

    def spare_slots(self, batch_size: int) -> int:
        """Slots a static cache needs per row beyond prompt + budget (none here)."""
        return 0

    def before_clock(self, prompts: list[list[int]], max_new_tokens: int, seed: int | None) -> None:
        """Work a call needs before its clock starts (nothing here; a load-aware block size measures
        the costs it will compare)."""

    def static_shapes(self) -> list[tuple[int, bool]]:
        """(tokens, diffusion view) of every pass a compiled step runs (compiled before the clock)."""
        return [(1, False)]

    def describe(self) -> EngineDescription:
        facts = super().describe()
        if self.steps is not None:
            facts = replace(facts, compile_s=self.steps.compile_s, compiled_graphs=self.steps.graphs)
        return facts

    def forward(
        self, ids: torch.Tensor, cache: KVCache, starts: list[int], widths: list[int] | None = None
    ) -> torch.Tensor:
        """One pass of a decoding step: the AR view over ids [B, T] at positions starts[r].., or with
        ``widths`` the diffusion view (row r's block is its first widths[r] positions); compiled when
        the engine is. Logits [B, T, V]."""
        if self.steps is not None:
            ends = None if widths is None else [s + w for s, w in zip(starts, widths)]
            return self.steps(ids, cache, starts, ends)
        if widths is None:
            return self.model.forward_ar(ids, cache, starts)
        return self.model.forward_diffusion(ids, cache, starts, widths)

    def _cache(self, batch_size: int, capacity: int | None) -> KVCache:
        """A new cache, or a compiled engine's own persistent one for this shape (its compiled steps,
        and on CUDA their captured graphs, are bound to its tensors; stale slots are never visible)."""
        if self.steps is None:
            return self.model.new_cache(batch_size, capacity)
        assert capacity is not None
        key = (batch_size, round_up(capacity, COMPILE_GRAIN))
        if key not in self._caches:
            cache = self._caches[key] = self.model.new_cache(*key)
            for tokens, diffusion in self.static_shapes():  # compile (and capture) before the clock starts
                ids = torch.zeros((batch_size, tokens), dtype=torch.long, device=self.device)
                self.forward(ids, cache, [0] * batch_size, [tokens] * batch_size if diffusion else None)
        return self._caches[key]

    @torch.inference_mode()
    def _generate(self, prompt, max_new_tokens, settings, generator, seed, eos_token_id) -> GenerationResult:
        return self._generate_batch([prompt], max_new_tokens, settings, generator, seed, eos_token_id).rows[0]

    @torch.inference_mode()
    def _generate_batch(self, prompts, max_new_tokens, settings, generator, seed, eos_token_id) -> BatchResult:
        self.before_clock(prompts, max_new_tokens, seed)
        state = self.prefill(prompts, max_new_tokens, settings, generator, eos_token_id)
        return self._decode(state, max_new_tokens, settings, generator, eos_token_id)

    def prefill(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        settings: SamplingSettings,
        generator: torch.Generator | None,
        eos_token_id: int | None,
    ) -> DecodeState:
        """Start the clock, then every prompt in one AR pass and each row's first token. Rows are
        left-aligned (row r at positions 0 .. len_r - 1) and right-padded to the longest; a real
        token attends causally to real tokens only, so the padding changes nothing it sees."""
        model, device = self.model, self.device
        batch = new_batch(prompts, self.listener)
        longest = max(len(p) for p in prompts)
        capacity = None
        if self.cache_kind == "static":
            capacity = longest + max_new_tokens + self.spare_slots(len(prompts))
        cache = self._cache(len(prompts), capacity)
        ids = torch.tensor([p + [0] * (longest - len(p)) for p in prompts], device=device)
        sync(device)
        batch.start()
        last = [len(p) - 1 for p in prompts]
        features = None
        if self.hidden_layers is None:
            logits = model.forward_ar(ids, cache, 0, last=last)
        else:
            logits, features = model.forward_ar(ids, cache, 0, last=last, hidden_layers=self.hidden_layers)
        tokens = pick_token(logits, settings, generator)  # [B]
        active = [True] * len(prompts)
        batch.record_pass("prefill", active)
        for r, (row, token) in enumerate(zip(batch.rows, tokens.tolist())):
            row.record_step("prefill", [token])
            active[r] = not row_finished(row, max_new_tokens, eos_token_id)
        return DecodeState(batch, cache, [len(p) for p in prompts], tokens, active, features, prompts)

    def _decode(
        self,
        state: DecodeState,
        max_new_tokens: int,
        settings: SamplingSettings,
        generator: torch.Generator | None,
        eos_token_id: int | None,
        max_steps: int | None = None,
    ) -> BatchResult:
        """The decoding loop after prefill, until every row finished (or ``max_steps`` steps: ``orthrus
        profile`` times the steps of this loop from a cache filled without a prefill)."""
        raise NotImplementedError
