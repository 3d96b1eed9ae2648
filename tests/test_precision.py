"""Mixed precision: why bf16-mixed is the GPU default, and that the engine trains with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from distributed import run_ranks, train_rank
from test_train import losses

from megadepth.analysis.precision import residual_rounding_error
from megadepth.config import validate
from megadepth.model import GPT
from megadepth.parametrize import Parametrization, initialize


def deep_model(preset: str, depth: int) -> GPT:
    cfg = validate({"model": {"width": 64, "depth": depth, "base_depth": 4, "heads": 4, "seq_len": 64,
                              "vocab_size": 256}, "parametrization": {"name": preset}})
    ptz = Parametrization.from_config(cfg.model, cfg.parametrization, optimizer=cfg.optimizer.name)
    model = GPT(cfg.model, ptz.multipliers())
    initialize(model, ptz, seed=0)
    return model


@pytest.mark.parametrize("preset", ["depth_mup", "completep"])
def test_bf16_residual_stream_loses_the_branches_of_deep_models(preset: str) -> None:
    """Pure bf16's error on the blocks' contribution grows with depth; bf16-mixed's stays put."""
    tokens = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(1))
    errors = {(p, d): residual_rounding_error(deep_model(preset, d), tokens, p)
              for p in ("bf16-mixed", "bf16") for d in (4, 64)}
    assert 0 < errors["bf16-mixed", 4] < 0.01 and 0 < errors["bf16-mixed", 64] < 0.01
    assert errors["bf16-mixed", 64] < 1.5 * errors["bf16-mixed", 4]
    assert errors["bf16", 64] > 2 * errors["bf16", 4]
    assert errors["bf16", 64] > 5 * errors["bf16-mixed", 64]


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="bf16-mixed"):
        residual_rounding_error(deep_model("sp", 2), torch.zeros(1, 4, dtype=torch.long), "fp16")


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 1])
def test_bf16_mixed_trains_close_to_fp32(sample_data: Path, tmp_path: Path, zero_stage: int) -> None:
    """The engine runs the forward under autocast (losses differ from fp32) with fp32 weights and
    optimizer (so they differ only by bf16 matmul rounding)."""
    runs = {}
    for precision in ("fp32", "bf16-mixed"):
        out = tmp_path / precision
        cfg = tiny_config(sample_data, out, train={"precision": precision, "steps": 4},
                          parallel={"zero_stage": zero_stage})
        (summary,) = run_ranks(train_rank, 1, cfg)
        assert summary["status"] == "completed"
        runs[precision] = losses(out)
    fp32, mixed = runs["fp32"], runs["bf16-mixed"]
    assert fp32.keys() == mixed.keys()
    assert fp32[4] < fp32[1] - 0.05  # it trained
    for step in fp32:
        assert mixed[step] != fp32[step]
        assert mixed[step] == pytest.approx(fp32[step], abs=0.02), (step, fp32, mixed)
