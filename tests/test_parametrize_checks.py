"""Combinations that would silently break a parametrization stop with a message."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megadepth.common.errors import ConfigError
from megadepth.config import validate
from megadepth.parametrize.checks import check_parametrization, verify_attention_scale


def cfg(**sections: dict):
    base = {"model": {"width": 64, "heads": 4, "depth": 4, "base_width": 32, "base_depth": 2}}
    for key, values in sections.items():
        base[key] = {**base.get(key, {}), **values}
    return validate(base)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"model": {"base_width": 128}}, "model.base_width (128) is larger"),
        ({"model": {"base_depth": 8}}, "model.base_depth (8) is larger"),
        ({"parametrization": {"zero_readout": True}}, "zero_readout with model.tie_embeddings"),
        ({"model": {"heads": 8, "base_width": 36, "width": 72}}, "base head size is ambiguous"),
        ({}, "set model.base_heads: 2 (heads grew, head size 16 fixed) or 4 (head size grew from 8, 4 heads "
             "fixed)"),
        ({"model": {"base_heads": 4}, "parametrization": {"base_head_dim": 16}}, "disagree"),
        # grouped-query attention away from the base width: width 32 -> 64 with 4 -> 8 heads (head size 8)
        ({"model": {"heads": 8, "kv_heads": 2, "base_heads": 4}}, "set model.base_kv_heads: 1 (the group of 4"),
        ({"model": {"heads": 8, "kv_heads": 1, "base_heads": 4}}, "no whole number of base key/value heads"),
        # Llama's fixed kv_heads while the heads double: K/V's fan-out would not grow with the width
        ({"model": {"heads": 8, "kv_heads": 2, "base_heads": 4, "base_kv_heads": 2}},
         "model.base_kv_heads (2) with 4 base heads and model.kv_heads (2) with 8 heads: the group size"),
        # keys the chosen block options never read
        ({"model": {"mlp": "swiglu", "mlp_ratio": 3, "base_heads": 4}}, "model.mlp_ratio (3) has no effect with model.mlp: swiglu"),
        ({"model": {"ffn_multiple_of": 64, "base_heads": 4}}, "model.ffn_multiple_of (64) has no effect with model.mlp: gelu"),
        ({"model": {"mlp": "swiglu", "ffn_hidden": 96, "ffn_multiple_of": 64, "base_heads": 4}}, "model.ffn_multiple_of (64)"),
        ({"model": {"rope_theta": 500, "base_heads": 4}}, "model.rope_theta (500) has no effect"),
        ({"model": {"block": "linear", "position": "rotary"}}, "rotary has no effect"),
        ({"model": {"block": "linear"}, "parametrization": {"zero_query": True}}, "zero_query has no effect"),
    ],
)
def test_refused(sections: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_parametrization(cfg(**sections))
    assert message in str(info.value)


def test_allowed() -> None:
    for base_heads in (2, 4):  # heads grew (2 of 16 at the base), head size grew (4 of 8)
        check_parametrization(cfg(model={"base_heads": base_heads}))
    check_parametrization(cfg(model={"base_heads": 4}, parametrization={"base_head_dim": 8}))
    check_parametrization(cfg(model={"tie_embeddings": False, "base_heads": 4},
                              parametrization={"zero_readout": True}))
    check_parametrization(cfg(model={"heads": 8, "base_width": 36, "width": 72},
                              parametrization={"base_head_dim": 9}))
    check_parametrization(cfg(parametrization={"name": "sp"}, model={"heads": 3, "width": 66, "base_width": 33}))
    # the group size kept: more heads (2 of 4 -> 4 of 8 query heads per key/value head), or wider heads
    check_parametrization(cfg(model={"heads": 8, "kv_heads": 4, "base_heads": 4, "base_kv_heads": 2}))
    check_parametrization(cfg(model={"kv_heads": 2, "base_heads": 4, "base_kv_heads": 2}))
    # SP has no width rule to break, and at the base width nothing is scaled
    check_parametrization(cfg(parametrization={"name": "sp"}, model={"heads": 8, "kv_heads": 2, "base_heads": 4}))
    check_parametrization(cfg(model={"kv_heads": 2, "base_width": None, "base_depth": None}))


def test_base_kv_heads_of_a_model_that_is_its_own_base_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"model.base_kv_heads \(1\) differs from the key/value heads \(2\)"):
        validate({"model": {"width": 64, "heads": 4, "kv_heads": 2, "base_kv_heads": 1}})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_scale_is_honoured_by_sdpa(dtype: torch.dtype) -> None:
    verify_attention_scale(torch.device("cpu"), dtype)


def test_kernel_that_drops_the_scale_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = F.scaled_dot_product_attention

    def default_scale_only(q, k, v, is_causal=False, scale=None, **kwargs):  # a kernel without `scale`
        return real(q, k, v, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", default_scale_only)
    with pytest.raises(ConfigError, match="ignores the softmax scale"):
        verify_attention_scale(torch.device("cpu"), torch.float32)


def test_an_mlp_that_grows_unlike_the_width_is_warned_about_once(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """SwiGLU's 8/3 x width rounded up to ffn_multiple_of: 64 -> 128 gives 192 -> 352 (x1.83, not m = 2)."""
    from megadepth.parametrize import checks

    monkeypatch.setattr(checks, "_warned", set())
    monkeypatch.delenv("RANK", raising=False)
    swiglu = {"mlp": "swiglu", "ffn_multiple_of": 32, "width": 128, "heads": 8, "base_width": 64, "base_heads": 4}
    check_parametrization(cfg(model=swiglu))
    check_parametrization(cfg(model=swiglu))
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and "the MLP width grows by 1.833 (192 at the base width 64, 352 here)" in err
    # in proportion: a multiple that divides both (16: 176 -> 352 is x2), the GPT-2 MLP, SP, or the base width
    for model, ptz in (({**swiglu, "ffn_multiple_of": 16}, {}), ({**swiglu, "mlp": "gelu", "ffn_multiple_of": 256},
                                                                 {}), (swiglu, {"name": "sp"}),
                       ({**swiglu, "base_width": 128, "base_heads": 8}, {})):
        check_parametrization(cfg(model=model, parametrization=ptz))
    assert capsys.readouterr().err == ""
