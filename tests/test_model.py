"""The GPT itself: causality, attention against a hand-written reference, shapes and options."""

from __future__ import annotations

import math

import pytest
import torch

from megadepth.config import validate
from megadepth.model import GPT
from megadepth.parametrize import Parametrization, initialize


def build(**model: object) -> GPT:
    cfg = validate({"model": {"width": 32, "depth": 2, "heads": 4, "seq_len": 16, "vocab_size": 50, **model}})
    ptz = Parametrization.from_config(cfg.model, cfg.parametrization, optimizer=cfg.optimizer.name)
    gpt = GPT(cfg.model, ptz.multipliers())
    initialize(gpt, ptz, seed=3)
    return gpt.eval()


@pytest.mark.parametrize("position", ["learned", "rotary"])
@pytest.mark.parametrize("activation", ["gelu", "relu", "abs"])
def test_causal(position: str, activation: str) -> None:
    """Changing token t must not change the logits before t."""
    gpt = build(position=position, activation=activation)
    tokens = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 50
    with torch.no_grad():
        a, b = gpt(tokens), gpt(changed)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:], atol=1e-6)


def test_attention_matches_reference_softmax() -> None:
    gpt = build(depth=1, width=32, heads=2)
    attn = gpt.blocks[0].attn
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        got = attn(x)
        q = attn.query(x).view(2, 7, 2, 16).transpose(1, 2)
        k, v = attn.key_value(x).view(2, 7, 2, 2, 16).permute(3, 0, 2, 1, 4)  # rows: [heads, 2, head_dim]
        scores = q @ k.transpose(-1, -2) * attn.scale
        scores = scores.masked_fill(torch.triu(torch.ones(7, 7, dtype=torch.bool), 1), float("-inf"))
        ref = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 32)
        ref = attn.out(ref)
    assert attn.scale == pytest.approx(1 / math.sqrt(16))
    assert torch.allclose(got, ref, atol=1e-6)


def test_abs_activation_is_used() -> None:
    gpt = build(activation="abs")
    x = torch.randn(4, 32)
    mlp = gpt.blocks[0].mlp
    with torch.no_grad():
        assert torch.allclose(mlp(x), mlp.down(mlp.up(x).abs()), atol=1e-6)


def test_branch_multiplier_scales_the_residual_update() -> None:
    gpt = build()
    block = gpt.blocks[0]
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        a = block.attn(block.attn_norm(x))
        mid = x + 0.3 * a
        expected = mid + 0.3 * block.mlp(block.mlp_norm(mid))
        block.branch = 0.3
        assert torch.allclose(block(x), expected, atol=1e-6)


def test_initial_loss_is_near_uniform() -> None:
    gpt = build(vocab_size=50)
    tokens = torch.randint(0, 50, (4, 17))
    with torch.no_grad():
        loss = gpt(tokens[:, :-1], tokens[:, 1:])
    assert abs(loss.item() - math.log(50)) < 0.1


def test_tied_and_untied_heads() -> None:
    tied, untied = build(tie_embeddings=True), build(tie_embeddings=False)
    assert tied.head.proj is None and untied.head.proj is not None
    assert untied.num_params() == tied.num_params() + 128 * 32  # the vocabulary padded to 128 rows
    assert tied.head.tied.weight is tied.embed.token.weight


def test_bias_option() -> None:
    with_bias, without = build(bias=True), build(bias=False)
    assert with_bias.blocks[0].attn.query.bias is not None and without.blocks[0].attn.query.bias is None
    assert without.blocks[0].attn_norm.bias is None


def test_sequence_longer_than_position_table_is_an_error() -> None:
    gpt = build(seq_len=16)
    with pytest.raises(ValueError, match="position table"):
        gpt(torch.zeros(1, 17, dtype=torch.long))


def test_backward_reaches_every_parameter() -> None:
    gpt = build(bias=True, tie_embeddings=False).train()
    tokens = torch.randint(0, 50, (2, 17))
    gpt(tokens[:, :-1], tokens[:, 1:]).backward()
    missing = [n for n, p in gpt.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []
