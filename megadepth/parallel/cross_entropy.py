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
    """Works in place on one fp32 buffer: the upcast copy of the logits becomes the shifted logits, then
    their exponentials, then the softmax that backward turns into the gradient, instead of a new
    full-vocabulary tensor per step (Megatron does the same)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, vocab_start: int, valid_local: int,
                group: Any) -> torch.Tensor:
        buf = logits.float()
        if buf.data_ptr() == logits.data_ptr():
            buf = buf.clone()  # fp32 logits already: never write into the caller's tensor
        if valid_local < buf.shape[-1]:
            buf[..., valid_local:] = float("-inf")
        local_max = buf.max(dim=-1).values
        if group is not None:
            dist.all_reduce(local_max, op=dist.ReduceOp.MAX, group=group)
        buf.sub_(local_max.unsqueeze(-1))
        local_target = target - vocab_start
        mine = (local_target >= 0) & (local_target < buf.shape[-1])
        idx = local_target.clamp(0, buf.shape[-1] - 1)
        target_logit = buf.gather(-1, idx.unsqueeze(-1)).squeeze(-1) * mine
        buf.exp_()
        sum_exp = buf.sum(dim=-1)
        if group is not None:
            packed = torch.stack([sum_exp, target_logit])
            dist.all_reduce(packed, group=group)
            sum_exp, target_logit = packed[0], packed[1]
        loss = sum_exp.log() - target_logit
        buf.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(buf, idx, mine)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # the saved softmax becomes the gradient in place: backward runs once per forward (no
        # retain_graph in training), so nothing else reads it afterwards
        softmax, idx, mine = ctx.saved_tensors
        softmax.scatter_add_(-1, idx.unsqueeze(-1), -mine.to(softmax.dtype).unsqueeze(-1))
        softmax.mul_(grad.unsqueeze(-1))
        return softmax, None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, vocab_start: int,
                                 vocab_size: int, group: Any) -> torch.Tensor:
    """Per-token loss [..] from local logits [.., V_local] covering ids [vocab_start, vocab_start+V_local).

    ``vocab_size`` is the real vocabulary: columns at or past it are padding and masked out.
    """
    valid_local = max(0, min(logits.shape[-1], vocab_size - vocab_start))
    return _VocabParallelCrossEntropy.apply(logits, target, vocab_start, valid_local, group)
