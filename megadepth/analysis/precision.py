"""How much of the blocks' contribution to the residual stream survives a bf16 forward pass.

In a depth-scaled model each block adds ``a * f(x)`` with a small multiplier to a residual stream that
does not shrink with depth; with the stream in bf16 every addition rounds it. Measured here: the relative
error of the blocks' summed contribution against the same forward pass in fp32.
"""

from __future__ import annotations

import copy

import torch

from megadepth.model import GPT


def _block_sum(model: GPT, tokens: torch.Tensor) -> torch.Tensor:
    h = start = model.embed(tokens)
    for block in model.blocks:
        h = block(h)
    return h.float() - start.float()


@torch.no_grad()
def residual_rounding_error(model: GPT, tokens: torch.Tensor, precision: str) -> float:
    """Relative error of the blocks' summed contribution in ``precision`` ("bf16-mixed": autocast,
    "bf16": weights and stream in bf16, as DeepSpeed trains) against fp32, same weights and tokens."""
    model = model.eval()
    reference = _block_sum(model, tokens)
    device_type = tokens.device.type
    if precision == "bf16-mixed":
        with torch.autocast(device_type, dtype=torch.bfloat16):
            got = _block_sum(model, tokens)
    elif precision == "bf16":
        got = _block_sum(copy.deepcopy(model).to(torch.bfloat16), tokens)
    else:
        raise ValueError(f"precision must be 'bf16-mixed' or 'bf16', not {precision!r}")
    return float((got - reference).norm() / reference.norm())
