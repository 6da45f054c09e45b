"""What a measurement is checked against: the reference engine's greedy tokens for the same prompt
(identity, first divergence, the reference model's top-2 logit margin there), the reference model's
NLL of a lossy engine's output, and, for a batched row, the same engine's tokens at batch size 1."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orthrus.bench.loading import ModelPool, loader_key
from orthrus.bench.prompts import Prompt, PromptFactory
from orthrus.bench.suite.spec import Cell, Suite
from orthrus.results.derived import batch1_counterpart


def _tokenizer_fingerprint(directory: Path | None) -> str | None:
    if directory is None:
        return None
    file = directory / "tokenizer.json"
    if file.is_file():
        return hashlib.sha1(file.read_bytes()).hexdigest()
    return str(directory.resolve())


def _digest(ids: list[int]) -> str:
    return hashlib.sha1(str(ids).encode()).hexdigest()


@dataclass(frozen=True)
class Quality:
    """What the checks found for one row (None where a check does not apply)."""

    reference_engine: str | None = None
    identity_exact: bool | None = None
    first_divergence: int | None = None
    match_fraction: float | None = None
    divergence_margin: float | None = None
    ar_nll: float | None = None
    identity_vs_batch1_exact: bool | None = None
    first_divergence_vs_batch1: int | None = None
    divergence_margin_vs_batch1: float | None = None


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
        self.model_spec = None
        if self.spec is not None:
            self.model_spec = suite.models[self.spec.model]
            self.fingerprint = _tokenizer_fingerprint(factory.tokenizer_dir(self.model_spec))
        self._cells = [{**c.params, "cell_id": c.cell_id} for c in suite.cells]

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
            and cell.sampling.greedy
            and not cell.engine.options
            and cell.batch_size == 1  # the reference is solo AR
        )

    @staticmethod
    def _key(prompt: Prompt, cell: Cell) -> tuple:
        return (_digest(prompt.ids), cell.max_new_tokens, cell.stop_at_eos)

    def offer(self, cell: Cell, prompt: Prompt, tokens: list[int]) -> None:
        """Tokens measured by the reference cell serve as the reference (no second generation)."""
        if self.is_reference_cell(cell):
            self.tokens_cache.setdefault(self._key(prompt, cell), list(tokens))

    def model(self) -> Any:
        assert self.model_spec is not None
        return self.pool.get(self.model_spec)

    def tokens(self, prompt: Prompt, cell: Cell, eos: int | None) -> list[int]:
        key = self._key(prompt, cell)
        if key not in self.tokens_cache:
            from orthrus.engines import build_engine

            assert self.spec is not None
            if self._engine is None or self._engine.model is not self.model():
                self._engine = build_engine(self.spec.engine, self.model())
            result = self._engine.generate(prompt.ids, cell.max_new_tokens, eos_token_id=eos)
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

        key = (_digest(prompt.ids), tuple(tokens))
        if key not in self.nlls:
            self.nlls[key] = ar_nll(self.model(), prompt.ids, tokens)
        return self.nlls[key]

    def check(
        self,
        cell: Cell,
        prompt: Prompt,
        tokens: list[int],
        eos: int | None,
        lossless: bool,
        existing: Mapping[tuple, dict[str, Any]],
    ) -> Quality:
        """Every check that applies to one row: identity with the reference's greedy tokens (greedy
        cells), the AR NLL (engines that are not lossless), batch invariance (batched cells)."""
        from orthrus.quality import compare_tokens

        found: dict[str, Any] = self._vs_batch1(cell, prompt, tokens, existing)
        if self.spec is None or not self.compatible(cell):
            return Quality(**found)
        self.offer(cell, prompt, tokens)
        found["reference_engine"] = self.spec.engine
        if cell.sampling.greedy:
            expected = self.tokens(prompt, cell, eos)
            exact, first, fraction = compare_tokens(expected, tokens)
            found.update(identity_exact=exact, first_divergence=first, match_fraction=fraction)
            if first is not None:
                found["divergence_margin"] = self.margin(prompt, cell, expected, first)
        if not lossless:
            found["ar_nll"] = self.nll(prompt, tokens)
        return Quality(**found)

    def _vs_batch1(
        self, cell: Cell, prompt: Prompt, tokens: list[int], existing: Mapping[tuple, dict[str, Any]]
    ) -> dict[str, Any]:
        """A batched row against the same engine and settings at batch size 1 in this run (measured
        first: batch-1 cells come first in the plan), with the reference model's margin at a divergence."""
        if cell.batch_size == 1:
            return {}
        one = batch1_counterpart({**cell.params, "cell_id": cell.cell_id}, self._cells)
        solo = existing.get((one["cell_id"], prompt.prompt_id, 0)) if one is not None else None
        if solo is None or solo.get("status") != "ok" or solo.get("tokens") is None:
            return {}
        from orthrus.quality import compare_tokens, divergence_margin

        expected = list(solo["tokens"])
        exact, first, _ = compare_tokens(expected, tokens)
        found: dict[str, Any] = {"identity_vs_batch1_exact": exact, "first_divergence_vs_batch1": first}
        if first is not None and self.spec is not None and self.compatible(cell):
            found["divergence_margin_vs_batch1"] = divergence_margin(self.model(), prompt.ids, expected, first)
        return found
