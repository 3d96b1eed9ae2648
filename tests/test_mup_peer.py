"""Peer check: our width rules against Microsoft's `mup` package on the same model.

`mup.set_base_shapes` infers which dimensions are "infinite" by comparing the model with a base and a
delta model; MuAdam / MuSGD then scale each parameter's LR and weight decay. Our rules come from roles.
Both are applied to the very same GPT at width multipliers 1, 2 and 4; every parameter's LR and weight
decay must agree, and MuReadout's output multiplier must equal ours.
"""

from __future__ import annotations

import mup  # installed by the Makefile (with --no-deps: see pyproject.toml)
import pytest
import torch

from megadepth.config import validate
from megadepth.model import GPT
from megadepth.parametrize import Parametrization, Role, param_groups, param_roles

BASE_WIDTH = 32


def build(width: int, optimizer: str, output_multiplier: float = 2.0):
    cfg = validate({
        "model": {"width": width, "base_width": BASE_WIDTH, "depth": 2, "heads": 4, "seq_len": 8,
                  "vocab_size": 40, "tie_embeddings": False, "bias": True},
        "parametrization": {"name": "mup", "output_multiplier": output_multiplier},
        "optimizer": {"name": optimizer, "lr": 0.01, "weight_decay": 0.1},
    })
    ptz = Parametrization.from_config(cfg.model, cfg.parametrization, optimizer=optimizer)
    return cfg, ptz, GPT(cfg.model, ptz.multipliers())


def per_param(groups: list[dict], model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("mult", [1, 2, 4])
def test_lr_and_weight_decay_agree_with_mup(optimizer: str, mult: int) -> None:
    cfg, ptz, model = build(BASE_WIDTH * mult, optimizer)
    _, _, base = build(BASE_WIDTH, optimizer)
    _, _, delta = build(BASE_WIDTH * 2, optimizer)
    mup.set_base_shapes(model, base, delta=delta, rescale_params=False)
    ours = per_param(param_groups(model, ptz, cfg.optimizer), model)

    roles = param_roles(model)
    decayed = [n for n, p in model.named_parameters() if roles[n] not in
               (Role.BRANCH_GAIN, Role.BRANCH_BIAS, Role.FINAL_GAIN, Role.FINAL_BIAS)]
    # mup applies one base weight decay to every parameter; compare it on the decayed ones
    flat = [{"params": [p], "lr": 0.01, "weight_decay": 0.1} for n, p in model.named_parameters() if n in decayed]
    peer_opt = mup.MuAdamW(flat, lr=0.01) if optimizer == "adamw" else mup.MuSGD(flat, lr=0.01)
    theirs = per_param(peer_opt.param_groups, model)
    assert set(theirs) == set(decayed)
    for name in decayed:
        assert ours[name] == pytest.approx(theirs[name], rel=1e-12), (name, ours[name], theirs[name])
    # gains and biases: same LR as mup (we do not decay them)
    flat = [{"params": [p], "lr": 0.01} for n, p in model.named_parameters() if n not in decayed]
    peer_opt = mup.MuAdamW(flat, lr=0.01) if optimizer == "adamw" else mup.MuSGD(flat, lr=0.01)
    for name, (lr, _) in per_param(peer_opt.param_groups, model).items():
        assert ours[name][0] == pytest.approx(lr, rel=1e-12), name
    if mult > 1:  # the check is not vacuous: some groups really moved
        assert {v[0] for v in ours.values()} != {0.01}


@pytest.mark.parametrize("mult", [1, 2, 4])
def test_readout_multiplier_agrees_with_mureadout(mult: int) -> None:
    width = BASE_WIDTH * mult
    _, ptz, _ = build(width, "adamw", output_multiplier=2.0)
    readout, base, delta = (mup.MuReadout(w, 40, output_mult=2.0) for w in (width, BASE_WIDTH, 2 * BASE_WIDTH))
    holder = torch.nn.ModuleDict({"r": readout})
    mup.set_base_shapes(holder, torch.nn.ModuleDict({"r": base}), delta=torch.nn.ModuleDict({"r": delta}),
                        rescale_params=False)
    x = torch.randn(3, width)
    with torch.no_grad():
        theirs = readout(x)
        ours = torch.nn.functional.linear(x * ptz.multipliers().readout, readout.weight, readout.bias)
    assert torch.allclose(theirs, ours, atol=1e-6)
    assert ptz.multipliers().readout == pytest.approx(2.0 / mult)
