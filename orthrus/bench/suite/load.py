"""Reading suite files: safe YAML (orthrus.safe_yaml: a key given twice, deep nesting and alias
bombs refused), every problem one sentence."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from orthrus.bench.suite.checks import a_kind
from orthrus.errors import UserInputError
from orthrus.safe_yaml import parse_yaml

__all__ = ["parse_yaml", "read_suite_file"]


def read_suite_file(path: str | Path) -> tuple[dict[str, Any], str]:
    """The raw mapping of a suite file and the sha256 of its bytes."""
    file = Path(path)
    if not file.is_file():
        hint = " (a directory was given)" if file.is_dir() else ""
        raise UserInputError(f"suite file {str(path)!r} not found{hint}; give the path to a suite YAML file.")
    data = file.read_bytes()
    raw = parse_yaml(data.decode("utf-8", errors="replace"), str(path))
    if raw is None:
        raise UserInputError(f"{path}: the suite is empty; it needs at least 'models' and 'engines'.")
    if not isinstance(raw, dict):
        raise UserInputError(
            f"{path}: a suite must be a mapping of keys (models, engines, sweep, ...), not {a_kind(raw)}."
        )
    return raw, hashlib.sha256(data).hexdigest()
