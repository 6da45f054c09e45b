"""The diffusion-view trainer: its block-sparse pass is the inference draft pass, and only the
*_diff parameters learn."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from orthrus.models import DEFAULT_BLOCK_SIZE, OrthrusForCausalLM, is_diffusion_param, load_causal_lm
from orthrus.models.zoo_index import TOKENIZER_DIR
from orthrus.train.distill import DistillConfig, distill_loss, train
from tests.conftest import perturb_diffusion_view, random_qwen3


def test_training_pass_equals_the_inference_draft_pass(orthrus_model):
    model = OrthrusForCausalLM._from_state(
        orthrus_model.config, {k: v.clone() for k, v in orthrus_model.state_dict().items()}, None
    )
    perturb_diffusion_view(model)
    text = torch.randint(3, 256, (2, 60), generator=torch.Generator().manual_seed(0))
    anchors = torch.tensor([[5, 30, 51], [1, 17, 44]])
    block = 8
    with torch.no_grad():
        student, teacher = model.forward_distill(text, anchors, block)
        full_ar = model(text)
        for b in range(2):
            for n, a in enumerate(anchors[b].tolist()):
                cache = model.new_cache()
                model.forward_ar(text[b : b + 1, :a], cache, 0)
                ids = torch.tensor([[int(text[b, a])] + [model.config.mask_token_id] * (block - 1)])
                draft = model.forward_diffusion(ids, cache, a)[0, :-1]
                assert torch.allclose(student[b, n], draft, atol=1e-4)
                assert torch.allclose(teacher[b, n], full_ar[b, a : a + block - 1], atol=1e-5)


def test_only_diffusion_parameters_receive_gradients(orthrus_model):
    model = OrthrusForCausalLM._from_state(
        orthrus_model.config, {k: v.clone() for k, v in orthrus_model.state_dict().items()}, None
    )
    perturb_diffusion_view(model)
    model.train()
    text = torch.randint(3, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    anchors = torch.tensor([[3, 20], [9, 30]])
    distill_loss(model, text, anchors, 4).backward()
    for name, param in model.named_parameters():
        if is_diffusion_param(name):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_distill_trainer_runs_end_to_end_and_keeps_the_ar_view(tmp_path):
    base_dir = tmp_path / "base"
    base = random_qwen3(vocab=4096, hidden=32, seed=2, scale=1.0)
    base.save_pretrained(base_dir)
    for file in TOKENIZER_DIR.iterdir():
        shutil.copy(file, base_dir / file.name)
    config = DistillConfig(
        out_dir=tmp_path / "orthrus",
        base=str(base_dir),
        steps=3,
        data_sequences=4,
        prompt_len=16,
        continuation_len=24,
        gen_batch=4,
        batch_size=2,
        anchors_per_seq=4,
        num_threads=1,
        quiet=True,
    )
    train(config)
    model = load_causal_lm(tmp_path / "orthrus")
    assert model.config.block_size == DEFAULT_BLOCK_SIZE and model.config.mask_token_id == 2
    reference = load_causal_lm(base_dir)
    ids = torch.tensor([[5, 60, 700, 12]])
    with torch.no_grad():  # fp16 storage rounds the weights; the AR view is otherwise the base
        assert torch.allclose(model(ids), reference.half().float()(ids), atol=1e-4)

    data_file = tmp_path / "orthrus" / "checkpoint" / "distill_data.pt"
    assert torch.load(data_file, weights_only=True).shape == (4, 16 + 24)
    stamp = data_file.stat().st_mtime_ns
    config.resume, config.steps = True, 4  # continue from the checkpoint (and the cached data)
    summary = json.loads((train(config) / "training.json").read_text())
    assert summary["steps"] == 4 and data_file.stat().st_mtime_ns == stamp

    # the same folder used for another recipe: its cached text is not the data this run asked for
    config.resume, config.steps, config.prompt_len, config.data_sequences = False, 1, 20, 6
    summary = json.loads((train(config) / "training.json").read_text())
    assert summary["self_distillation_sequences"] == 6
    assert torch.load(data_file, weights_only=True).shape == (6, 20 + 24)

    # half the prompts from Python files outside the corpus: other data, so generated anew
    code = tmp_path / "code"
    code.mkdir()
    source = "def double(value: int) -> int:\n    return value * 2\n" * 20
    (code / "a.py").write_text(source)
    config.extra_prompts, config.extra_fraction = str(code), 0.5
    train(config)
    data = torch.load(data_file, weights_only=True)
    assert data.shape == (6, 20 + 24)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), trust_remote_code=False)
    prompts = [tokenizer.decode(row[:20], skip_special_tokens=True) for row in data.tolist()]
    assert sum(prompt in source for prompt in prompts) == 3  # 3 of 6 prompts are windows of a.py
    assert "Python files under" in (tmp_path / "orthrus" / "README.md").read_text()


def test_extra_prompts_that_are_the_evaluated_code_or_no_code_are_refused(tmp_path):
    package = Path(__file__).resolve().parents[1] / "orthrus"
    for directory, words in ((package / "engines", "never train on what is evaluated"), (tmp_path, "Python files")):
        config = DistillConfig(out_dir=tmp_path / "out", steps=1, quiet=True, extra_prompts=str(directory))
        with pytest.raises(ValueError, match=words):
            train(config)
        assert not (tmp_path / "out").exists()


def test_position_decay_weights_early_draft_positions(orthrus_model):
    model = OrthrusForCausalLM._from_state(
        orthrus_model.config, {k: v.clone() for k, v in orthrus_model.state_dict().items()}, None
    )
    perturb_diffusion_view(model)
    text = torch.randint(3, 256, (2, 40), generator=torch.Generator().manual_seed(4))
    anchors = torch.tensor([[3, 20], [9, 30]])
    with torch.no_grad():
        student, teacher = model.forward_distill(text, anchors, 4)
        t, s = torch.log_softmax(teacher, -1), torch.log_softmax(student, -1)
        per_position = (t.exp() * (t - s)).sum(-1).mean(dim=(0, 1))  # [3]
        assert torch.allclose(distill_loss(model, text, anchors, 4, 1.0), per_position.mean(), atol=1e-5)
        assert torch.allclose(distill_loss(model, text, anchors, 4, 1e-6), per_position[0], atol=1e-4)


def test_chain_loss_weights_each_position_by_the_chance_of_reaching_it(orthrus_model):
    model = OrthrusForCausalLM._from_state(
        orthrus_model.config, {k: v.clone() for k, v in orthrus_model.state_dict().items()}, None
    )
    perturb_diffusion_view(model)
    text = torch.randint(3, 256, (2, 40), generator=torch.Generator().manual_seed(5))
    anchors = torch.tensor([[3, 20], [9, 30]])
    with torch.no_grad():
        student, teacher = model.forward_distill(text, anchors, 4)
        t, s = torch.log_softmax(teacher, -1), torch.log_softmax(student, -1)
        kl = (t.exp() * (t - s)).sum(-1)  # [B, N, 3]
        hit = s.exp().gather(-1, teacher.argmax(-1, keepdim=True)).squeeze(-1)
        reach = torch.stack([torch.ones_like(hit[..., 0]), hit[..., 0], hit[..., 0] * hit[..., 1]], dim=-1)
        expected = (kl * reach).sum() / reach.sum()
        assert torch.allclose(distill_loss(model, text, anchors, 4, 1.0, "chain"), expected, atol=1e-5)
        assert not torch.allclose(expected, kl.mean(), atol=1e-4)
    with pytest.raises(ValueError, match="loss must be"):
        distill_loss(model, text, anchors, 4, 1.0, "mse")
