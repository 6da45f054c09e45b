"""Reading YAML from any file a user gives (suites, gate files, published acceptance tables, a
run's own suite.yaml): the safe loader, a key given twice refused, every problem one sentence.

Input that would exhaust the machine is refused while parsing, before any value is built: nesting
deeper than ``MAX_DEPTH`` levels, and documents whose aliases expand to more than ``MAX_NODES``
nodes (a 900-byte "billion laughs" file grows to gigabytes once an error message or a cell id
serialises it) or refer to themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orthrus.errors import UserInputError

MAX_DEPTH = 64  # levels of nesting; the shipped suites use 5
MAX_NODES = 100_000  # values after expanding every alias


class _LimitExceeded(Exception):
    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.mark = mark


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML would keep the last silently),
    nesting deeper than MAX_DEPTH and alias expansion beyond MAX_NODES."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _LimitExceeded(f"is nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node)
        return self.construct_document(node)


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the nodes of the document with every alias expanded, without expanding anything: each
    distinct node is visited once and its expanded size memoised."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise _LimitExceeded("has an alias inside the value it points to (endless)", node.start_mark)
        total = 1
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            on_path.add(key)
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
            for child in children:
                total += size(child)
                if total > MAX_NODES:
                    raise _LimitExceeded(
                        f"expands to more than {MAX_NODES:,} values (aliases repeat what they point to)",
                        node.start_mark,
                    )
            on_path.discard(key)
        sizes[key] = total
        return total

    size(root)


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
    except _LimitExceeded as err:
        at = f" (line {err.mark.line + 1})" if err.mark is not None else ""
        raise UserInputError(f"{where}: the YAML{at} {err}; it is refused unread, simplify it.") from None
    except ValueError as err:  # an integer literal of more than 4300 digits
        raise UserInputError(f"{where}: a value cannot be read ({str(err).split(';')[0]}); fix the file.") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserInputError(f"{where}: invalid YAML{at} ({problem}); fix the file's syntax.") from err


def read_yaml_file(path: str | Path, what: str) -> Any:
    """The parsed content of a YAML file a user named; ``what`` names it in the one-sentence errors."""
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"{what} {str(path)!r} does not exist; give the path to a YAML file.")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserInputError(f"{what} {str(path)!r} is not UTF-8 text (byte {err.start}); fix the file.") from None
    return parse_yaml(text, f"{what} {str(path)!r}")
