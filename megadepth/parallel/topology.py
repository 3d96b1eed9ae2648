"""The pipe x data x model process grid, and the tensor-parallel context the model layers receive.

Rank order follows Megatron and DeepSpeed: the model (tensor) axis varies fastest, so the ranks of one
tensor-parallel group are neighbours (on one node), then data, then pipe. DeepSpeed's
`PipelineParallelGrid` builds the groups and doubles as the ``mpu`` DeepSpeed needs so that gradients
are averaged over the data-parallel group only and ZeRO shards within it.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Any

from megadepth.parallel.random import RNGTracker


@dataclass
class TensorParallel:
    """What a layer needs to know about tensor parallelism: its group, its place, sequence parallelism.

    ``size == 1`` means no tensor parallelism: every collective is skipped.
    """

    group: Any = None
    rank: int = 0
    size: int = 1
    sequence_parallel: bool = False
    rng: RNGTracker = field(default_factory=RNGTracker)

    @property
    def enabled(self) -> bool:
        return self.size > 1

    def shard(self, n: int, what: str) -> int:
        """This rank's share of a dimension of global size ``n`` (which must divide evenly)."""
        if n % self.size:
            raise ValueError(f"{what} ({n}) is not divisible by the tensor-parallel size ({self.size})")
        return n // self.size


@dataclass(frozen=True)
class Grid:
    """This rank's coordinates and groups in the pipe x data x model grid."""

    mpu: Any
    tensor: TensorParallel
    data_rank: int
    data_size: int
    data_group: Any
    pipe_rank: int
    pipe_size: int


def build_grid(pipeline: int, tensor: int, data: int, sequence_parallel: bool) -> Grid:
    """Create every process group (all ranks must call this, in the same order)."""
    from deepspeed.runtime.pipe.topology import PipelineParallelGrid, PipeModelDataParallelTopology

    topo = PipeModelDataParallelTopology(num_pp=pipeline, num_mp=tensor, num_dp=data)
    with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed prints the topology to stdout on rank 0
        grid = PipelineParallelGrid(topology=topo)
    tp = TensorParallel(group=grid.get_slice_parallel_group() if tensor > 1 else None,
                        rank=grid.get_slice_parallel_rank(), size=tensor,
                        sequence_parallel=sequence_parallel and tensor > 1)
    return Grid(mpu=grid, tensor=tp, data_rank=grid.get_data_parallel_rank(),
                data_size=grid.get_data_parallel_world_size(), data_group=grid.get_data_parallel_group(),
                pipe_rank=grid.get_pipe_parallel_rank(), pipe_size=grid.get_pipe_parallel_world_size())
