"""Tensor-parallel layers in the style of Megatron core's tensor_parallel package.

Sharded parameters carry ``partition_dim`` and ``global_shape``: initialisation draws the GLOBAL tensor
and keeps this rank's slice, so a TP=2 model gathered equals the TP=1 model of the same seed; the
parametrization reads global shapes, never a shard's. ``tensor_model_parallel`` marks them for
DeepSpeed's gradient-norm computation (replicated parameters are counted once).
With a tensor-parallel size of 1 these are plain linear / embedding layers: no collective runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megadepth.parallel.mappings import (
    all_reduce_grad,
    copy_to_tp,
    gather_from_sequence,
    gather_last_dim,
    reduce_from_tp,
    reduce_scatter_to_sequence,
)
from megadepth.parallel.topology import TensorParallel
from megadepth.parametrize.roles import Role


def mark_sharded(param: nn.Parameter, dim: int, tp: TensorParallel, global_shape: tuple[int, ...]) -> None:
    """Record how ``param`` is a slice of a global tensor (for init, checkpoint merging and norms)."""
    param.partition_dim = dim
    param.global_shape = tuple(global_shape)
    param.tp_rank = tp.rank
    param.tp_size = tp.size
    param.tensor_model_parallel = tp.size > 1
    param.model_parallel = tp.size > 1


def replicated(param: torch.Tensor | None, tp: TensorParallel) -> torch.Tensor | None:
    """A replicated parameter used on sequence shards: its gradient is summed over the group."""
    if param is None or not tp.sequence_parallel:
        return param
    return all_reduce_grad(param, tp.group)


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W's rows (output features) split across the tensor-parallel group; the input is
    replicated (or gathered from sequence shards), the output stays split (or is gathered)."""

    def __init__(self, fan_in: int, fan_out: int, bias: bool, role: Role, tp: TensorParallel,
                 gather_output: bool = False) -> None:
        super().__init__()
        self.tp = tp
        self.gather_output = gather_output
        local_out = tp.shard(fan_out, f"output features of a {role.value} matrix")
        self.weight = nn.Parameter(torch.empty(local_out, fan_in))
        mark_sharded(self.weight, 0, tp, (fan_out, fan_in))
        self.bias = nn.Parameter(torch.empty(local_out)) if bias else None
        if self.bias is not None:
            mark_sharded(self.bias, 0, tp, (fan_out,))
        self.param_roles = {"weight": role, "bias": Role.BRANCH_BIAS}

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """Bring the input into the tensor-parallel region (all-gather the sequence under sequence
        parallelism, else identity with an all-reduce backward). Layers that read the same input call
        it once and pass ``entered=True``, so the collective runs once, not once per layer."""
        if self.tp.sequence_parallel:
            return gather_from_sequence(x, self.tp.group)
        return copy_to_tp(x, self.tp.group)

    def forward(self, x: torch.Tensor, entered: bool = False) -> torch.Tensor:
        y = F.linear(x if entered else self.enter(x), self.weight, self.bias)
        return gather_last_dim(y, self.tp.group) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """y = x W^T + b with W's columns (input features) split; x arrives split on its last dimension. The
    partial outputs are all-reduced (or reduce-scattered to sequence shards), then the bias is added."""

    def __init__(self, fan_in: int, fan_out: int, bias: bool, role: Role, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        local_in = tp.shard(fan_in, f"input features of a {role.value} matrix")
        self.weight = nn.Parameter(torch.empty(fan_out, local_in))
        mark_sharded(self.weight, 1, tp, (fan_out, fan_in))
        self.bias = nn.Parameter(torch.empty(fan_out)) if bias else None
        self.param_roles = {"weight": role, "bias": Role.BRANCH_BIAS}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.tp.sequence_parallel:
            y = reduce_scatter_to_sequence(y, self.tp.group)
        else:
            y = reduce_from_tp(y, self.tp.group)
        if self.bias is not None:
            y = y + replicated(self.bias, self.tp)
        return y


class VocabParallelEmbedding(nn.Module):
    """Token embedding with the (padded) vocabulary rows split across the tensor-parallel group. The output
    is the full embedding on every rank (all-reduced partial lookups); scattering to sequence shards is
    the caller's business (positions are added first)."""

    def __init__(self, num_rows: int, width: int, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        local = tp.shard(num_rows, "the padded vocabulary (model.vocab_size rounded up to model.vocab_multiple)")
        self.vocab_start = tp.rank * local
        self.vocab_end = self.vocab_start + local
        self.weight = nn.Parameter(torch.empty(local, width))
        mark_sharded(self.weight, 0, tp, (num_rows, width))
        self.param_roles = {"weight": Role.EMBEDDING}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.tp.enabled:
            return F.embedding(tokens, self.weight)
        outside = (tokens < self.vocab_start) | (tokens >= self.vocab_end)
        local_ids = (tokens - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local_ids, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tp(out, self.tp.group)
