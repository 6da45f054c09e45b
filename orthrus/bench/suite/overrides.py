"""Changes the command line makes to a suite's raw mapping before it is validated:
``--set key.path=value``, ``--quick``, ``--device`` and ``--engines``. Each returns a new mapping."""

from __future__ import annotations

import copy
import re
from typing import Any

from orthrus.bench.suite.checks import a_kind
from orthrus.bench.suite.load import parse_yaml
from orthrus.errors import UserInputError

_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def split_key_path(path: str) -> list[str | int]:
    """'engines[2].options.block_size' or 'engines.2.options.block_size' -> ['engines', 2, 'options', 'block_size']."""
    parts: list[str | int] = []
    pos = 0
    for match in _PATH_TOKEN.finditer(path):
        if match.start() != pos and path[pos : match.start()] != ".":
            break
        name, index = match.groups()
        parts.append(int(index) if index is not None else (int(name) if name.isdigit() else name))
        pos = match.end()
    if not parts or pos != len(path):
        raise UserInputError(
            f"key path {path!r} is malformed; write it like sweep.context_lengths or engines[2].options.block_size."
        )
    return parts


def set_key_path(raw: dict[str, Any], path: str, value: Any, what: str = "--set") -> None:
    parts = split_key_path(path)
    node: Any = raw
    walked = ""
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(part, int):
            if not isinstance(node, list):
                raise UserInputError(
                    f"{what} {path}: {walked or 'the suite'} is not a list, so [{part}] cannot index it."
                )
            if part >= len(node):
                raise UserInputError(f"{what} {path}: {walked} has only {len(node)} entries (indices from 0).")
            if last:
                node[part] = value
            else:
                if node[part] is None:
                    node[part] = {}
                node = node[part]
            walked += f"[{part}]"
        else:
            if not isinstance(node, dict):
                raise UserInputError(f"{what} {path}: {walked or 'the suite'} is {a_kind(node)}, not a mapping.")
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            walked = f"{walked}.{part}" if walked else part


def apply_sets(raw: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``--set key.path=value`` overrides (the value is read as YAML: [512,1024], true, 0.7, text)."""
    raw = copy.deepcopy(raw)
    for assignment in assignments:
        if "=" not in assignment:
            raise UserInputError(
                f"--set {assignment!r}: write it as key.path=value, e.g. --set sweep.context_lengths=[512,1024]."
            )
        path, text = assignment.split("=", 1)
        value = parse_yaml(text, f"--set {path}") if text.strip() else None
        set_key_path(raw, path.strip(), value)
    return raw


def apply_quick(raw: dict[str, Any]) -> dict[str, Any]:
    """The small slice --quick runs: one repetition and as few prompts as still answer the suite's
    question, then the suite's own ``quick`` (which wins). A source of counted prompts keeps one full
    batch of the largest batch size the run decodes (one prompt without batching), so a "batch 16"
    cell still decodes sixteen rows; a per-category source keeps one prompt of every category."""
    raw = copy.deepcopy(raw)
    quick = raw.pop("quick", None)
    if quick is not None and not isinstance(quick, dict):
        raise UserInputError(
            f"quick: must be a mapping of key paths to values (e.g. measure.repetitions: 1), not {a_kind(quick)}."
        )
    measure = raw.get("measure")
    if measure is None or isinstance(measure, dict):
        measure = raw.setdefault("measure", {}) or {}
        raw["measure"] = measure
        measure.update(repetitions=1, min_duration_s=0)
    batch = _largest_batch(_with_quick(raw, quick or {}))
    prompts = raw.get("prompts")
    for source in prompts if isinstance(prompts, list) else [prompts]:
        if not isinstance(source, dict) or source.get("source") not in ("synthetic", "jsonl"):
            continue
        if source.get("source") == "jsonl" and source.get("per_category") is not None:
            source["per_category"] = 1  # the suite's question is per category: keep every category
            source.pop("count", None)
        else:
            source["count"] = batch
    for path, value in (quick or {}).items():
        set_key_path(raw, str(path), copy.deepcopy(value), what="quick:")
    return raw


def _with_quick(raw: dict[str, Any], quick: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the suite's quick overrides applied where they apply (for reading the batch sizes)."""
    trial = copy.deepcopy(raw)
    for path, value in quick.items():
        try:
            set_key_path(trial, str(path), copy.deepcopy(value), what="quick:")
        except UserInputError:
            pass  # reported when the overrides are applied for real
    return trial


def _largest_batch(raw: dict[str, Any]) -> int:
    """The largest batch size the sweep asks for (its batch_sizes and its include entries); 1 when
    unset or not yet valid (validation says what is wrong with it)."""
    sweep = raw.get("sweep")
    if not isinstance(sweep, dict):
        return 1
    sizes = sweep.get("batch_sizes")
    values = list(sizes) if isinstance(sizes, list) else [sizes]
    for entry in sweep.get("include") or [] if isinstance(sweep.get("include"), list) else []:
        if isinstance(entry, dict):
            values.append(entry.get("batch_size"))
    return max([1, *(v for v in values if isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096)])


def apply_device(raw: dict[str, Any], device: str) -> dict[str, Any]:
    """Every model on ``device`` (a bare path string becomes a mapping so the device can be set)."""
    raw = copy.deepcopy(raw)
    models = raw.get("models")
    if isinstance(models, dict):
        for key, spec in list(models.items()):
            if isinstance(spec, dict):
                spec["device"] = device
            elif isinstance(spec, str):
                models[key] = {"path": spec, "device": device}
    return raw


def apply_engine_selection(raw: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    select = raw.get("select")
    if not isinstance(select, dict):
        select = {}
    select["engines"] = labels
    raw["select"] = select
    return raw


def drop_narrowed_excludes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``after`` (the suite with the command line's changes) without the suite file's own exclude
    entries that the changes left with nothing to exclude: ``--set sweep.context_lengths=[256]`` on a
    suite excluding an engine at 1024 narrows the sweep past that entry, which is the user's intent,
    not a mistake in the file. An entry the changes wrote, or one naming a value the file's own sweep
    never had, is kept (and refused by the validation, which names it)."""
    old, new = before.get("sweep"), after.get("sweep")
    if not isinstance(old, dict) or not isinstance(new, dict) or not isinstance(new.get("exclude"), list):
        return after
    from orthrus.bench.suite.spec import SWEEP_AXES

    axis_key = {axis: key for key, axis in SWEEP_AXES.items()}
    written = old.get("exclude") if isinstance(old.get("exclude"), list) else []

    def narrowed(entry: Any) -> bool:
        if entry not in written or not isinstance(entry, dict):
            return False
        for axis, value in entry.items():
            key = axis_key.get(axis)
            was, now = old.get(key), new.get(key)
            if isinstance(was, list) and isinstance(now, list) and value in was and value not in now:
                return True
        return False

    kept = [entry for entry in new["exclude"] if not narrowed(entry)]
    if len(kept) == len(new["exclude"]):
        return after
    after = copy.deepcopy(after)
    after["sweep"]["exclude"] = kept
    return after
