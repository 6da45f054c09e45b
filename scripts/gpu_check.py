"""The GPU check: everything CUDA-specific in one command, offline, nothing to install.

    PYTHONPATH=. python scripts/gpu_check.py OUT_DIR                     # on the CUDA machine
    PYTHONPATH=. python scripts/gpu_check.py OUT_DIR --rehearse-on-cpu   # the same stages here, on a CPU
    PYTHONPATH=. python scripts/gpu_check.py OUT_DIR2 --stages shapes_suite,project   # a rerun of some

Stages, in order, each in its own process with a time cap (a failing or timed-out stage is recorded and
the next one runs; only a failed preflight stops the check):

  preflight      (40 s) the device's own stack: versions (python, torch and its CUDA, transformers,
                 tokenizers, safetensors, numpy, pynvml), one `orthrus` and one `assisted` generation
                 of the zoo in fp32 on the device, each identical to `ar`, and one NVML reading. If it
                 fails, the check stops with one sentence saying what failed (exit 1).
  cuda_tests     (40 s) pytest -m cuda: engines on CUDA fp32 equal to AR, the cache on the device,
                 NVML readings plausible, synchronised timers
  zoo_fp32/bf16  (30 s each) suites/ci.yaml on CUDA in fp32 and in bf16, 2 repetitions (identity,
                 divergence margins)
  compiled_zoo   (50 s) ar and orthrus on the zoo in fp32, eager and compiled (compile: true:
                 torch.compile with CUDA graphs), 1K context: tokens/s of each, compile_s, and identity
                 of the compiled engines with eager ar
  profile_1.7b   (55 s) python -m orthrus profile of qwen3-shape:1.7b in bf16 up to 32K context; it also
                 saves the model's random weights as the checkpoint the suites below run
  profile_8b     (60 s) the same for qwen3-shape:8b (no checkpoint)
  profile_0.6b   (25 s) qwen3-shape:0.6b, decode only: the draft model of `assisted`; saves its checkpoint
  shapes_suite   (70 s) ar, orthrus and assisted on the random-weight 1.7B (0.6B draft) in bf16 at 2K and
                 16K context, and dflash and eagle3 on random-weight drafters for it (a 5-layer DFlash, a
                 1-layer EAGLE-3 over a 32k draft vocabulary, in their released layouts) at 2K only: at
                 16K their 64 cycles of K = 32 (a random drafter is never right; EAGLE-3's chain is 31
                 drafter passes a cycle) would not fit the cap (writes the checkpoints first if a profile
                 stage did not, and the drafters, about 5 s)
  project        (10 s, in this process) the shapes run projected with this GPU's 1.7B and 0.6B profiles:
                 projection vs measurement, a check of the cost model
  batch_sweep    (90 s) ar, orthrus and orthrus with block_size auto on the 1.7B shape in bf16 at
                 batch sizes 1, 4, 16 (2K context,
                 16 prompts): throughput, speedup over AR at the same batch size, TPF vs batch 1,
                 identity vs solo AR and vs batch 1 with divergence margins

Caps that add up. Every cap includes its process's start-up and imports (10-15 s on the GPU machine)
and the stage's own estimate with room; a stage may also use what the stages before it left unused
(its deadline is the start plus the sum of the caps up to and including it), so time saved early goes
to the later, larger stages (the batch sweep was estimated at 45-60 s: it gets 90 s and whatever is
left). The caps sum to BUDGET_S = 500 s (8 minutes 20 s). Why that total: one command on the device
may run at most 10 minutes (600 s). Outside the stages the check spends about OUTSIDE_STAGES_S = 30 s
(its own start and torch import, waiting for a killed stage, copying results, removing about 6 GB of
checkpoints), so it ends by about 530 s: run it with timeout_s=540, which still leaves a minute under
the limit (and a summary is on disk after every stage, so a kill at the very end loses nothing before
it). A session has 15 minutes of device time including 1-2 minutes of start-up: 2 + 9 leaves about 4
minutes on the warm machine for one rerun of the stages that failed (--stages, into a new OUT_DIR,
with --cap STAGE=SECONDS where a cap was short).

Results survive anything. summary.json and summary.md are rewritten before and after every stage (a
stage being run is marked so), and each stage's results are copied into OUT_DIR as soon as it ends:
the run_bench runs' summary.json/summary.csv (a stage cut short gets a partial summary of the
records it wrote), the profiles, projection.json, environment.json once, and for a stage that did
not end well the last lines of its output. So a stage that hangs, or the whole command killed,
still returns everything before it. About 20 small files (a few MB at most).

--rehearse-on-cpu runs every stage end to end on the CPU, with what needs CUDA replaced: the miniature
qwen3-shape:tiny / tiny-untied / tiny-draft instead of 1.7B / 8B / 0.6B, tiny contexts, fewer prompts
and repetitions, no NVML check; the CUDA pytest stage still runs its command line (its tests skip).
So the first run on a GPU is not the check's first run. On a machine without CUDA and without that
flag it says so in one sentence and exits 2. Exit 0: every stage ok; 1: a stage not ok.

Needs: torch with CUDA, transformers, pandas, pyyaml, jinja2, pytest, nvidia-ml-py (as a typical GPU
image has them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 500  # all caps together, preflight included (see the docstring for why)
OUTSIDE_STAGES_S = 30  # the check's own start, a killed stage's wait, copies, removing the work dir
COMMAND_LIMIT_S = 600  # one command on the device machine
RECOMMENDED_TIMEOUT_S = 540  # timeout_s to run it with: BUDGET_S + OUTSIDE_STAGES_S and a minute to spare
KILL_WAIT_S = 10  # after SIGKILL of a stage's process group, how long to wait for it to go
TAIL_CHARS = 2500  # of each stage's output in summary.json
LOG_KEEP_CHARS = 20_000  # of a stage's output kept in OUT_DIR when it did not end well
TOKENIZER = "orthrus/models/zoo/tiny-tokenizer"
PREFLIGHT_TOKENS = 32
PREFLIGHT_MARK = "PREFLIGHT "
PREFLIGHT_FAILED_MARK = "PREFLIGHT-FAILED "

# The figures of the shape stages and what they mean on random weights (summary.md says so).
MEANINGFUL = (
    "latency (TTFT, ms per token, end to end) and tokens/s at each context and batch size",
    "memory (NVML device and process, torch peaks, KV cache bytes)",
    "identity with AR in fp32 (exactness does not depend on the weights' values)",
    "bf16 divergence margins (whether a bf16 divergence from AR is a near-tie or real)",
    "batch invariance (identity and tokens per forward vs batch 1: batching must not change a row)",
    "projection vs measurement (the same acceptance enters both: a check of the cost model, i.e. of the"
    " profile's t_step/t_cycle arithmetic, not of the method)",
)
NOT_MEANINGFUL = (
    "acceptance (accepted drafts per cycle, acceptance by position)",
    "tokens per forward",
    "speedups of the drafting methods (orthrus, assisted, dflash, eagle3) over AR, measured or projected: random"
    " weights draft and accept what no trained model would; for real checkpoints project published"
    " acceptance (reports/profiles/paper_acceptance.yaml) onto these profiles",
)


# ---------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Settings:
    """What differs between the GPU run and its CPU rehearsal."""

    mode: str  # gpu | cpu rehearsal
    device: str
    target: str  # the 1.7B role: profiled, the suites' target
    large: str  # the 8B role: profiled only
    draft: str  # the 0.6B role: assisted's draft model
    profile_contexts: str
    profile_blocks: str
    draft_blocks: str
    profile_repeats: int
    draft_repeats: int
    profile_extra: tuple[str, ...]
    zoo_sets: tuple[str, ...]
    shapes_contexts: tuple[int, ...]
    shapes_block: int
    shapes_new_tokens: int
    shapes_repetitions: int
    batch_context: int
    batch_block: int
    batch_sizes: tuple[int, ...]
    batch_prompts: int
    batch_new_tokens: int
    compiled_engines: tuple[str, ...] = ("ar", "orthrus")  # eager and compiled (compile: true) on the zoo
    compiled_contexts: tuple[int, ...] = (1024,)


GPU = Settings(
    mode="gpu",
    device="cuda",
    target="qwen3-shape:1.7b",
    large="qwen3-shape:8b",
    draft="qwen3-shape:0.6b",
    profile_contexts="1024,8192,32768",
    profile_blocks="1,2,4,8,16,32,64",
    draft_blocks="1,2",
    profile_repeats=8,  # 2 rounds of 4: leaves the caps room for the engine steps
    draft_repeats=10,
    profile_extra=(),
    zoo_sets=("measure.repetitions=2",),
    shapes_contexts=(2048, 16384),
    shapes_block=32,
    shapes_new_tokens=64,
    shapes_repetitions=2,
    batch_context=2048,
    batch_block=16,
    batch_sizes=(1, 4, 16),
    batch_prompts=16,
    batch_new_tokens=64,
)
REHEARSAL = Settings(
    mode="cpu rehearsal",
    device="cpu",
    target="qwen3-shape:tiny",
    large="qwen3-shape:tiny-untied",
    draft="qwen3-shape:tiny-draft",
    profile_contexts="32,128",
    profile_blocks="1,2,4,8",  # 2: assisted drafts few tokens per cycle here, its rows need a small K
    draft_blocks="1,2",
    profile_repeats=2,
    draft_repeats=2,
    profile_extra=("--warmup", "1", "--warm-in", "1"),
    zoo_sets=(
        "sweep.context_lengths=[64]",
        "sweep.max_new_tokens=[16]",
        "measure.repetitions=1",
        "measure.warmup=0",
    ),
    shapes_contexts=(64,),
    shapes_block=8,
    shapes_new_tokens=16,
    shapes_repetitions=1,
    batch_context=64,
    batch_block=8,
    batch_sizes=(1, 2),
    batch_prompts=2,
    batch_new_tokens=16,
    compiled_engines=("ar",),  # one CPU compile of the zoo model (~20-40 s) keeps the rehearsal short
    compiled_contexts=(64,),
)

# (stage, cap in seconds): each includes 10-15 s of process start-up and imports on the GPU machine
CAPS: dict[str, int] = {
    "preflight": 40,  # start-up 15, CUDA init + zoo and draft loads + 3 generations of 32 tokens + NVML ~7, room
    "cuda_tests": 40,  # pytest start-up 15, 11 tests on the zoo ~10, room 15
    "zoo_fp32": 30,  # start-up 15, ci.yaml at 2 repetitions ~8, report ~3
    "zoo_bf16": 30,
    # start-up 15, load ~2, compiled engines built and compiled in their warm-up (dynamic shapes: one graph
    # per view, triton + CUDA-graph capture; not measured on a GPU yet), 2 prompts x 2 calls per engine ~5
    "compiled_zoo": 50,
    "profile_1.7b": 55,  # start-up 15, build + save 4 GB ~8, 3 contexts x 22 cells ~25
    "profile_8b": 60,  # start-up 15, build 16 GB ~5, 3 contexts x 22 cells ~35
    "profile_0.6b": 25,  # start-up 15, build + save ~3, decode only ~3
    # start-up 15, load 5 GB ~5, 3 engines x 2 contexts x 3 calls ~25, dflash and eagle3 at 2K x 3 calls ~12
    # (not measured on a GPU yet: 64 cycles of K = 32 each; EAGLE-3's 31 chained drafter passes dominate),
    # writing and loading their random drafters ~5, report ~5: whatever the stages before it left helps
    "shapes_suite": 70,
    "project": 10,  # in this process: arithmetic on files
    "batch_sweep": 90,  # start-up 15, load ~5, 16+4+1 batches x 2 engines x (1 + warm-up) ~45, report ~5
}
STAGES = tuple(CAPS)


@dataclass
class Command:
    """One step of a stage: a process (argv) or a function run in this process; skipped when every
    file of ``unless_exists`` is there (e.g. a checkpoint a profile stage already saved)."""

    argv: list[str] | None = None
    function: Callable[[], str] | None = None
    unless_exists: tuple[Path, ...] = ()


@dataclass
class Stage:
    name: str
    cap: float
    what: str
    commands: list[Command]
    collect: Callable[[], list[str]] = field(default=lambda: [])  # copies results into OUT_DIR, names them
    model: str | None = None
    fixed: bool = False  # a cap given on the command line: exactly that, no time carried over into it


DRAFTER_ENGINES = ("dflash", "eagle3")  # on random-weight drafters, at the first shapes context only


def shape_suite(settings: Settings, target: Path, draft: Path, drafters: dict[str, Path] | None = None) -> dict[str, Any]:
    """A long_context_gpu-style suite on random-weight checkpoints (the zoo's tokenizer for prompts);
    ``drafters``: the DFlash and EAGLE-3 drafter directories (default: beside the target)."""
    drafters = drafters or drafter_dirs(target.parent)
    model = {"dtype": "bfloat16", "device": settings.device, "tokenizer": TOKENIZER}
    return {
        "name": "gpu_check_shapes",
        "description": f"Orthrus vs AR, assisted, DFlash and EAGLE-3 on random-weight {settings.target} "
        f"({settings.draft} draft, random drafters), bf16.",
        "models": {
            "target": {"path": str(target), **model},
            "draft": {"path": str(draft), **model},
            **{f"{name}_drafter": {"path": str(drafters[name]), **model} for name in DRAFTER_ENGINES},
        },
        "engines": [
            {"engine": "ar", "model": "target"},
            {"engine": "orthrus", "model": "target"},
            {"engine": "assisted", "model": "target", "draft_model": "draft"},
            *({"engine": name, "model": "target", "draft_model": f"{name}_drafter"} for name in DRAFTER_ENGINES),
        ],
        "sweep": {
            "context_lengths": list(settings.shapes_contexts),
            "block_sizes": [settings.shapes_block],
            "temperatures": [0.0],
            "max_new_tokens": [settings.shapes_new_tokens],
            "exclude": [
                {"engine": name, "context_length": context}
                for name in DRAFTER_ENGINES
                for context in settings.shapes_contexts[1:]
            ],
        },
        "prompts": [{"source": "synthetic", "corpus": "heldout", "count": 1}],
        # interleaved: AR and the drafting engines share the machine's moments (the projection's check)
        "measure": {"repetitions": settings.shapes_repetitions, "warmup": 1, "order": "interleaved"},
        "reference": {"engine": "ar", "model": "target"},
    }


def compiled_suite(settings: Settings) -> dict[str, Any]:
    """The zoo on the device, eager and compiled (torch.compile; CUDA graphs on a GPU), fp32: what the
    compiled steps buy over the eager loop, and that they are still lossless (identity with eager ar)."""
    engines: list[dict[str, Any]] = []
    for name in settings.compiled_engines:
        engines += [
            {"engine": name, "model": "zoo"},
            {"engine": name, "label": f"{name}-compiled", "model": "zoo", "options": {"compile": True}},
        ]
    return {
        "name": "gpu_check_compiled",
        "description": "Eager vs compiled engines on the zoo in fp32 on this device.",
        "models": {"zoo": {"path": "tiny-orthrus", "dtype": "float32", "device": settings.device}},
        "engines": engines,
        "sweep": {
            "context_lengths": list(settings.compiled_contexts),
            "block_sizes": [16],
            "temperatures": [0.0],
            "max_new_tokens": [64],
        },
        "prompts": [{"source": "synthetic", "corpus": "heldout", "count": 2}],
        "measure": {"repetitions": 2, "warmup": 1, "order": "interleaved"},
        "reference": {"engine": "ar", "model": "zoo"},
    }


def batch_suite(settings: Settings, target: Path) -> dict[str, Any]:
    """The GPU regime of suites/batch.yaml: does Orthrus's advantage survive batching in bf16, and is
    every batched row still the AR output (a divergence is judged near-tie or real by its margin)?"""
    sizes = ", ".join(map(str, settings.batch_sizes))
    return {
        "name": "gpu_check_batch",
        "description": f"Orthrus vs AR at batch sizes {sizes} on random-weight {settings.target}, bf16.",
        "models": {
            "target": {"path": str(target), "dtype": "bfloat16", "device": settings.device, "tokenizer": TOKENIZER}
        },
        "engines": [
            {"engine": "ar", "model": "target"},
            {"engine": "orthrus", "model": "target"},
            {"engine": "orthrus", "label": "orthrus-auto", "model": "target", "options": {"block_size": "auto"}},
        ],
        "sweep": {
            "context_lengths": [settings.batch_context],
            "block_sizes": [settings.batch_block],
            "temperatures": [0.0],
            "max_new_tokens": [settings.batch_new_tokens],
            "batch_sizes": list(settings.batch_sizes),
        },
        "prompts": [{"source": "synthetic", "corpus": "heldout", "count": settings.batch_prompts}],
        "measure": {"repetitions": 1, "warmup": 1},
        "reference": {"engine": "ar", "model": "target"},
    }


def drafter_dirs(work: Path) -> dict[str, Path]:
    return {name: work / f"{name}-drafter" for name in DRAFTER_ENGINES}


def write_drafters_command(target: Path, drafters: dict[str, Path]) -> Command:
    """A process writing random-weight drafters for the target checkpoint, in their released layouts
    (skipped when both are there): a 5-layer DFlash (as z-lab's Qwen3-8B drafter), a 1-layer EAGLE-3 over
    the 32k most frequent ids (the first 32k here)."""
    code = (
        "import torch; from orthrus.models.drafters import target_config_of, write_random_drafter as w; "
        f"t = target_config_of({str(target)!r}); "
        f"w('dflash', t, {str(drafters['dflash'])!r}, num_layers=5, dtype=torch.bfloat16); "
        f"w('eagle3', t, {str(drafters['eagle3'])!r}, draft_vocab=range(min(32000, t['vocab_size'])), "
        "dtype=torch.bfloat16)"
    )
    return Command(argv=[sys.executable, "-c", code], unless_exists=tuple(p / "config.json" for p in drafters.values()))


def shape_slug(spec: str) -> str:
    return "qwen3-" + spec.removeprefix("qwen3-shape:")


def profile_file(out: Path, spec: str) -> Path:
    return out / f"profile-{shape_slug(spec)}-bf16.json"


def stages(out: Path, work: Path, settings: Settings = GPU, caps: dict[str, float] | None = None) -> list[Stage]:
    """The stages in order, with their caps (CAPS; a stage named in ``caps`` gets exactly that)."""
    fixed = set(caps or {})
    caps = {**CAPS, **(caps or {})}
    py = sys.executable
    runs = work / "runs"
    target, draft, drafters = work / "target", work / "draft", drafter_dirs(work)
    suite_file = work / "shapes.yaml"
    suite_file.write_text(json.dumps(shape_suite(settings, target, draft, drafters), indent=1))  # JSON is YAML
    batch_file = work / "batch.yaml"
    batch_file.write_text(json.dumps(batch_suite(settings, target), indent=1))
    compiled_file = work / "compiled.yaml"
    compiled_file.write_text(json.dumps(compiled_suite(settings), indent=1))
    device = settings.device

    def write_checkpoints(*pairs: tuple[str, Path]) -> Command:
        """A process writing the checkpoints a profile stage did not save (skipped when all are there)."""
        calls = "; ".join(f"w({spec!r}, {str(path)!r}, {device!r}, 'bfloat16')" for spec, path in pairs)
        return Command(
            argv=[py, "-c", f"from orthrus.profile.shapes import write_shape_checkpoint as w; {calls}"],
            unless_exists=tuple(path / "config.json" for _, path in pairs),
        )

    def profile(spec: str, blocks: str, repeats: int, *extra: str) -> Command:
        return Command(
            argv=[
                *(py, "-m", "orthrus", "profile", "--device", device, "--dtype", "bfloat16", "--quiet"),
                *("--model", spec, "--contexts", settings.profile_contexts, "--blocks", blocks),
                *("--repeats", str(repeats), "--out", str(profile_file(out, spec)), *settings.profile_extra, *extra),
            ]
        )

    def zoo(dtype: str) -> Command:
        sets = [arg for value in settings.zoo_sets for arg in ("--set", value)]
        return Command(
            argv=[
                *(py, "run_bench.py", "suites/ci.yaml", "--device", device, "--quiet", "--out", str(runs)),
                *("--set", f"models.base.dtype={dtype}", "--set", "gates=[]", *sets, "--run-id", f"zoo-{dtype}"),
            ]
        )

    def bench(suite: Path, run_id: str) -> Command:
        return Command(argv=[py, "run_bench.py", str(suite), "--quiet", "--out", str(runs), "--run-id", run_id])

    def collect_run(run_dir: Path, prefix: str) -> Callable[[], list[str]]:
        return lambda: copy_run_summary(run_dir, out, prefix, work)

    def collect_files(*paths: Path) -> Callable[[], list[str]]:
        return lambda: [p.name for p in paths if p.is_file()]

    def project() -> str:
        return run_projection(
            runs / "gpu_check_shapes" / "shapes",
            [profile_file(out, settings.target), profile_file(out, settings.draft)],
            out / "projection.json",
        )

    zoo_runs = runs / "ci"
    plan = [
        Stage(
            "preflight",
            caps["preflight"],
            "versions; orthrus and assisted vs ar on the zoo in fp32; one NVML reading",
            [Command(argv=[py, str(Path(__file__).resolve()), "--preflight", device])],
            model="tiny-orthrus (+ tiny-draft)",
        ),
        Stage(
            "cuda_tests",
            caps["cuda_tests"],
            "pytest -m cuda (skipped without CUDA: the rehearsal runs the command line only)",
            [Command(argv=[py, "-m", "pytest", "tests/test_cuda.py", "-m", "cuda", "-q", "-p", "no:cacheprovider"])],
        ),
        Stage(
            "zoo_fp32",
            caps["zoo_fp32"],
            "suites/ci.yaml in fp32: identity with AR, divergence margins",
            [zoo("float32")],
            collect_run(zoo_runs / "zoo-float32", "zoo-float32"),
            model="tiny-orthrus",
        ),
        Stage(
            "zoo_bf16",
            caps["zoo_bf16"],
            "suites/ci.yaml in bf16: identity with AR, divergence margins",
            [zoo("bfloat16")],
            collect_run(zoo_runs / "zoo-bfloat16", "zoo-bfloat16"),
            model="tiny-orthrus",
        ),
        Stage(
            "compiled_zoo",
            caps["compiled_zoo"],
            "eager vs compiled (compile: true) " + ", ".join(settings.compiled_engines) + " on the zoo in fp32",
            [bench(compiled_file, "compiled")],
            collect_run(runs / "gpu_check_compiled" / "compiled", "compiled"),
            model="tiny-orthrus",
        ),
        Stage(
            "profile_1.7b",
            caps["profile_1.7b"],
            "latency profile in bf16 (passes and engine steps); saves the suites' target checkpoint",
            [
                profile(
                    settings.target, settings.profile_blocks, settings.profile_repeats, "--save-checkpoint", str(target)
                )
            ],
            collect_files(profile_file(out, settings.target)),
            model=settings.target,
        ),
        Stage(
            "profile_8b",
            caps["profile_8b"],
            "latency profile in bf16 (passes and engine steps)",
            [profile(settings.large, settings.profile_blocks, settings.profile_repeats)],
            collect_files(profile_file(out, settings.large)),
            model=settings.large,
        ),
        Stage(
            "profile_0.6b",
            caps["profile_0.6b"],
            "decode-only profile of the draft model; saves its checkpoint",
            [
                profile(
                    settings.draft,
                    settings.draft_blocks,
                    settings.draft_repeats,
                    *("--no-engine-steps", "--save-checkpoint", str(draft)),
                )
            ],
            collect_files(profile_file(out, settings.draft)),
            model=settings.draft,
        ),
        Stage(
            "shapes_suite",
            caps["shapes_suite"],
            "ar, orthrus, assisted on the random-weight target (draft as assisted's) in bf16; dflash and eagle3 on "
            "random drafters at the first context",
            [
                write_checkpoints((settings.target, target), (settings.draft, draft)),
                write_drafters_command(target, drafters),
                bench(suite_file, "shapes"),
            ],
            collect_run(runs / "gpu_check_shapes" / "shapes", "shapes"),
            model=f"{settings.target} + {settings.draft}",
        ),
        Stage(
            "project",
            caps["project"],
            "the shapes run projected with this device's profiles (projection vs measurement)",
            [Command(function=project)],
            collect_files(out / "projection.json"),
        ),
        Stage(
            "batch_sweep",  # last: it gets its cap and whatever the stages before it left
            caps["batch_sweep"],
            "ar, orthrus and orthrus with block_size auto in bf16 at batch sizes " + ", ".join(map(str, settings.batch_sizes)),
            [write_checkpoints((settings.target, target)), bench(batch_file, "batch")],
            collect_run(runs / "gpu_check_batch" / "batch", "batch"),
            model=settings.target,
        ),
    ]
    for stage in plan:
        stage.fixed = stage.name in fixed
    return plan


# ---------------------------------------------------------------------- running stages
class Interrupted(Exception):
    """SIGTERM or SIGINT while a stage ran: record, write the summary, stop."""


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def run_command(argv: list[str], timeout: float, env: dict[str, str], log: Path) -> int | None:
    """The exit code, or None when it ran past ``timeout`` (its whole process group is then killed).
    Output goes to ``log`` (a file, not a pipe: a killed stage's stray child cannot hold us up)."""
    with log.open("ab") as sink:
        sink.write(f"$ {' '.join(argv)}\n".encode())
        sink.flush()
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        return process.wait(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        _kill(process)
        return None
    except BaseException:
        _kill(process)
        raise


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=KILL_WAIT_S)
    except subprocess.TimeoutExpired:  # stuck in the kernel (a wedged GPU): go on without it
        pass


def _tail(path: Path, chars: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - chars))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def run_stages(
    plan: list[Stage],
    budget_s: float,
    env: dict[str, str],
    out: Path | None = None,
    work: Path | None = None,
    report: Callable[[list[dict[str, Any]]], None] = lambda results: None,
) -> list[dict[str, Any]]:
    """Run the stages in order. Stage i may run until start + the caps of stages 0..i (time left over
    by earlier stages carries over; a ``fixed`` stage gets its own cap only), never past start +
    ``budget_s``. ``report`` is called with every
    stage's result so far before and after each stage (summary files); a stage's files are collected
    into ``out`` as soon as it ends."""
    work = work or Path(tempfile.mkdtemp(prefix="gpu_check-logs-"))
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    begin = time.monotonic()
    deadline = begin + budget_s
    allowance = 0.0
    results = [
        {"stage": s.name, "status": "pending", "seconds": None, "cap_s": s.cap, "what": s.what, "model": s.model}
        for s in plan
    ]
    report(results)
    stopped: str | None = None
    for stage, result in zip(plan, results):
        allowance += stage.cap
        if stopped:
            result["status"] = stopped
            continue
        started = time.monotonic()
        stage_deadline = min(started + stage.cap if stage.fixed else begin + allowance, deadline)
        result["allowed_s"] = round(max(stage_deadline - started, 0.0), 1)
        carried = "" if stage.fixed else " + time carried over"
        result["status"] = f"running (allowed {result['allowed_s']} s: cap {stage.cap:g} s{carried})"
        report(results)
        log = logs / f"{stage.name}.log"
        status, tail = "ok", ""
        try:
            for command in stage.commands:
                if command.unless_exists and all(p.is_file() for p in command.unless_exists):
                    continue
                left = stage_deadline - time.monotonic()
                if left <= 0:
                    status = "skipped (time budget spent)" if command is stage.commands[0] else _timeout(started)
                    break
                if command.function is not None:
                    try:
                        text = command.function()
                    except Exception as err:  # noqa: BLE001 - recorded as the stage's failure
                        text = f"{type(err).__name__}: {err}"
                        status = f"failed ({text.splitlines()[0][:200]})"
                    with log.open("a") as sink:
                        sink.write(text + "\n")
                    if status != "ok":
                        break
                    continue
                assert command.argv is not None
                code = run_command(command.argv, left, env, log)
                if code is None:
                    status = _timeout(started)
                    break
                if code != 0:
                    status = f"failed (exit {code})"
                    break
        except Interrupted as signame:
            status, stopped = f"interrupted ({signame})", "not run (interrupted)"
        tail = _tail(log, TAIL_CHARS)
        result.update(status=status, seconds=round(time.monotonic() - started, 1), tail=tail)
        files = []
        if out is not None:
            try:
                files = stage.collect()
            except Exception as err:  # noqa: BLE001 - a copy that failed must not lose the rest
                result["collect_error"] = f"{type(err).__name__}: {err}"
            if status != "ok" and log.is_file():
                (out / f"log-{stage.name}.txt").write_text(_tail(log, LOG_KEEP_CHARS))
                files.append(f"log-{stage.name}.txt")
        result["files"] = files
        if stage.name == "preflight" and status != "ok":
            stopped = "not run (preflight failed)"
        print(f"[gpu_check] {stage.name}: {status} ({result['seconds']} s)", file=sys.stderr, flush=True)
        report(results)
    return results


def _timeout(started: float) -> str:
    return f"timeout after {time.monotonic() - started:.0f} s"


# ---------------------------------------------------------------------- collecting results
def copy_run_summary(run_dir: Path, out: Path, prefix: str, work: Path) -> list[str]:
    """A run's summary.json/summary.csv into OUT_DIR as PREFIX-summary.*; a run cut short (no summary
    yet) gets one made here from the records it wrote, as PREFIX-summary.partial.*; environment.json
    once."""
    names = []
    source = run_dir
    suffix = ""
    if not (run_dir / "summary.json").is_file() and (run_dir / "results.jsonl").is_file():
        from orthrus.results.rundir import read_records
        from orthrus.results.summary import write_summary as summarise

        source = work / "partial" / prefix
        source.mkdir(parents=True, exist_ok=True)
        summarise(source, read_records(run_dir / "results.jsonl"))
        suffix = ".partial"
    for name in ("summary.json", "summary.csv"):
        if (source / name).is_file():
            target = f"{prefix}-summary{suffix}{Path(name).suffix}"
            shutil.copyfile(source / name, out / target)
            names.append(target)
    if (run_dir / "environment.json").is_file() and not (out / "environment.json").is_file():
        shutil.copyfile(run_dir / "environment.json", out / "environment.json")
        names.append("environment.json")
    return names


def run_projection(run_dir: Path, profiles: list[Path], out_file: Path) -> str:
    """``run_bench.py project RUN_DIR --profile ... --out FILE`` in this process; its text."""
    from orthrus.errors import UserInputError
    from orthrus.profile.cli import build_project_parser, run_project
    from orthrus.profile.report import format_projection_text

    args = [str(run_dir), *(arg for p in profiles for arg in ("--profile", str(p))), "--out", str(out_file)]
    try:
        document = run_project(build_project_parser().parse_args(args))
    except UserInputError as err:
        raise RuntimeError(str(err)) from err
    warnings = [f"warning: {w}" for d in document["devices"] for w in d["warnings"]]
    return "\n".join([*warnings, format_projection_text(document)])


def _read_rows(out: Path, prefix: str) -> tuple[list[dict[str, Any]], bool]:
    for suffix, partial in (("", False), (".partial", True)):
        path = out / f"{prefix}-summary{suffix}.json"
        if path.is_file():
            try:
                return json.loads(path.read_text()), partial
            except (OSError, ValueError):
                return [], partial
    return [], False


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(title for title, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(key)) for _, key in columns) + " |")
    return lines


ZOO_COLUMNS = [
    ("label", "label"),
    ("dtype", "dtype"),
    ("ctx", "context_length"),
    ("batch", "batch_size"),
    ("identical", "identity_exact_rate"),
    ("match", "match_fraction_mean"),
    ("margin", "divergence_margin_median"),
    ("vs batch 1", "identity_vs_batch1_rate"),
    ("TPF", "tokens_per_forward_median"),
    ("speedup", "speedup_vs_ar"),
    ("NVML MiB", "nvml_device_used_mib_max"),
]
SHAPE_COLUMNS = [
    ("label", "label"),
    ("ctx", "context_length"),
    ("TTFT ms", "ttft_ms_median"),
    ("ms/token", "tpot_ms_median"),
    ("decode tok/s", "decode_tokens_per_s_median"),
    ("e2e ms", "e2e_ms_median"),
    ("NVML MiB", "nvml_device_used_mib_max"),
    ("torch MiB", "torch_max_allocated_mib_max"),
    ("KV bytes", "kv_cache_bytes_peak_max"),
    ("draft KV bytes", "draft_kv_cache_bytes_peak_max"),
    ("extra params", "extra_parameters"),
    ("identical", "identity_exact_rate"),
    ("margin", "divergence_margin_median"),
    ("TPF*", "tokens_per_forward_median"),
    ("speedup*", "speedup_vs_ar"),
]
BATCH_COLUMNS = [
    ("engine", "engine"),
    ("batch", "batch_size"),
    ("batch tok/s", "batch_tokens_per_s_median"),
    ("tok/s vs b1", "batch_tokens_per_s_vs_batch1"),
    ("identical", "identity_exact_rate"),
    ("vs batch 1", "identity_vs_batch1_rate"),
    ("margin", "divergence_margin_median"),
    ("margin vs b1", "divergence_margin_vs_batch1_median"),
    ("TPF vs b1", "tokens_per_forward_vs_batch1"),
    ("wasted row passes", "wasted_row_pass_fraction_mean"),
    ("speedup*", "speedup_vs_ar"),
    ("throughput speedup*", "throughput_speedup_vs_ar"),
]


def write_summary(out: Path, results: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    """summary.json and summary.md from the stages so far and the result files already in OUT_DIR
    (each file written whole, then renamed over the old one: a kill mid-write leaves the old one)."""
    preflight = extra.get("preflight") or read_preflight(results)
    data: dict[str, Any] = {**extra, "preflight": preflight, "stages": results}
    data["meaningful_on_random_weights"] = list(MEANINGFUL)
    data["not_meaningful_on_random_weights"] = list(NOT_MEANINGFUL)
    sections: dict[str, tuple[list[dict[str, Any]], bool]] = {
        prefix: _read_rows(out, prefix) for prefix in ("zoo-float32", "zoo-bfloat16", "shapes", "batch")
    }
    projection = None
    if (out / "projection.json").is_file():
        try:
            projection = json.loads((out / "projection.json").read_text())
            data["projection_honesty"] = projection.get("honesty")
        except (OSError, ValueError):
            projection = None
    _atomic_write(out / "summary.json", json.dumps(data, indent=1, default=str) + "\n")

    done = [r for r in results if r["status"] not in ("pending",) and not r["status"].startswith("running")]
    lines = [
        f"# GPU check ({extra.get('mode', 'gpu')}) on {extra.get('device') or (preflight or {}).get('gpu') or '?'}"
    ]
    lines += [
        "",
        f"Budget {extra.get('budget_s')} s for the stages (caps below, time left by a stage carries over);"
        f" {len(done)} of {len(results)} stages done{'' if extra.get('complete') else ' so far'}.",
    ]
    if extra.get("failure"):
        lines += ["", f"**{extra['failure']}**"]
    lines += ["", "| stage | status | seconds | cap s | model | what |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['stage']} | {r['status']} | {_fmt(r.get('seconds'))} | {_fmt(r.get('cap_s'))} | "
            f"{r.get('model') or ''} | {r.get('what', '')} |"
        )
    if preflight:
        lines += ["", "## Preflight", ""]
        lines += [f"- {k}: {v}" for k, v in (preflight.get("versions") or {}).items()]
        for key in ("gpu", "identity", "nvml", "seconds"):
            if preflight.get(key) is not None:
                lines.append(f"- {key}: {preflight[key]}")
    lines += ["", "## What the shape stages' figures mean (random weights)", ""]
    lines += ["Meaningful:", *(f"- {m}" for m in MEANINGFUL), ""]
    lines += ["Not meaningful (shown, marked *, read nothing into them):", *(f"- {m}" for m in NOT_MEANINGFUL)]
    titles = {
        "zoo-float32": "Zoo in fp32: identity and divergence margins",
        "zoo-bfloat16": "Zoo in bf16: identity and divergence margins",
        "shapes": "Shapes suite: latency, memory, identity (* not meaningful on random weights)",
        "batch": "Batch sweep (* not meaningful on random weights)",
    }
    columns = {"zoo-float32": ZOO_COLUMNS, "zoo-bfloat16": ZOO_COLUMNS, "shapes": SHAPE_COLUMNS, "batch": BATCH_COLUMNS}
    for prefix, (rows, partial) in sections.items():
        if rows:
            order = sorted(
                rows, key=lambda r: (str(r.get("engine")), r.get("context_length") or 0, r.get("batch_size") or 0)
            )
            lines += ["", f"## {titles[prefix]}{' (partial: the stage was cut short)' if partial else ''}", ""]
            lines += _table(order, columns[prefix])
    if projection is not None:
        from orthrus.profile.report import format_projection_text

        lines += [
            "",
            "## Projection of the shapes run with this device's profiles",
            "",
            "A check of the cost model (projected vs measured on the same weights and acceptance); the"
            " speedups themselves mean nothing on random weights. assisted rows are not comparable: the"
            " projection leaves out transformers' per-step generate() overhead.",
            "",
            "```",
            format_projection_text(projection),
            "```",
        ]
    for r in results:
        if (
            r["status"] not in ("ok", "pending")
            and not r["status"].startswith(("running", "not run"))
            and r.get("tail")
        ):
            lines += ["", f"## {r['stage']}: {r['status']}", "", "```", r["tail"].rstrip(), "```"]
    _atomic_write(out / "summary.md", "\n".join(lines) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# ---------------------------------------------------------------------- preflight (its own process)
class PreflightFailure(Exception):
    pass


def stack_versions() -> dict[str, str | None]:
    import importlib.metadata
    import platform

    import torch

    def version(*names: str) -> str | None:
        for name in names:
            try:
                return importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
        return None

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": version("transformers"),
        "tokenizers": version("tokenizers"),
        "safetensors": version("safetensors"),
        "numpy": version("numpy"),
        "pynvml": version("nvidia-ml-py", "pynvml"),
    }


def preflight(device: str) -> int:
    """Print the versions, one orthrus and one assisted generation of the zoo in fp32 on ``device``
    held against ar, and one NVML reading; the last line is PREFLIGHT {json} (exit 0) or
    PREFLIGHT-FAILED <one sentence> (exit 1)."""
    begin = time.monotonic()
    info: dict[str, Any] = {"device": device}
    step = "reading the package versions"
    try:
        info["versions"] = stack_versions()
        for key, value in info["versions"].items():
            print(f"{key}: {value}", flush=True)
        import torch

        step = f"using torch on {device}"
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise PreflightFailure(f"torch {torch.__version__} sees no CUDA device")
            info["gpu"] = torch.cuda.get_device_name(0)
        float(torch.ones(2, device=device).sum())
        step = "tokenizing a prompt with the zoo tokenizer"
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(ROOT / TOKENIZER))
        prompt = tokenizer("The quick brown fox jumps over the lazy dog; " * 8)["input_ids"]
        step = f"loading tiny-orthrus in float32 on {device}"
        from orthrus.engines import build_engine
        from orthrus.models import load_causal_lm

        model = load_causal_lm("tiny-orthrus", dtype="float32", device=device)
        step = f"generating with ar on {device}"
        reference = build_engine("ar", model).generate(prompt, PREFLIGHT_TOKENS).tokens
        identity = {}
        for engine, options in (("orthrus", {"block_size": 16}), ("assisted", {"draft_model": "tiny-draft"})):
            step = f"generating with {engine} on {device}"
            tokens = list(build_engine(engine, model, **options).generate(prompt, PREFLIGHT_TOKENS).tokens)
            if tokens != list(reference):
                first = next(
                    (i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference))
                )
                raise PreflightFailure(
                    f"{engine} on {device} in fp32 is not identical to ar: they differ from token {first} "
                    f"of {PREFLIGHT_TOKENS}"
                )
            identity[engine] = f"identical to ar ({len(tokens)} tokens)"
        info["identity"] = identity
        print(f"identity: {identity}", flush=True)
        step = "reading NVML"
        from orthrus.bench.trackers import NvmlReader

        reader = NvmlReader(torch.device(device))
        used, process = reader.read()
        if device.startswith("cuda") and (not reader.available or used is None):
            raise PreflightFailure(
                f"NVML gave no reading of the GPU's memory (pynvml {info['versions']['pynvml']}, "
                f"available: {reader.available})"
            )
        info["nvml"] = (
            {"device_used_mib": used, "process_used_mib": process}
            if reader.available
            else f"not available on {device} (none expected)"
        )
        print(f"nvml: {info['nvml']}", flush=True)
    except PreflightFailure as err:
        print(f"{PREFLIGHT_FAILED_MARK}{err}", flush=True)
        return 1
    except Exception as err:  # noqa: BLE001 - one sentence naming the step that failed
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        print(f"{PREFLIGHT_FAILED_MARK}{step} failed: {type(err).__name__}: {first_line}", flush=True)
        return 1
    info["seconds"] = round(time.monotonic() - begin, 1)
    print(f"{PREFLIGHT_MARK}{json.dumps(info, default=str)}", flush=True)
    return 0


def read_preflight(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The preflight's JSON line from its output tail (None until it ran, or when it failed)."""
    for r in results:
        if r["stage"] == "preflight":
            for line in reversed((r.get("tail") or "").splitlines()):
                if line.startswith(PREFLIGHT_MARK):
                    try:
                        return json.loads(line[len(PREFLIGHT_MARK) :])
                    except ValueError:
                        return None
    return None


def preflight_failure(results: list[dict[str, Any]]) -> str | None:
    """One sentence saying what failed in the preflight, or None when it passed (or did not run)."""
    for r in results:
        if r["stage"] != "preflight" or r["status"] in ("ok", "pending"):
            continue
        for line in reversed((r.get("tail") or "").splitlines()):
            if line.startswith(PREFLIGHT_FAILED_MARK):
                return f"preflight failed: {line[len(PREFLIGHT_FAILED_MARK) :].strip().rstrip('.')}."
        return f"preflight {r['status']}; see summary.md for its output."
    return None


# ---------------------------------------------------------------------- command line
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="PYTHONPATH=. python scripts/gpu_check.py", description="The GPU check (see the module docstring)."
    )
    parser.add_argument("out_dir", help="where summary.json, summary.md and the results go")
    parser.add_argument("--rehearse-on-cpu", action="store_true", help="every stage on the CPU, shrunk (no GPU needed)")
    parser.add_argument(
        "--stages", help=f"comma-separated stages to run (preflight always runs first): {', '.join(STAGES[1:])}"
    )
    parser.add_argument(
        "--cap",
        action="append",
        default=[],
        metavar="STAGE=SECONDS",
        help="that stage gets exactly SECONDS, nothing carried over from earlier stages (repeatable)",
    )
    parser.add_argument("--budget", type=float, default=None, help=f"seconds for all stages (default {BUDGET_S})")
    args = parser.parse_args(argv)
    caps: dict[str, float] = {}
    for item in args.cap:
        name, _, seconds = item.partition("=")
        if name not in CAPS:
            parser.error(f"--cap {item}: unknown stage {name!r}; stages: {', '.join(STAGES)}")
        try:
            caps[name] = float(seconds)
        except ValueError:
            parser.error(f"--cap {item}: SECONDS must be a number")
    args.caps = caps
    chosen = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else list(STAGES)
    unknown = [s for s in chosen if s not in CAPS]
    if unknown:
        parser.error(f"--stages: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    args.chosen = ["preflight", *(s for s in STAGES[1:] if s in chosen)]
    return args


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--preflight":
        return preflight(argv[1])
    args = parse_args(argv)
    import torch

    if not args.rehearse_on_cpu and not torch.cuda.is_available():
        print(
            "error: this machine has no CUDA GPU (torch.cuda.is_available() is False); run it on one, "
            "or rehearse it here with --rehearse-on-cpu.",
            file=sys.stderr,
        )
        return 2
    settings = REHEARSAL if args.rehearse_on_cpu else GPU
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    plan = [s for s in stages(out, work, settings, args.caps) if s.name in args.chosen]
    budget = args.budget if args.budget is not None else BUDGET_S
    extra: dict[str, Any] = {"mode": settings.mode, "device": None, "budget_s": budget, "complete": False}
    extra["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    begin = time.monotonic()

    def report(results: list[dict[str, Any]]) -> None:
        found = read_preflight(results)
        if found:
            extra["preflight"] = found
            extra["device"] = found.get("gpu") or settings.device
        extra["elapsed_s"] = round(time.monotonic() - begin, 1)
        try:
            write_summary(out, results, extra)
        except Exception as err:  # noqa: BLE001 - a summary that failed to render must not stop the stages
            print(f"[gpu_check] summary not written: {type(err).__name__}: {err}", file=sys.stderr)

    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        results = run_stages(plan, budget, env, out, work, report)
        extra["complete"] = True
        extra["failure"] = preflight_failure(results)
        report(results)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(work, ignore_errors=True)
    if extra["failure"]:
        print(f"error: {extra['failure']}", file=sys.stderr)
        return 1
    print(out / "summary.md")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
