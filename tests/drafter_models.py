"""Real small targets and drafters for the DFlash and EAGLE-3 tests (no mocks: drafters are built in the
released layouts on disk and loaded as a suite would load them).

* ``random_dflash`` / ``random_eagle3``: random-weight drafters for a target. Greedy identity with
  ``ar`` holds for any drafter; random ones are almost never right.
* ``periodic_target`` and the *oracle* drafters: a target whose greedy text repeats with period
  ``PERIOD``, and drafters built so that their predictions copy the target's, so acceptance is high and
  the accepting path (multi-token commits, EOS inside an accepted block) is exercised. How:
  the target's layers are no-ops (zero ``o_proj`` and ``down_proj``), its embeddings one-hot and its LM
  head maps token x to pi(x), where pi walks a cycle of PERIOD tokens (others step into it): the
  greedy text is x, pi(x), pi(pi(x)), ... The EAGLE-3 oracle attends only to its own position (equal
  keys and queries: RoPE peaks at offset 0) and reads the token there through an identity value and
  output projection; its LM head is pi. The DFlash oracle's queries are RoPE-rotated so that block
  position j attends to the context position PERIOD + 1 back, whose token (carried by the target's
  one-hot hidden state through an identity ``fc``) is the one before position j one period ago, hence
  the one before j; the target's LM head then gives pi of it, the token at j.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from orthrus.models import OrthrusForCausalLM
from orthrus.models.drafters import load_drafter, write_random_drafter
from orthrus.models.drafting import rope

PERIOD = 24
VOCAB = 64
MASK = 2
CYCLE = list(range(3, 3 + PERIOD))


def successor(token: int) -> int:
    """pi: the periodic target's greedy next token after ``token``."""
    if token in CYCLE:
        return CYCLE[(CYCLE.index(token) + 1) % PERIOD]
    return CYCLE[token % PERIOD]


def periodic_target(block_size: int = 8) -> OrthrusForCausalLM:
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=VOCAB,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=2 * VOCAB,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
        eos_token_id=0,
        pad_token_id=1,
        bos_token_id=0,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    base = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        base.model.embed_tokens.weight.copy_(torch.eye(VOCAB))
        for layer in base.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros(VOCAB, VOCAB)
        for token in range(VOCAB):
            head[successor(token), token] = 1.0
        base.lm_head.weight.copy_(head)
    return OrthrusForCausalLM.from_base(base, block_size=block_size, mask_token_id=MASK)


def random_dflash(target, out: Path, **options) -> object:
    return load_drafter("dflash", write_random_drafter("dflash", target.config.to_dict(), out, **options))


def random_eagle3(target, out: Path, **options) -> object:
    return load_drafter("eagle3", write_random_drafter("eagle3", target.config.to_dict(), out, **options))


def _narrow_heads(target) -> dict:
    """The target's config with 2 heads of 32 (values as wide as the hidden size: a token passes through)."""
    return {**target.config.to_dict(), "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 32}


def oracle_dflash(target, out: Path, block_size: int = 8, scale: float = 12.0):
    """A DFlash drafter (1 layer reading target layer 0) that copies the periodic target (module docstring)."""
    path = write_random_drafter(
        "dflash",
        _narrow_heads(target),
        out,
        num_layers=1,
        target_layer_ids=[0],
        block_size=block_size,
        mask_token_id=MASK,
    )
    drafter = load_drafter("dflash", path)
    layer, hidden = drafter.layers[0], VOCAB
    attn = layer.self_attn
    with torch.no_grad():
        drafter.fc.weight.copy_(torch.eye(hidden))
        key = torch.ones(1, 1, 1, attn.head_dim)
        inv = drafter.rotary_emb.inv_freq
        angle = -(PERIOD + 1) * inv
        cos, sin = torch.cat([angle, angle]).cos().view(1, 1, -1), torch.cat([angle, angle]).sin().view(1, 1, -1)
        query = rope(key, cos, sin).flatten()  # the key rotated PERIOD + 1 positions back
        attn.k_proj.weight.copy_(key.flatten().repeat(attn.num_kv_heads).unsqueeze(1).expand(-1, hidden))
        attn.q_proj.weight.copy_(query.repeat(attn.num_heads).unsqueeze(1).expand(-1, hidden))
        attn.q_norm.weight.fill_(scale)
        attn.k_norm.weight.fill_(scale)
        attn.v_proj.weight.copy_(torch.eye(hidden))
        attn.o_proj.weight.copy_(torch.eye(hidden))
        layer.mlp.down_proj.weight.zero_()
    return drafter


def oracle_eagle3(
    target, out: Path, draft_vocab: list[int] | None = None, layout: str = "speculators", scale: float = 1.5
):
    """An EAGLE-3 drafter that copies the periodic target (module docstring); ``draft_vocab`` as target ids."""
    path = write_random_drafter(
        "eagle3",
        _narrow_heads(target),
        out,
        layout=layout,
        draft_vocab=draft_vocab,
        aux_layer_ids=[0, 1, 1],
        norm_before_residual=True,
    )
    drafter = load_drafter("eagle3", path)
    layer, hidden = drafter.layers[0], VOCAB
    attn = layer.self_attn
    with torch.no_grad():
        layer.hidden_norm.weight.zero_()  # the features play no part: the token decides
        for proj in (attn.q_proj, attn.k_proj):
            proj.weight.zero_()
            proj.weight[:, :hidden] = scale
        attn.v_proj.weight.zero_()
        attn.v_proj.weight[:, :hidden] = torch.eye(hidden)
        attn.o_proj.weight.copy_(torch.eye(hidden))
        layer.mlp.down_proj.weight.zero_()
        head = torch.zeros_like(drafter.lm_head.weight)
        for draft_id, token in enumerate(drafter.draft_to_target.tolist()):
            for source in range(VOCAB):
                if successor(source) == token:
                    head[draft_id, source] = 1.0
        drafter.lm_head.weight.copy_(head)
    return drafter
