"""The tiny models shipped inside the package, resolved by name wherever a model path is accepted."""

from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent / "zoo"  # the one definition; `python -m orthrus train` writes here
# tiny-dflash and tiny-eagle3 are drafters for tiny-base (orthrus.models.drafters), not causal LMs:
# a suite names them as an engine's draft_model (`python -m orthrus train dflash|eagle3` builds them)
ZOO_NAMES = ("tiny-base", "tiny-orthrus", "tiny-draft", "tiny-dlm", "tiny-dflash", "tiny-eagle3")
TOKENIZER_DIR = ZOO_DIR / "tiny-tokenizer"  # the tokenizer every zoo model is trained with


def zoo_path(name: str) -> Path | None:
    """Directory of a shipped zoo model, or None if ``name`` is not one (or it is not built yet)."""
    if name not in ZOO_NAMES:
        return None
    path = ZOO_DIR / name
    return path if (path / "config.json").is_file() else None
