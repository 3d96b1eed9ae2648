"""DeepSpeed engine set-up: the model, the parametrization's param groups, the schedule, ZeRO, bf16."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from megadepth.config.schema import Config
from megadepth.model import GPT
from megadepth.parallel.topology import Grid
from megadepth.parametrize import Parametrization, initialize, param_groups
from megadepth.parametrize.checks import verify_attention_scale
from megadepth.train.schedule import make_scheduler


def deepspeed_config(config: Config, grad_accum: int, global_batch: int, precision: str) -> dict[str, Any]:
    """The DeepSpeed JSON config derived from ours (the user never writes one)."""
    return {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": config.train.micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": config.optimizer.grad_clip,
        "zero_optimization": {"stage": config.parallel.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        # our optimizer is torch's AdamW with per-group eps and weight decay; ZeRO wraps it as is
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31,
        "wall_clock_breakdown": False,
    }


def build_optimizer(config: Config, groups: list[dict]) -> torch.optim.Optimizer:
    """The torch optimizer over the parametrization's groups (each group carries its own lr/eps/wd)."""
    opt = config.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov)
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps)


@dataclass
class Built:
    engine: Any
    model: GPT
    parametrization: Parametrization
    groups: list[dict]


def build_engine(config: Config, device: torch.device, grad_accum: int, global_batch: int,
                 precision: str, grid: Grid) -> Built:
    """Build this rank's part of the model on ``device``, initialise it from its roles (global shapes,
    sliced), wrap it in a DeepSpeed engine that averages gradients over the data-parallel group only."""
    import deepspeed

    ptz = Parametrization.from_config(config.model, config.parametrization, optimizer=config.optimizer.name)
    if config.model.block == "transformer":
        verify_attention_scale(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    model = GPT(config.model, ptz.multipliers(), grid.tensor).to(device)
    initialize(model, ptz, config.train.seed)
    groups = param_groups(model, ptz, config.optimizer)
    optimizer = build_optimizer(config, groups)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=make_scheduler(config.schedule, config.train.steps),
        config=deepspeed_config(config, grad_accum, global_batch, precision),
        mpu=grid.mpu,
    )
    return Built(engine=engine, model=model, parametrization=ptz, groups=groups)
