"""The tiny-dlm trainer: adapts a (random, tiny) Qwen3 base into a masked-diffusion LM end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from orthrus.engines import build_engine
from orthrus.models.dlm import load_diffusion_lm
from orthrus.models.zoo_index import TOKENIZER_DIR
from orthrus.train.base import ModelShape, build_model
from orthrus.train.corpus import Document, stdlib_root
from orthrus.train.dlm import DLMConfig, mask_batch, train
from orthrus.train.tokenizer import copy_tokenizer_files

SHAPE = ModelShape(32, 1, 2, 1, 16, 64, max_position_embeddings=1024)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    if not (TOKENIZER_DIR / "tokenizer.json").is_file():
        pytest.skip("the zoo tokenizer is not built")
    out = tmp_path_factory.mktemp("base")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(0)
    build_model(SHAPE, len(tokenizer), tokenizer).save_pretrained(out)
    copy_tokenizer_files(TOKENIZER_DIR, out)
    return out


def documents(*names: str) -> list[Document]:
    return [Document(name, (stdlib_root() / name).read_text()) for name in names]


def test_masking_respects_prompts_and_ratio():
    tokens = torch.arange(10, 10 + 4 * 64).view(4, 64)
    generator = torch.Generator().manual_seed(0)
    noisy, masked, t, maskable = mask_batch(tokens, 2, 1e-3, 1.0, generator)
    assert ((noisy == 2) == masked).all() and (noisy[~masked] == tokens[~masked]).all()
    assert not (masked & ~maskable).any()
    assert (~maskable[:, 0]).all()  # prompt_frac 1: every window keeps a clean prefix
    assert ((t > 0) & (t <= 1)).all()


def test_trainer_end_to_end(base_dir, tmp_path):
    out = tmp_path / "dlm"
    config = DLMConfig(
        out_dir=out,
        base=str(base_dir),
        steps=3,
        num_threads=1,
        quiet=True,
        short_seq_len=64,
        short_batch_size=2,
        long_seq_len=128,
        long_batch_size=1,
        eval_contexts=(128,),
        eval_windows=2,
        eval_generations=1,
    )
    docs = documents("json/encoder.py", "json/decoder.py")
    summary = train(config, train_documents=docs[:1], heldout_documents=docs[1:])
    assert summary["steps"] == 3 and summary["mask_token_id"] == 2
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["is_causal"] is False and config_json["mask_token_id"] == 2
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float16}
    assert (out / "tokenizer.json").is_file() and (out / "README.md").is_file()
    saved = json.loads((out / "eval.json").read_text())
    assert set(saved["generation_quality"]) == {"ar", "dlm", "fast_dllm"}
    assert "0.5@128" in saved["heldout"]["masked_nll"]
    result = build_engine("dlm", load_diffusion_lm(out), block_length=8).generate([5, 6, 7], 16)
    assert len(result.tokens) == 16 and 2 not in result.tokens

    config.resume, config.steps = True, 5  # continue from the checkpoint
    assert train(config, train_documents=docs[:1], heldout_documents=docs[1:])["steps"] == 5
