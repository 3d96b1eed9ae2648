"""The GPT model: layers tagged with parametrization roles, assembled into a decoder."""

from megadepth.model.gpt import GPT
from megadepth.model.layers import (
    MLP,
    Attention,
    Block,
    Embedding,
    Head,
    LinearBlock,
    Norm,
    SwiGLU,
    activation_fn,
)

__all__ = ["GPT", "MLP", "Attention", "Block", "Embedding", "Head", "LinearBlock", "Norm", "SwiGLU", "activation_fn"]
