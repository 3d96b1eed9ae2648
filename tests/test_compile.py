"""train.compile: the compiled blocks and loss compute what the eager model computes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from distributed import run_ranks, train_rank
from test_train import assert_close, losses

from megadepth.config import validate
from megadepth.model import GPT
from megadepth.parametrize import Parametrization, initialize

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("tied", [True, False])
def test_compiled_model_matches_eager(tied: bool) -> None:
    # vocab 50 padded to 128 rows: the compiled loss must also drop the padding columns
    cfg = validate({"model": {"width": 32, "depth": 2, "heads": 4, "seq_len": 16, "vocab_size": 50,
                              "tie_embeddings": tied}})
    ptz = Parametrization.from_config(cfg.model, cfg.parametrization, optimizer=cfg.optimizer.name)
    eager = GPT(cfg.model, ptz.multipliers())
    initialize(eager, ptz, seed=5)
    compiled = copy.deepcopy(eager)
    compiled.compile_for_speed()
    assert [n for n, _ in compiled.named_parameters()] == [n for n, _ in eager.named_parameters()]
    tokens = torch.randint(0, 50, (3, 17), generator=torch.Generator().manual_seed(0))
    results = []
    for model in (eager, compiled):
        loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l_eager, g_eager), (l_comp, g_comp) = results
    torch.testing.assert_close(l_comp, l_eager, rtol=1e-5, atol=1e-6)
    for name, grad in g_eager.items():
        torch.testing.assert_close(g_comp[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.distributed
def test_compiled_training_equals_eager(sample_data: Path, tmp_path: Path) -> None:
    """The whole training path with train.compile (DeepSpeed engine, clipping, AdamW) gives the eager
    run's losses."""
    for compile_ in (False, True):
        cfg = tiny_config(sample_data, tmp_path / str(compile_), train={"compile": compile_, "steps": 4})
        (summary,) = run_ranks(train_rank, 1, cfg)
        assert summary["status"] == "completed"
    assert_close(losses(tmp_path / "False"), losses(tmp_path / "True"), rel=1e-5)
    assert_close(losses(tmp_path / "False", "grad_norm"), losses(tmp_path / "True", "grad_norm"), rel=1e-4)
