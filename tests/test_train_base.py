"""Training pipeline for the shipped tiny models: corpus split, tokenizer, base-LM trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

from orthrus.train.base import ModelShape, TrainConfig, train
from orthrus.train.corpus import Document, corpus_documents, is_heldout
from orthrus.train.tokenizer import train_tokenizer

TINY_SHAPE = ModelShape(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    intermediate_size=64,
    max_position_embeddings=256,
)


@pytest.fixture(scope="module")
def train_docs() -> list[Document]:
    return corpus_documents("train")


@pytest.fixture(scope="module")
def heldout_docs() -> list[Document]:
    return corpus_documents("heldout")


@pytest.fixture(scope="module")
def small_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, train_docs: list[Document]) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=400, documents=train_docs[:40])


def test_corpus_split_is_deterministic_and_disjoint(train_docs: list[Document], heldout_docs: list[Document]) -> None:
    train_names = [d.name for d in train_docs]
    heldout_names = [d.name for d in heldout_docs]
    assert train_names == [d.name for d in corpus_documents("train")]
    assert heldout_names == sorted(heldout_names)
    assert not set(train_names) & set(heldout_names)
    assert all(is_heldout(name) for name in heldout_names)
    assert not any(is_heldout(name) for name in train_names)
    assert 0.02 < len(heldout_names) / (len(train_names) + len(heldout_names)) < 0.10
    assert any(name.startswith("pydoc_data/topics/") for name in train_names)
    assert not any("/test/" in f"/{name}" or "/tests/" in f"/{name}" for name in train_names + heldout_names)


def test_unknown_split_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="Unknown corpus split"):
        corpus_documents("validation")


def test_tokenizer_round_trip_and_special_ids(small_tokenizer_dir: Path, heldout_docs: list[Document]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(small_tokenizer_dir)
    assert (
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        tokenizer.mask_token_id,
    ) == (0, 1, 2)
    assert len(tokenizer) == 400
    samples = [d.text[:3000] for d in heldout_docs[:5]] + [
        "  tabs\tand ünïcödé ✓\n\n  x = 1\r\n",
        "",
    ]
    for text in samples:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    assert tokenizer.convert_tokens_to_ids("<|mask|>") == 2


def test_base_trainer_end_to_end(
    tmp_path: Path,
    small_tokenizer_dir: Path,
    train_docs: list[Document],
    heldout_docs: list[Document],
) -> None:
    out = tmp_path / "tiny"
    config = TrainConfig(
        out_dir=out,
        preset="test-tiny",
        shape=TINY_SHAPE,
        tokenizer_dir=small_tokenizer_dir,
        steps=3,
        short_seq_len=32,
        short_batch_size=2,
        long_seq_len=64,
        long_batch_size=1,
        long_frac=0.34,  # the last of the 3 steps runs at the long sequence length
        eval_contexts=(32, 64),
        eval_windows=2,
        eval_scored_positions=8,
        num_threads=1,
        quiet=True,
    )
    summary = train(config, train_documents=train_docs[:20], heldout_documents=heldout_docs[:3])
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "README.md",
        "eval.json",
    ):
        assert (out / name).exists(), name
    assert summary["steps"] == 3
    assert summary["tokens_seen"] == 2 * 32 * 2 + 64
    assert json.loads((out / "eval.json").read_text())["heldout_ppl"].keys() == {
        "32",
        "64",
    }

    weights = load_file(out / "model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.float16}
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, Qwen3ForCausalLM)
    assert model.dtype == torch.float32
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("def f(x):\n    return x", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))

    # Resume continues the same run to a larger step budget.
    resumed = train(
        TrainConfig(**{**config.__dict__, "steps": 4, "resume": True}),
        train_documents=train_docs[:20],
        heldout_documents=heldout_docs[:3],
    )
    assert resumed["steps"] == 4


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path, small_tokenizer_dir: Path) -> None:
    config = TrainConfig(
        out_dir=tmp_path,
        shape=TINY_SHAPE,
        tokenizer_dir=small_tokenizer_dir,
        steps=1,
        resume=True,
        quiet=True,
    )
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        train(
            config,
            train_documents=[Document("a.py", "x = 1\n" * 200)],
            heldout_documents=[],
        )
