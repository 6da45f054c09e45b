"""Checkpoint layout (save/load round trip, released config variants, from_base) and CLI behaviour."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from orthrus.cli import main
from orthrus.engines import build_engine
from orthrus.models import OrthrusForCausalLM, load_causal_lm
from tests.conftest import random_qwen3


@pytest.fixture(scope="module")
def saved_orthrus(orthrus_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("orthrus")
    orthrus_model.save_pretrained(path)
    return path


def test_save_pretrained_round_trips(orthrus_model, saved_orthrus):
    config = json.loads((saved_orthrus / "config.json").read_text())
    assert config["model_type"] == "orthrus" and config["block_size"] == 8 and config["mask_token_id"] == 2
    loaded = OrthrusForCausalLM.from_pretrained(saved_orthrus)
    original = orthrus_model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    assert any(name.endswith("self_attn.q_proj_diff.weight") for name in original)


def test_released_layout_with_qwen3_model_type_loads(saved_orthrus, tmp_path, orthrus_model, prompts):
    """Released checkpoints say model_type 'qwen3' and add block_size / mask_token_id."""
    config = json.loads((saved_orthrus / "config.json").read_text())
    config.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in orthrus_model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"))
    model = load_causal_lm(tmp_path)
    reference = build_engine("orthrus", orthrus_model).generate(prompts[7], 20).tokens
    assert build_engine("orthrus", model).generate(prompts[7], 20).tokens == reference


def test_from_base_adds_a_mask_row_without_changing_the_ar_view(tmp_path, prompts):
    base = random_qwen3(vocab=64, seed=5)
    base.save_pretrained(tmp_path)
    model = OrthrusForCausalLM.from_base(tmp_path, block_size=4)
    assert model.config.mask_token_id == 64 and model.model.embed_tokens.weight.shape[0] == 65
    ids = torch.tensor([[3, 9, 27, 40, 11]])
    with torch.no_grad():
        assert torch.allclose(model(ids), base(ids).logits, atol=1e-5)
    ar = build_engine("ar", model).generate([3, 9, 27], 30).tokens
    assert build_engine("orthrus", model, block_size=4).generate([3, 9, 27], 30).tokens == ar


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_output(capsys, saved_orthrus):
    code, out, _ = run_cli(
        capsys,
        "generate",
        "--model",
        str(saved_orthrus),
        "--engine",
        "orthrus",
        "--block-size",
        "4",
        "--max-new-tokens",
        "12",
        "--prompt-ids",
        "5,6,7",
        "--json",
    )
    record = json.loads(out)
    assert code == 0 and len(record["tokens"]) == 12
    assert sum(record["forward_passes"].values()) >= 1 and isinstance(record["accepted_per_cycle"], list)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--block-size", "0"], "--block-size must be at least 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--prompt-ids", ",".join(["5"] * 5000)], "exceeds the model's context"),
        (["--prompt-ids", "5,x"], "--prompt-ids must be comma-separated integers"),
        (["--engine", "ar", "--block-size", "4"], "--block-size applies to engines that take a block size ('dflash', 'eagle3', 'orthrus')"),
        (["--engine", "orthrus_x"], "unknown engine 'orthrus_x' (did you mean 'orthrus'?)"),
        (["--attn-implementation", "flex_attention"], "use one of sdpa, eager"),
        (
            ["--device", "cuda"] if not torch.cuda.is_available() else ["--temperature", "-1"],
            "no CUDA GPU" if not torch.cuda.is_available() else "temperature must be >= 0",
        ),
    ],
)
def test_cli_bad_input_is_one_sentence_and_exit_2(capsys, saved_orthrus, args, expected):
    base = ["generate", "--model", str(saved_orthrus), "--prompt-ids", "5,6,7"]
    code, _, err = run_cli(capsys, *base, *args)
    assert code == 2
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_rejects_a_directory_that_is_not_qwen3(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    proc = subprocess.run(
        [sys.executable, "-m", "orthrus", "generate", "--model", str(tmp_path), "--prompt-ids", "1,2"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "not Qwen3 or Orthrus" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_cli_engine_default_attention_and_dlm_loader_come_from_the_registry(capsys, saved_orthrus):
    def generate(*args: str) -> dict:
        code, out, _ = run_cli(capsys, "generate", "--prompt-ids", "5,6,7", "--max-new-tokens", "10", "--json", *args)
        assert code == 0
        return json.loads(out)

    default = generate("--model", str(saved_orthrus))
    assert default["forward_passes"]["draft"] > 0  # the default engine is the dual-view one
    assert default["tokens"] == generate("--model", str(saved_orthrus), "--engine", "ar")["tokens"]
    eager = generate("--model", str(saved_orthrus), "--attn-implementation", "eager")
    assert eager["tokens"] == default["tokens"]
    dlm = generate("--model", "tiny-dlm", "--engine", "dlm")  # model_kind 'dlm': the diffusion loader
    assert len(dlm["tokens"]) == 10 and dlm["forward_passes"]["denoise"] > 0


def test_an_orthrus_checkpoint_loads_its_tokenizer_without_a_compatibility_warning(capfd, caplog):
    """AutoTokenizer reads config.json first; model_type "orthrus" must be known to transformers,
    or every tokenizer load warns that the checkpoint may not be compatible (it is ours)."""
    from orthrus.models.checkpoint import load_tokenizer
    from orthrus.models.zoo_index import zoo_path

    directory = zoo_path("tiny-orthrus")
    if directory is None:
        pytest.skip("needs the zoo model tiny-orthrus")
    assert json.loads((directory / "config.json").read_text())["model_type"] == "orthrus"
    from transformers import AutoConfig

    from orthrus.models.modeling_orthrus import OrthrusConfig

    config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)  # unknown type: ValueError
    assert isinstance(config, OrthrusConfig) and config.block_size == 16
    with caplog.at_level(logging.WARNING):
        tokenizer = load_tokenizer(directory, trust_remote_code=False)
    assert tokenizer.mask_token == "<|mask|>"
    assert not [r for r in caplog.records if "instantiate a model of type" in r.getMessage()]
    assert "instantiate a model of type" not in capfd.readouterr().err


def test_rotary_frequencies_stay_fp32_when_the_weights_load_in_bf16():
    """RoPE's inverse frequencies rounded to bf16 shift the angle of every position (by up to a few
    radians at 4K); transformers keeps them in fp32, and so must our loaders, for both model kinds."""
    from orthrus.models import load_causal_lm
    from orthrus.models.dlm import load_diffusion_lm

    reference = load_causal_lm("tiny-orthrus").model.rotary_emb.inv_freq
    for model in (load_causal_lm("tiny-orthrus", dtype="bfloat16"), load_diffusion_lm("tiny-dlm", dtype="bfloat16")):
        assert model.model.embed_tokens.weight.dtype == torch.bfloat16
        assert model.model.rotary_emb.inv_freq.dtype == torch.float32
        assert torch.equal(model.model.rotary_emb.inv_freq, reference)
