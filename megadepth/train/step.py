"""One optimizer step and one evaluation, for the plain and the pipeline engine; both return the step's mean
loss on every rank, kept on the device (no host sync per step)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from megadepth.parallel.topology import Grid, TensorParallel
from megadepth.parametrize import stable_seed


def _replica_norm(model: torch.nn.Module, tp: TensorParallel) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(replica gradient norm, the gradients): TP shards summed over the tensor group, the rest counted once."""
    sharded: list[torch.Tensor] = []
    replicated: list[torch.Tensor] = []
    for p in model.parameters():
        if p.grad is not None:
            (sharded if getattr(p, "tensor_model_parallel", False) else replicated).append(p.grad)
    device = next(model.parameters()).device
    sq_sharded = _squared_norm(sharded, device)
    if tp.enabled:
        torch.distributed.all_reduce(sq_sharded, group=tp.group)
    return (sq_sharded + _squared_norm(replicated, device)).sqrt(), sharded + replicated


def _squared_norm(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    if not grads:
        return torch.zeros((), dtype=torch.float64, device=device)
    return torch.stack(torch._foreach_norm(grads)).double().pow(2).sum()


def replica_grad_norm(model: torch.nn.Module, tp: TensorParallel) -> torch.Tensor:
    """Norm of the (already data-parallel averaged) gradients of one model replica, on the device: DeepSpeed
    reports none for fp32 without ZeRO. No host transfer, so computing it every step costs no sync."""
    return _replica_norm(model, tp)[0]


def clip_replica_grads(model: torch.nn.Module, tp: TensorParallel, max_norm: float) -> torch.Tensor:
    """Scale the gradients so that the replica norm is at most ``max_norm``; returns the norm before. The
    fp32 path without ZeRO clips here: DeepSpeed's ``clip_grad_norm_`` loops in Python and runs two
    collectives per step. Same rule (coefficient max_norm / (norm + 1e-6), capped at 1); tests compare both."""
    norm, grads = _replica_norm(model, tp)
    if grads:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0).to(grads[0].dtype)
        torch._foreach_mul_(grads, coef)
    return norm


def _pairs(batches: Iterator[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in batches:
        yield batch[:, :-1], batch[:, 1:]


class Stepper:
    """Runs training steps and evaluations on a built engine (see megadepth.train.engine)."""

    def __init__(self, built: Any, grid: Grid, device: torch.device, grad_accum: int, micro_batch: int,
                 seed: int, dropout: bool, own_norm: bool) -> None:
        self.built = built
        self.engine = built.engine
        self.grid = grid
        self.device = device
        self.grad_accum = grad_accum
        self.micro_batch = micro_batch
        self.seed = seed
        self.dropout = dropout
        self.own_norm = own_norm and not built.pipeline
        self.last_own_norm: torch.Tensor | None = None

    def _seed_dropout(self, step: int, micro: int) -> None:
        """Replicated regions: one mask per data rank; sharded regions: one per tensor rank too."""
        if not self.dropout:
            return
        g = self.grid
        torch.manual_seed(stable_seed(self.seed, f"dropout:{step}:{micro}:{g.data_rank}:{g.pipe_rank}"))
        g.tensor.rng.seed(stable_seed(self.seed, f"dropout:{step}:{micro}:{g.data_rank}:{g.pipe_rank}:{g.tensor.rank}"))

    def train_step(self, batches: Iterator[torch.Tensor], step: int, want_norm: bool) -> torch.Tensor:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss (device tensor)."""
        self.last_own_norm = None
        if self.built.pipeline:
            self._seed_dropout(step, 0)
            return self.engine.train_batch(data_iter=_pairs(batches)).detach().double().reshape(())
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for micro in range(self.grad_accum):
            self._seed_dropout(step, micro)
            batch = next(batches).to(self.device, non_blocking=True)
            loss = self.engine(batch[:, :-1], batch[:, 1:])
            self.engine.backward(loss)
            if micro == self.grad_accum - 1:  # gradients complete (and data-parallel averaged) here
                if self.built.own_clip > 0:
                    self.last_own_norm = clip_replica_grads(self.built.model, self.grid.tensor, self.built.own_clip)
                elif want_norm and self.own_norm:
                    self.last_own_norm = replica_grad_norm(self.built.model, self.grid.tensor)
            self.engine.step()
            total += loss.detach().double()
        return total / self.grad_accum

    def _last_norm(self) -> float | None:
        """The last step's global gradient norm (DeepSpeed's, else ours), None if none was computed."""
        value = self.engine.get_global_grad_norm()
        value = self.last_own_norm if value is None else value
        return None if value is None else float(value.item() if torch.is_tensor(value) else value)

    def grad_norm(self) -> float:
        """The last step's global gradient norm, nan if unknown."""
        value = self._last_norm()
        return float("nan") if value is None else value

    def grad_norm_finite(self) -> bool:
        """False only when the last step's gradient norm is known and not finite."""
        value = self._last_norm()
        return value is None or math.isfinite(value)

    @torch.no_grad()
    def evaluate(self, dataset: Any, num_samples: int) -> float:
        """Mean loss over the first ``num_samples`` sequences of ``dataset``, split over data-parallel ranks."""
        g, mb = self.grid, self.micro_batch
        mine = list(range(g.data_rank, min(num_samples, len(dataset)), g.data_size))
        total = torch.zeros(2, dtype=torch.float64, device=self.device)

        def batch_of(idx: list[int]) -> torch.Tensor:
            return torch.from_numpy(np.stack([dataset[i] for i in idx])).to(self.device)

        if self.built.pipeline:
            k = len(mine) // mb
            if k:
                loader = (batch_of(mine[i * mb : (i + 1) * mb]) for i in range(k))
                loss = self.engine.eval_batch(_pairs(loader), num_micro_batches=k).double().reshape(())
                total[0] += loss.to(self.device) * (k * mb)
                total[1] += k * mb
        else:
            self.engine.eval()
            for start in range(0, len(mine), mb):
                idx = mine[start : start + mb]
                loss = self.engine(*next(_pairs(iter([batch_of(idx)]))))
                total[0] += loss.double() * len(idx)
                total[1] += len(idx)
            self.engine.train()
        torch.distributed.all_reduce(total)
        return float(total[0] / total[1]) if total[1] > 0 else float("nan")
