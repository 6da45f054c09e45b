"""``prompts:``: one source or a list of sources (synthetic, jsonl, inline), each an axis value of
the matrix. A JSONL file is read through once here, so a run cannot fail on its data halfway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orthrus.bench.suite.checks import (
    as_bool,
    as_choice,
    as_int,
    as_list,
    as_mapping,
    as_str,
    check_keys,
    fail,
    resolve_file,
)
from orthrus.bench.suite.spec import CORPUS_SPLITS, INLINE_PROMPT_KEYS, PROMPT_KEYS, PROMPT_SOURCES, PromptSourceSpec
from orthrus.errors import UserInputError

JSONL_PROMPT_FIELDS = ("turns", "prompt", "text", "question", "input", "instruction")


def jsonl_prompt_text(record: dict[str, Any], spec: PromptSourceSpec) -> str:
    """The prompt text of one JSONL record (``turns`` lists give turn ``spec.turn``)."""
    names = [spec.prompt_field] if spec.prompt_field else [f for f in JSONL_PROMPT_FIELDS if f in record]
    if not names or names[0] not in record:
        wanted = spec.prompt_field or " or ".join(JSONL_PROMPT_FIELDS)
        raise UserInputError(f"no {wanted!r} field; set prompt_field to the field holding the prompt")
    value = record[names[0]]
    if isinstance(value, list):
        if spec.turn >= len(value):
            raise UserInputError(f"{names[0]!r} has {len(value)} turns, so turn {spec.turn} does not exist")
        value = value[spec.turn]
    if not isinstance(value, str) or not value.strip():
        raise UserInputError(f"the {names[0]!r} field is not a non-empty string")
    return value


def validate_prompts(value: Any, base_dir: Path | None) -> list[PromptSourceSpec]:
    if value is None:
        value = [{"source": "synthetic"}]
    entries = value if isinstance(value, list) else [value]
    if not entries:
        raise fail("prompts", "is an empty list; give at least one prompt source (synthetic, jsonl or inline).")
    specs: list[PromptSourceSpec] = []
    names: dict[str, int] = {}
    for i, entry in enumerate(entries):
        path = f"prompts[{i}]" if isinstance(value, list) else "prompts"
        entry = as_mapping(entry, path, "a prompt source mapping (source: synthetic | jsonl | inline)")
        if "source" not in entry:
            raise fail(f"{path}.source", f"missing; choose one of {', '.join(PROMPT_SOURCES)}.")
        source = as_choice(entry["source"], f"{path}.source", PROMPT_SOURCES)
        check_keys(entry, PROMPT_KEYS[source], path)
        spec = PromptSourceSpec(index=i, source=source, name="")
        if source == "synthetic":
            default_name = _synthetic(spec, entry, path, base_dir)
        elif source == "jsonl":
            default_name = _jsonl(spec, entry, path, base_dir)
        else:
            default_name = _inline(spec, entry, path)
        if source != "synthetic":
            spec.chat_template = as_bool(entry.get("chat_template", False), f"{path}.chat_template")
            if entry.get("system_prompt") is not None:
                spec.system_prompt = as_str(entry["system_prompt"], f"{path}.system_prompt")
        spec.name = as_str(entry.get("name", default_name), f"{path}.name")
        if spec.name in names:
            raise fail(
                f"{path}.name",
                f"{spec.name!r} is already used by prompts[{names[spec.name]}]; give each source a distinct name.",
            )
        names[spec.name] = i
        specs.append(spec)
    return specs


def _synthetic(spec: PromptSourceSpec, entry: dict[str, Any], path: str, base_dir: Path | None) -> str:
    spec.count = as_int(entry.get("count", 2), f"{path}.count", 1)
    corpus = as_str(entry.get("corpus", "heldout"), f"{path}.corpus")
    if corpus not in CORPUS_SPLITS:
        resolved = resolve_file(corpus, base_dir)
        if not resolved.exists():
            raise fail(
                f"{path}.corpus",
                f"{corpus!r} is neither {' nor '.join(CORPUS_SPLITS)} nor an existing text file or directory.",
            )
        corpus = str(resolved)
    spec.corpus = corpus
    return "synthetic" if corpus == "heldout" else f"synthetic-{Path(corpus).stem}"


def _jsonl(spec: PromptSourceSpec, entry: dict[str, Any], path: str, base_dir: Path | None) -> str:
    if "path" not in entry:
        raise fail(f"{path}.path", "missing; give the path of a JSONL file (one JSON object per line).")
    text = as_str(entry["path"], f"{path}.path")
    file = resolve_file(text, base_dir)
    if not file.is_file():
        raise fail(f"{path}.path", _missing_jsonl(text, file, path, base_dir))
    spec.path = file
    if entry.get("count") is not None:
        spec.count = as_int(entry["count"], f"{path}.count", 1)
    if entry.get("per_category") is not None:
        spec.per_category = as_int(entry["per_category"], f"{path}.per_category", 1)
    for key in ("prompt_field", "id_field"):
        if entry.get(key) is not None:
            setattr(spec, key, as_str(entry[key], f"{path}.{key}"))
    spec.category_field = as_str(entry.get("category_field", "category"), f"{path}.category_field")
    spec.turn = as_int(entry.get("turn", 0), f"{path}.turn", 0)
    if entry.get("categories") is not None:
        categories = as_list(entry["categories"], f"{path}.categories")
        spec.categories = [as_str(c, f"{path}.categories[{j}]") for j, c in enumerate(categories)]
    _check_jsonl(spec, path)
    return file.stem


# where a dataset a shipped suite reads comes from (none is shipped: each has its own licence)
KNOWN_DATASETS = {
    "question.jsonl": "Spec-Bench's question.jsonl is not shipped with orthrus: it is data/spec_bench/question.jsonl "
    "of the Spec-Bench repository (https://github.com/hemingkx/Spec-Bench, Apache-2.0)",
}


def _missing_jsonl(text: str, file: Path, path: str, base_dir: Path | None) -> str:
    """One sentence for a JSONL file that is not there: where it was looked for, where a known dataset
    comes from, and the --set override that points the suite at a copy."""
    places = [str(Path(text).expanduser().resolve())]
    if base_dir is not None and not Path(text).is_absolute():
        beside = str((base_dir / text).resolve())
        if beside not in places:
            places.append(beside)
    origin = KNOWN_DATASETS.get(Path(text).name)
    origin = f"; {origin}" if origin else ""
    return (
        f"{text!r} not found (looked for {' and '.join(places)}){origin}; point the suite at your copy with "
        f"--set {path}.path=/path/to/{Path(text).name or 'prompts.jsonl'}."
    )


def _check_jsonl(spec: PromptSourceSpec, path: str) -> None:
    """Every line parses, and the prompt field is there."""
    assert spec.path is not None
    count = 0
    try:
        data = spec.path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = spec.path.read_bytes()[: err.start].count(b"\n") + 1
        raise fail(
            f"{path}.path", f"{spec.path} line {line} is not UTF-8 (byte {err.object[err.start]:#x}); save it as UTF-8."
        ) from None
    except OSError as err:
        raise fail(f"{path}.path", f"{spec.path} cannot be read ({err.strerror}).") from None
    for number, line in enumerate(data.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise fail(f"{path}.path", f"{spec.path} line {number} is not valid JSON ({err.msg}).") from err
        except RecursionError:
            raise fail(f"{path}.path", f"{spec.path} line {number} is nested too deeply to read.") from None
        if not isinstance(record, dict):
            raise fail(f"{path}.path", f"{spec.path} line {number} is not a JSON object.")
        try:
            jsonl_prompt_text(record, spec)
        except UserInputError as err:
            raise fail(f"{path}.path", f"{spec.path} line {number}: {err}") from err
        count += 1
    if count == 0:
        raise fail(f"{path}.path", f"{spec.path} holds no records.")


def _inline(spec: PromptSourceSpec, entry: dict[str, Any], path: str) -> str:
    prompts = entry.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise fail(f"{path}.prompts", "must be a non-empty list of prompt texts or mappings with text or ids.")
    spec.prompts = [_inline_prompt(p, f"{path}.prompts[{j}]", j) for j, p in enumerate(prompts)]
    seen: set[str] = set()
    for j, prompt in enumerate(spec.prompts):
        if prompt["id"] in seen:
            raise fail(f"{path}.prompts[{j}].id", f"{prompt['id']!r} is used twice; give each prompt a distinct id.")
        seen.add(prompt["id"])
    return "inline"


def _inline_prompt(value: Any, path: str, index: int) -> dict[str, Any]:
    if isinstance(value, str):
        value = {"text": value}
    value = as_mapping(value, path, "a prompt text or a mapping with text or ids")
    check_keys(value, INLINE_PROMPT_KEYS, path)
    has_text, has_ids = value.get("text") is not None, value.get("ids") is not None
    if has_text == has_ids:
        raise fail(path, "give exactly one of text (a string) or ids (a list of token ids).")
    prompt: dict[str, Any] = {"id": str(value.get("id", index)), "category": value.get("category")}
    if has_text:
        prompt["text"] = as_str(value["text"], f"{path}.text")
    else:
        ids = value["ids"]
        if not isinstance(ids, list) or not ids:
            raise fail(f"{path}.ids", "must be a non-empty list of token ids.")
        prompt["ids"] = [as_int(t, f"{path}.ids[{k}]", 0) for k, t in enumerate(ids)]
    if prompt["category"] is not None:
        prompt["category"] = as_str(prompt["category"], f"{path}.category")
    return prompt
