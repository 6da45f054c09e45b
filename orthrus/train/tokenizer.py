"""Byte-level BPE tokenizer for the tiny models, trained on the train split of the corpus.

Special tokens come first so their ids are fixed: `<|endoftext|>` = 0, `<|pad|>` = 1,
`<|mask|>` = 2. The result loads with `transformers.AutoTokenizer.from_pretrained(dir)`, and
decoding is the exact inverse of encoding (byte-level, no normalisation, no added prefix space).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from orthrus.train.corpus import Document, corpus_documents

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
MASK_TOKEN = "<|mask|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, MASK_TOKEN)  # ids 0, 1, 2
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _texts(documents: Sequence[Document]) -> Iterator[str]:
    for document in documents:
        yield document.text


def build_tokenizer(documents: Sequence[Document], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `documents` and wrap it as a transformers fast tokenizer.

    BPE training in `tokenizers` is deterministic for a fixed input order, so there is no seed.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_texts(documents), trainer=trainer, length=len(documents))
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == expected_id, f"{token} must have id {expected_id}"
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        mask_token=MASK_TOKEN,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )


def train_tokenizer(
    out_dir: str | Path,
    vocab_size: int = 4096,
    seed: int = 0,
    documents: Sequence[Document] | None = None,
) -> Path:
    """Train the tokenizer on the train split (or `documents`) and save it to `out_dir`.

    `seed` is accepted for a uniform CLI; BPE training has no randomness.
    """
    del seed
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if documents is None:
        documents = corpus_documents("train")
    tokenizer = build_tokenizer(documents, vocab_size=vocab_size)
    tokenizer.save_pretrained(out_dir)
    # transformers 5 folds the special tokens into tokenizer_config.json; older tools look for
    # special_tokens_map.json, so write it too.
    special_tokens = {
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "mask_token": MASK_TOKEN,
    }
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_tokens, indent=2) + "\n")
    return out_dir


def copy_tokenizer_files(src_dir: str | Path, dst_dir: str | Path) -> None:
    """Copy the saved tokenizer files from `src_dir` into a model directory."""
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        source = src_dir / name
        if source.exists():
            (dst_dir / name).write_bytes(source.read_bytes())
