"""The rules of SP / muP / Depth-muP / CompleteP / custom (alpha, gamma): the one place that knows them.

Notation of docs/parametrizations.md: m = width / base_width, r = depth / base_depth, base hyperparameters
eta (LR), sigma (init std), eps, lambda (weight decay), a (branch multiplier), alpha_in, alpha_out,
alpha_attn. At m = r = 1 every preset gives identical numbers: that is what makes "tune at the base,
then scale" exact, and tests/test_parametrize.py checks it.

A preset is two things: whether width scaling (muP) is on, and the branch exponent alpha. The LR depth
exponent gamma follows from alpha and the optimizer family: 1 - alpha for Adam(W), 1 - 2 alpha for SGD
(each block's per-step feature update stays of order 1/L). SP is (off, 0), muP (on, 0), Depth-muP
(on, 1/2: gamma 1/2 with Adam, 0 with SGD), CompleteP (on, 1: gamma 0 with Adam).

The optimizer family matters for width too: Adam normalises gradients entry-wise, so hidden matrices get
LR eta/m; SGD does not, so vector-like parameters (embeddings, biases, gains, and the readout behind its
1/m multiplier) get LR eta*m and hidden matrices keep eta (the `mup` package's MuAdam / MuSGD). Weight
decay is scaled inversely to the width factor of the LR, so lr x wd does not depend on width.

The width-scaled attention scale alpha_attn * sqrt(d_head0) / d_head needs the base shape's head size
d_head0 = base_width / base_heads: width grown by more heads and width grown by wider heads are different
models, and a config away from its base width must say which (:func:`base_head_problem`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from megadepth.config.schema import ModelConfig, OptimizerConfig, ParametrizationConfig
from megadepth.parametrize.roles import Role

PRESETS: dict[str, tuple[bool, float]] = {
    "sp": (False, 0.0),
    "mup": (True, 0.0),
    "depth_mup": (True, 0.5),
    "completep": (True, 1.0),
}
ADAM_FAMILY = ("adam", "adamw")
SGD_FAMILY = ("sgd",)


def scales_depth(name: str) -> bool:
    """Whether a preset parametrizes depth: all but SP and muP (r := 1 in every rule for those two)."""
    return name not in ("sp", "mup")


def scales_width(name: str) -> bool:
    """Whether a preset parametrizes width: all but SP."""
    return name == "custom" or PRESETS[name][0]


def attention_scales_with_base(name: str) -> bool:
    """Whether a preset's attention scale depends on the base head size: every width-scaled preset
    (attn_multiplier * sqrt(base head size) / head size); SP's is attn_multiplier / sqrt(head size)."""
    return scales_width(name)


def resolve_base_head_dim(model: ModelConfig, cfg: ParametrizationConfig) -> float:
    """The head size of the base shape, base_width / base_heads, from model.base_heads or its older spelling
    parametrization.base_head_dim (a ValueError when both are given and disagree).

    With neither, base_width / heads: this model's own head size at its base width; away from it, what
    configs written before model.base_heads meant (heads fixed, head size grown), kept so the runs trained
    then still resolve to the attention scale they trained with. Start-up refuses that case for new runs
    (:func:`base_head_problem`): the config does not say whether heads or head size grew."""
    base_width = model.base_width or model.width
    if model.base_heads is not None:
        size = base_width / model.base_heads
        if cfg.base_head_dim is not None and cfg.base_head_dim != size:
            raise ValueError(_disagreement(model, cfg))
        return size
    if cfg.base_head_dim is not None:
        return float(cfg.base_head_dim)
    return base_width / model.heads


def _disagreement(model: ModelConfig, cfg: ParametrizationConfig) -> str:
    base_width, heads = model.base_width or model.width, model.base_heads
    return (
        f"model.base_heads ({heads}) and parametrization.base_head_dim ({cfg.base_head_dim}) disagree: "
        f"model.base_width {base_width} / {heads} heads is head size {base_width // heads}; "
        "drop parametrization.base_head_dim (model.base_heads says the same)"
    )


def base_head_problem(model: ModelConfig, cfg: ParametrizationConfig) -> str | None:
    """Why the base head size cannot be trusted (one line naming the keys and the fix), or None.

    model.base_heads and parametrization.base_head_dim must agree and give a whole number of base heads,
    under any preset (a contradiction is refused even where it changes nothing). Only the width-scaled
    presets' attention scale depends on the base head size, and only a transformer has attention: for
    them, away from the base width (m != 1), the config must say how the width grew. More heads at a fixed
    head size and wider heads at a fixed head count give attention scales that differ by a factor sqrt(m),
    and nothing else in the config tells them apart."""
    if model.block != "transformer":
        return None  # no attention (the linear block's own check names base_head_dim as having no effect)
    base_width = model.base_width or model.width
    if cfg.base_head_dim is not None:
        if model.base_heads is not None and cfg.base_head_dim * model.base_heads != base_width:
            return _disagreement(model, cfg)
        if base_width % cfg.base_head_dim:
            return (
                f"parametrization.base_head_dim ({cfg.base_head_dim}) does not divide model.base_width "
                f"({base_width}): the base shape would have a fractional number of heads; set "
                "model.base_heads (the base shape's head count) instead"
            )
        if base_width == model.width and cfg.base_head_dim != model.head_dim:
            # as model.base_heads at the base width (the schema's check): this model is its own base shape
            base = "is unset" if model.base_width is None else f"equals model.width ({model.width})"
            return (
                f"parametrization.base_head_dim ({cfg.base_head_dim}) differs from the head size "
                f"({model.head_dim}) but model.base_width {base}, so this model is its own base shape: set "
                "model.base_width to the width tuned at, or drop parametrization.base_head_dim"
            )
        return None
    if model.base_heads is not None or base_width == model.width or not attention_scales_with_base(cfg.name):
        return None
    heads, size = model.heads, model.head_dim
    choices = []
    if base_width % size == 0:
        choices.append(f"{base_width // size} (heads grew, head size {size} fixed)")
    if base_width % heads == 0:
        choices.append(f"{heads} (head size grew from {base_width // heads}, {heads} heads fixed)")
    fix = (f"set model.base_heads: {' or '.join(choices)}" if choices
           else f"set model.base_heads to the head count of the base shape (a divisor of {base_width})")
    return (
        f"the base head size is ambiguous: model.width grows from model.base_width {base_width} to "
        f"{model.width} ({heads} heads of {size}) under {cfg.name}, whose attention scale depends on "
        f"whether heads or head size grew; {fix}"
    )


def preset_gamma(name: str, alpha: float, optimizer: str) -> float:
    """gamma of a preset: none for SP and muP, 1 - alpha (Adam) or 1 - 2 alpha (SGD) otherwise."""
    if name in ("sp", "mup"):
        return 0.0
    if optimizer in ADAM_FAMILY:
        return 1.0 - alpha
    if optimizer in SGD_FAMILY:
        return 1.0 - 2.0 * alpha
    raise ValueError(f"no parametrization rule for optimizer '{optimizer}'")


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
    """Softmax scale of attention logits: alpha_attn / sqrt(d_head) under SP, alpha_attn * sqrt(d_head0) / d_head
    with width scaling (muP's 1/d_head, equal to SP's at the base shape)."""


@dataclass(frozen=True)
class Parametrization:
    """A resolved parametrization for one model shape."""

    name: str
    optimizer: str
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
    def from_config(cls, model: ModelConfig, cfg: ParametrizationConfig, *, optimizer: str) -> Parametrization:
        """Resolve for a model shape and an optimizer family (required: SGD and Adam differ)."""
        if optimizer not in ADAM_FAMILY + SGD_FAMILY:
            raise ValueError(f"no parametrization rule for optimizer '{optimizer}'")
        if cfg.name == "custom":
            width_scaling, alpha, gamma = True, float(cfg.alpha), float(cfg.gamma)  # type: ignore[arg-type]
        else:
            width_scaling, alpha = PRESETS[cfg.name]
            gamma = preset_gamma(cfg.name, alpha, optimizer)
        base_width = model.base_width or model.width
        base_depth = model.base_depth or model.depth
        return cls(
            name=cfg.name,
            optimizer=optimizer,
            width_scaling=width_scaling,
            alpha=alpha,
            gamma=gamma,
            m=model.width / base_width,
            r=model.depth / base_depth,
            depth=model.depth,
            base_depth=base_depth,
            head_dim=model.head_dim,
            base_head_dim=resolve_base_head_dim(model, cfg),
            cfg=cfg,
        )

    @property
    def depth_scaling(self) -> bool:
        """Whether depth is parametrized: every preset but SP and muP (for which r := 1 in every rule)."""
        return scales_depth(self.name)

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
        w = m if self.width_scaling else 1.0  # width multiplier, 1 when width is not parametrized
        depth_lr = r**-self.gamma if role.in_branch else 1.0
        # SP and muP do not parametrize depth (r := 1 for them, as for every other rule): the option
        # would otherwise turn into lambda * r for them, a weight decay that grows with depth
        depth_wd = (r ** (1.0 - self.alpha)
                    if c.wd_depth_scaling == "one_minus_alpha" and self.depth_scaling else 1.0)
        init_std, init_value = self._init(role, w)
        if self.optimizer in SGD_FAMILY:
            # vector-like parameters (one wide dimension) get eta * m, matrices eta; no eps in SGD
            lr_width = 1.0 if role.is_hidden_matrix else w
            return RoleRule(init_std, init_value, lr_width * depth_lr, 1.0, self._wd(role, lr_width, depth_wd))
        scaled_eps = c.eps_scaling == "scaled"
        # eps follows the size of the gradients: 1/m for width-scaled groups, r^-alpha inside branches
        eps = (1.0 / w if scaled_eps else 1.0) * (r**-self.alpha if scaled_eps and role.in_branch else 1.0)
        lr_width = 1.0 / w if role.is_hidden_matrix else 1.0
        return RoleRule(init_std, init_value, lr_width * depth_lr, eps, self._wd(role, lr_width, depth_wd))

    def _init(self, role: Role, w: float) -> tuple[float, float]:
        """(init std, constant init) of a role. Init does not depend on the optimizer, nor (except SP's
        GPT-2 factor) on depth: the branch multiplier does that job."""
        c = self.cfg
        if role.is_hidden_matrix:
            std = c.init_std / math.sqrt(w)
            if role is Role.OUTPUT_PROJ:
                # GPT-2's 1/sqrt(2L), frozen at the base depth when depth is parametrized (not counted twice)
                # (muP scales width only: like SP it keeps the factor at its own depth, so base_depth,
                # which muP otherwise ignores, never changes its model)
                std /= math.sqrt(2 * (self.base_depth if self.depth_scaling else self.depth))
            if role is Role.QUERY and c.zero_query:
                std = 0.0
            return std, 0.0
        if role in (Role.BRANCH_GAIN, Role.FINAL_GAIN):
            return 0.0, 1.0
        if role in (Role.BRANCH_BIAS, Role.FINAL_BIAS):
            return 0.0, 0.0
        if role is Role.READOUT and c.zero_readout:
            return 0.0, 0.0
        return c.init_std, 0.0  # embedding, position, readout

    @staticmethod
    def _wd(role: Role, lr_width: float, depth_wd: float) -> float:
        """Weight decay multiplier: none for gains and biases; inverse to the LR's width factor, so that
        lr x wd (the decay per step) is width-independent; optional depth factor for hidden matrices."""
        if role in (Role.BRANCH_GAIN, Role.BRANCH_BIAS, Role.FINAL_GAIN, Role.FINAL_BIAS):
            return 0.0
        return (1.0 / lr_width) * (depth_wd if role.is_hidden_matrix else 1.0)

    def forward_multiplier(self, role: Role) -> float:
        """The forward multiplier acting on a role's output (for the start-up table)."""
        mult = self.multipliers()
        if role.in_branch:
            return mult.branch
        if role in (Role.EMBEDDING, Role.POSITION):
            return mult.embedding
        if role is Role.READOUT:
            return mult.readout
        return 1.0

    def describe(self, optimizer: OptimizerConfig, roles: list[Role] | None = None) -> list[dict]:
        """Absolute per-role settings (init, forward multiplier, LR, eps, WD): what a user got."""
        rows = []
        for role in roles or list(Role):
            rule = self.rule(role)
            rows.append(
                {
                    "role": role.value,
                    "init": f"{rule.init_std:.4g}" if rule.init_std else f"const {rule.init_value:g}",
                    "multiplier": self.forward_multiplier(role),
                    "lr": optimizer.lr * rule.lr_mult,
                    "eps": optimizer.eps * rule.eps_mult if self.optimizer in ADAM_FAMILY else None,
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
            f"parametrization {self.name} ({self.optimizer}): m = {self.m:g}, r = {self.r:g}, "
            f"alpha = {self.alpha:g}, gamma = {self.gamma:g}; attention scale {mult.attn_scale:.4g}"
        )
        if self.width_scaling:  # the base head size it came from: which way the width grew, made visible
            head += f" (head size {self.head_dim}, base {self.base_head_dim:g})"
        if roles is not None and Role.READOUT not in roles:
            # tied embeddings: no readout row, but the head still multiplies the final hidden state
            head += f"; readout multiplier {mult.readout:.4g} (tied head)"
        lines = [head, f"{'role':<12} {'init std':>10} {'fwd mult':>9} {'lr':>11} {'eps':>11} {'wd':>11}"]
        for row in self.describe(optimizer, roles):
            eps = f"{row['eps']:>11.4g}" if row["eps"] is not None else f"{'-':>11}"
            lines.append(
                f"{row['role']:<12} {row['init']:>10} {row['multiplier']:>9.4g} {row['lr']:>11.4g} {eps} "
                f"{row['weight_decay']:>11.4g}"
            )
        return "\n".join(lines)
