"""Learning-rate schedules as a factor of each group's own LR (so muP / depth ratios survive).

A scheduler that writes one absolute LR into every group would erase the parametrization's per-role LRs
(docs/parametrizations.md, the rules per role); a torch LambdaLR multiplies each group's initial LR by the same factor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from megadepth.config.schema import ScheduleConfig


def lr_factor(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """Factor applied to every group's LR for the update of optimizer step ``step`` (0-based).

    Warm-up is linear and reaches 1 at step ``warmup_steps - 1`` (the first step is not wasted at LR 0);
    then cosine / linear decay to ``min_lr_ratio`` at the last step, or warmup-stable-decay (flat,
    then a linear decay over the last ``decay_fraction`` of the steps).
    """
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
    """A factory DeepSpeed calls with the (possibly ZeRO-wrapped) optimizer.

    The factor is a plain function on purpose: LambdaLR leaves functions out of its state_dict, so a
    resumed run follows the schedule of its current config (e.g. more train.steps), not a stale copy.
    """

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, cfg)

    def build(optimizer: Optimizer) -> LambdaLR:
        return LambdaLR(optimizer, factor)

    return build
