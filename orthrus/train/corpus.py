"""Offline training corpus: the Python standard library sources plus the pydoc topics.

Everything here is available on any machine with Python installed, so the tiny models can be
trained and re-trained without network access. The held-out split is chosen by file, from a hash
of the file's relative path, so it is stable across machines and runs; held-out files are never
trained on and provide the evaluation prompts for the benchmarks.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "heldout")
EXCLUDED_DIRS = frozenset({"site-packages", "test", "tests", "idlelib", "__pycache__"})
MAX_FILE_BYTES = 200_000
HELDOUT_MODULUS = 20  # about 1 document in 20 (5%) is held out


@dataclass(frozen=True)
class Document:
    """One training document: `name` is a stable relative path, `text` its contents."""

    name: str
    text: str


def is_heldout(name: str) -> bool:
    """True iff the document with this relative path belongs to the held-out split."""
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()
    return int(digest, 16) % HELDOUT_MODULUS == 0


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_documents() -> list[Document]:
    return code_documents(stdlib_root(), excluded_dirs=EXCLUDED_DIRS)


def code_documents(root: Path, excluded_dirs: frozenset[str] = frozenset()) -> list[Document]:
    """Every non-empty ``*.py`` file under ``root`` outside ``excluded_dirs`` (size-capped), sorted
    by path; a document's name is its path relative to ``root``."""
    documents = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if excluded_dirs.intersection(relative.parts[:-1]):
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            documents.append(Document(name=relative.as_posix(), text=text))
    return documents


def _pydoc_topic_documents() -> list[Document]:
    from pydoc_data.topics import topics

    return [
        Document(name=f"pydoc_data/topics/{topic}", text=topics[topic])
        for topic in sorted(topics)
        if topics[topic].strip()
    ]


def all_documents() -> list[Document]:
    """Every document of the corpus, both splits, sorted by name."""
    documents = _stdlib_documents() + _pydoc_topic_documents()
    return sorted(documents, key=lambda document: document.name)


def corpus_documents(split: str) -> list[Document]:
    """The documents of one split ("train" or "heldout"), sorted by name."""
    if split not in SPLITS:
        raise ValueError(f"Unknown corpus split {split!r}; use one of {', '.join(SPLITS)}.")
    want_heldout = split == "heldout"
    return [d for d in all_documents() if is_heldout(d.name) == want_heldout]


def heldout_texts() -> list[str]:
    """The texts of the held-out documents, in a fixed order."""
    return [document.text for document in corpus_documents("heldout")]
