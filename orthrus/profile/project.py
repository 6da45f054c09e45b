"""Projected speedups: measured acceptance x a device's latency profile.

One Orthrus cycle with block K drafts K-1 tokens in one diffusion pass and verifies them in one AR
pass; it commits the accepted drafts plus one correction (or bonus) token. So

    tokens_per_cycle(K) = 1 + E[accepted](K),   E[accepted](K) = sum_{j=1}^{K-1} prod_{i=1}^{j} c_i
    speedup(K)          = tokens_per_cycle(K) * t_step / t_cycle(K)
    tokens_per_s(K)     = tokens_per_cycle(K) / t_cycle(K),  AR: 1 / t_step

with c_i the conditional acceptance rate of draft position i (accepted, given drafts 1..i-1 were)
and t_step, t_cycle(K) the profile's median ``ar`` engine step and ``orthrus`` engine cycle at the
context length (interpolated linearly between measured contexts and blocks, never extrapolated).
The same from the bare passes, shown next to it and used where a profile has no engine steps:

    speedup_passes(K)   = tokens_per_cycle(K) * t_AR(1) / (t_draft(K) + t_verify(K))

the speedup of an engine that spends nothing on the host between passes; t_cycle - (t_draft +
t_verify) is what ours spends. ``assisted`` is projected from passes only, with its separate draft
model: t_draft(K) = (K-1) * t_AR_draft(1), its one-token decode time from the draft model's profile.
That leaves out transformers' own per-step overhead in ``generate()`` (candidate bookkeeping, logits
processors, stopping criteria, cache handling between the passes), which no profile measures: on
this project's CPU the honesty check read +200% and +292% for it. So an ``assisted`` row is marked
not comparable (``comparable: false`` and a note in projection.json, said in the text and the
report, and left out of the honesty check's count): it bounds what the passes allow, it is no
estimate of what the engine measures.

The acceptance comes from a run directory (pooled over the cycles of every request of a cell) or
from a published-acceptance YAML (reports/profiles/README.md). Projecting to a block K smaller than
the one measured truncates the rates (assumes position j's acceptance does not depend on K);
larger blocks are not projected. The pass times include the argmax and reading ids back; the
engine steps include everything the engine's loop does.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orthrus.errors import UserInputError
from orthrus.profile.shapes import SHAPE_KEYS, same_shape, shape_name, spec_shape
from orthrus.profile.timing import LatencyProfile, OutsideProfile
from orthrus.results import RESULTS_FILE, ar_counterpart, read_records
from orthrus.results.vocabulary import FIELD

PROJECTION_FORMAT = "orthrus-projection"
PROJECTION_VERSION = 1
PROJECTION_FILE = "projection.json"
DUAL_VIEW, DRAFT_MODEL = "dual_view", "draft_model"  # the two ways an engine is projected


def projection_kind(engine: str) -> str | None:
    """How a profile projects an engine, from what the engine class says of itself: ``dual_view``
    (one model drafts a block and verifies it: the profile's draft and verify passes, and its
    ``orthrus_cycle`` engine step), ``draft_model`` (a separate draft model's decode steps, then a
    verify pass), or None (not a drafting engine, or one this version does not know: a drafter that reads
    the target's hidden states, DFlash or EAGLE-3, is not profiled yet)."""
    from orthrus.engines import engine_class

    try:
        cls = engine_class(engine)
    except UserInputError:
        return None
    if cls.model_kind == DUAL_VIEW and cls.takes_block_size:
        return DUAL_VIEW
    return DRAFT_MODEL if cls.needs_draft_model and cls.draft_model_kind == "causal" else None


# what a file of published acceptance may give (exactly one per entry)
PUBLISHED_FIGURES = ("acceptance_by_position", "tokens_per_cycle", FIELD.tokens_per_forward)
HONESTY_TOLERANCE_PCT = 15.0  # a projection "within" the measurement: |projected / measured - 1| <= 15%
NOT_COMPARABLE = {
    "assisted": "not comparable with a measured speedup: projected from the bare passes, it leaves out "
    "transformers' own per-step overhead in generate(), which no profile measures (an upper bound)"
}
FORMULA = (
    "speedup(K) = tokens_per_cycle(K) x t_step / t_cycle(K) from the engines' own steps; "
    "from the bare passes (assisted, and profiles without engine steps): "
    "tokens_per_cycle(K) x t_AR(1) / (t_draft(K) + t_verify(K))"
)


# ---------------------------------------------------------------------- arithmetic
def conditional_rates(drafted_per_cycle: Sequence[int], accepted_per_cycle: Sequence[int]) -> list[float]:
    """c_j over pooled cycles: of the cycles that drafted position j with drafts 1..j-1 accepted,
    the fraction that accepted draft j (0 once no cycle reaches j: u_j = 0 from there on)."""
    width = max(drafted_per_cycle, default=0)
    rates = []
    for j in range(1, width + 1):
        reached = [a for d, a in zip(drafted_per_cycle, accepted_per_cycle) if d >= j and a >= j - 1]
        if not reached:  # drafted, but every cycle had rejected earlier: u_j = 0 from here on
            rates.extend([0.0] * (width - j + 1))
            break
        rates.append(sum(1 for a in reached if a >= j) / len(reached))
    return rates


def conditional_from_unconditional(unconditional: Sequence[float]) -> list[float]:
    """c_j = u_j / u_{j-1} from u_j = P(draft j accepted) (our ``acceptance_by_position``)."""
    rates, previous = [], 1.0
    for u in unconditional:
        rates.append(float(u) / previous if previous > 0 else 0.0)
        previous = float(u)
    return rates


def unconditional_from_conditional(conditional: Sequence[float]) -> list[float]:
    """u_j = prod_{i<=j} c_i."""
    return [float(x) for x in np.cumprod(np.asarray(conditional, dtype=float))] if len(conditional) else []


def expected_accepted(conditional: Sequence[float], block: int) -> float:
    """E[accepted drafts per cycle] for a block of K = ``block`` tokens (K-1 drafts)."""
    if block - 1 > len(conditional):
        raise ValueError(f"block {block} needs {block - 1} acceptance rates, only {len(conditional)} are known")
    return float(sum(unconditional_from_conditional(conditional[: block - 1])))


def tokens_per_cycle(conditional: Sequence[float], block: int) -> float:
    """tau: accepted drafts + the correction/bonus token (the paper's and EAGLE's acceptance length)."""
    return 1.0 + expected_accepted(conditional, block)


def geometric_rates(tau: float, block: int) -> list[float]:
    """Constant conditional rates c (K-1 of them) whose tokens per cycle at ``block`` equal tau.

    Used when only tau is published: (1 - c^K) / (1 - c) = tau, solved by bisection.
    """
    if not 1.0 <= tau <= block:
        raise UserInputError(f"tokens per cycle {tau} is impossible for block {block} (it lies in 1..{block}).")

    def tau_of(c: float) -> float:
        return sum(c**j for j in range(block))

    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tau_of(mid) < tau else (lo, mid)
    return [(lo + hi) / 2] * (block - 1)


def projected_speedup(tau: float, t_ar1_ms: float, t_draft_ms: float, t_verify_ms: float) -> float:
    """From the bare passes: tau x t_AR(1) / (t_draft(K) + t_verify(K))."""
    return tau * t_ar1_ms / (t_draft_ms + t_verify_ms)


def engine_speedup(tau: float, t_step_ms: float, t_cycle_ms: float) -> float:
    """From the engines' own steps: tau x t_step / t_cycle(K)."""
    return tau * t_step_ms / t_cycle_ms


# ---------------------------------------------------------------------- acceptance sources
@dataclass
class AcceptanceSource:
    """Acceptance of one engine setting: a run's cell or a published figure."""

    label: str
    engine: str  # orthrus | assisted
    conditional: list[float]  # c_1..c_n
    block_size: int | None  # the K it was measured at
    context: float | None  # the context length to read the profile at
    model: str | None = None
    shape: dict[str, Any] | None = None
    draft_model: str | None = None
    draft_shape: dict[str, Any] | None = None
    assumption: str | None = None
    source: str = "run"
    cell_id: str | None = None
    measured: dict[str, float | None] = field(default_factory=dict)  # speedups measured in the run


def _read_records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise UserInputError(f"{run_dir} has no {RESULTS_FILE}; give a run directory made by run_bench.py.")
    return read_records(path)


def _ar_counterpart_id(cell: dict[str, Any], cells: dict[str, dict[str, Any]]) -> str | None:
    rows = [{**c, "_cell_id": cid} for cid, c in cells.items()]
    match = ar_counterpart(cell, rows)
    return match["_cell_id"] if match else None


def _decode_ms_per_token(record: dict[str, Any]) -> float | None:
    e2e, ttft, n = record.get("e2e_ms"), record.get("ttft_ms"), record.get("new_tokens")
    if e2e is None or ttft is None or not n or n < 2:
        return None
    return (e2e - ttft) / (n - 1)


def _measured_speedup(own: list[dict[str, Any]], ar: list[dict[str, Any]], metric: str) -> float | None:
    """Geometric mean over prompts of AR's median / this cell's median (per-token decode or e2e ms)."""

    def per_prompt(records: list[dict[str, Any]]) -> dict[str, float]:
        values: dict[str, list[float]] = defaultdict(list)
        for r in records:
            value = _decode_ms_per_token(r) if metric == "decode" else r.get("e2e_ms")
            if value:
                values[str(r.get("prompt_id"))].append(float(value))
        return {k: float(np.median(v)) for k, v in values.items()}

    mine, theirs = per_prompt(own), per_prompt(ar)
    ratios = [theirs[p] / mine[p] for p in mine if p in theirs and mine[p] > 0]
    return float(math.exp(np.mean(np.log(ratios)))) if ratios else None


def _measured_by_round(own: list[dict[str, Any]], ar: list[dict[str, Any]]) -> list[float]:
    """The decode speedup of each repetition alone (geometric mean over prompts of AR's ms per token
    over this cell's, repetition r against AR's repetition r): in round order, both measured in the
    same round. Their spread shows how much the machine moved under the median figure."""
    out = []
    for repeat in sorted({r.get("repeat") for r in own} & {r.get("repeat") for r in ar} - {None}):
        value = _measured_speedup(
            [r for r in own if r.get("repeat") == repeat], [r for r in ar if r.get("repeat") == repeat], "decode"
        )
        if value is not None:
            out.append(value)
    return out


def acceptance_from_run(run_dir: str | Path) -> list[AcceptanceSource]:
    """One source per Orthrus / assisted cell of a run, with the speedups that run measured."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserInputError(f"run directory {run_dir} does not exist.")
    records = [r for r in _read_records(run_dir) if r.get("status", "ok") == "ok"]
    by_cell: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_cell[str(r["cell_id"])].append(r)
    cells = {cid: dict(rs[0]["cell"]) for cid, rs in by_cell.items()}
    shapes: dict[str, dict[str, Any] | None] = {}

    def shape_of(spec: str | None) -> dict[str, Any] | None:
        if spec is None:
            return None
        if spec not in shapes:
            shapes[spec] = spec_shape(spec)
        return shapes[spec]

    sources = []
    for cid, rs in by_cell.items():
        cell = cells[cid]
        if projection_kind(str(cell.get("engine"))) is None:
            continue
        drafted, accepted = [], []
        for r in rs:
            acc = r.get("accepted_per_cycle") or []
            accepted.extend(acc)
            drafted.extend(r.get("drafted_per_cycle") or [max(acc, default=0)] * len(acc))
        rates = conditional_rates(drafted, accepted)
        if not rates:
            continue
        block = rs[0].get("block_size")  # the engine's own (None: it drafts as many as it likes)
        ar_id = _ar_counterpart_id(cell, cells)
        ar_records = by_cell.get(ar_id, []) if ar_id else []
        label = cell.get("label") or cell.get("engine")
        context = cell.get("context_length")
        new = cell.get("max_new_tokens") or 0
        sources.append(
            AcceptanceSource(
                label=f"{label} ctx={context} K={block or max(drafted) + 1} T={cell.get('temperature')}",
                engine=str(cell["engine"]),
                conditional=rates,
                block_size=int(block) if block is not None else None,
                context=float(context) + new / 2 if context is not None else None,
                model=cell.get("model_path") or cell.get("model"),
                shape=shape_of(cell.get("model_path")),
                draft_model=cell.get("draft_model_path"),
                draft_shape=shape_of(cell.get("draft_model_path")),
                source=str(run_dir),
                cell_id=cid,
                measured={
                    "speedup_decode": _measured_speedup(rs, ar_records, "decode") if ar_records else None,
                    "speedup_e2e": _measured_speedup(rs, ar_records, "e2e") if ar_records else None,
                    "speedup_decode_by_round": _measured_by_round(rs, ar_records) if ar_records else [],
                    "tokens_per_cycle": 1.0 + float(np.mean(accepted)) if accepted else None,
                    "device": cell.get("device"),
                    "dtype": cell.get("dtype"),
                },
            )
        )
    if not sources:
        raise UserInputError(f"{run_dir} has no Orthrus or assisted cell with drafted tokens to project.")
    return sources


def acceptance_from_yaml(path: str | Path) -> list[AcceptanceSource]:
    """Published acceptance figures (format: reports/profiles/README.md)."""
    from orthrus.safe_yaml import read_yaml_file

    path = Path(path)
    data = read_yaml_file(path, "acceptance file")
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list) or not data["entries"]:
        raise UserInputError(f"acceptance file {path} needs a non-empty 'entries:' list.")
    sources = []
    for i, entry in enumerate(data["entries"]):
        where = f"{path}: entries[{i}]"
        if not isinstance(entry, dict):
            raise UserInputError(f"{where} must be a mapping.")
        for key in ("name", "model", "block_size"):
            if key not in entry:
                raise UserInputError(f"{where} has no '{key}'.")
        block = int(entry["block_size"])
        given = [k for k in PUBLISHED_FIGURES if k in entry]
        if len(given) != 1:
            raise UserInputError(f"{where} needs exactly one of {', '.join(PUBLISHED_FIGURES)}.")
        assumption = None
        if given[0] == "acceptance_by_position":
            rates = [float(x) for x in entry["acceptance_by_position"]]
            if entry.get("rates", "unconditional") == "unconditional":
                rates = conditional_from_unconditional(rates)
        else:
            tau = float(entry[given[0]]) * (2.0 if given[0] == FIELD.tokens_per_forward else 1.0)
            rates = geometric_rates(tau, block)
            assumption = (
                f"only tokens per cycle ({tau:.2f} at K={block}) is published: "
                f"constant conditional acceptance c={rates[0]:.3f} assumed at every position"
            )
            if given[0] == FIELD.tokens_per_forward:
                assumption += " (tau = 2 x TPF)"
        if any(not 0.0 <= r <= 1.0 for r in rates):
            raise UserInputError(f"{where}: acceptance rates must lie in 0..1.")
        context = entry.get("context", data.get("context"))
        if context is None:
            raise UserInputError(f"{where} has no 'context' (nor a file-level 'context:') to read the profile at.")
        model = str(entry["model"])
        draft = entry.get("draft_model")
        sources.append(
            AcceptanceSource(
                label=str(entry["name"]),
                engine=str(entry.get("engine", "orthrus")),
                conditional=rates,
                block_size=block,
                context=float(context),
                model=model,
                shape=spec_shape(model),
                draft_model=str(draft) if draft else None,
                draft_shape=spec_shape(str(draft)) if draft else None,
                assumption=assumption,
                source=str(data.get("source") or path),
            )
        )
    return sources


# ---------------------------------------------------------------------- projection
@dataclass
class ProjectionRow:
    source: str
    engine: str
    context: float
    block: int
    measured_block: int | None
    tokens_per_cycle: float | None = None
    t_ar1_ms: float | None = None
    t_draft_ms: float | None = None
    t_verify_ms: float | None = None
    t_step_ms: float | None = None  # the ar engine's step (engine steps; None without them)
    t_cycle_ms: float | None = None  # the orthrus engine's cycle at this K
    tokens_per_s: float | None = None
    ar_tokens_per_s: float | None = None
    speedup: float | None = None  # from the engine steps where the profile has them, else from passes
    speedup_passes: float | None = None  # always from the bare passes
    basis: str | None = None  # engine steps | passes
    best: bool = False
    note: str | None = None
    comparable: bool = True  # False: the projection leaves out a cost the engine pays (NOT_COMPARABLE)
    measured_speedup_decode: float | None = None  # only at the measured block, from the same run
    measured_speedup_e2e: float | None = None
    measured_by_round: list[float] = field(default_factory=list)  # the decode speedup of each repetition

    def forget_measurement(self) -> None:
        """A speedup measured with another model or machine is no check of this projection."""
        self.measured_speedup_decode = self.measured_speedup_e2e = None
        self.measured_by_round = []

    @property
    def arithmetic(self) -> str:
        if self.speedup is None:
            return ""
        passes = (
            f"{self.tokens_per_cycle:.2f} x {self.t_ar1_ms:.3f} ms / "
            f"({self.t_draft_ms:.3f} ms + {self.t_verify_ms:.3f} ms) = {self.speedup_passes:.2f}x"
        )
        if self.basis != "engine steps":
            return passes
        return (
            f"{self.tokens_per_cycle:.2f} x {self.t_step_ms:.3f} ms / {self.t_cycle_ms:.3f} ms = {self.speedup:.2f}x"
            f" (passes: {passes})"
        )


@dataclass
class DeviceProjection:
    device: str
    dtype: str
    profile: str  # file
    profile_shape: str
    draft_profile: str | None
    same_machine: bool  # the profile's device and threads are those the run measured on
    rows: list[ProjectionRow]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row, obj in zip(data["rows"], self.rows):
            row["arithmetic"] = obj.arithmetic
        return data


def _blocks_for(source: AcceptanceSource, profile: LatencyProfile) -> list[int]:
    _, verify_blocks = profile.grid("verify")
    limit = len(source.conditional) + 1
    blocks = {b for b in verify_blocks if 2 <= b <= limit}
    if source.block_size is not None and source.block_size <= limit:
        blocks.add(source.block_size)
    return sorted(blocks)


def project_source(
    source: AcceptanceSource, target: LatencyProfile, draft: LatencyProfile | None = None
) -> list[ProjectionRow]:
    """Rows for every block the profile and the acceptance both cover; the best one flagged."""
    rows = []
    context = source.context if source.context is not None else float(min(target.grid("decode")[0]))
    for block in _blocks_for(source, target):
        row = ProjectionRow(
            source=source.label, engine=source.engine, context=context, block=block, measured_block=source.block_size
        )
        row.tokens_per_cycle = tokens_per_cycle(source.conditional, block)
        notes = []
        if source.engine in NOT_COMPARABLE:
            row.comparable = False
            notes.append(NOT_COMPARABLE[source.engine])
        if source.block_size is not None and block != source.block_size:
            notes.append(f"acceptance truncated from K={source.block_size}")
        try:
            row.t_ar1_ms = target.time_ms("decode", context)
            row.t_verify_ms = target.time_ms("verify", context, block)
            if projection_kind(source.engine) == DRAFT_MODEL:
                if draft is None:
                    raise OutsideProfile("no profile of the draft model's shape on this device")
                row.t_draft_ms = (block - 1) * draft.time_ms("decode", context)
            else:
                row.t_draft_ms = target.time_ms("draft", context, block)
        except OutsideProfile as err:
            notes.append(f"not projected: {err}")
            row.note = "; ".join(notes)
            rows.append(row)
            continue
        row.speedup_passes = projected_speedup(row.tokens_per_cycle, row.t_ar1_ms, row.t_draft_ms, row.t_verify_ms)
        if projection_kind(source.engine) == DUAL_VIEW and target.has_engine_steps:
            try:
                row.t_step_ms = target.time_ms("ar_step", context)
                row.t_cycle_ms = target.time_ms("orthrus_cycle", context, block)
            except OutsideProfile as err:
                row.t_step_ms = row.t_cycle_ms = None
                notes.append(f"from passes only: {err}")
        if row.t_cycle_ms is not None and row.t_step_ms is not None:
            row.basis = "engine steps"
            row.tokens_per_s = 1e3 * row.tokens_per_cycle / row.t_cycle_ms
            row.ar_tokens_per_s = 1e3 / row.t_step_ms
            row.speedup = engine_speedup(row.tokens_per_cycle, row.t_step_ms, row.t_cycle_ms)
        else:
            row.basis = "passes"
            row.tokens_per_s = 1e3 * row.tokens_per_cycle / (row.t_draft_ms + row.t_verify_ms)
            row.ar_tokens_per_s = 1e3 / row.t_ar1_ms
            row.speedup = row.speedup_passes
        if source.assumption:
            notes.append("assumed: constant conditional acceptance (only tokens per cycle is published)")
        if block == source.block_size or (projection_kind(source.engine) == DRAFT_MODEL and source.block_size is None):
            row.measured_speedup_decode = source.measured.get("speedup_decode")
            row.measured_speedup_e2e = source.measured.get("speedup_e2e")
            row.measured_by_round = list(source.measured.get("speedup_decode_by_round") or [])
        row.note = "; ".join(notes) or None
        rows.append(row)
    done = [r for r in rows if r.speedup is not None]
    if done:
        max(done, key=lambda r: r.speedup).best = True
    return rows


def _params(profile: LatencyProfile) -> int:
    return int(profile.model.get("params_ar") or 0)


def _describe(shape: dict[str, Any] | None) -> str:
    if shape is None:
        return "an unknown shape"
    return shape.get("name") or shape_name(shape)


def _shape_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    return ", ".join(f"{k} {a.get(k)} vs {b.get(k)}" for k in SHAPE_KEYS if a.get(k) != b.get(k))


def project(
    sources: list[AcceptanceSource],
    profiles: dict[str, LatencyProfile],
    any_shape: bool = False,
    run_device: dict[str, Any] | None = None,
) -> list[DeviceProjection]:
    """Every source on every device the profiles cover (profiles grouped by device name and dtype).

    On each device the target profile is the one of the source's model shape; a profile of another
    shape is refused (UserInputError naming both shapes) unless ``any_shape``, then used with a
    warning. ``assisted`` needs a second profile of its draft model's shape on the same device.
    """
    if not profiles:
        raise UserInputError("give at least one latency profile (--profile FILE).")
    groups: dict[tuple[str, str], list[tuple[str, LatencyProfile]]] = defaultdict(list)
    for path, profile in profiles.items():
        groups[(str(profile.device.get("name")), profile.dtype)].append((path, profile))
    out = []
    for (device, dtype), members in groups.items():
        members.sort(key=lambda item: -_params(item[1]))
        rows: list[ProjectionRow] = []
        warnings: list[str] = []
        used_target, used_draft = None, None
        for source in sources:
            target = _pick_target(source, members, any_shape, warnings)
            draft = None
            if projection_kind(source.engine) == DRAFT_MODEL:
                draft = _pick_draft(source, members, target, any_shape, warnings)
            used_target = used_target or target[0]
            used_draft = used_draft or (draft[0] if draft else None)
            projected = project_source(source, target[1], draft[1] if draft else None)
            if not same_shape(target[1].model.get("shape"), source.shape):
                for row in projected:
                    row.forget_measurement()
            rows.extend(projected)
        target_profile = dict(members)[used_target]
        if not target_profile.has_engine_steps and any(projection_kind(s.engine) == DUAL_VIEW for s in sources):
            warnings.append(
                f"profile {used_target} has no engine steps (made before profile format 2): Orthrus is "
                "projected from the bare passes, which leave out the host work between them; re-measure "
                "it with 'python -m orthrus profile'"
            )
        same_machine = bool(run_device and run_device.get("name") == device)
        profile_threads = target_profile.threads.get("torch_intra_op")
        if same_machine and run_device.get("threads") not in (None, profile_threads):
            warnings.append(
                f"the run's environment records {run_device.get('threads')} torch threads, the profile "
                f"{profile_threads}: profile with the threads the suite measured with (measure.threads)"
            )
        if same_machine and run_device.get("order") == "cells" and any(r.measured_speedup_decode for r in rows):
            warnings.append(
                "the run measured its cells one after another (measure.order: cells), so its measured "
                "speedups move with the machine's load between cells; for this check measure with "
                "measure.order: rounds or interleaved"
            )
        if not same_machine:
            for row in rows:
                row.forget_measurement()
        out.append(
            DeviceProjection(
                device=device,
                dtype=dtype,
                profile=used_target,
                profile_shape=_describe(target_profile.model.get("shape")),
                draft_profile=used_draft,
                same_machine=same_machine,
                rows=rows,
                warnings=list(dict.fromkeys(warnings)),
            )
        )
    return out


def _pick_target(
    source: AcceptanceSource, members: list[tuple[str, LatencyProfile]], any_shape: bool, warnings: list[str]
) -> tuple[str, LatencyProfile]:
    for path, profile in members:
        if same_shape(profile.model.get("shape"), source.shape):
            return path, profile
    path, profile = members[0]  # the largest model measured on this device
    shape = profile.model.get("shape") or {}
    if source.shape is None:
        warnings.append(
            f"the shape of {source.model} is unknown here (checkpoint not on this machine): "
            f"{source.label} is projected onto {_describe(shape)} without a shape check"
        )
        return path, profile
    message = (
        f"profile {path} was measured with {_describe(shape)} but {source.label} ran {source.model} "
        f"({_describe(source.shape)}: {_shape_difference(shape, source.shape)})"
    )
    if not any_shape:
        raise UserInputError(
            f"{message}; profile that model, or pass --any-shape to project its acceptance onto this shape."
        )
    warnings.append(f"shape differs: {message}; its acceptance is projected onto {_describe(shape)} latencies")
    return path, profile


def _pick_draft(
    source: AcceptanceSource,
    members: list[tuple[str, LatencyProfile]],
    target: tuple[str, LatencyProfile],
    any_shape: bool,
    warnings: list[str],
) -> tuple[str, LatencyProfile] | None:
    for path, profile in members:
        if same_shape(profile.model.get("shape"), source.draft_shape):
            return path, profile
    others = [m for m in members if m[0] != target[0]]
    if any_shape and others:
        path, profile = others[-1]  # the smallest other model on this device
        warnings.append(
            f"shape differs: {source.label}'s draft model {source.draft_model} ({_describe(source.draft_shape)}) "
            f"is projected with {_describe(profile.model.get('shape'))} latencies from {path}"
        )
        return path, profile
    warnings.append(
        f"{source.label}: no profile of its draft model's shape ({_describe(source.draft_shape)}) on this device; "
        "add one with --profile"
    )
    return None


def projection_document(
    projections: list[DeviceProjection], sources: list[AcceptanceSource], run_dir: str | None
) -> dict[str, Any]:
    """What ``project`` writes to projection.json (and the report section reads)."""
    document = {
        "format": PROJECTION_FORMAT,
        "version": PROJECTION_VERSION,
        "run_dir": run_dir,
        "formula": FORMULA,
        "not_comparable": dict(NOT_COMPARABLE),
        "sources": [
            {
                "label": s.label,
                "engine": s.engine,
                "block_size": s.block_size,
                "model": s.model,
                "shape": _describe(s.shape),
                "conditional_acceptance": [round(c, 4) for c in s.conditional],
                "unconditional_acceptance": [round(u, 4) for u in unconditional_from_conditional(s.conditional)],
                "assumption": s.assumption,
                "source": s.source,
            }
            for s in sources
        ],
        "devices": [p.to_dict() for p in projections],
    }
    document["honesty"] = honesty_count(document)
    return document


def row_comparable(row: dict[str, Any]) -> bool:
    """Whether a projection row may be held against a measurement (a projection.json written before
    the flag existed: by its engine)."""
    return bool(row.get("comparable", row.get("engine") not in NOT_COMPARABLE))


def honesty_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Projection vs the decode-phase speedup the run measured on the profile's own machine.

    Every row with both figures is listed; ``comparable`` says whether it counts (``honesty_count``)."""
    out = []
    for device in document.get("devices", []):
        if not device.get("same_machine"):
            continue
        for row in device["rows"]:
            measured, projected = row.get("measured_speedup_decode"), row.get("speedup")
            passes = row.get("speedup_passes")
            if measured and projected:
                out.append(
                    {
                        "device": device["device"],
                        "source": row["source"],
                        "engine": row.get("engine"),
                        "block": row["block"],
                        "projected": projected,
                        "basis": row.get("basis"),
                        "projected_passes": passes,
                        "measured_decode": measured,
                        "measured_e2e": row.get("measured_speedup_e2e"),
                        "measured_by_round": row.get("measured_by_round") or [],
                        "error_pct": 100.0 * (projected / measured - 1.0),
                        "error_passes_pct": 100.0 * (passes / measured - 1.0) if passes else None,
                        "comparable": row_comparable(row),
                    }
                )
    return out


def honesty_count(document: dict[str, Any], tolerance_pct: float = HONESTY_TOLERANCE_PCT) -> dict[str, Any]:
    """How many comparable rows of the honesty check land within the tolerance (the projection as
    decided, and from the bare passes); rows that are not comparable are counted apart, never in."""
    rows = honesty_rows(document)
    comparable = [h for h in rows if h["comparable"]]
    return {
        "tolerance_pct": tolerance_pct,
        "comparable": len(comparable),
        "within": sum(1 for h in comparable if abs(h["error_pct"]) <= tolerance_pct),
        "within_from_passes": sum(
            1 for h in comparable if h["error_passes_pct"] is not None and abs(h["error_passes_pct"]) <= tolerance_pct
        ),
        "not_comparable": len(rows) - len(comparable),
        "not_comparable_engines": sorted({str(h["engine"]) for h in rows if not h["comparable"]}),
    }
