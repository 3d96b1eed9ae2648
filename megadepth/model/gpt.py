"""The GPT decoder: embedding, L residual blocks, head; cross-entropy loss."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from megadepth.config.schema import ModelConfig
from megadepth.model.layers import Block, Embedding, Head, LayerCache, LMLoss, block_spec
from megadepth.parallel.mappings import gather_last_dim
from megadepth.parallel.topology import TensorParallel
from megadepth.parametrize.rules import Multipliers


class KVCache:
    """The keys and values of every layer for the tokens fed so far (:meth:`GPT.new_cache`): each forward
    with it feeds only the tokens after them, at the positions after them."""

    def __init__(self, depth: int) -> None:
        self.layers = [LayerCache() for _ in range(depth)]

    @property
    def length(self) -> int:
        """Tokens held: the position of the next token fed."""
        return self.layers[0].length


class GPT(nn.Module):
    """A pre-LN GPT whose forward multipliers come from a parametrization.

    ``forward(tokens)`` returns the logits over the real vocabulary (gathered across tensor-parallel
    ranks); ``forward(tokens, labels)`` the mean next-token cross-entropy (fp32), from the
    vocabulary-parallel logits; ``forward(tokens, cache=cache)`` the logits of tokens that follow the ones
    in a KV cache (inference). :func:`megadepth.parametrize.initialize` initialises it from the roles.
    """

    def __init__(self, cfg: ModelConfig, mult: Multipliers, tp: TensorParallel | None = None,
                 checkpoint_interval: int = 0) -> None:
        super().__init__()
        tp = tp or TensorParallel()
        self.cfg = cfg
        self.checkpoint_interval = checkpoint_interval
        self.tp = tp
        self.embed = Embedding(cfg, mult.embedding, tp)
        block, args = block_spec(cfg, mult, tp)
        self.blocks = nn.ModuleList(block(*args) for _ in range(cfg.depth))
        self.head = Head(cfg, mult.readout, tp, tied=self.embed.token if cfg.tie_embeddings else None)
        self.loss = LMLoss(cfg, tp)
        self._loss = self.loss

    def compile_for_speed(self) -> None:
        """``torch.compile`` each block in place (parameter names do not change; the L identical blocks
        share one compiled graph) and the loss, whose upcast, log-softmax and backward become fused kernels
        instead of passes over fp32 copies of the full-vocabulary logits."""
        for block in self.blocks:
            block.compile()
        if not self.tp.enabled:  # the vocab-parallel loss runs collectives inside: keep it eager
            self._loss = torch.compile(self.loss.__call__)

    def new_cache(self) -> KVCache:
        """An empty KV cache for :meth:`forward`: one process, transformer blocks, inference."""
        if self.tp.enabled:
            raise ValueError("a KV cache is for one process: consolidate the model (tensor parallelism is on)")
        if not all(isinstance(block, Block) for block in self.blocks):
            raise ValueError("a KV cache needs attention: model.block 'linear' has none (it is per token)")
        return KVCache(len(self.blocks))

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        if cache is not None:
            return self._forward_cached(tokens, cache)
        h = self.embed(tokens)
        step = self.checkpoint_interval
        if step and self.training and torch.is_grad_enabled():
            # recompute each group of `step` blocks in the backward pass instead of keeping activations
            for start in range(0, len(self.blocks), step):
                h = checkpoint(self._run_blocks, h, start, start + step, use_reentrant=False)
        else:
            h = self._run_blocks(h, 0, len(self.blocks))
        logits = self.head(h)
        if labels is not None:
            return self._loss(logits, labels)
        logits = gather_last_dim(logits, self.tp.group) if self.tp.enabled else logits
        return logits[..., : self.cfg.vocab_size]

    def _forward_cached(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits of ``tokens`` following the cached ones, which the cache then holds too."""
        h = self.embed(tokens, offset=cache.length)
        for block, layer in zip(self.blocks, cache.layers, strict=True):
            h = block(h, layer)
        return self.head(h)[..., : self.cfg.vocab_size]

    def _run_blocks(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for block in self.blocks[start:stop]:
            h = block(h)
        return h

    def num_params(self) -> int:
        """Parameters of this rank counted once (tied matrices once)."""
        return sum(p.numel() for p in self.parameters())
