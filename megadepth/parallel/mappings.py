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

from collections.abc import Callable
from functools import partial
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


def _all_gather(x: torch.Tensor, group: Any, dim: int = SEQ_DIM) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def _split(x: torch.Tensor, group: Any, dim: int = SEQ_DIM) -> torch.Tensor:
    size = _size(group)
    if x.shape[dim] % size:
        raise ValueError(f"dimension {dim} of size {x.shape[dim]} is not divisible by the tensor-parallel size {size}")
    return x.chunk(size, dim=dim)[_rank(group)].contiguous()


def _reduce_scatter(x: torch.Tensor, group: Any, dim: int = SEQ_DIM) -> torch.Tensor:
    parts = [p.contiguous() for p in x.chunk(_size(group), dim=dim)]
    out = torch.empty_like(parts[0])
    dist.reduce_scatter(out, parts, group=group)
    return out


def _identity(x: torch.Tensor, group: Any) -> torch.Tensor:
    return x


def _region(forward: Callable, backward: Callable) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """The mapping ``x -> forward(x, group)`` whose backward is ``backward(grad, group)``."""

    class _Mapping(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
            ctx.group = group
            return forward(x, group)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
            return backward(grad, ctx.group), None

    def mapping(x: torch.Tensor, group: Any) -> torch.Tensor:
        return x if _size(group) == 1 else _Mapping.apply(x, group)

    return mapping


copy_to_tp = _region(_identity, _all_reduce)
reduce_from_tp = _region(_all_reduce, _identity)
gather_last_dim = _region(partial(_all_gather, dim=-1), partial(_split, dim=-1))
scatter_to_sequence = _region(_split, _all_gather)
# the gathered activation feeds tensor-parallel shards whose gradients must be summed
gather_from_sequence = _region(_all_gather, _reduce_scatter)
reduce_scatter_to_sequence = _region(_reduce_scatter, _all_gather)
# a replicated parameter whose gradient each rank only sees part of (sequence parallelism): the forward
# is the parameter itself, the backward sums the partial gradients over the group
all_reduce_grad = copy_to_tp
