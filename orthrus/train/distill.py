"""Train the Orthrus diffusion view by self-distillation from its own frozen AR view.

Recipe (the Orthrus paper's, arXiv 2605.12825, scaled to a CPU): the training text is the base model's own greedy
continuations of corpus prompts; every sequence gets many anchors; each anchor a gets a block
[x_a, MASK x (K-1)] that sees the AR keys/values of positions < a and its own block (one
block-sparse SDPA pass, see ``OrthrusForCausalLM.forward_distill``); the loss is
KL(p_AR || p_diff) at every masked position. Only the ``*_diff`` parameters get gradients, so
the AR view stays bit-identical to the base. Budget, schedule, optimizer and checkpoints are the
shared loop's (``orthrus/train/loop.py``); this file holds the data, the step function and the card.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoTokenizer

from orthrus.models import DEFAULT_BLOCK_SIZE, OrthrusForCausalLM, resolve_model_path
from orthrus.models.zoo_index import ZOO_DIR
from orthrus.train.base import tokenize_stream
from orthrus.train.corpus import code_documents, corpus_documents
from orthrus.train.loop import (
    LoopConfig,
    Step,
    StepFn,
    checkpoint_path,
    log,
    mean_of_last,
    start_run,
    train_loop,
    training_time,
)

LOSSES = ("kl", "chain")  # distill_loss's weightings (see there)


@dataclass(kw_only=True)
class SelfDistillConfig(LoopConfig):
    """What every drafter trained on a base's own text depends on (the Orthrus view here, the DFlash
    and EAGLE-3 drafters in ``dflash.py`` / ``eagle3.py``): the base and the self-distillation data.
    The same values give the same text (and, with ``data_cache``, the same file) for all three."""

    base: str = "tiny-base"
    # self-distillation data
    data_sequences: int = 1536
    prompt_len: int = 128
    continuation_len: int = 384
    gen_batch: int = 64
    # prompts from Python files outside the corpus (a directory), for this fraction of the sequences:
    # the view then also learns how the base continues code in other styles than the stdlib's
    extra_prompts: str | None = None
    extra_fraction: float = 0.5
    # a folder to keep the generated text in, one file per data recipe, shared by runs (None: the run's
    # own checkpoint folder): runs of different drafters on one recipe then train on the same text
    data_cache: str | None = None
    batch_size: int = 4
    device: str = "cpu"

    @property
    def anchor_low(self) -> int:
        """The first position an anchor may take: at most 64 tokens of corpus text before the base's
        own continuation (the text the view drafts at inference), and never in the first half of the prompt."""
        return max(self.prompt_len // 2, self.prompt_len - 64)


@dataclass(kw_only=True)
class DistillConfig(SelfDistillConfig):
    """Everything a diffusion-view run depends on. Defaults are the `tiny-orthrus` recipe."""

    out_dir: Path = ZOO_DIR / "tiny-orthrus"
    block_size: int = DEFAULT_BLOCK_SIZE  # saved in the config: the default block for inference
    train_block_sizes: tuple[int, ...] = (8, 16, 16, 32)  # one drawn per step: the view serves 8..32
    # optimisation (AdamW without weight decay)
    anchors_per_seq: int = 48
    # loss weight of draft position j is position_decay ** (j - 1): acceptance is a prefix chain, so
    # early positions matter most (1.0 = all positions equal)
    position_decay: float = 1.0
    # "kl": every position by its position_decay weight; "chain": draft position j is additionally
    # weighted by the view's own (detached) probability of getting positions 1..j-1 right, i.e. by
    # how likely greedy verification is to reach j at all (acceptance is a prefix chain)
    loss: str = "kl"
    init_from: str | None = None  # start the view from this Orthrus checkpoint's *_diff weights
    lr: float = 1e-3
    warmup_frac: float = 0.05
    weight_decay: float = 0.0
    checkpoint_minutes: float = 5.0
    log_every: int = 20


@torch.no_grad()
def generate_self_distillation_data(model: OrthrusForCausalLM, tokenizer, config: SelfDistillConfig) -> torch.Tensor:
    """[N, prompt_len + continuation_len]: corpus prompts + the base model's greedy continuation.

    Batched greedy decoding with the AR view over a preallocated cache (all prompts have equal
    length, so no padding is involved).
    """
    generator = torch.Generator().manual_seed(config.seed)
    n_extra = extra_sequences(config)
    prompts = []
    sources = [(corpus_documents("train"), config.data_sequences - n_extra)]
    if n_extra:
        sources.append((code_documents(Path(config.extra_prompts)), n_extra))
    for documents, count in sources:
        stream = tokenize_stream(tokenizer, documents)
        if len(stream) <= config.prompt_len:
            raise ValueError(f"the prompt source holds {len(stream)} tokens, fewer than --prompt-len {config.prompt_len}.")
        starts = torch.randint(0, len(stream) - config.prompt_len, (count,), generator=generator)
        prompts.extend(stream[s : s + config.prompt_len] for s in starts.tolist())
    prompts = torch.stack(prompts)
    out = []
    bar = tqdm(total=len(prompts), desc="self-distillation data", disable=config.quiet, unit="seq")
    for chunk in prompts.split(config.gen_batch):
        chunk = chunk.to(config.device)
        cache = model.new_cache(chunk.shape[0], chunk.shape[1] + config.continuation_len)
        logits = model.forward_ar(chunk, cache, 0)
        sequence = [chunk]
        past = chunk.shape[1]
        for _ in range(config.continuation_len):
            token = logits[:, -1].argmax(-1, keepdim=True)
            sequence.append(token)
            logits = model.forward_ar(token, cache, past)
            past += 1
        out.append(torch.cat(sequence, dim=1).cpu())
        bar.update(len(chunk))
    bar.close()
    return torch.cat(out)


def distill_loss(
    model: OrthrusForCausalLM,
    batch: torch.Tensor,
    anchors: torch.Tensor,
    block: int,
    position_decay: float = 1.0,
    loss: str = "kl",
) -> torch.Tensor:
    """Forward KL(p_AR || p_diff) at every masked position, averaged with weight
    position_decay ** (j - 1) for draft position j (a plain mean when position_decay is 1).

    With ``loss="chain"`` each anchor's position j is also weighted by prod_{i<j} p_diff(y_i), the
    view's own detached probability of the AR's greedy tokens y_1..y_{j-1}: the soft chance that
    verification accepts everything before j, so the loss spends itself where acceptance is decided.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be 'kl' or 'chain', got {loss!r}.")
    student, teacher = model.forward_distill(batch, anchors, block)
    teacher_logp = F.log_softmax(teacher.float(), dim=-1)
    student_logp = F.log_softmax(student.float(), dim=-1)
    kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)  # [B, N, K-1]
    weights = position_decay ** torch.arange(block - 1, device=kl.device, dtype=kl.dtype)
    weights = weights.expand_as(kl)
    if loss == "chain":
        with torch.no_grad():
            hit = student_logp.gather(-1, teacher.argmax(-1, keepdim=True)).squeeze(-1).exp()  # [B, N, K-1]
            reach = torch.cumprod(torch.cat([torch.ones_like(hit[..., :1]), hit[..., :-1]], dim=-1), dim=-1)
        weights = weights * reach
    return (kl * weights).sum() / weights.sum().clamp_min(1e-12)


def sample_anchors(
    batch: int, length: int, block: int, count: int, low: int, generator: torch.Generator
) -> torch.Tensor:
    """[B, count] anchor positions in [low, length - block], so every block lies inside the text."""
    return torch.randint(low, length - block + 1, (batch, count), generator=generator)


def self_distillation_step(model: OrthrusForCausalLM, data: torch.Tensor, config: DistillConfig) -> StepFn:
    """The step function: a batch of self-distillation sequences, anchors, KL at the block size of this step."""

    def step(index: int, progress: float, generator: torch.Generator) -> Step:
        block = config.train_block_sizes[index % len(config.train_block_sizes)]
        rows = torch.randint(0, len(data), (config.batch_size,), generator=generator)
        batch = data[rows].to(config.device)
        anchors = sample_anchors(
            config.batch_size, batch.shape[1], block, config.anchors_per_seq, config.anchor_low, generator
        ).to(config.device)
        loss = distill_loss(model, batch, anchors, block, config.position_decay, config.loss)
        return Step(loss, batch.numel(), {"K": block})

    return step


def extra_sequences(config: SelfDistillConfig) -> int:
    """How many sequences take their prompt from ``extra_prompts`` (checked: a directory of Python
    files that is not the code the evaluation measures on)."""
    if not config.extra_prompts:
        return 0
    root = Path(config.extra_prompts).resolve()
    if not root.is_dir() or not any(root.rglob("*.py")):
        raise ValueError(f"--extra-prompts {config.extra_prompts}: give a directory holding Python files.")
    package = Path(__file__).resolve().parents[1]  # orthrus/: its engines are the evaluation's code prompts
    if root == package or package in root.parents or root in package.parents:
        raise ValueError(
            f"--extra-prompts {config.extra_prompts} holds this package, whose engines are the evaluation's "
            "code prompts; never train on what is evaluated: take code from elsewhere."
        )
    if not 0.0 < config.extra_fraction <= 1.0:
        raise ValueError(f"--extra-fraction must be in (0, 1], got {config.extra_fraction}.")
    return round(config.data_sequences * config.extra_fraction)


def data_recipe(config: SelfDistillConfig) -> dict[str, Any]:
    """What the self-distillation data depends on: cached data is reused only for the same recipe
    (an output folder reused with other lengths or another seed must not train on stale text)."""
    return {
        "base": str(config.base),
        "seed": config.seed,
        "data_sequences": config.data_sequences,
        "prompt_len": config.prompt_len,
        "continuation_len": config.continuation_len,
        "extra_prompts": str(Path(config.extra_prompts).resolve()) if config.extra_prompts else None,
        "extra_fraction": config.extra_fraction if config.extra_prompts else None,
    }


def data_file(config: SelfDistillConfig) -> Path:
    """Where a run keeps its self-distillation text: ``data_cache``/selfdistill-<recipe hash>.pt, or
    without a cache folder the run's own checkpoint folder."""
    if config.data_cache:
        digest = hashlib.sha1(json.dumps(data_recipe(config), sort_keys=True).encode()).hexdigest()[:12]
        return Path(config.data_cache) / f"selfdistill-{digest}.pt"
    return checkpoint_path(Path(config.out_dir)).parent / "distill_data.pt"


def self_distillation_data(model: OrthrusForCausalLM, tokenizer, config: SelfDistillConfig) -> torch.Tensor:
    """The run's self-distillation text [N, prompt_len + continuation_len]: read back when a file for the
    same recipe exists (``data_file``), else generated by ``model``'s AR view and written there."""
    file = data_file(config)
    recipe_file = file.with_suffix(".json")
    if file.exists() and _cached_recipe(recipe_file) == data_recipe(config):
        data = torch.load(file, weights_only=True)
        log(config, f"reusing {len(data)} self-distillation sequences from {file}")
        return data
    if file.exists():
        log(config, f"{file} was made for another recipe (base, seed or lengths); generating anew")
    t0 = time.time()
    model.eval()
    data = generate_self_distillation_data(model, tokenizer, config)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    torch.save(data, tmp)
    os.replace(tmp, file)  # a run killed mid-write leaves no half file for the next to reuse
    recipe_file.write_text(json.dumps(data_recipe(config), indent=2))
    log(config, f"generated {data.numel():,} tokens of self-distillation text in {time.time() - t0:.0f}s ({file})")
    return data


def _cached_recipe(file: Path) -> dict[str, Any] | None:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return None  # no record (data of an older version): regenerate, it is deterministic


def train(config: DistillConfig) -> Path:
    extra_sequences(config)  # a bad --extra-prompts stops the run before anything loads
    start_run(config)
    out_dir = Path(config.out_dir)
    ckpt_dir = checkpoint_path(out_dir).parent
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    base_dir = resolve_model_path(config.base)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), trust_remote_code=False)
    mask_id = tokenizer.mask_token_id
    model = OrthrusForCausalLM.from_base(
        base_dir, block_size=config.block_size, mask_token_id=mask_id, dtype=torch.float32
    ).to(config.device)
    if config.init_from:
        start_view = OrthrusForCausalLM.from_pretrained(
            resolve_model_path(config.init_from), dtype=torch.float32, trust_remote_code=False
        )
        model.load_state_dict({k: v for k, v in start_view.state_dict().items() if "_diff" in k}, strict=False)
    base_state = {k: v.clone() for k, v in model.state_dict().items() if "_diff" not in k}

    data = self_distillation_data(model, tokenizer, config)
    data_gen_tokens = int(data.shape[0] * config.continuation_len)

    wall = time.perf_counter()
    state = train_loop(config, model, self_distillation_step(model, data, config), desc="diffusion view")
    wall = time.perf_counter() - wall
    for name, tensor in model.state_dict().items():  # the AR view is untouched
        if name in base_state and not torch.equal(tensor, base_state[name]):
            raise RuntimeError(f"AR weight {name} changed during diffusion-view training")
    params = model.diffusion_parameters()
    summary = {
        "base": str(config.base),
        "steps": state.step,
        "wall_time_min": round(wall / 60, 2),
        "budget_clock": config.budget_clock,
        "budget_time_min": round(state.elapsed_s / 60, 2),  # on budget_clock: CPU minutes when "cpu"
        "final_kl": round(mean_of_last(state.losses, 50), 4),
        "self_distillation_sequences": int(data.shape[0]),
        "self_distillation_generated_tokens": data_gen_tokens,
        "supervised_positions": state.step
        * config.batch_size
        * config.anchors_per_seq
        * (sum(config.train_block_sizes) / len(config.train_block_sizes) - 1),
        "diffusion_parameters": sum(p.numel() for p in params),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    save_zoo_model(model, tokenizer, out_dir)
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "README.md").write_text(model_card(config, summary))
    log(
        config,
        f"{out_dir.name} saved to {out_dir} ({state.step} steps, {state.elapsed_s / 60:.1f} min, "
        f"kl {summary['final_kl']})",
    )
    return out_dir


def save_zoo_model(model: OrthrusForCausalLM, tokenizer, out_dir: Path) -> None:
    """Hugging Face layout with float16 weights (the zoo must stay small); loaded back as fp32."""
    half = OrthrusForCausalLM._from_state(
        model.config, {k: v.detach().half() for k, v in model.state_dict().items()}, torch.float16
    )
    half.config.architectures = ["OrthrusForCausalLM"]
    half.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


EVALUATION_HEADING = "## Evaluation"


def _loss_line(config: DistillConfig) -> str:
    line = "forward KL(p_AR || p_diff) at every masked position"
    if config.position_decay != 1.0:
        line += f", draft position j weighted by {config.position_decay:g}^(j-1)"
    if config.loss == "chain":
        line += ", times the view's own detached probability of reaching j (the acceptance chain)"
    return line


def _sources_line(config: DistillConfig) -> str:
    extra = extra_sequences(config)
    line = f"{config.data_sequences - extra} from the corpus's train split"
    return line + (f", {extra} from the Python files under `{config.extra_prompts}`" if extra else "")


def model_card(config: DistillConfig, summary: dict) -> str:
    """The card's training section; ``python -m orthrus evaluate --write-card`` adds the evaluation."""
    blocks = ", ".join(str(b) for b in sorted(set(config.train_block_sizes)))
    return f"""# {Path(config.out_dir).name}

`{config.base}` plus an Orthrus diffusion view trained by self-distillation, shipped inside the
`orthrus` package so that every suite runs offline. The AR view is `{config.base}` unchanged
(bit-identical weights, checked at the end of training), so greedy decoding with the `orthrus`
engine produces exactly `{config.base}`'s greedy text. It is a test fixture for decoding
algorithms, not a useful language model.

## Format
The released Orthrus-Qwen3 layout: Qwen3 weights plus `self_attn.{{q,k,v,o}}_proj_diff` and
`self_attn.{{q,k}}_norm_diff` per layer; `config.json` has `model_type` "orthrus", `block_size`
{config.block_size} and `mask_token_id` (the tokenizer's `<|mask|>`). {summary["total_parameters"]:,}
parameters, of which {summary["diffusion_parameters"]:,} belong to the diffusion view. Weights
are stored as float16 and meant to be loaded and run in fp32.

## Training
Command: `{config.command}`

- data: {summary["self_distillation_sequences"]} prompts of {config.prompt_len} tokens ({_sources_line(config)}),
  each continued greedily by `{config.base}` itself for {config.continuation_len} tokens
  ({summary["self_distillation_generated_tokens"]:,} generated tokens)
- {config.anchors_per_seq} anchors per sequence (anywhere after the first {config.anchor_low} tokens),
  block sizes {blocks} (one per step, cycling through {list(config.train_block_sizes)})
- loss: {_loss_line(config)}; only `*_diff` parameters train
- AdamW (betas {config.betas}, weight decay {config.weight_decay:g}), peak lr {config.lr:g}, {config.warmup_frac:.0%} warmup,
  cosine to {config.min_lr_ratio:.0%}, clip {config.grad_clip}, batch {config.batch_size}, fp32,
  {config.num_threads} CPU thread(s), seed {config.seed}
- steps: {summary["steps"]:,}; {training_time(summary)} (after generating the data)
- final KL (mean of the last 50 steps): {summary["final_kl"]}

{EVALUATION_HEADING}
Not measured yet: run `python -m orthrus evaluate --model {Path(config.out_dir).name} --write-card`.
"""
