"""Reading suite files: safe YAML, a key given twice refused, every problem one sentence."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from orthrus.bench.suite.checks import a_kind
from orthrus.errors import UserInputError


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML would keep the last silently)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is given twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserInputError(f"{where}: invalid YAML{at} ({problem}); fix the file's syntax.") from err


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
