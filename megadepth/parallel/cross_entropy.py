"""Cross-entropy over vocabulary-parallel logits, without gathering full-vocabulary logits anywhere.

Each rank holds the logits of its slice of the (padded) vocabulary. The softmax normaliser needs two
all-reduces (max, then sum of exponentials), the target logit one (only its owner contributes). Padding
columns (ids >= the real vocabulary) are masked out of the softmax, so padding is never predicted.
The backward is local: softmax minus one-hot, on this rank's slice.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, vocab_start: int, valid_local: int,
                group: Any) -> torch.Tensor:
        logits = logits.float()
        if valid_local < logits.shape[-1]:
            logits = logits.clone()
            logits[..., valid_local:] = float("-inf")
        local_max = logits.max(dim=-1).values
        if group is not None:
            dist.all_reduce(local_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - local_max.unsqueeze(-1)
        exp = shifted.exp()
        sum_exp = exp.sum(dim=-1)
        local_target = target - vocab_start
        mine = (local_target >= 0) & (local_target < logits.shape[-1])
        idx = local_target.clamp(0, logits.shape[-1] - 1)
        target_logit = shifted.gather(-1, idx.unsqueeze(-1)).squeeze(-1) * mine
        if group is not None:
            packed = torch.stack([sum_exp, target_logit])
            dist.all_reduce(packed, group=group)
            sum_exp, target_logit = packed[0], packed[1]
        loss = sum_exp.log() - target_logit
        ctx.save_for_backward(exp / sum_exp.unsqueeze(-1), idx, mine)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        softmax, idx, mine = ctx.saved_tensors
        g = softmax.clone()
        g.scatter_add_(-1, idx.unsqueeze(-1), -mine.to(g.dtype).unsqueeze(-1))
        return g * grad.unsqueeze(-1), None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, vocab_start: int,
                                 vocab_size: int, group: Any) -> torch.Tensor:
    """Per-token loss [..] from local logits [.., V_local] covering ids [vocab_start, vocab_start+V_local).

    ``vocab_size`` is the real vocabulary: columns at or past it are padding and masked out.
    """
    valid_local = max(0, min(logits.shape[-1], vocab_size - vocab_start))
    return _VocabParallelCrossEntropy.apply(logits, target, vocab_start, valid_local, group)
