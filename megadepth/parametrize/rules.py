"""The rules of SP / muP / Depth-muP / CompleteP / custom (alpha, gamma): the one place that knows them.

Notation of PARAMETRIZATIONS.md: m = width / base_width, r = depth / base_depth, base hyperparameters
eta (LR), sigma (init std), eps, lambda (weight decay), a (branch multiplier), alpha_in, alpha_out,
alpha_attn. At m = r = 1 every preset gives identical numbers: that is what makes "tune at the base,
then scale" exact, and tests/test_parametrize.py checks it.

A preset is three things: whether width scaling (muP) is on, the branch exponent alpha and the LR
depth exponent gamma. SP is (off, 0, 0), muP (on, 0, 0), Depth-muP (on, 1/2, 1/2), CompleteP (on, 1, 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from megadepth.config.schema import ModelConfig, OptimizerConfig, ParametrizationConfig
from megadepth.parametrize.roles import Role

PRESET_EXPONENTS: dict[str, tuple[bool, float, float]] = {
    "sp": (False, 0.0, 0.0),
    "mup": (True, 0.0, 0.0),
    "depth_mup": (True, 0.5, 0.5),
    "completep": (True, 1.0, 0.0),
}


@dataclass(frozen=True)
class RoleRule:
    """Per-role numbers, all absolute except the multipliers (relative to the base eta, eps, lambda)."""

    init_std: float
    """Std of the normal init; 0 means 'constant init_value'."""
    init_value: float
    """Constant init (LayerNorm gains 1, biases 0) when init_std is 0."""
    lr_mult: float
    eps_mult: float
    wd_mult: float


@dataclass(frozen=True)
class Multipliers:
    """Forward-pass numbers the model multiplies by; plain floats, so model code knows no rules."""

    embedding: float
    """Multiplies the (token + position) embedding: alpha_in."""
    branch: float
    """Multiplies every residual branch's output: a * r^-alpha."""
    readout: float
    """Multiplies the final hidden state before the LM head: alpha_out / m under muP."""
    attn_scale: float
    """Softmax scale of attention logits."""


@dataclass(frozen=True)
class Parametrization:
    """A resolved parametrization for one model shape."""

    name: str
    width_scaling: bool
    alpha: float
    gamma: float
    m: float
    r: float
    depth: int
    base_depth: int
    head_dim: int
    base_head_dim: float
    cfg: ParametrizationConfig

    @classmethod
    def from_config(cls, model: ModelConfig, cfg: ParametrizationConfig) -> Parametrization:
        if cfg.name == "custom":
            width_scaling, alpha, gamma = True, float(cfg.alpha), float(cfg.gamma)  # type: ignore[arg-type]
        else:
            width_scaling, alpha, gamma = PRESET_EXPONENTS[cfg.name]
        base_width = model.base_width or model.width
        base_depth = model.base_depth or model.depth
        return cls(
            name=cfg.name,
            width_scaling=width_scaling,
            alpha=alpha,
            gamma=gamma,
            m=model.width / base_width,
            r=model.depth / base_depth,
            depth=model.depth,
            base_depth=base_depth,
            head_dim=model.head_dim,
            base_head_dim=float(cfg.base_head_dim or base_width / model.heads),
            cfg=cfg,
        )

    # ---- forward multipliers -------------------------------------------------------------------
    def multipliers(self) -> Multipliers:
        c = self.cfg
        if self.width_scaling:
            attn_scale = c.attn_multiplier * math.sqrt(self.base_head_dim) / self.head_dim
            readout = c.output_multiplier / self.m
        else:
            attn_scale = c.attn_multiplier / math.sqrt(self.head_dim)
            readout = c.output_multiplier
        return Multipliers(
            embedding=c.input_multiplier,
            branch=c.branch_multiplier * self.r**-self.alpha,
            readout=readout,
            attn_scale=attn_scale,
        )

    # ---- per-role rules ------------------------------------------------------------------------
    def rule(self, role: Role) -> RoleRule:
        c, m, r = self.cfg, self.m, self.r
        w = m if self.width_scaling else 1.0  # width factor of hidden matrices
        scaled_eps = c.eps_scaling == "scaled"
        # eps follows the size of the gradients: 1/m for width-scaled groups, r^-alpha inside branches
        eps_width = (1.0 / w) if scaled_eps else 1.0
        eps_branch = eps_width * (r**-self.alpha if scaled_eps else 1.0)
        depth_lr = r**-self.gamma
        depth_wd = r ** (1.0 - self.alpha) if c.wd_depth_scaling == "one_minus_alpha" else 1.0
        sigma = c.init_std

        if role.is_hidden_matrix:
            std = sigma / math.sqrt(w)
            if role is Role.OUTPUT_PROJ:
                # GPT-2's 1/sqrt(2L); frozen at the base depth when depth is parametrized, so depth is
                # not counted twice (the branch multiplier already does that job)
                std /= math.sqrt(2 * (self.base_depth if self.width_scaling else self.depth))
            if role is Role.QUERY and c.zero_query:
                std = 0.0
            return RoleRule(std, 0.0, depth_lr / w, eps_branch, w * depth_wd)
        if role in (Role.BRANCH_GAIN, Role.BRANCH_BIAS):
            return RoleRule(0.0, 1.0 if role is Role.BRANCH_GAIN else 0.0, depth_lr, eps_branch, 0.0)
        if role in (Role.FINAL_GAIN, Role.FINAL_BIAS):
            return RoleRule(0.0, 1.0 if role is Role.FINAL_GAIN else 0.0, 1.0, eps_width, 0.0)
        if role in (Role.EMBEDDING, Role.POSITION):
            return RoleRule(sigma, 0.0, 1.0, eps_width, 1.0)
        if role is Role.READOUT:
            return RoleRule(0.0 if c.zero_readout else sigma, 0.0, 1.0, eps_width, 1.0)
        raise ValueError(f"no rule for role {role!r}")

    def describe(self, optimizer: OptimizerConfig, roles: list[Role] | None = None) -> list[dict]:
        """Absolute per-role settings (init std, LR, eps, WD) plus the multipliers: what a user got."""
        rows = []
        for role in roles or list(Role):
            rule = self.rule(role)
            rows.append(
                {
                    "role": role.value,
                    "init": f"{rule.init_std:.4g}" if rule.init_std else f"const {rule.init_value:g}",
                    "lr": optimizer.lr * rule.lr_mult,
                    "eps": optimizer.eps * rule.eps_mult,
                    "weight_decay": optimizer.weight_decay * rule.wd_mult,
                }
            )
        return rows

    def summary(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "cfg"}
        out["multipliers"] = asdict(self.multipliers())
        return out

    def format_table(self, optimizer: OptimizerConfig, roles: list[Role] | None = None) -> str:
        mult = self.multipliers()
        head = (
            f"parametrization {self.name}: m = {self.m:g}, r = {self.r:g}, alpha = {self.alpha:g}, "
            f"gamma = {self.gamma:g}; multipliers: embedding {mult.embedding:.4g}, branch {mult.branch:.4g}, "
            f"readout {mult.readout:.4g}, attention {mult.attn_scale:.4g}"
        )
        lines = [head, f"{'role':<12} {'init std':>12} {'lr':>11} {'eps':>11} {'wd':>11}"]
        for row in self.describe(optimizer, roles):
            lines.append(
                f"{row['role']:<12} {row['init']:>12} {row['lr']:>11.4g} {row['eps']:>11.4g} "
                f"{row['weight_decay']:>11.4g}"
            )
        return "\n".join(lines)
