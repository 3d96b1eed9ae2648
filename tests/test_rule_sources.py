"""Every rule choice that differs between the references, or is megadepth's own, pinned with numbers worked
out by hand (docs/parametrizations.md, "Rule sources"): m = 4 (width 128 over 32), r = 4 (depth 8 over 2),
eta = 0.01, eps = 1e-8, lambda = 0.1, sigma = 0.02."""

from __future__ import annotations

from pathlib import Path

import pytest

from megadepth.common.errors import ConfigError
from megadepth.config import explain, validate
from megadepth.parametrize import Parametrization, Role, checks
from megadepth.parametrize.checks import check_parametrization

ETA, EPS, WD, SIGMA = 0.01, 1e-8, 0.1, 0.02
DOCS = Path(__file__).resolve().parents[1] / "docs" / "parametrizations.md"


def make(preset: str = "completep", optimizer: str = "adamw", width: int = 128, depth: int = 8,
         **ptz: object) -> tuple:
    sections = {"name": preset, "init_std": SIGMA, **ptz}
    if preset == "custom":
        sections.setdefault("alpha", 0.75)
        sections.setdefault("gamma", 0.25)
    cfg = validate({
        "model": {"width": width, "depth": depth, "heads": 4, "base_width": 32, "base_heads": 4,
                  "base_depth": 2, "seq_len": 16, "vocab_size": 64, "tie_embeddings": False},
        "parametrization": sections,
        "optimizer": {"name": optimizer, "lr": ETA, "eps": EPS, "weight_decay": WD},
    })
    return cfg, Parametrization.from_config(cfg.model, cfg.parametrization, optimizer=optimizer)


def numbers(ptz: Parametrization, role: Role) -> tuple[float, float, float]:
    rule = ptz.rule(role)
    return ETA * rule.lr_mult, EPS * rule.eps_mult, WD * rule.wd_mult


# ---- (a) output-projection init ------------------------------------------------------------------------
@pytest.mark.parametrize(("preset", "option", "std"), [
    ("completep", None, 0.02 / 2 / 2),          # sigma/sqrt(m)/sqrt(2 L0): 0.02/sqrt(4)/sqrt(4)
    ("depth_mup", "base_depth", 0.02 / 2 / 2),
    ("completep", "none", 0.02 / 2),           # CompleteP Table 1 / reference code: sigma/sqrt(m)
    ("mup", None, 0.02 / 2 / 4),                # GPT-2 at its own depth: sigma/sqrt(m)/sqrt(2 x 8)
    ("mup", "none", 0.02 / 2),
    ("sp", "none", 0.02),
])
def test_output_projection_init(preset: str, option: str | None, std: float) -> None:
    extra = {} if option is None else {"output_proj_init": option}
    cfg, ptz = make(preset, **extra)
    check_parametrization(cfg)
    assert ptz.rule(Role.OUTPUT_PROJ).init_std == pytest.approx(std, rel=1e-12)
    assert ptz.rule(Role.HIDDEN).init_std == pytest.approx(0.02 / (2 if preset != "sp" else 1), rel=1e-12)
    table = ptz.format_table(cfg.optimizer, list(Role))
    assert "output_proj init sigma/sqrt(m)" in table and f"= {std:.4g}" in table
    assert "[parametrization.output_proj_init]" in table


@pytest.mark.parametrize(("preset", "option", "message"), [
    ("completep", "gpt2", "would count depth twice"),
    ("depth_mup", "gpt2", "would count depth twice"),
    ("mup", "base_depth", "does not parametrize depth"),
    ("sp", "base_depth", "does not parametrize depth"),
])
def test_output_projection_init_refused(preset: str, option: str, message: str) -> None:
    cfg, _ = make(preset, output_proj_init=option)
    with pytest.raises(ConfigError, match=message):
        check_parametrization(cfg)


# ---- (b) Adam eps --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("preset", "option", "outside", "inside"), [
    # default of the depth presets: CompleteP's reference code, eps/(m r^alpha) in every group
    ("completep", None, 1e-8 / 16, 1e-8 / 16),
    ("depth_mup", None, 1e-8 / 8, 1e-8 / 8),
    ("custom", None, 1e-8 / 4 / 4**0.75, 1e-8 / 4 / 4**0.75),
    # default of mup: the mup package leaves eps alone
    ("mup", None, 1e-8, 1e-8),
    # CompleteP's Table 1 as printed: residual blocks only
    ("completep", "residual_blocks", 1e-8, 1e-8 / 16),
    ("mup", "residual_blocks", 1e-8, 1e-8 / 4),
    # the gradients' size: eps/m everywhere, r^-alpha in branches (megadepth's former 'scaled')
    ("completep", "gradient", 1e-8 / 4, 1e-8 / 16),
    ("completep", "scaled", 1e-8 / 4, 1e-8 / 16),
    ("completep", "constant", 1e-8, 1e-8),
])
def test_adam_eps(preset: str, option: str | None, outside: float, inside: float) -> None:
    cfg, ptz = make(preset, **({} if option is None else {"eps_scaling": option}))
    source = {"all_groups": "CompleteP's reference code", "residual_blocks": "(CompleteP Table 1)",
              "gradient": "Everett et al.", "scaled": "Everett et al.", "constant": "the mup package's MuAdam",
              None: "CompleteP's reference code" if preset != "mup" else "the mup package's MuAdam"}[option]
    eps_line = [line for line in ptz.format_table(cfg.optimizer, list(Role)).splitlines() if "adam eps" in line]
    assert len(eps_line) == 1 and source in eps_line[0] and "[parametrization.eps_scaling]" in eps_line[0]
    for role in (Role.EMBEDDING, Role.POSITION, Role.FINAL_GAIN, Role.FINAL_BIAS, Role.READOUT):
        assert numbers(ptz, role)[1] == pytest.approx(outside, rel=1e-12), role
    for role in (Role.QUERY, Role.HIDDEN, Role.OUTPUT_PROJ, Role.BRANCH_GAIN, Role.BRANCH_BIAS):
        assert numbers(ptz, role)[1] == pytest.approx(inside, rel=1e-12), role


def test_eps_scaling_with_sgd_is_refused() -> None:
    cfg, _ = make("depth_mup", "sgd", eps_scaling="gradient")
    with pytest.raises(ConfigError, match="eps_scaling has no effect with optimizer.name: sgd"):
        check_parametrization(cfg)


# ---- (c) CompleteP with SGD ----------------------------------------------------------------------------
def test_completep_with_sgd_warns_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(checks, "_warned", set(), raising=False)
    monkeypatch.delenv("RANK", raising=False)
    cfg, ptz = make("completep", "sgd")
    check_parametrization(cfg)
    check_parametrization(cfg)
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1
    assert "completep with optimizer.name: sgd has no published source" in err
    assert "in-branch LR x r" in err
    assert ptz.gamma == -1.0  # still what it runs: in-branch LR eta x r = 0.04 for a hidden matrix
    assert numbers(ptz, Role.HIDDEN)[0] == pytest.approx(0.04, rel=1e-12)
    assert "UNSOURCED" in ptz.format_table(cfg.optimizer, list(Role))
    for preset in ("depth_mup", "mup", "sp"):  # SGD rules with a source: no warning
        check_parametrization(make(preset, "sgd")[0])
    check_parametrization(make("completep", "adamw")[0])
    assert capsys.readouterr().err == ""


# ---- (d, e) weight decay: the decay per step does not depend on width or depth ---------------------------
def decay_per_step(ptz: Parametrization, role: Role) -> float:
    """AdamW and SGD shrink a weight by lr x wd per step; Adam with L2 in the gradient by lr x wd / |g|,
    |g| the gradient entries' size: 1/m under width scaling, times r^-alpha inside branches (hand-derived:
    the 1/m readout multiplier and the r^-alpha branch multiplier scale the backward pass)."""
    lr, _, wd = numbers(ptz, role)
    if ptz.optimizer != "adam":
        return lr * wd
    grad = 1 / ptz.m * (ptz.r**-ptz.alpha if role.in_branch else 1.0)
    return lr * wd / grad


@pytest.mark.parametrize(("preset", "optimizer", "hidden", "embedding"), [
    # (lr, wd) of a hidden matrix and of the embedding at m = 4, r = 4, wd_depth_scaling: invariant
    ("completep", "adamw", (0.0025, 0.4), (0.01, 0.1)),           # gamma 0: lambda x m
    ("depth_mup", "adamw", (0.00125, 0.8), (0.01, 0.1)),          # lr eta/(m r^1/2), wd lambda m r^1/2
    ("depth_mup", "sgd", (0.01, 0.1), (0.04, 0.025)),             # gamma 0: no depth factor (was lambda r^1/2)
    ("completep", "sgd", (0.04, 0.025), (0.04, 0.025)),           # gamma -1: lr eta r, wd lambda / r
    ("completep", "adam", (0.0025, 0.025), (0.01, 0.025)),        # L2: lambda r^(gamma-alpha) = lambda/4
    ("depth_mup", "adam", (0.00125, 0.1), (0.01, 0.025)),         # r^(1/2 - 1/2) = 1
    ("mup", "adam", (0.0025, 0.1), (0.01, 0.025)),                # width only: hidden lambda, vectors lambda/m
])
def test_weight_decay_invariant(preset: str, optimizer: str, hidden: tuple, embedding: tuple) -> None:
    # 'one_minus_alpha' is the older spelling of 'invariant' (same numbers with Adam, fixed with SGD)
    _, ptz = make(preset, optimizer, wd_depth_scaling="one_minus_alpha")
    assert numbers(ptz, Role.HIDDEN)[0::2] == pytest.approx(hidden, rel=1e-12)
    assert numbers(ptz, Role.EMBEDDING)[0::2] == pytest.approx(embedding, rel=1e-12)
    _, base = make(preset, optimizer, width=32, depth=2, wd_depth_scaling="invariant")
    for role in (Role.QUERY, Role.HIDDEN, Role.OUTPUT_PROJ, Role.EMBEDDING, Role.POSITION, Role.READOUT):
        assert decay_per_step(base, role) == pytest.approx(ETA * WD, rel=1e-12)
        assert decay_per_step(ptz, role) == pytest.approx(ETA * WD, rel=1e-12), role  # 1e-3 at every shape


@pytest.mark.parametrize(("optimizer", "hidden_wd", "embedding_wd", "source"), [
    ("adamw", 0.4, 0.1, "mup MuAdamW"),  # lambda x m: lr x wd fixed (CompleteP Table 1)
    ("adam", 0.1, 0.025, "derived, docs/parametrizations.md"),  # L2 through Adam: lr x wd / |g| fixed
    ("sgd", 0.1, 0.025, "mup.MuSGD"),  # vectors lr eta m, wd lambda/m
])
def test_weight_decay_width_rule(optimizer: str, hidden_wd: float, embedding_wd: float, source: str) -> None:
    """wd_depth_scaling: none (the default and CompleteP's): only the width rule acts, and the table says
    which rule and where it comes from."""
    cfg, ptz = make("mup", optimizer)
    assert source in ptz.format_table(cfg.optimizer, list(Role))
    assert numbers(ptz, Role.HIDDEN)[2] == pytest.approx(hidden_wd, rel=1e-12)
    assert numbers(ptz, Role.READOUT)[2] == pytest.approx(embedding_wd, rel=1e-12)
    assert numbers(ptz, Role.EMBEDDING)[2] == pytest.approx(embedding_wd, rel=1e-12)


def test_adam_weight_decay_like_the_mup_package() -> None:
    """adam_wd_scaling: lr_inverse is MuAdam's lambda x m for Adam too (its decay per step then grows like m)."""
    cfg, ptz = make("mup", "adam", adam_wd_scaling="lr_inverse")
    check_parametrization(cfg)
    assert numbers(ptz, Role.HIDDEN)[2] == pytest.approx(0.4, rel=1e-12)
    assert numbers(ptz, Role.EMBEDDING)[2] == pytest.approx(0.1, rel=1e-12)
    assert decay_per_step(ptz, Role.HIDDEN) == pytest.approx(4 * ETA * WD, rel=1e-12)
    for optimizer in ("adamw", "sgd"):
        with pytest.raises(ConfigError, match="adam_wd_scaling has no effect"):
            check_parametrization(make("mup", optimizer, adam_wd_scaling="effective_decay")[0])


# ---- SGD readout ---------------------------------------------------------------------------------------
def test_sgd_readout_lr_is_eta_times_m() -> None:
    """Tensor Programs V's SGD readout (logits = W_A x, init variance 1/m^2, LR eta/m) is ours (logits =
    (1/m) W x, constant init variance) with W = m W_A: the gradient g_W = g_A / m, so an SGD step with LR
    lr moves W_A = W/m by lr g_A / m^2, which is (eta/m) g_A when lr = eta m (mup.MuSGD: eta x m)."""
    cfg, ptz = make("mup", "sgd")
    assert numbers(ptz, Role.READOUT)[0] == pytest.approx(0.04, rel=1e-12)
    assert numbers(ptz, Role.READOUT)[2] == pytest.approx(0.025, rel=1e-12)
    assert "lr eta x m" in ptz.format_table(cfg.optimizer, list(Role))


# ---- every preset at the base shape is SP, whatever the rule options -------------------------------------
@pytest.mark.parametrize("optimizer", ["adamw", "adam"])
@pytest.mark.parametrize("eps_scaling", ["all_groups", "residual_blocks", "gradient", "constant"])
def test_rule_options_change_nothing_at_the_base_shape(optimizer: str, eps_scaling: str) -> None:
    _, sp = make("sp", optimizer, width=32, depth=2)
    for preset in ("mup", "depth_mup", "completep", "custom"):
        _, ptz = make(preset, optimizer, width=32, depth=2, eps_scaling=eps_scaling,
                      wd_depth_scaling="invariant")
        for role in Role:
            assert ptz.rule(role) == sp.rule(role), (preset, role)


# ---- every option is documented ------------------------------------------------------------------------
def test_rule_options_are_documented() -> None:
    docs = DOCS.read_text()
    table = docs[docs.index("## Rule sources"):]
    keys = {key for key, _, _ in explain()}
    for option in ("eps_scaling", "output_proj_init", "wd_depth_scaling", "adam_wd_scaling"):
        assert f"parametrization.{option}" in keys
        assert f"`{option}" in table, option


# ---- the QK-norm gain's printed rule cites a section that exists ---------------------------------------------
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_qk_gain_rule_line_cites_its_section(optimizer: str) -> None:
    """The `rule: qk_gain` line names docs/parametrizations.md's section; that section gives the same rule, and
    the roles table lists the Llama block's parameters with their roles."""
    import re

    cfg, ptz = make("mup", optimizer)
    line = ptz.format_table(cfg.optimizer, list(Role)).splitlines()[-1]
    assert line.startswith("rule: qk_gain:"), line
    (section,) = re.findall(r'docs/parametrizations\.md, "([^"]+)"', line)
    docs = DOCS.read_text()
    assert f"\n### {section}\n" in docs, section
    text = docs[docs.index(f"### {section}"):]
    text = text[:text.index("\n## ")]
    assert "width-constant" in text and "eta x d_head/d_head0" in text and "shared by every head" in text
    assert ("width-constant" in line) is (optimizer == "adamw")
    table = docs[docs.index("## The Llama block"):]
    for name, role in (("mlp.gate.weight", "hidden"), ("mlp.down.weight", "output_proj"),
                       ("attn.key_value.weight", "hidden"), ("attn_norm.weight", "branch_gain"),
                       ("head.norm.weight", "final_gain"), ("q_norm.weight", "qk_gain")):
        row = next(r for r in table.splitlines() if name in r)
        assert f"| {role} |" in row, row
