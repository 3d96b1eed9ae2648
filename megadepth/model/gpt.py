"""The GPT decoder: embedding, L pre-LayerNorm blocks, head; cross-entropy loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megadepth.config.schema import ModelConfig
from megadepth.model.layers import Block, Embedding, Head, LinearBlock
from megadepth.parametrize.rules import Multipliers


class GPT(nn.Module):
    """A pre-LN GPT whose forward multipliers come from a parametrization.

    ``forward(tokens)`` returns logits; ``forward(tokens, labels)`` the mean next-token cross-entropy
    (computed in fp32). Initialisation is not done here: :func:`megadepth.parametrize.initialize` does
    it from the parameters' roles, so the model cannot silently keep PyTorch's defaults.
    """

    def __init__(self, cfg: ModelConfig, mult: Multipliers) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(cfg, mult.embedding)
        if cfg.block == "linear":
            blocks = [LinearBlock(cfg, mult.branch) for _ in range(cfg.depth)]
        else:
            blocks = [Block(cfg, mult.branch, mult.attn_scale) for _ in range(cfg.depth)]
        self.blocks = nn.ModuleList(blocks)
        self.head = Head(cfg, mult.readout, tied=self.embed.token if cfg.tie_embeddings else None)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(tokens)
        for block in self.blocks:
            h = block(h)
        logits = self.head(h)
        if labels is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1))

    def num_params(self) -> int:
        """Parameters counted once (tied matrices once)."""
        return sum(p.numel() for p in self.parameters())
