"""Models and engines for the cells of a run: each checkpoint loaded once, through the one loader per
model kind that the command line uses too, and freed when no remaining cell needs it."""

from __future__ import annotations

import gc
from typing import Any

import torch

from orthrus.bench.suite.spec import Cell, ModelSpec
from orthrus.engines import build_engine, engine_class
from orthrus.errors import UserInputError
from orthrus.models.drafters import DRAFTER_KINDS


class CellFailure(Exception):
    """A whole cell cannot run (its message is the record's error)."""


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    line = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return line[:500]


# the loaders beside the causal one: a model kind (MODEL_KINDS) or a draft model kind (DRAFT_MODEL_KINDS)
# that names one of these loads through it
OWN_LOADERS = ("dlm", *DRAFTER_KINDS)


def loader_key(model_key: str, model_kind: str) -> tuple[str, str]:
    """A model is loaded once per loader: the DLM loader for ``dlm`` engines, a drafter's loader for a
    DFlash or EAGLE-3 draft model, else the causal loader, whose model has both views (so ``causal``
    and ``dual_view`` engines, and assisted's causal draft model, share it)."""
    return (model_key, model_kind if model_kind in OWN_LOADERS else "causal")


def draft_loader(cell: Cell) -> str:
    """The loader the cell's draft model goes through: what its engine class says it needs."""
    return engine_class(cell.engine.engine).draft_model_kind or "causal"


def models_needed(cells: list[Cell], reference: ModelSpec | None = None) -> set[tuple[str, str]]:
    """The (model, loader) pairs these cells (and the reference model) load."""
    keep = {loader_key(reference.key, "causal")} if reference is not None else set()
    for cell in cells:
        keep.add(loader_key(cell.model.key, engine_class(cell.engine.engine).model_kind))
        if cell.draft_model is not None:
            keep.add(loader_key(cell.draft_model.key, draft_loader(cell)))
    return keep


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
    """The model behind ``spec`` through ``loader`` ('dlm', 'causal' or a drafter kind), in eval mode."""
    if spec.resolved is None:
        raise CellFailure(spec.missing_reason or f"model {spec.key!r} is not available")
    options: dict[str, Any] = dict(
        dtype=spec.dtype,
        device=spec.device,
        trust_remote_code=spec.trust_remote_code,
        attn_implementation=spec.attn_implementation,
    )
    if loader == "dlm":
        from orthrus.models.dlm import load_diffusion_lm

        model = load_diffusion_lm(spec.resolved, **options)
    elif loader in DRAFTER_KINDS:
        from orthrus.models.checkpoint import check_remote_code
        from orthrus.models.drafters import load_drafter

        check_remote_code(spec.resolved, spec.trust_remote_code, f"models.{spec.key}")  # named by its suite key
        model = load_drafter(loader, spec.resolved, **options)
        model.name_or_path = spec.path
    else:
        from orthrus.models import load_causal_lm
        from orthrus.models.checkpoint import check_remote_code

        check_remote_code(spec.resolved, spec.trust_remote_code, f"models.{spec.key}")  # named by its suite key
        model = load_causal_lm(spec.resolved, tokenizer=spec.tokenizer, **options)
        model.name_or_path = spec.path
    return model.eval()


def build_cell_engine(cell: Cell, pool: ModelPool) -> Any:
    """The cell's engine on its model (and draft model), with the block size the cell asks for."""
    name = cell.engine.engine
    model = pool.get(cell.model, engine_class(name).model_kind)
    options = dict(cell.engine.options)
    if cell.block_size is not None:
        options["block_size"] = cell.block_size
    if cell.draft_model is not None:
        options["draft_model"] = pool.get(cell.draft_model, draft_loader(cell))
    try:
        return build_engine(name, model, **options)
    except UserInputError as err:
        raise CellFailure(f"engine {cell.label!r}: {err}") from err
    except Exception as err:  # noqa: BLE001
        raise CellFailure(f"building engine {cell.label!r} failed: {one_line(err)}") from err


def free_after_error(err: BaseException) -> None:
    if isinstance(err, torch.OutOfMemoryError) and torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
