"""Engine settings that can only be checked against the model and the cell they run with, checked once
the matrix is expanded (so also under --dry-run): a load-aware block size's latency profile must be
of this model, device kind and dtype, with the engine steps it needs; a synthetic acceptance length
must fit the block size. Each problem is one sentence naming the key path (exit 2), nothing measured."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from orthrus.bench.suite.checks import fail
from orthrus.bench.suite.spec import Cell, Suite
from orthrus.engines import DEFAULT_BLOCK_SIZE, engine_class
from orthrus.engines.block_choice import read_profile, synthetic_acceptance_rates
from orthrus.errors import UserInputError
from orthrus.models import parse_dtype
from orthrus.models.checkpoint import read_json_object


def check_engine_settings(suite: Suite) -> None:
    checked: set[tuple[int, int | None]] = set()
    for cell in suite.cells:
        options, path = cell.engine.options, f"engines[{cell.engine.index}].options"
        if not engine_class(cell.engine.engine).takes_block_size:
            continue
        config = _config(cell)
        if options.get("profile") is not None and (cell.engine.index, None) not in checked:
            checked.add((cell.engine.index, None))
            if cell.model.resolved is not None:
                dtype = str(parse_dtype(cell.model.dtype)).removeprefix("torch.")
                device = str(cell.model.device).split(":")[0]
                try:
                    read_profile(options["profile"], config, device, dtype)
                except UserInputError as err:
                    raise fail(f"{path}.profile", str(err)) from None
        length, rates = options.get("synthetic_acceptance_length"), options.get("synthetic_rates")
        if (length is not None or rates is not None) and (cell.engine.index, cell.block_size) not in checked:
            checked.add((cell.engine.index, cell.block_size))
            block = cell.block_size or getattr(config, "block_size", None) or DEFAULT_BLOCK_SIZE
            if block == "auto":
                raise fail(path, "synthetic acceptance needs a fixed block size; give block_size a number.")
            try:
                synthetic_acceptance_rates(length, rates, int(block))
            except UserInputError as err:
                raise fail(path, str(err)) from None


def _config(cell: Cell) -> Any:
    if cell.model.resolved is None:
        return SimpleNamespace()
    return SimpleNamespace(**read_json_object(cell.model.resolved / "config.json"))
