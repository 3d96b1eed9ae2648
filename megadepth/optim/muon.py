"""Muon for the hidden matrices inside residual branches, AdamW for every other parameter, in one optimizer.

Muon (Jordan et al. 2024): per matrix, a momentum buffer of the gradient, orthogonalised by a quintic
Newton-Schulz iteration (all singular values pushed towards 1), times a per-matrix shape factor, applied with
decoupled weight decay. The transform is non-linear in the WHOLE matrix, which decides where it may run.

Design (issue 20), and why
--------------------------
Newton-Schulz needs, per matrix: the data-parallel averaged and clipped gradient of the whole matrix, the
tensor-parallel shards gathered, query / key / value as separate matrices (megadepth's key_value weight holds
K and V interleaved head by head, [kv_heads, 2, head_dim] rows), and momentum that checkpoints with the rest.

* ZeRO 0 (the plain engine, fp32 or bf16-mixed parameters): DeepSpeed hands the client optimizer the
  parameters as they are, with their ``.grad`` already averaged over the data-parallel group at the end of
  the last micro-batch, and megadepth's Stepper clips them there (train.engine.clips_itself). So
  :class:`MuonAdamW` is an ordinary torch optimizer: each step it gathers a sharded matrix's momentum-mixed
  gradient over the tensor group (one all_gather of the shard, along its partition_dim), splits key_value
  into K and V, orthogonalises each whole matrix, and keeps its own slice. Every rank of the tensor group
  runs the same iteration on the same input, so the slices fit together. Its state (one momentum buffer per
  local shard: momentum is linear, so a shard of the buffer is the buffer of the shard; AdamW's two moments
  and step) is a plain ``state_dict``, saved per model-parallel rank by DeepSpeed at ZeRO 0 and restored
  exactly on resume. This is what is implemented.

* ZeRO 1 (and the pipeline engine, which requires it): ZeRO 1 gives the optimizer it wraps flat fp32
  partitions cut across matrix boundaries, so that optimizer never sees a matrix. DeepSpeed 0.19.8's own Muon
  path (runtime/zero/stage_1_and_2.py, ``get_flat_partition``: parameters tagged ``use_muon`` under an
  optimizer whose class name contains "muon") runs its module-level ``muon_update`` on each averaged
  gradient, with no TP gather, no K/V split and no per-matrix shape factor, and ZeRO then clips the
  ORTHOGONALISED update rather than the gradient (``groups_lacking_loss_scale``): a different optimizer from
  ZeRO 0's. So megadepth keeps the Muon matrices out of ZeRO's groups instead (megadepth.optim.beside_zero):
  ZeRO wraps the AdamW half (:class:`~megadepth.optim.beside_zero.AdamWPart`, this class's AdamW arithmetic),
  and a replicated MuonAdamW over the hidden matrices steps beside it, hooked into the ZeRO optimizer's step
  (which the pipeline engine's ``train_batch`` reaches too): their gradients averaged over the data group,
  one clip norm over all parameters shared with ZeRO's, their state saved per tensor x pipeline rank in the
  checkpoint. Same losses as ZeRO 0 (tests/test_muon.py). ZeRO 2 and 3 and precision bf16 stay refused
  (parametrize.checks).

Guards: a Muon group whose parameter is not 2-D (a flattened ZeRO partition) raises instead of silently
stepping it as SGD, and :data:`COUNTER` counts every orthogonalisation actually run, so tests can prove
that Newton-Schulz ran (DeepSpeed's Muon has had releases where it silently never did at ZeRO 0).

Width: ``adjust_lr: spectral`` scales each orthogonalised matrix by sqrt(fan_out / fan_in), the spectral
condition for feature learning (Yang, Simon and Bernstein 2023): under muP both fans grow with m, so the
factor, and the tuned LR, do not change with width. ``original`` (Keller Jordan's Muon, torch.optim.Muon's
default) scales by sqrt(max(1, fan_out / fan_in)): the same where fan_out >= fan_in, 1 instead of
sqrt(fan_out / fan_in) < 1 where a matrix has fewer outputs than inputs (MLP out, SwiGLU down, and K and V
apart under grouped-query attention, kv_heads x head_dim < width); a function of the aspect ratio only, so
width-constant as well. ``match_rms_adamw`` scales by 0.2 sqrt(max(fan_out,
fan_in)) (Moonlight: AdamW's update RMS), which grows like sqrt(m), so the parametrization gives hidden
matrices LR eta/sqrt(m) (parametrize.rules; Adam's 1/m would shrink the update like m^-1/2, which the
coordinate check measured). The shape is the orthogonalised matrix's global one (K and V each their own).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Quintic Newton-Schulz coefficients (Jordan et al. 2024): the slope at zero as large as convergence allows;
singular values end in roughly [0.7, 1.2] after 5 steps rather than exactly at 1."""

ADJUST_LR = ("spectral", "original", "match_rms_adamw")


@dataclass
class Counter:
    """Orthogonalisations run in this process (each K and V counts once): what tests count."""

    calls: int = 0


COUNTER = Counter()


def newton_schulz(g: torch.Tensor, steps: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately U V^T of ``g = U S V^T`` (2-D), by ``steps`` quintic Newton-Schulz iterations in ``dtype``
    (bf16 on GPUs, fp32 on CPUs); returned in ``g``'s dtype. Frobenius normalisation first puts every singular
    value in [0, 1], where the iteration converges; the wide orientation makes X X^T the smaller product."""
    if g.ndim != 2:
        raise ValueError(f"Newton-Schulz orthogonalises matrices, got shape {tuple(g.shape)}")
    COUNTER.calls += 1
    a, b, c = NS_COEFFICIENTS
    tall = g.shape[0] > g.shape[1]
    x = g.to(dtype)
    if tall:
        x = x.mT
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.mT
    return x.to(g.dtype)


def shape_factor(rows: int, cols: int, adjust_lr: str) -> float:
    """The per-matrix update scale for a global [fan_out, fan_in] matrix (see the module docstring)."""
    if adjust_lr == "spectral":
        return math.sqrt(rows / cols)
    if adjust_lr == "original":
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"unknown optimizer.muon.adjust_lr '{adjust_lr}' (one of {', '.join(ADJUST_LR)})")


def mark_kv_split(param: torch.nn.Parameter, head_dim: int) -> None:
    """Tag a key_value weight ([kv_heads, 2 (k, v), head_dim] rows): Muon orthogonalises K and V apart."""
    param.muon_kv_head_dim = head_dim


def orthogonalised_update(full: torch.Tensor, steps: int, adjust_lr: str, kv_head_dim: int | None,
                          dtype: torch.dtype) -> torch.Tensor:
    """The scaled orthogonalisation of one whole (gathered) matrix; a key_value matrix as K and V apart,
    each with its own shape factor, interleaved back into its layout."""
    if kv_head_dim is None:
        return newton_schulz(full, steps, dtype) * shape_factor(*full.shape, adjust_lr)
    rows, cols = full.shape
    heads = rows // (2 * kv_head_dim)
    pairs = full.reshape(heads, 2, kv_head_dim, cols)
    parts = []
    for which in range(2):  # K, then V
        matrix = pairs[:, which].reshape(heads * kv_head_dim, cols)
        update = newton_schulz(matrix, steps, dtype) * shape_factor(*matrix.shape, adjust_lr)
        parts.append(update.reshape(heads, kv_head_dim, cols))
    return torch.stack(parts, dim=1).reshape(rows, cols)


def _gather(local: torch.Tensor, param: torch.nn.Parameter, group: object) -> torch.Tensor:
    """The whole matrix from the tensor group's shards (concatenated along the parameter's partition_dim)."""
    size = getattr(param, "tp_size", 1)
    if not getattr(param, "tensor_model_parallel", False) or size == 1:
        return local
    shards = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(shards, local.contiguous(), group=group)
    return torch.cat(shards, dim=param.partition_dim)


def _own_slice(full: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    size = getattr(param, "tp_size", 1)
    if not getattr(param, "tensor_model_parallel", False) or size == 1:
        return full
    return full.chunk(size, dim=param.partition_dim)[param.tp_rank]


class MuonAdamW(torch.optim.Optimizer):
    """Groups with ``use_muon: True`` (keys lr, weight_decay, momentum, nesterov, ns_steps, adjust_lr) step by
    Muon; the others (lr, weight_decay, betas, eps) by AdamW, written out here (torch's update, to rounding)
    so that one state_dict holds both. ``tp_group``: the tensor-parallel group sharded matrices gather over."""

    def __init__(self, groups: Iterable[dict], tp_group: object = None, ns_dtype: torch.dtype | None = None) -> None:
        defaults = {"lr": 1e-3, "weight_decay": 0.0, "use_muon": False, "momentum": 0.95, "nesterov": True,
                    "ns_steps": 5, "adjust_lr": "spectral", "betas": (0.9, 0.95), "eps": 1e-8}
        super().__init__(list(groups), defaults)
        self.tp_group = tp_group
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            if group["use_muon"]:
                shape_factor(2, 2, group["adjust_lr"])  # an unknown mode fails at construction
                for p in group["params"]:
                    if p.ndim != 2:
                        raise ValueError(f"Muon group '{group.get('name')}' holds a {p.ndim}-D parameter "
                                         f"{tuple(p.shape)}: Muon steps whole matrices only")

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group(group)
            else:
                self._adamw_group(group)
        return loss

    def _muon_group(self, group: dict) -> None:
        mu = group["momentum"]
        for p in group["params"]:
            if p.ndim != 2:  # e.g. a ZeRO flat partition: refuse rather than silently step it as SGD
                raise RuntimeError(f"Muon was handed a {p.ndim}-D tensor {tuple(p.shape)}, not a matrix")
            grad = p.grad if p.grad is not None else torch.zeros_like(p)  # every TP rank must join the gather
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(grad, 1.0 - mu)
            mixed = grad.lerp(buf, mu) if group["nesterov"] else buf
            dtype = self.ns_dtype or (torch.bfloat16 if p.is_cuda else torch.float32)
            full = _gather(mixed, p, self.tp_group)
            update = orthogonalised_update(full, group["ns_steps"], group["adjust_lr"],
                                           getattr(p, "muon_kv_head_dim", None), dtype)
            p.mul_(1.0 - group["lr"] * group["weight_decay"])
            p.add_(_own_slice(update, p).to(p.dtype), alpha=-group["lr"])

    def _adamw_group(self, group: dict) -> None:
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            step = float(state["step"])
            state["exp_avg"].lerp_(p.grad, 1.0 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
            p.mul_(1.0 - group["lr"] * group["weight_decay"])
            denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1.0 - beta2**step)).add_(group["eps"])
            p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1.0 - beta1**step))
