"""Combinations that would silently run a different parametrization than asked: refused at start-up."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megadepth.config.load import ConfigError
from megadepth.config.schema import Config
from megadepth.parametrize.rules import ADAM_FAMILY, SGD_FAMILY, base_head_problem


def check_parametrization(config: Config) -> None:
    """Static checks of the config; each failure names the keys involved."""
    model, ptz, opt = config.model, config.parametrization, config.optimizer
    if opt.name not in ADAM_FAMILY + SGD_FAMILY:
        raise ConfigError(f"optimizer.name '{opt.name}' has no parametrization rule")
    if model.base_width and model.base_width > model.width:
        raise ConfigError(
            f"model.base_width ({model.base_width}) is larger than model.width ({model.width}): tune at the "
            "base shape and scale up (m >= 1)"
        )
    if model.base_depth and model.base_depth > model.depth:
        raise ConfigError(
            f"model.base_depth ({model.base_depth}) is larger than model.depth ({model.depth}): tune at the "
            "base shape and scale up (r >= 1)"
        )
    if model.tie_embeddings and ptz.zero_readout:
        raise ConfigError(
            "parametrization.zero_readout with model.tie_embeddings would zero the shared token embedding; "
            "untie the embeddings or drop zero_readout"
        )
    problem = base_head_problem(model, ptz)
    if problem:
        raise ConfigError(problem)
    if model.block == "linear":
        ignored = {
            "model.position: rotary": model.position == "rotary",
            "parametrization.zero_query": ptz.zero_query,
            "parametrization.attn_multiplier": ptz.attn_multiplier != 1.0,
            "parametrization.base_head_dim": ptz.base_head_dim is not None,
            "model.base_heads": model.base_heads is not None,
        }
        set_keys = [k for k, on in ignored.items() if on]
        if set_keys:
            raise ConfigError(f"{', '.join(set_keys)} has no effect with model.block: linear (no attention)")


def verify_attention_scale(device: torch.device, dtype: torch.dtype) -> None:
    """Prove that the attention kernel in use honours a non-default softmax scale.

    The muP attention scale (1/d_head) differs from every kernel's default (1/sqrt(d_head)); a backend
    that dropped the ``scale`` argument would silently train SP attention. Checked once, on the real
    device and dtype, against a hand-written softmax.
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 16, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    scale = 0.37 / 16
    got = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale).float()
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(torch.triu(torch.ones(8, 8, dtype=torch.bool, device=device), 1), float("-inf"))
    ref = scores.softmax(-1) @ v.float()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    if not torch.allclose(got, ref, atol=tol, rtol=tol):
        raise ConfigError(
            "the attention kernel ignores the softmax scale the parametrization sets "
            f"(max error {float((got - ref).abs().max()):.3g} on {device}, {dtype}); refusing to train"
        )
