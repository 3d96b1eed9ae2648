"""Muon beside ZeRO 1 (and inside the pipeline engine, which requires ZeRO 1).

ZeRO 1 cuts the parameters its optimizer holds into flat data-parallel partitions that cross matrix
boundaries, so an optimizer it wraps never sees a matrix. What DeepSpeed 0.19.8 does with a parameter that is
NOT in the optimizer it wraps (runtime/zero/stage_1_and_2.py, runtime/engine.py, runtime/pipe/engine.py):

* its gradient is never reduced: ``reduce_gradients`` and the backward hooks cover ZeRO's ``bit16_groups``
  only (the engine's ``allreduce_gradients`` at stage 1 goes to ``optimizer.reduce_gradients``; the pipeline
  engine's ``_exec_reduce_grads`` calls the same; its ``_exec_reduce_tied_grads`` covers tied modules only);
* it is never zeroed: after the step, ``_take_model_step`` calls the ZeRO optimizer's ``zero_grad``, which
  clears ZeRO's own groups only, so the ``.grad`` would accumulate across steps;
* it is not refused, its weights are saved and loaded with the module's ``state_dict`` (the model-states
  files), and ZeRO's gradient norm (``scaled_global_norm``) leaves it out.

So megadepth keeps the Muon matrices out of ZeRO's groups and steps them here, whole, in a replicated
:class:`~megadepth.optim.muon.MuonAdamW` of their own; ZeRO wraps the AdamW half. :meth:`MuonBeside.attach`
hooks the ZeRO optimizer that both engines step (``_take_model_step`` calls ``optimizer.step()``, in the
pipeline engine from ``train_batch``'s optimizer instruction): before ZeRO's step the Muon gradients are
averaged over ZeRO's own data-parallel group; ZeRO's global norm gains their share (tensor-replicated matrices
counted on tensor rank 0 only, summed over ZeRO's model-parallel group, tensor x pipeline, as ZeRO counts its
own), so that the one clip coefficient covers all parameters, as at ZeRO 0; after ZeRO's step the Muon
gradients are clipped by that same coefficient, Muon steps, its LR schedule advances, and the gradients are
cleared. A step ZeRO skips (an overflow) is skipped here too.

The state (momentum per local shard, its schedule) is replicated over the data-parallel group: the first data
rank of each (tensor, pipeline) rank saves it as :func:`state_file`, inside the checkpoint's guarded save, so
a checkpoint is only marked complete (train.checkpoint) when this file was written on every such rank too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist

from megadepth.optim.muon import MuonAdamW


def state_file(tp_rank: int, pp_rank: int) -> str:
    """The Muon state file of one (tensor, pipeline) rank inside a checkpoint tag."""
    return f"muon_tp_{tp_rank:02d}_pp_{pp_rank:02d}_optim_states.pt"


class AdamWPart(MuonAdamW):
    """The AdamW half that ZeRO wraps and partitions: MuonAdamW's own AdamW arithmetic (so that ZeRO 0 and
    ZeRO 1 step identically), refusing Muon groups. Its class name leaves out "muon", which DeepSpeed's ZeRO
    reads as a request for its own Muon path."""

    def __init__(self, groups: Iterable[dict]) -> None:
        groups = list(groups)
        if any(g.get("use_muon") for g in groups):
            raise ValueError("AdamWPart holds the AdamW groups only; Muon groups step beside ZeRO (MuonBeside)")
        super().__init__(groups)


class MuonBeside:
    """The Muon groups, stepped beside a ZeRO optimizer (see the module docstring)."""

    def __init__(self, groups: Iterable[dict], tp_group: Any, scheduler: Callable[[torch.optim.Optimizer], Any],
                 tp_rank: int, pp_rank: int, data_rank: int) -> None:
        groups = list(groups)
        if not all(g["use_muon"] for g in groups):
            raise ValueError("MuonBeside holds Muon groups only")
        # a pipeline stage may hold no Muon matrix; it still joins the collectives of every step
        self.optimizer = MuonAdamW(groups, tp_group=tp_group) if groups else None
        self.scheduler = scheduler(self.optimizer) if groups else None
        self.params = [p for g in groups for p in g["params"]]
        self.file = state_file(tp_rank, pp_rank)
        self.saves = data_rank == 0

    def attach(self, zero: Any) -> None:
        """Hook the ZeRO optimizer ``zero`` (DeepSpeed's DeepSpeedZeroOptimizer, stage 1)."""
        zero_norm, zero_step = zero.scaled_global_norm, zero.step

        def scaled_global_norm(norm_type: int = 2) -> torch.Tensor:
            base = zero_norm(norm_type)
            combined = (base.double().square() + self._squared_norm(zero) * float(zero.loss_scale) ** 2).sqrt()
            return torch.where(base < 0, base, combined.to(base.dtype))  # keep ZeRO's -1 (invalid) sentinel

        def step(closure: Any = None) -> None:
            self._average(zero.dp_process_group)
            zero_step(closure)
            if not getattr(zero, "overflow", False) and self.optimizer is not None:
                self._clip(zero)
                self.optimizer.step()
                self.scheduler.step()
            self.zero_grad()

        zero.scaled_global_norm = scaled_global_norm
        zero.step = step

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _grads(self) -> list[torch.Tensor]:
        """Every Muon gradient, a zero one where a parameter got none (every rank joins the collectives)."""
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return [p.grad for p in self.params]

    def _average(self, group: Any) -> None:
        """Average the gradients over the data-parallel group (one flat all_reduce)."""
        size = dist.get_world_size(group=group)
        grads = self._grads()
        if size == 1 or not grads:
            return
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=group)
        flat.div_(size)
        for grad, averaged in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
            grad.copy_(averaged)

    def _squared_norm(self, zero: Any) -> torch.Tensor:
        """Squared norm of the Muon gradients of the whole model, counted as ZeRO counts its own: a tensor
        shard on every tensor rank, a tensor-replicated matrix on tensor rank 0 only, summed over ZeRO's
        model-parallel group (tensor x pipeline); the data-parallel ranks hold the same averaged values."""
        from deepspeed.runtime.utils import is_model_parallel_parameter

        counted = [p.grad for p in self.params
                   if p.grad is not None and (is_model_parallel_parameter(p) or zero.model_parallel_rank == 0)]
        device = self.params[0].device if self.params else torch.device("cpu")
        total = torch.zeros((), dtype=torch.float64, device=device)
        if counted:
            total += torch.stack(torch._foreach_norm(counted)).double().square().sum()
        zero._model_parallel_all_reduce(tensor=total, op=dist.ReduceOp.SUM)
        return total

    def _clip(self, zero: Any) -> None:
        """ZeRO's clip coefficient (``unscale_and_clip_grads``: 1 / max(1, (norm + 1e-6) / clip)) from the
        combined norm, on the Muon gradients."""
        norm = getattr(zero, "_global_grad_norm", None)
        if not zero.clip_grad or norm is None or not self.params:
            return
        norm = torch.as_tensor(norm, dtype=torch.float64)
        coef = 1.0 / ((norm + 1e-6) / zero.clip_grad).clamp(min=1.0)
        torch._foreach_mul_(self._grads(), coef.to(self.params[0].dtype))

    def state_dict(self) -> dict[str, Any]:
        if self.optimizer is None:
            return {}
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (self.optimizer is None) != (not state):
            raise ValueError("the checkpoint's Muon state does not match this stage's Muon matrices")
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])

    @property
    def param_groups(self) -> list[dict]:
        """The Muon groups (for train.checkpoint's comparison of per-group settings on resume)."""
        return [] if self.optimizer is None else self.optimizer.param_groups
