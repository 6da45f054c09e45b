"""A block size that follows the load (``block_size: auto``), and a verifier that accepts at a set rate
(synthetic acceptance).

**The chooser.** Before each cycle the engine picks K from a set of candidates that includes 1 (a
plain AR step, no drafting) to maximise the expected committed tokens per second of the batch:

    rate(K) = E[tokens per cycle at K] / cost(K, batch, context)
    E[tokens at K] = 1 + sum_{j=1..K-1} prod_{i<=j} c_i       (E = 1 at K = 1)

with c_i the conditional acceptance of draft position i, estimated from the cycles this engine ran
(a Beta prior of ``PRIOR_WEIGHT`` cycles at ``PRIOR_RATE`` per position; a position is never estimated
above the one before it, so positions no cycle reached yet cannot make a long block look good), and
cost(K) the seconds of one cycle at K (one decode step at K = 1) for the batch size and context at
hand: from a latency profile of this device and model (the ``profile`` option: ``python -m orthrus
profile``'s file) or, without one, measured on the engine's own passes before the clock of the first
call that needs it (all candidates in interleaved rounds, the median of each, so a slow moment of the
machine does not land on one K only), then corrected from the engine's own measured cycle and step
times as it runs: per K, batch size and context bucket, the median ratio of measured to tabled
seconds over the last ``WINDOW`` steps (a bucket with no step of that K yet borrows the median over
every bucket), so neither a profile from another machine nor a slow moment while the table was
measured misleads it for long.

**The machine's pace is shared by every K.** A shared machine runs slower for seconds or minutes at
a time, and the K being run is the only one timed then: an AR step timed in a slow minute beside a
cycle cost timed in a fast one makes drafting look cheaper than it is (and the reverse). So each
step's seconds are split in two: the pace, the median over the last ``PACE_WINDOW`` steps of any K
of measured / expected seconds (tabled times that K's correction), and the correction above, kept
in units of the pace at the time. A predicted cost is tabled x correction x pace: a slow minute
scales every candidate alike and changes no choice, and only what differs between K moves one K
against another.

**Checks in the other direction.** Drafting only ever times cycles, so an AR step cost the table
overstates would never be corrected by drafting alone, and ``auto`` would draft where AR is faster.
So where the estimates favour drafting at a (batch size, context bucket) with fewer than ``CHECKS``
timed plain steps, the next step is a plain AR step (a check) when the budget below allows it.

**Exploration has a budget.** The K it takes is the best under the estimates above. Drafting must be
tried before measured acceptance can rule it in or out, so the K that is best under optimistic
estimates (each position raised by ``OPTIMISM / sqrt(1 + cycles that reached it)``) is taken instead
when it differs, but only while the seconds spent on such trial cycles and on checks stay within
``EXPLORATION`` of all the decode seconds the engine has run (a step is allowed on its predicted
seconds, so what it really took can run a little over): where drafting never pays, ``auto`` loses
about that fraction to finding it out (less, since a trial cycle still commits its tokens);
where it pays, the trials raise the estimates until the best K under them drafts. One K serves every
row of a batch.
``choose`` and ``observe`` do a few dozen float operations over at most ``len(CANDIDATES)``
candidates per step, inside the timed region; the expected tokens are kept between steps that change
no acceptance (plain steps), so a plain step pays the least. The engine times them and the records
say what they cost (``own_us_per_step`` in ``extra.block_chooser``).

**Synthetic acceptance.** The verifier keeps draft j with a set conditional probability (a constant
one solving a mean acceptance length, or per-position rates) instead of comparing it with the AR
view, so an engine's cost can be measured at acceptance the drafter does not reach. Its output is
not the AR model's: an engine with it is not lossless, and its records say ``synthetic``.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

from orthrus.errors import UserInputError

CANDIDATES = (1, 2, 4, 8, 16, 32)
PRIOR_RATE = 0.5
PRIOR_WEIGHT = 4.0
OPTIMISM = 0.5  # a trial cycle's estimates: each position raised by OPTIMISM / sqrt(1 + cycles that reached it)
EXPLORATION = 0.03  # trials and checks may take at most this fraction of the engine's decode seconds
CONTEXT_GRAIN = 256  # costs are kept per context bucket of this many positions
WINDOW = 15  # a cost's correction: the median of its last WINDOW measured / tabled ratios
PACE_WINDOW = 5  # the machine's pace: the median of the last PACE_WINDOW steps' measured / expected seconds
CHECKS = 3  # plain steps a (batch, context bucket) gets, within the budget, before drafting there is trusted
COST_ROUNDS = 5  # timed rounds over every candidate when costs are measured (after one untimed round)
PROFILE_FORMAT = "orthrus-latency-profile"


def expected_tokens(rates: Sequence[float], block: int) -> float:
    """E[committed tokens per cycle] at block ``block`` (K - 1 drafts) for conditional rates c_1..."""
    total, reach = 1.0, 1.0
    for j in range(block - 1):
        reach *= rates[j] if j < len(rates) else 0.0
        total += reach
    return total


def expected_by_block(rates: Sequence[float], blocks: Sequence[int]) -> list[float]:
    """``expected_tokens`` at each of ``blocks`` (ascending), in one pass over the rates."""
    totals, total, reach, j, known = [], 1.0, 1.0, 0, len(rates)
    for block in blocks:
        while j < block - 1:
            reach *= rates[j] if j < known else 0.0
            total += reach
            j += 1
        totals.append(total)
    return totals


def constant_rate_for(length: float, block: int) -> float:
    """The constant conditional rate c with 1 + c + c^2 + ... + c^(K-1) = ``length`` (tokens per cycle)."""
    if not 1.0 <= length <= block:
        raise UserInputError(
            f"synthetic acceptance length {length:g} is outside 1..{block} (tokens per cycle at block size {block}); "
            f"give a length from 1 to the block size."
        )
    if block == 1 or length == 1.0:
        return 0.0
    if length >= block:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if expected_tokens([mid] * block, block) < length else (low, mid)
    return (low + high) / 2


def synthetic_acceptance_rates(length: float | None, rates: Sequence[float] | None, block: int) -> list[float] | None:
    """The conditional acceptance per draft position a synthetic verifier uses (None: not synthetic)."""
    if length is not None and rates is not None:
        raise UserInputError("give synthetic_acceptance_length or synthetic_rates, not both.")
    if rates is not None:
        if isinstance(rates, str | bytes) or not isinstance(rates, Sequence) or not all(map(_is_number, rates)):
            raise UserInputError(
                f"synthetic_rates must be a list of conditional probabilities in [0, 1], got {rates!r}; "
                f"give one per draft position, e.g. [0.9, 0.8, 0.7]."
            )
        rates = [float(r) for r in rates]
        if not rates or any(not 0.0 <= r <= 1.0 for r in rates):
            raise UserInputError(f"synthetic_rates must be conditional probabilities in [0, 1], got {rates}.")
        return rates
    if length is not None:
        if not _is_number(length):
            raise UserInputError(
                f"synthetic_acceptance_length must be a number of tokens per cycle, got {length!r}; "
                f"give one number from 1 to the block size."
            )
        return [constant_rate_for(float(length), block)] * max(block - 1, 1)
    return None


def _is_number(value: Any) -> bool:
    """A real number a suite may give (not a bool, a string or a list; NaN fails the range checks)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def contexts_between(low: int, high: int) -> list[int]:
    """A context in every bucket from ``low`` to ``high`` (both included): the contexts a call reaches."""
    return [*range(low, high, CONTEXT_GRAIN), high]


class CostTable:
    """Seconds of one step at K for a batch size and a context bucket: measured, or from a profile."""

    def __init__(
        self, measure: Callable[[int, int, Sequence[int]], dict[int, float]] | None, profile: dict[str, Any] | None
    ) -> None:
        self.measure = measure  # (batch, context, blocks) -> {K: seconds}, on the engine's own passes
        self.profile = profile
        self.table: dict[tuple[int, int, int], float] = {}
        self.blocks: tuple[int, ...] = ()  # every K asked for so far: measured together

    @staticmethod
    def bucket(context: int) -> int:
        return max(CONTEXT_GRAIN, -(-context // CONTEXT_GRAIN) * CONTEXT_GRAIN)

    def prepare(self, batch: int, context: int, blocks: Sequence[int]) -> None:
        """Make sure every cost the chooser may need at this batch and context is known (called
        before a call's clock starts)."""
        self.blocks = tuple(sorted(set(self.blocks) | set(blocks)))
        key = self.bucket(context)
        missing = [block for block in self.blocks if (batch, key, block) not in self.table]
        if not missing:
            return
        if self.profile is not None:
            costs = {block: profile_cost(self.profile, batch, key, block) for block in missing}
        else:
            assert self.measure is not None
            costs = self.measure(batch, key, missing)
        for block in missing:
            self.table[(batch, key, block)] = costs[block]

    def cost(self, batch: int, context: int, block: int) -> float:
        key = (batch, self.bucket(context), block)
        if key not in self.table:  # a context the call outgrew: measured once, then kept
            self.prepare(batch, context, (block,))
        return self.table[key]


def profile_cost(profile: dict[str, Any], batch: int, context: int, block: int) -> float:
    """A cycle's seconds at K (a decode step at K = 1) from a latency profile's engine steps: the
    nearest batch size the profile has (scaled linearly in the rows beyond it), linear in context
    between the profiled ones (held flat beyond them)."""
    kind = "ar_step" if block == 1 else "orthrus_cycle"
    rows = [t for t in profile["timings"] if t["kind"] == kind and int(t["block"]) == block]
    if not rows:
        raise UserInputError(f"the profile has no {kind} at block {block}; profile these block sizes.")
    batches = sorted({int(t.get("batch", 1)) for t in rows})
    near = min(batches, key=lambda b: (abs(b - batch), b))
    points = sorted((int(t["context"]), float(t["median_ms"])) for t in rows if int(t.get("batch", 1)) == near)
    if context <= points[0][0]:
        ms = points[0][1]
    elif context >= points[-1][0]:
        ms = points[-1][1]
    else:
        (c0, m0), (c1, m1) = next((a, b) for a, b in zip(points, points[1:]) if a[0] <= context <= b[0])
        ms = m0 + (m1 - m0) * (context - c0) / (c1 - c0)
    return ms / 1e3 * (batch / near if batch > near else 1.0)


def config_shape(config: Any) -> dict[str, Any]:
    """The latency-relevant shape of a Qwen3 config, named as a profile's ``model.shape`` names it."""
    heads = int(config.num_attention_heads)
    return {
        "layers": int(config.num_hidden_layers),
        "hidden": int(config.hidden_size),
        "heads": heads,
        "kv_heads": int(getattr(config, "num_key_value_heads", None) or heads),
        "intermediate": int(config.intermediate_size),
        "vocab": int(config.vocab_size),
    }


def read_profile(path: str | Path, config: Any, device: str, dtype: str) -> dict[str, Any]:
    """A latency profile file for this model, device kind and dtype, with the engine steps the chooser
    needs; anything else is one sentence (the harness calls this when it validates a suite)."""
    file = Path(path).expanduser()
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise UserInputError(
            f"profile {file} cannot be read as a latency profile ({err}); make one with python -m orthrus profile."
        ) from None
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT or not isinstance(data.get("timings"), list):
        raise UserInputError(
            f"profile {file} is not an Orthrus latency profile; make one with python -m orthrus profile."
        )
    shape = (data.get("model") or {}).get("shape") or {}
    mine = config_shape(config)
    differing = [k for k, v in mine.items() if shape.get(k) != v]
    if differing:
        raise UserInputError(
            f"profile {file} was measured on another model ({', '.join(differing)} differ); profile this model "
            "with python -m orthrus profile --model ..."
        )
    their_device, their_dtype = str((data.get("device") or {}).get("type")), str(data.get("dtype"))
    if their_device != device or their_dtype != dtype:
        raise UserInputError(
            f"profile {file} was measured on {their_device} in {their_dtype}, this engine runs on {device} in {dtype}; "
            "profile this device and dtype with python -m orthrus profile."
        )
    kinds = {t.get("kind") for t in data["timings"]}
    if not {"ar_step", "orthrus_cycle"} <= kinds:
        raise UserInputError(
            f"profile {file} has no engine steps (ar_step, orthrus_cycle), which block_size: auto needs; "
            "re-measure it with python -m orthrus profile (without --no-engine-steps)."
        )
    return data


class BlockChooser:
    """Picks K per cycle (see the module docstring) and learns acceptance and costs as it goes."""

    def __init__(self, costs: CostTable, candidates: Sequence[int] = CANDIDATES) -> None:
        self.costs = costs
        self.candidates = tuple(sorted(set(candidates) | {1}))
        width = max(self.candidates)
        self.tried = [0.0] * width  # cycles that reached draft position j (1-based, index j - 1)
        self.kept = [0.0] * width
        # measured / tabled seconds: the last WINDOW ratios per (K, batch, context bucket) and pooled per
        # (K, batch), and their medians (a bucket's own once it has one, else the pool's)
        self.ratios: dict[tuple[int, ...], deque[float]] = {}
        self.correction: dict[tuple[int, ...], float] = {}
        self.surprises: deque[float] = deque(maxlen=PACE_WINDOW)  # measured / expected seconds of recent steps
        self.pace = 1.0  # their median: how slow the machine runs now, against the corrections
        self.elapsed = 0.0  # decode seconds observed (every step)
        self.explored = 0.0  # of which in trials and checks
        self.trials = 0  # trial cycles taken
        self.checks = 0  # plain steps taken to check AR's cost where the estimates said to draft
        self._trial = False  # the K last chosen is a trial or a check (its seconds count as explored)
        self._check = False  # the K last chosen is a check
        self._expected: tuple[list[float], list[float]] | None = None  # see expectations()
        self.steps = 0  # steps observed
        self.own_seconds = 0.0  # spent in choose and observe (the engine times them), for the records

    def snapshot(self, batch: int, contexts: Sequence[int]) -> dict[str, Any]:
        """What the chooser believed at the end of a call, for the records (to diagnose a choice): per
        context bucket the call reached, each candidate's cost in ms as measured or profiled and as
        corrected by the steps run (at the current pace); the estimated acceptance per draft position;
        trial and check counts and the fraction of decode seconds they took; the machine's pace; and
        what choosing itself cost, microseconds per step over the engine's life so far."""
        buckets = sorted({self.costs.bucket(c) for c in contexts})
        return {
            "costs_ms": {
                str(bucket): {
                    str(block): [
                        round(self.costs.cost(batch, bucket, block) * 1e3, 4),
                        round(self.predicted(block, batch, bucket) * 1e3, 4),
                    ]
                    for block in self.candidates
                }
                for bucket in buckets
            },
            "rates": [round(r, 4) for r in self.rates()[:8]],
            "trials": self.trials,
            "checks": self.checks,
            "explored_fraction": round(self.explored / self.elapsed, 4) if self.elapsed else 0.0,
            "pace": round(self.pace, 4),
            "own_us_per_step": round(self.own_seconds / self.steps * 1e6, 2) if self.steps else None,
        }

    def rates(self, optimistic: bool = False) -> list[float]:
        """Conditional acceptance per draft position: the posterior mean (raised by the optimism of a
        trial where few cycles reached the position), never above the position before it."""
        prior, sqrt = PRIOR_RATE * PRIOR_WEIGHT, math.sqrt
        if optimistic:
            rates = [(k + prior) / (t + PRIOR_WEIGHT) + OPTIMISM / sqrt(1.0 + t) for k, t in zip(self.kept, self.tried)]
        else:
            rates = [(k + prior) / (t + PRIOR_WEIGHT) for k, t in zip(self.kept, self.tried)]
        return list(accumulate(rates, min, initial=1.0))[1:]

    def corrected(self, block: int, batch: int, context: int) -> float:
        """A step's seconds at the pace its corrections are kept in: the table's, times the median
        measured / expected ratio of this K and batch size at this context bucket (at another bucket
        before it has one; 1 before any)."""
        return self.costs.cost(batch, context, block) * self.factor(block, batch, self.costs.bucket(context))

    def factor(self, block: int, batch: int, bucket: int) -> float:
        """The correction of this K and batch size at this context bucket (the pooled one before the
        bucket has its own; 1 before any)."""
        return self.correction.get((block, batch, bucket)) or self.correction.get((block, batch), 1.0)

    def predicted(self, block: int, batch: int, context: int) -> float:
        """A step's seconds now: corrected, at the machine's current pace."""
        return self.corrected(block, batch, context) * self.pace

    def predicted_all(self, batch: int, context: int, blocks: Sequence[int]) -> list[float]:
        """``predicted`` at each of ``blocks`` (the context's bucket found once: this runs every step)."""
        bucket = self.costs.bucket(context)
        return [self.costs.cost(batch, context, block) * self.factor(block, batch, bucket) * self.pace for block in blocks]

    def affordable(self, seconds: float) -> bool:
        """Whether a step of ``seconds`` that the estimates do not favour keeps trials and checks within
        ``EXPLORATION`` of the decode seconds."""
        return self.explored + seconds <= EXPLORATION * (self.elapsed + seconds)

    def expectations(self) -> tuple[list[float], list[float]]:
        """E[tokens per cycle] at each candidate under the estimates and under a trial's optimistic
        ones; kept until a cycle's acceptance changes them (plain AR steps do not)."""
        if self._expected is None:
            means, hopes = self.rates(), self.rates(optimistic=True)
            self._expected = (expected_by_block(means, self.candidates), expected_by_block(hopes, self.candidates))
        return self._expected

    def best(self, expected: Sequence[float], costs: Sequence[float]) -> tuple[int, float]:
        """The candidate with the most ``expected`` tokens per predicted second (``costs``: each
        candidate's predicted seconds, as far as the budget allows) and its predicted seconds."""
        best, best_rate, best_cost = 1, -1.0, 0.0
        for block, tokens, cost in zip(self.candidates, expected, costs):
            if tokens / cost > best_rate:
                best, best_rate, best_cost = block, tokens / cost, cost
        return best, best_cost

    def choose(self, batch: int, context: int, budget: int) -> int:
        """The K for the next step of ``batch`` rows at ``context`` (at most ``budget``, the most tokens
        a row may still commit): the best under the estimates, or a trial within the budget."""
        means, hopes = self.expectations()
        budget = max(budget, 1)
        costs = self.predicted_all(batch, context, [block for block in self.candidates if block <= budget])
        chosen, _ = self.best(means, costs)
        if chosen > 1 and len(self.ratios.get((1, batch, self.costs.bucket(context)), ())) < CHECKS:
            # drafting is favoured where no (or few) plain steps were timed: its edge over AR rests on the
            # table's AR cost here, which drafting alone would never correct; check it (a plain step)
            seconds = costs[0]
            self._trial = self._check = self.affordable(seconds)
            if self._check:
                return 1
        trial, seconds = self.best(hopes, costs)
        self._trial = trial != chosen and self.affordable(seconds)
        return trial if self._trial else chosen

    def observe(
        self, block: int, batch: int, context: int, seconds: float, drafted: Sequence[int], accepted: Sequence[int]
    ) -> None:
        """What one step at ``block`` cost and, per row that drafted, how many drafts it kept."""
        if drafted:  # acceptance changes: the expected tokens are computed again at the next choice
            self._expected = None
        for d, a in zip(drafted, accepted):
            for j in range(min(d, len(self.tried))):
                if a >= j:  # the cycle reached draft j + 1
                    self.tried[j] += 1
                    if a > j:
                        self.kept[j] += 1
        self.steps += 1
        usable = seconds > 0 and math.isfinite(seconds)
        if usable:
            self.elapsed += seconds
            if self._trial:
                self.explored += seconds
        self.checks += self._check
        self.trials += self._trial and not self._check
        self._trial = self._check = False
        base = self.costs.cost(batch, context, block)
        if base > 0 and usable:
            # this K's correction first, in units of the pace so far (so a K's first step cannot move
            # the pace), then the pace, from what the step cost against what it was expected to cost
            own = (block, batch, self.costs.bucket(context))
            for key in (own, (block, batch)):
                window = self.ratios.get(key)
                if window is None:
                    window = self.ratios[key] = deque(maxlen=WINDOW)
                window.append(seconds / (base * self.pace))
                self.correction[key] = median(window)
            self.surprises.append(seconds / (base * self.correction[own]))
            self.pace = median(self.surprises)


def median(values: Sequence[float]) -> float:
    """statistics.median's value (the mean of the middle two of an even count), without its checks:
    the chooser takes three per step."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def timed_rounds(steps: dict[int, Callable[[], Any]], rounds: int, synchronize: Callable[[], None]) -> dict[int, float]:
    """The median seconds of each step over ``rounds`` rounds that run every step once, in turn (after
    one untimed round), so a slow moment of the machine is spread over the steps instead of landing
    on one of them."""
    samples: dict[int, list[float]] = {key: [] for key in steps}
    for round_ in range(rounds + 1):
        for key, step in steps.items():
            begin = time.perf_counter()
            step()
            synchronize()
            if round_:
                samples[key].append(time.perf_counter() - begin)
    return {key: sorted(times)[len(times) // 2] for key, times in samples.items()}
