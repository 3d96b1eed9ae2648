"""LR schedules: shapes, end points, and per-group ratios that survive scheduling."""

from __future__ import annotations

import math

import pytest
import torch

from megadepth.config.schema import ScheduleConfig
from megadepth.train.schedule import lr_factor, make_scheduler


def test_warmup_is_linear_and_starts_above_zero() -> None:
    cfg = ScheduleConfig(name="constant", warmup_steps=4)
    assert [lr_factor(s, 10, cfg) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_end_points_and_midpoint() -> None:
    cfg = ScheduleConfig(name="cosine", warmup_steps=0, min_lr_ratio=0.1)
    assert lr_factor(0, 101, cfg) == pytest.approx(1.0)
    assert lr_factor(50, 101, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, 101, cfg) == pytest.approx(0.1)


def test_linear_decay() -> None:
    cfg = ScheduleConfig(name="linear", warmup_steps=10, min_lr_ratio=0.0)
    assert lr_factor(10, 21, cfg) == pytest.approx(1.0)
    assert lr_factor(15, 21, cfg) == pytest.approx(0.5)
    assert lr_factor(20, 21, cfg) == pytest.approx(0.0)


def test_warmup_stable_decay() -> None:
    cfg = ScheduleConfig(name="wsd", warmup_steps=2, decay_fraction=0.2, min_lr_ratio=0.0)
    factors = [lr_factor(s, 20, cfg) for s in range(20)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2:16] == [1.0] * 14
    assert factors[16:] == pytest.approx([0.75, 0.5, 0.25, 0.0])


def test_groups_keep_their_ratios() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr": 0.01}, {"params": [b], "lr": 0.0025}])
    sched = make_scheduler(ScheduleConfig(name="cosine", warmup_steps=3), 20)(opt)
    for _ in range(12):
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs[0] > 0 and lrs[1] / lrs[0] == pytest.approx(0.25)
        opt.step()
        sched.step()


def test_scheduler_state_does_not_pin_the_old_schedule() -> None:
    """A resumed run with more steps follows its new schedule (functions are not in the state_dict)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = make_scheduler(ScheduleConfig(name="linear", min_lr_ratio=0.0), 10)(opt)
    for _ in range(5):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([p], lr=1.0)
    longer = make_scheduler(ScheduleConfig(name="linear", min_lr_ratio=0.0), 100)(opt2)
    longer.load_state_dict(state)
    opt2.step()
    longer.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_factor(6, 100, ScheduleConfig(name="linear", min_lr_ratio=0.0)))
