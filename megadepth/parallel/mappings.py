"""Tensor-parallel collectives as autograd functions (the Megatron "mappings").

Each function is one region boundary; its backward is the conjugate collective, so the gradient of the
sharded computation equals the gradient of the unsharded one:

| function                    | forward                          | backward                          |
|-----------------------------|----------------------------------|-----------------------------------|
| ``copy_to_tp``              | identity                         | all-reduce (sum)                  |
| ``reduce_from_tp``          | all-reduce (sum)                 | identity                          |
| ``gather_last_dim``         | all-gather along the last dim    | keep own slice                    |
| ``scatter_to_sequence``     | keep own slice of the sequence   | all-gather along the sequence     |
| ``gather_from_sequence``    | all-gather along the sequence    | reduce-scatter along the sequence |
| ``reduce_scatter_to_sequence`` | reduce-scatter along the sequence | all-gather along the sequence  |
| ``all_reduce_grad``         | identity (a replicated parameter)| all-reduce (sum)                  |

With a group of size 1 every function is the identity and no collective runs.
Activations are [batch, sequence, features]; the sequence dimension is 1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

SEQ_DIM = 1


def _size(group: Any) -> int:
    return 1 if group is None else dist.get_world_size(group)


def _rank(group: Any) -> int:
    return 0 if group is None else dist.get_rank(group)


def _all_reduce(x: torch.Tensor, group: Any) -> torch.Tensor:
    x = x.contiguous().clone()
    dist.all_reduce(x, group=group)
    return x


def _all_gather(x: torch.Tensor, dim: int, group: Any) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def _split(x: torch.Tensor, dim: int, group: Any) -> torch.Tensor:
    size = _size(group)
    if x.shape[dim] % size:
        raise ValueError(f"dimension {dim} of size {x.shape[dim]} is not divisible by the tensor-parallel size {size}")
    return x.chunk(size, dim=dim)[_rank(group)].contiguous()


def _reduce_scatter(x: torch.Tensor, dim: int, group: Any) -> torch.Tensor:
    parts = [p.contiguous() for p in x.chunk(_size(group), dim=dim)]
    out = torch.empty_like(parts[0])
    dist.reduce_scatter(out, parts, group=group)
    return out


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _all_reduce(grad, ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _GatherLastDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return _all_gather(x, -1, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _split(grad, -1, ctx.group), None


class _ScatterToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return _split(x, SEQ_DIM, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _all_gather(grad, SEQ_DIM, ctx.group), None


class _GatherFromSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return _all_gather(x, SEQ_DIM, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # the gathered activation feeds tensor-parallel shards whose gradients must be summed
        return _reduce_scatter(grad, SEQ_DIM, ctx.group), None


class _ReduceScatterToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return _reduce_scatter(x, SEQ_DIM, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _all_gather(grad, SEQ_DIM, ctx.group), None


def copy_to_tp(x: torch.Tensor, group: Any) -> torch.Tensor:
    return x if _size(group) == 1 else _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group: Any) -> torch.Tensor:
    return x if _size(group) == 1 else _ReduceFromTP.apply(x, group)


def gather_last_dim(x: torch.Tensor, group: Any) -> torch.Tensor:
    return x if _size(group) == 1 else _GatherLastDim.apply(x, group)


def scatter_to_sequence(x: torch.Tensor, group: Any) -> torch.Tensor:
    return x if _size(group) == 1 else _ScatterToSequence.apply(x, group)


def gather_from_sequence(x: torch.Tensor, group: Any) -> torch.Tensor:
    return x if _size(group) == 1 else _GatherFromSequence.apply(x, group)


def reduce_scatter_to_sequence(x: torch.Tensor, group: Any) -> torch.Tensor:
    return x if _size(group) == 1 else _ReduceScatterToSequence.apply(x, group)


def all_reduce_grad(param: torch.Tensor, group: Any) -> torch.Tensor:
    """Use a replicated parameter whose gradient each rank only sees part of (sequence parallelism):
    the forward is the parameter itself, the backward sums the partial gradients over the group."""
    return param if _size(group) == 1 else _CopyToTP.apply(param, group)
