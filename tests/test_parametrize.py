"""Parametrization rules against the rules table of docs/parametrizations.md, worked out by hand for m = 4, r = 4."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch

from megadepth.config import validate
from megadepth.model import GPT
from megadepth.parametrize import Parametrization, Role, initialize, param_groups, param_roles

ETA, EPS, WD, SIGMA = 0.01, 1e-8, 0.1, 0.02


def make(preset: str, width: int = 128, depth: int = 8, base_width: int = 32, base_depth: int = 2,
         heads: int = 4, base_heads: int | None = None, model: dict | None = None, **extra: object) -> tuple:
    """``heads`` heads, as many at the base unless base_heads says otherwise (the head size grows with the
    width: head size 32 here, 8 at the base); ``model``: further model keys (a Llama block's)."""
    ptz_cfg = {"name": preset, "init_std": SIGMA, **extra}
    if preset == "custom":
        ptz_cfg.setdefault("alpha", 0.75)
        ptz_cfg.setdefault("gamma", 0.25)
    cfg = validate({
        "model": {"width": width, "depth": depth, "heads": heads, "base_width": base_width,
                  "base_heads": heads if base_heads is None else base_heads,
                  "base_depth": base_depth, "seq_len": 16, "vocab_size": 64, **(model or {})},
        "parametrization": ptz_cfg,
        "optimizer": {"lr": ETA, "eps": EPS, "weight_decay": WD},
    })
    return cfg, Parametrization.from_config(cfg.model, cfg.parametrization, optimizer=cfg.optimizer.name)


# expected (init std, LR, eps, WD) per role at m = 4, r = 4; head size 32, base head size 8. Adam eps: the
# preset's reference (docs/parametrizations.md, "Rule sources"): unscaled under sp and mup (the mup package),
# eps/(m r^alpha) in every group under the depth presets (CompleteP's reference code)
HIDDEN = {
    "sp": (0.02, 0.01, 1e-8, 0.1),
    "mup": (0.01, 0.0025, 1e-8, 0.4),
    "depth_mup": (0.01, 0.00125, 1.25e-9, 0.4),
    "completep": (0.01, 0.0025, 6.25e-10, 0.4),
    "custom": (0.01, 0.0025 * 4**-0.25, 2.5e-9 * 4**-0.75, 0.4),
}
# output projections: SP 0.02/sqrt(2*8); muP (width only) sigma/sqrt(m)/sqrt(2*depth) = 0.01/4; the
# depth-aware presets sigma/sqrt(m)/sqrt(2*base_depth) = 0.01/2
OUT_PROJ_STD = {"sp": 0.005, "mup": 0.0025, "depth_mup": 0.005, "completep": 0.005, "custom": 0.005}
BRANCH_VECTOR = {  # (LR, eps) of LayerNorm gains / biases inside branches
    "sp": (0.01, 1e-8),
    "mup": (0.01, 1e-8),
    "depth_mup": (0.005, 1.25e-9),
    "completep": (0.01, 6.25e-10),
    "custom": (0.01 * 4**-0.25, 2.5e-9 * 4**-0.75),
}
OUTSIDE_EPS = {"sp": 1e-8, "mup": 1e-8, "depth_mup": 1.25e-9, "completep": 6.25e-10, "custom": 2.5e-9 * 4**-0.75}
MULTIPLIERS = {  # (branch, readout, attention scale)
    "sp": (1.0, 1.0, 1 / math.sqrt(32)),
    "mup": (1.0, 0.25, math.sqrt(8) / 32),
    "depth_mup": (0.5, 0.25, math.sqrt(8) / 32),
    "completep": (0.25, 0.25, math.sqrt(8) / 32),
    "custom": (4**-0.75, 0.25, math.sqrt(8) / 32),
}
PRESETS = list(HIDDEN)


@pytest.mark.parametrize("preset", PRESETS)
def test_hidden_matrices(preset: str) -> None:
    _, ptz = make(preset)
    std, lr, eps, wd = HIDDEN[preset]
    for role in (Role.QUERY, Role.HIDDEN):
        rule = ptz.rule(role)
        assert rule.init_std == pytest.approx(std)
        assert ETA * rule.lr_mult == pytest.approx(lr)
        assert EPS * rule.eps_mult == pytest.approx(eps)
        assert WD * rule.wd_mult == pytest.approx(wd)
    out = ptz.rule(Role.OUTPUT_PROJ)
    assert out.init_std == pytest.approx(OUT_PROJ_STD[preset])
    assert ETA * out.lr_mult == pytest.approx(lr)


@pytest.mark.parametrize("preset", PRESETS)
def test_vectors_embeddings_readout(preset: str) -> None:
    _, ptz = make(preset)
    lr, eps = BRANCH_VECTOR[preset]
    for role, init in ((Role.BRANCH_GAIN, 1.0), (Role.BRANCH_BIAS, 0.0)):
        rule = ptz.rule(role)
        assert (rule.init_std, rule.init_value, rule.wd_mult) == (0.0, init, 0.0)
        assert ETA * rule.lr_mult == pytest.approx(lr)
        assert EPS * rule.eps_mult == pytest.approx(eps)
    for role in (Role.FINAL_GAIN, Role.FINAL_BIAS):
        rule = ptz.rule(role)
        assert (rule.lr_mult, rule.wd_mult) == (1.0, 0.0)
        assert EPS * rule.eps_mult == pytest.approx(OUTSIDE_EPS[preset])
    for role in (Role.EMBEDDING, Role.POSITION, Role.READOUT):
        rule = ptz.rule(role)
        assert (rule.init_std, rule.lr_mult, rule.wd_mult) == (SIGMA, 1.0, 1.0)
        assert EPS * rule.eps_mult == pytest.approx(OUTSIDE_EPS[preset])


@pytest.mark.parametrize("preset", PRESETS)
def test_forward_multipliers(preset: str) -> None:
    _, ptz = make(preset)
    mult = ptz.multipliers()
    branch, readout, attn = MULTIPLIERS[preset]
    assert mult.branch == pytest.approx(branch)
    assert mult.readout == pytest.approx(readout)
    assert mult.attn_scale == pytest.approx(attn)
    assert mult.embedding == 1.0


def test_base_multipliers_are_applied() -> None:
    _, ptz = make("completep", branch_multiplier=2.0, input_multiplier=3.0, output_multiplier=8.0,
                  attn_multiplier=0.5)
    mult = ptz.multipliers()
    assert (mult.branch, mult.embedding, mult.readout) == pytest.approx((0.5, 3.0, 2.0))
    assert mult.attn_scale == pytest.approx(0.5 * math.sqrt(8) / 32)


def test_options_zero_init_eps_and_weight_decay() -> None:
    _, ptz = make("depth_mup", zero_query=True, zero_readout=True)
    assert ptz.rule(Role.QUERY).init_std == 0.0 and ptz.rule(Role.HIDDEN).init_std > 0
    assert ptz.rule(Role.READOUT).init_std == 0.0 and ptz.rule(Role.EMBEDDING).init_std > 0
    _, ptz = make("depth_mup", eps_scaling="constant")
    assert {ptz.rule(r).eps_mult for r in Role} == {1.0}
    _, ptz = make("depth_mup", wd_depth_scaling="one_minus_alpha")
    assert WD * ptz.rule(Role.HIDDEN).wd_mult == pytest.approx(0.4 * 2.0)  # lambda * m * r^(1/2)
    # presets that do not parametrize depth take r := 1 here too (it was lambda * r: decay growing with depth)
    for preset in ("sp", "mup"):
        plain = make(preset)[1].rule(Role.HIDDEN).wd_mult
        assert make(preset, wd_depth_scaling="one_minus_alpha")[1].rule(Role.HIDDEN).wd_mult == plain
    assert make("completep", wd_depth_scaling="one_minus_alpha")[1].rule(Role.HIDDEN).wd_mult == pytest.approx(
        make("completep")[1].rule(Role.HIDDEN).wd_mult)  # r^(1 - 1) = 1


def model_for(cfg, ptz, seed: int = 7) -> GPT:
    model = GPT(cfg.model, ptz.multipliers())
    initialize(model, ptz, seed)
    return model


def groups_by_name(model: GPT, ptz, cfg) -> dict:
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        g["name"]: (g["lr"], g.get("eps"), g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
        for g in param_groups(model, ptz, cfg.optimizer)
    }


# the Llama block (configs/model/llama-tiny.yaml's options) with QK-norm: every parameter role it adds
LLAMA = {"norm": "rmsnorm", "mlp": "swiglu", "ffn_multiple_of": 32, "kv_heads": 2, "qk_norm": True,
         "position": "rotary", "bias": False}


def first_steps(model: GPT, ptz, cfg, steps: int = 2) -> dict[str, torch.Tensor]:
    """The weights after ``steps`` AdamW steps on a fixed batch, with the parametrization's optimizer groups."""
    opt = torch.optim.AdamW(param_groups(model, ptz, cfg.optimizer))
    tokens = torch.randint(0, cfg.model.vocab_size, (2, cfg.model.seq_len + 1),
                           generator=torch.Generator().manual_seed(3))
    for _ in range(steps):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("heads", "llama"), [(4, False), (8, False), (4, True)])
@pytest.mark.parametrize("tied", [True, False])
def test_base_shape_invariant(tied: bool, heads: int, llama: bool) -> None:
    """At m = r = 1 every preset builds the same weights, multipliers and optimizer groups, and takes the same
    first steps (the base shape given in full: model.base_heads is the head count, so the attention scale is
    SP's 1/sqrt(head size)). ``llama``: RMSNorm gains, SwiGLU gate/up/down, grouped-query key/value (4 query
    heads on 2 key/value heads) and the QK-norm gains, whose rules must reduce to SP's too."""
    built = {}
    for preset in PRESETS:
        cfg, ptz = make(preset, width=64, depth=3, base_width=64, base_depth=3, heads=heads, zero_query=False,
                        model={**(LLAMA if llama else {"bias": True}), "tie_embeddings": tied})
        assert ptz.multipliers().attn_scale == pytest.approx(1 / math.sqrt(64 / heads))
        model = model_for(cfg, ptz)
        init = {k: v.detach().clone() for k, v in model.state_dict().items()}
        built[preset] = (init, ptz.multipliers(), groups_by_name(model, ptz, cfg), first_steps(model, ptz, cfg))
    ref_state, ref_mult, ref_groups, ref_stepped = built["sp"]
    if llama:
        assert {"qk_gain", "hidden", "output_proj", "branch_gain", "final_gain"} <= ref_groups.keys()
        assert "blocks.0.attn.q_norm.weight" in ref_groups["qk_gain"][3]
        assert {"blocks.0.mlp.gate.weight", "blocks.0.mlp.up.weight"} <= set(ref_groups["hidden"][3])
    for preset, (state, mult, groups, stepped) in built.items():
        assert asdict(mult) == pytest.approx(asdict(ref_mult)), preset
        assert groups.keys() == ref_groups.keys(), preset
        for name, (lr, eps, wd, members) in groups.items():
            assert (lr, eps, wd) == pytest.approx(ref_groups[name][:3]), (preset, name)
            assert members == ref_groups[name][3]
        for key, value in state.items():
            assert torch.equal(value, ref_state[key]), (preset, key)
        for key, value in stepped.items():  # the multipliers agree to rounding: so do the steps
            assert not torch.equal(value, ref_state[key]), (preset, key)  # every parameter took its steps
            assert torch.allclose(value, ref_stepped[key], rtol=1e-5, atol=1e-7), (preset, key)


def test_every_parameter_in_exactly_one_group() -> None:
    for tied in (True, False):
        cfg, ptz = make("depth_mup")
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"tie_embeddings": tied, "bias": True})})
        model = model_for(cfg, ptz)
        groups = param_groups(model, ptz, cfg.optimizer)
        ids = [id(p) for g in groups for p in g["params"]]
        assert len(ids) == len(set(ids))
        assert set(ids) == {id(p) for p in model.parameters()}
        names = {g["name"] for g in groups}
        assert ("readout" in names) is (not tied)
        assert {"branch_bias", "final_bias"} <= names


def test_untagged_parameter_is_refused() -> None:
    cfg, ptz = make("mup")
    model = model_for(cfg, ptz)
    model.extra = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="extra"):
        param_roles(model)


def test_init_statistics_follow_the_rules() -> None:
    cfg, ptz = make("mup", width=512, depth=2, base_width=128, base_depth=2)
    model = model_for(cfg, ptz)
    block = model.blocks[0]
    assert block.attn.key_value.weight.std().item() == pytest.approx(SIGMA / 2, rel=0.03)
    assert block.mlp.down.weight.std().item() == pytest.approx(SIGMA / 2 / 2, rel=0.03)
    assert model.embed.token.weight.std().item() == pytest.approx(SIGMA, rel=0.05)
    assert torch.all(block.attn_norm.weight == 1)


def test_depth_parametrized_init_does_not_depend_on_depth() -> None:
    """Block 0 and the embeddings are the same tensors at depth 2 and 16 (init is keyed on names, and
    in-branch init does not scale with depth under Depth-muP); SP's output projections do shrink."""
    shallow = model_for(*make("depth_mup", width=32, depth=2, base_width=32, base_depth=2))
    deep = model_for(*make("depth_mup", width=32, depth=16, base_width=32, base_depth=2))
    for key, value in shallow.state_dict().items():
        if key.startswith(("blocks.0.", "embed.")):
            assert torch.equal(value, deep.state_dict()[key]), key
    sp_shallow = model_for(*make("sp", width=32, depth=2, base_width=32, base_depth=2))
    sp_deep = model_for(*make("sp", width=32, depth=16, base_width=32, base_depth=2))
    ratio = sp_shallow.blocks[0].mlp.down.weight.std() / sp_deep.blocks[0].mlp.down.weight.std()
    assert ratio.item() == pytest.approx(math.sqrt(16 / 2), rel=1e-5)


def test_same_seed_same_weights_other_seed_differs() -> None:
    cfg, ptz = make("completep")
    a, b, c = model_for(cfg, ptz, 1), model_for(cfg, ptz, 1), model_for(cfg, ptz, 2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.blocks[0].attn.query.weight, c.blocks[0].attn.query.weight)


# ---- SGD: muP's SGD column; gamma = 1 - 2 alpha for the depth presets ----------------------------------
SGD_EXPECTED = {  # preset: (hidden LR, hidden WD, vector LR (embedding/readout/final gain), vector WD, branch-gain LR)
    "sp": (0.01, 0.1, 0.01, 0.1, 0.01),
    "mup": (0.01, 0.1, 0.04, 0.025, 0.04),
    "depth_mup": (0.01, 0.1, 0.04, 0.025, 0.04),  # gamma = 0
    "completep": (0.04, 0.1, 0.04, 0.025, 0.16),  # gamma = -1: in-branch LR x r
    "custom": (0.01 * 4**-0.25, 0.1, 0.04, 0.025, 0.04 * 4**-0.25),
}


@pytest.mark.parametrize("preset", PRESETS)
def test_sgd_rules(preset: str) -> None:
    cfg, ptz = make(preset, **{})
    cfg = cfg.model_copy(update={"optimizer": cfg.optimizer.model_copy(update={"name": "sgd"})})
    ptz = Parametrization.from_config(cfg.model, cfg.parametrization, optimizer="sgd")
    hidden_lr, hidden_wd, vec_lr, vec_wd, gain_lr = SGD_EXPECTED[preset]
    for role in (Role.QUERY, Role.HIDDEN, Role.OUTPUT_PROJ):
        assert ETA * ptz.rule(role).lr_mult == pytest.approx(hidden_lr)
        assert WD * ptz.rule(role).wd_mult == pytest.approx(hidden_wd)
    for role in (Role.EMBEDDING, Role.POSITION, Role.READOUT):
        assert ETA * ptz.rule(role).lr_mult == pytest.approx(vec_lr)
        assert WD * ptz.rule(role).wd_mult == pytest.approx(vec_wd)
    assert ETA * ptz.rule(Role.FINAL_GAIN).lr_mult == pytest.approx(vec_lr)
    assert ETA * ptz.rule(Role.BRANCH_GAIN).lr_mult == pytest.approx(gain_lr)
    # init and forward multipliers do not depend on the optimizer
    _, adam = make(preset)
    assert ptz.multipliers() == adam.multipliers()
    assert all(ptz.rule(r).init_std == adam.rule(r).init_std for r in Role)
    groups = param_groups(model_for(cfg, ptz), ptz, cfg.optimizer)
    assert all("eps" not in g and "betas" not in g for g in groups)


def test_preset_gammas() -> None:
    from megadepth.parametrize import preset_gamma

    assert preset_gamma("depth_mup", 0.5, "adamw") == 0.5 and preset_gamma("depth_mup", 0.5, "sgd") == 0.0
    assert preset_gamma("completep", 1.0, "adam") == 0.0 and preset_gamma("completep", 1.0, "sgd") == -1.0
    assert preset_gamma("sp", 0.0, "sgd") == preset_gamma("mup", 0.0, "adamw") == 0.0
    with pytest.raises(ValueError, match="no parametrization rule"):
        preset_gamma("depth_mup", 0.5, "lion")


def test_base_shape_invariant_under_sgd() -> None:
    built = {}
    for preset in PRESETS:
        cfg, _ = make(preset, width=64, depth=3, base_width=64, base_depth=3)
        cfg = cfg.model_copy(update={"optimizer": cfg.optimizer.model_copy(update={"name": "sgd"})})
        ptz = Parametrization.from_config(cfg.model, cfg.parametrization, optimizer="sgd")
        built[preset] = groups_by_name(model_for(cfg, ptz), ptz, cfg)
    for preset, groups in built.items():
        assert groups == built["sp"], preset


def test_linear_block_model() -> None:
    """Block depth 1: x + branch * MS(act(W x)), one matrix per layer, tagged as a hidden matrix."""
    cfg, ptz = make("depth_mup", width=32, depth=4, base_width=32, base_depth=1)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"block": "linear", "mlp": "abs"})})
    model = model_for(cfg, ptz)
    roles = param_roles(model)
    assert {n for n in roles if n.startswith("blocks.0.")} == {"blocks.0.linear.weight"}
    assert roles["blocks.0.linear.weight"] is Role.HIDDEN
    block = model.blocks[0]
    x = torch.randn(2, 5, 32)
    z = (x @ block.linear.weight.T).abs()
    expected = x + 0.5 * (z - z.mean(-1, keepdim=True))
    assert torch.allclose(block(x), expected, atol=1e-6)
    assert block.branch == pytest.approx(0.5)  # r = 4, alpha = 1/2


def test_table_shows_the_readout_multiplier_of_a_tied_head() -> None:
    """With tied embeddings there is no readout row, yet the head multiplies by alpha_out / m: the table's
    first line says so (it used to appear nowhere in parametrization.txt)."""
    from megadepth.parametrize import roles_present

    cfg, ptz = make("mup", output_multiplier=2.0)
    tied = roles_present(GPT(cfg.model, ptz.multipliers()))
    assert Role.READOUT not in tied  # tie_embeddings is the default
    assert "readout multiplier 0.5 (tied head)" in ptz.format_table(cfg.optimizer, tied).splitlines()[0]  # 2 / m
    untied = ptz.format_table(cfg.optimizer, list(Role)).splitlines()  # an untied head has its own row
    assert "tied head" not in untied[0]
    assert [float(line.split()[2]) for line in untied if line.startswith(Role.READOUT.value + " ")] == [0.5]
