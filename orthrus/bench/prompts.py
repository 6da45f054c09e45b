"""Prompt sources: token ids for each cell, built before anything runs.

* ``synthetic``: contexts of exactly ``context_length`` tokens cut from a corpus (the zoo's held-out
  split by default), tokenized with the cell's tokenizer. Each window ends right after a newline
  (its last token's text ends with "\\n"), so the continuation starts at the beginning of a line;
  windows are spread evenly over the corpus, deterministically.
* ``jsonl``: one JSON object per line; the Spec-Bench ``question.jsonl`` works as is (the first of
  ``turns`` is the prompt, ``question_id`` the id, ``category`` the category).
* ``inline``: prompt texts (or token ids) written in the suite.

Chat templates are applied to jsonl/inline text when the source asks and the tokenizer has one.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthrus.bench.suite.models import has_tokenizer_files
from orthrus.bench.suite.prompt_sources import jsonl_prompt_text
from orthrus.bench.suite.spec import PromptSourceSpec
from orthrus.errors import UserInputError

JSONL_ID_FIELDS = ("question_id", "id", "prompt_id")
CORPUS_FILE_SUFFIXES = (".txt", ".md", ".py", ".rst", ".json", ".jsonl")


@dataclass
class Prompt:
    prompt_id: str
    ids: list[int]
    source: str
    category: str | None = None
    text: str | None = None
    context_length: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _jsonl_id(record: dict[str, Any], spec: PromptSourceSpec, line: int) -> str:
    names = [spec.id_field] if spec.id_field else [f for f in JSONL_ID_FIELDS if f in record]
    if names and names[0] in record:
        return str(record[names[0]])
    return f"line{line}"


def _short_hash(ids: list[int]) -> str:
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:8]


class PromptFactory:
    """Builds and caches prompts per (source, tokenizer, context length); tokenizers are loaded once."""

    def __init__(self) -> None:
        self._tokenizers: dict[Path, Any] = {}
        self._code_allowed: dict[Path, bool] = {}  # per tokenizer directory: a model using it allows its code
        self._streams: dict[tuple[Path, str], tuple[list[int], list[bool]]] = {}
        self._prompts: dict[tuple, list[Prompt]] = {}
        self.warnings: list[str] = []

    # ------------------------------------------------------------ tokenizers
    def tokenizer_dir(self, model: Any) -> Path | None:
        """The tokenizer directory of ``model`` (a ModelSpec); remembers whether the model allows its code."""
        directory = None
        if model.tokenizer is not None:
            directory = model.tokenizer
        elif model.resolved is not None and has_tokenizer_files(model.resolved):
            directory = model.resolved
        if directory is not None:
            self._code_allowed[directory] = self._code_allowed.get(directory, False) or model.trust_remote_code
        return directory

    def tokenizer(self, directory: Path, trust_remote_code: bool | None = None) -> Any:
        """The tokenizer in ``directory``, loaded once. Its own code (``auto_map``) runs only where allowed:
        ``trust_remote_code``, or else where a model with that tokenizer set it (see tokenizer_dir)."""
        if directory not in self._tokenizers:
            from orthrus.models.checkpoint import load_tokenizer

            trust = self._code_allowed.get(directory, False) if trust_remote_code is None else trust_remote_code
            self._tokenizers[directory] = load_tokenizer(directory, trust)
        return self._tokenizers[directory]

    # ------------------------------------------------------------ entry point
    def prompts(self, source: PromptSourceSpec, model: Any, context_length: int | None) -> list[Prompt]:
        """The prompts of ``source`` for a cell on ``model`` (a ModelSpec)."""
        directory = self.tokenizer_dir(model)
        needs_tokenizer = source.source != "inline" or any("text" in p for p in source.prompts)
        if needs_tokenizer and directory is None:
            if model.resolved is None:
                raise UserInputError(model.missing_reason or f"model {model.key!r} is not available")
            raise UserInputError(
                f"models.{model.key}: {model.resolved} has no tokenizer files; add tokenizer: <directory> to the model."
            )
        key = (source.index, source.name, directory, context_length)
        if key not in self._prompts:
            if source.source == "synthetic":
                assert context_length is not None
                built = self._synthetic(source, directory, context_length)
            elif source.source == "jsonl":
                built = self._jsonl(source, directory)
            else:
                built = self._inline(source, directory)
            self._prompts[key] = built
        return self._prompts[key]

    # ------------------------------------------------------------ synthetic
    def _stream(self, directory: Path, corpus: str) -> tuple[list[int], list[bool]]:
        """The corpus as one token stream, and per vocabulary id whether its text ends with a newline."""
        key = (directory, corpus)
        if key not in self._streams:
            tokenizer = self.tokenizer(directory)
            stream: list[int] = []
            separator = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
            for text in corpus_texts(corpus):
                if stream:
                    stream.extend(separator)
                stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            vocab = max(len(tokenizer), max(stream, default=0) + 1)
            ends_line = [False] * vocab
            for token_id in set(stream):
                ends_line[token_id] = tokenizer.decode([token_id]).endswith("\n")
            self._streams[key] = (stream, ends_line)
        return self._streams[key]

    def _synthetic(self, source: PromptSourceSpec, directory: Path, length: int) -> list[Prompt]:
        stream, ends_line = self._stream(directory, source.corpus)
        # a window [i - length + 1, i] ending right after a newline, with text after it in the corpus
        ends = [i for i in range(length - 1, len(stream) - 1) if ends_line[stream[i]]]
        if not ends:
            raise UserInputError(
                f"prompts[{source.index}]: the corpus {source.corpus!r} has {len(stream)} tokens, too few to cut "
                f"{length}-token contexts ending at a line break; use shorter context lengths or a larger corpus."
            )
        count = source.count or 1
        if count >= len(ends):  # every window (a count beyond them is not iterated)
            picks = ends
        else:
            picks = sorted({ends[int((k + 0.5) * len(ends) / count)] for k in range(count)})
            if len(picks) < count:
                picks = ends[:count]
        prompts = []
        tokenizer = self.tokenizer(directory)
        for k, end in enumerate(picks):
            ids = stream[end - length + 1 : end + 1]
            prompts.append(
                Prompt(
                    prompt_id=f"{source.name}-{length}-{k}-{_short_hash(ids)}",
                    ids=ids,
                    source=source.name,
                    context_length=length,
                    text=tokenizer.decode(ids),
                    meta={"corpus": source.corpus, "stream_offset": end - length + 1},
                )
            )
        return prompts

    # ------------------------------------------------------------ jsonl / inline
    def _encode(self, text: str, source: PromptSourceSpec, directory: Path) -> tuple[list[int], bool]:
        tokenizer = self.tokenizer(directory)
        if source.chat_template:
            if getattr(tokenizer, "chat_template", None):
                messages = [{"role": "user", "content": text}]
                if source.system_prompt:
                    messages.insert(0, {"role": "system", "content": source.system_prompt})
                encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
                if isinstance(encoded, dict) or hasattr(encoded, "keys"):
                    encoded = encoded["input_ids"]
                if encoded and isinstance(encoded[0], list):
                    encoded = encoded[0]
                return [int(t) for t in encoded], True
            note = f"prompt source {source.name!r} asks for a chat template but the tokenizer in {directory} has none; using the raw text."
            if note not in self.warnings:
                self.warnings.append(note)
                print(f"warning: {note}", file=sys.stderr)
        if source.system_prompt:
            text = f"{source.system_prompt}\n\n{text}"
        return tokenizer(text)["input_ids"], False

    def _jsonl(self, source: PromptSourceSpec, directory: Path) -> list[Prompt]:
        assert source.path is not None
        rows: list[tuple[int, dict[str, Any]]] = []
        with source.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    rows.append((number, json.loads(line)))
        if source.categories is not None:
            rows = [(n, r) for n, r in rows if r.get(source.category_field) in source.categories]
        if source.per_category is not None:
            taken: dict[Any, int] = {}
            kept = []
            for n, r in rows:
                category = r.get(source.category_field)
                if taken.get(category, 0) < source.per_category:
                    taken[category] = taken.get(category, 0) + 1
                    kept.append((n, r))
            rows = kept
        if source.count is not None:
            rows = rows[: source.count]
        if not rows:
            raise UserInputError(
                f"prompts[{source.index}]: no records of {source.path} are left after the category filter."
            )
        prompts = []
        seen: set[str] = set()
        for number, record in rows:
            text = jsonl_prompt_text(record, source)
            ids, templated = self._encode(text, source, directory)
            prompt_id = _jsonl_id(record, source, number)
            if prompt_id in seen:
                prompt_id = f"{prompt_id}@line{number}"
            seen.add(prompt_id)
            category = record.get(source.category_field)
            prompts.append(
                Prompt(
                    prompt_id=prompt_id,
                    ids=ids,
                    source=source.name,
                    category=None if category is None else str(category),
                    text=text,
                    meta={"line": number, "chat_template": templated},
                )
            )
        return prompts

    def _inline(self, source: PromptSourceSpec, directory: Path | None) -> list[Prompt]:
        prompts = []
        for entry in source.prompts:
            if "ids" in entry:
                ids, text, templated = list(entry["ids"]), None, False
            else:
                assert directory is not None
                text = entry["text"]
                ids, templated = self._encode(text, source, directory)
            prompts.append(
                Prompt(
                    prompt_id=str(entry["id"]),
                    ids=ids,
                    source=source.name,
                    category=entry.get("category"),
                    text=text,
                    meta={"chat_template": templated},
                )
            )
        return prompts


def corpus_texts(corpus: str) -> list[str]:
    """Texts of a corpus: a split of the zoo's training corpus, or a local text file / directory."""
    if corpus in ("heldout", "train"):
        from orthrus.train.corpus import corpus_documents

        return [document.text for document in corpus_documents(corpus)]
    path = Path(corpus)
    if path.is_file():
        return [path.read_text(encoding="utf-8", errors="replace")]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in CORPUS_FILE_SUFFIXES)
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]
