"""Learning-rate schedules as a factor of each group's own LR, so the per-role LRs survive."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from megadepth.config.schema import ScheduleConfig


def lr_factor(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """Factor applied to every group's LR for the update of optimizer step ``step`` (0-based): a linear
    warm-up reaching 1 at step ``warmup_steps - 1``, then cosine / linear decay to ``min_lr_ratio`` at the
    last step, or warmup-stable-decay (flat, then linear over the last ``decay_fraction``)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.name == "constant":
        return 1.0
    lo = cfg.min_lr_ratio
    if cfg.name == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * total_steps))
        decay_start = max(cfg.warmup_steps, total_steps - decay_steps)
        if step < decay_start:
            return 1.0
        progress = (step - decay_start + 1) / max(1, total_steps - decay_start)
        return 1.0 - (1.0 - lo) * min(1.0, progress)
    span = max(1, total_steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.name == "linear":
        return 1.0 - (1.0 - lo) * progress
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(cfg: ScheduleConfig, total_steps: int) -> Callable[[Optimizer], LambdaLR]:
    """A factory DeepSpeed calls with the optimizer; a plain function, which LambdaLR leaves out of its
    state_dict, so a resume follows its current config."""

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, cfg)

    return lambda optimizer: LambdaLR(optimizer, factor)
