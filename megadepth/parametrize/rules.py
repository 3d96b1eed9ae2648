"""The rules of SP / muP / Depth-muP / CompleteP / custom (alpha, gamma): the one place that knows them.

Notation of docs/parametrizations.md: m = width / base_width, r = depth / base_depth, base hyperparameters
eta (LR), sigma (init std), eps, lambda (weight decay), a (branch multiplier), alpha_in, alpha_out,
alpha_attn. At m = r = 1 every preset gives identical numbers: that is what makes "tune at the base,
then scale" exact, and tests/test_parametrize.py checks it.

A preset is two things: whether width scaling (muP) is on, and the branch exponent alpha. The LR depth
exponent gamma follows from alpha and the optimizer family: 1 - alpha for Adam(W), 1 - 2 alpha for SGD
(each block's per-step feature update stays of order 1/L). SP is (off, 0), muP (on, 0), Depth-muP
(on, 1/2: gamma 1/2 with Adam, 0 with SGD), CompleteP (on, 1: gamma 0 with Adam).

The optimizer family matters for width too (:meth:`Parametrization.rule`, :meth:`Parametrization._wd`).
Where the references differ, or a rule is megadepth's own, the choice is an option of
ParametrizationConfig whose unset value means the preset's reference, and :meth:`Parametrization.sources`
says which rule is in effect and where it comes from (printed under the per-role table).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from megadepth.config.schema import ModelConfig, OptimizerConfig, ParametrizationConfig
from megadepth.parametrize.roles import Role

PRESETS: dict[str, tuple[bool, float]] = {"sp": (False, 0.0), "mup": (True, 0.0), "depth_mup": (True, 0.5),
                                          "completep": (True, 1.0)}
ADAM_FAMILY = ("adam", "adamw")
SGD_FAMILY = ("sgd",)
MUON_FAMILY = ("muon",)
"""Muon for hidden matrices, AdamW (with AdamW's rules) for every other role: see :meth:`Parametrization.family`."""


def scales_depth(name: str) -> bool:
    """Whether a preset parametrizes depth: all but SP and muP (r := 1 in every rule for those two)."""
    return name not in ("sp", "mup")


def scales_width(name: str) -> bool:
    """Whether a preset parametrizes width: all but SP. Their attention scale depends on the base head size
    (attn_multiplier * sqrt(base head size) / head size); SP's is attn_multiplier / sqrt(head size)."""
    return name == "custom" or PRESETS[name][0]


def resolve_base_head_dim(model: ModelConfig, cfg: ParametrizationConfig) -> float:
    """The head size of the base shape, base_width / base_heads, from model.base_heads or its older spelling
    parametrization.base_head_dim (a ValueError when both are given and disagree). With neither,
    base_width / heads (heads fixed), what configs written before model.base_heads meant: start-up refuses
    that case for new runs away from the base width (:func:`base_head_problem`)."""
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
    return (f"model.base_heads ({heads}) and parametrization.base_head_dim ({cfg.base_head_dim}) disagree: "
            f"model.base_width {base_width} / {heads} heads is head size {base_width // heads}; drop "
            "parametrization.base_head_dim (model.base_heads says the same)")


def base_head_problem(model: ModelConfig, cfg: ParametrizationConfig) -> str | None:
    """Why the base head size cannot be trusted (one line naming the keys and the fix), or None.

    model.base_heads and parametrization.base_head_dim must agree and give a whole number of base heads,
    under any preset. Away from the base width (m != 1), a width-scaled transformer's config must say how
    the width grew: more heads at a fixed head size and wider heads at a fixed head count give attention
    scales that differ by a factor sqrt(m)."""
    if model.block != "transformer":
        return None  # no attention (the linear block's own check names base_head_dim as having no effect)
    base_width = model.base_width or model.width
    if cfg.base_head_dim is not None:
        if model.base_heads is not None and cfg.base_head_dim * model.base_heads != base_width:
            return _disagreement(model, cfg)
        if base_width % cfg.base_head_dim:
            return (f"parametrization.base_head_dim ({cfg.base_head_dim}) does not divide model.base_width "
                    f"({base_width}): the base shape would have a fractional number of heads; set "
                    "model.base_heads (the base shape's head count) instead")
        if base_width == model.width and cfg.base_head_dim != model.head_dim:
            # as model.base_heads at the base width (the schema's check): this model is its own base shape
            base = "is unset" if model.base_width is None else f"equals model.width ({model.width})"
            return (f"parametrization.base_head_dim ({cfg.base_head_dim}) differs from the head size "
                    f"({model.head_dim}) but model.base_width {base}, so this model is its own base shape: "
                    "set model.base_width to the width tuned at, or drop parametrization.base_head_dim")
        return None
    if model.base_heads is not None or base_width == model.width or not scales_width(cfg.name):
        return None
    heads, size = model.heads, model.head_dim
    choices = []
    if base_width % size == 0:
        choices.append(f"{base_width // size} (heads grew, head size {size} fixed)")
    if base_width % heads == 0:
        choices.append(f"{heads} (head size grew from {base_width // heads}, {heads} heads fixed)")
    fix = (f"set model.base_heads: {' or '.join(choices)}" if choices
           else f"set model.base_heads to the head count of the base shape (a divisor of {base_width})")
    if base_width % heads == 0:  # what configs from before model.base_heads resolved to: heads fixed
        fix += f"; a run started before model.base_heads existed trained with model.base_heads: {heads}"
    return (f"the base head size is ambiguous: model.width grows from model.base_width {base_width} to "
            f"{model.width} ({heads} heads of {size}) under {cfg.name}, whose attention scale depends on "
            f"whether heads or head size grew; {fix}")


def kv_heads_problem(model: ModelConfig, cfg: ParametrizationConfig) -> str | None:
    """Why grouped-query attention cannot be width-scaled as configured (one line), or None.

    Width scaling treats the key/value projection as a hidden matrix, whose fan-out (kv_heads x head size)
    must grow like the width. That holds exactly when the group size (query heads per key/value head) is the
    base shape's: base_heads / base_kv_heads = heads / kv_heads. A fixed kv_heads while the heads grow (as
    Llama's 8 at every size) gives K/V a fixed fan-out, for which muP has no hidden-matrix rule: refused. The
    base shape's key/value heads must be said (model.base_kv_heads), as its heads must (model.base_heads)."""
    if model.block != "transformer" or not scales_width(cfg.name):
        return None
    base_width = model.base_width or model.width
    if base_width == model.width or (model.n_kv_heads == model.heads and model.base_kv_heads is None):
        return None
    group = model.heads // model.n_kv_heads
    base_heads = round(base_width / resolve_base_head_dim(model, cfg))
    base_kv = model.base_kv_heads
    if base_kv is None:
        kept = (f"set model.base_kv_heads: {base_heads // group} (the group of {group} query heads per key/value "
                "head kept from the base shape)" if base_heads % group == 0 else
                f"no whole number of base key/value heads keeps the group of {group}: choose model.kv_heads so "
                f"that the base shape's {base_heads} heads split into groups of heads / kv_heads")
        return (f"model.kv_heads ({model.n_kv_heads}) under {cfg.name} away from the base width: the base shape's "
                f"key/value heads decide whether K/V's fan-out grows with the width; {kept}")
    if base_heads % base_kv or base_heads // base_kv != group:
        return (f"model.base_kv_heads ({base_kv}) with {base_heads} base heads and model.kv_heads "
                f"({model.n_kv_heads}) with {model.heads} heads: the group size (query heads per key/value head) "
                f"must be the base shape's, else K/V's fan-out does not grow with the width as a hidden matrix's "
                "must (a fixed kv_heads while heads grow has no muP rule)")
    return None


def preset_gamma(name: str, alpha: float, optimizer: str) -> float:
    """gamma of a preset: none for SP and muP, 1 - alpha (Adam) or 1 - 2 alpha (SGD) otherwise."""
    if name in ("sp", "mup"):
        return 0.0
    if optimizer in ADAM_FAMILY + MUON_FAMILY:  # Muon's update, like Adam's, ignores the gradient's scale
        return 1.0 - alpha
    if optimizer in SGD_FAMILY:
        return 1.0 - 2.0 * alpha
    raise ValueError(f"no parametrization rule for optimizer '{optimizer}'")


def eps_rule(cfg: ParametrizationConfig) -> str:
    """The Adam eps rule in effect: parametrization.eps_scaling, or the preset's reference when unset (the
    depth presets follow CompleteP's reference code as first published, all_groups; sp and mup the `mup`
    package, constant). That code was later fixed to eps/m outside the blocks, which is ``gradient``."""
    if cfg.eps_scaling is not None:
        return cfg.eps_scaling
    return "all_groups" if scales_depth(cfg.name) else "constant"


def output_proj_rule(cfg: ParametrizationConfig) -> str:
    """The output-projection init rule in effect: parametrization.output_proj_init, or the preset's (gpt2
    for sp and mup, which keep GPT-2's depth factor at their own depth; base_depth for the depth presets)."""
    if cfg.output_proj_init is not None:
        return cfg.output_proj_init
    return "base_depth" if scales_depth(cfg.name) else "gpt2"


def adam_wd_rule(cfg: ParametrizationConfig) -> str:
    """The weight-decay rule of optimizer adam (L2 in the gradient): effective_decay unless set."""
    return cfg.adam_wd_scaling or "effective_decay"


@dataclass(frozen=True)
class RoleRule:
    """Per-role numbers, all absolute except the multipliers (relative to the base eta, eps, lambda)."""

    init_std: float  # Std of the normal init; 0 means 'constant init_value'
    init_value: float  # Constant init (LayerNorm gains 1, biases 0) when init_std is 0
    lr_mult: float
    eps_mult: float
    wd_mult: float


@dataclass(frozen=True)
class Multipliers:
    """Forward-pass numbers the model multiplies by; plain floats, so model code knows no rules."""

    embedding: float  # Multiplies the (token + position) embedding: alpha_in
    branch: float  # Multiplies every residual branch's output: a * r^-alpha
    readout: float  # Multiplies the final hidden state before the LM head: alpha_out / m under muP
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
    muon_adjust: str = "spectral"
    """optimizer.muon.adjust_lr (muon only): spectral and original keep hidden matrices' LR width-constant,
    match_rms_adamw gives them 1/sqrt(m) (see megadepth.optim.muon); set from the OptimizerConfig by
    :meth:`for_optimizer`."""

    @classmethod
    def from_config(cls, model: ModelConfig, cfg: ParametrizationConfig, *,
                    optimizer: str | OptimizerConfig) -> Parametrization:
        """Resolve for a model shape and an optimizer family (required: SGD and Adam differ); given the whole
        OptimizerConfig, Muon's adjust_lr too (a name alone means its default, spectral)."""
        if isinstance(optimizer, OptimizerConfig):
            return cls.from_config(model, cfg, optimizer=optimizer.name).for_optimizer(optimizer)
        if optimizer not in ADAM_FAMILY + SGD_FAMILY + MUON_FAMILY:
            raise ValueError(f"no parametrization rule for optimizer '{optimizer}'")
        if cfg.name == "custom":
            width_scaling, alpha, gamma = True, float(cfg.alpha), float(cfg.gamma)  # type: ignore[arg-type]
        else:
            width_scaling, alpha = PRESETS[cfg.name]
            gamma = preset_gamma(cfg.name, alpha, optimizer)
        base_width = model.base_width or model.width
        base_depth = model.base_depth or model.depth
        return cls(name=cfg.name, optimizer=optimizer, width_scaling=width_scaling, alpha=alpha, gamma=gamma,
                   m=model.width / base_width, r=model.depth / base_depth, depth=model.depth,
                   base_depth=base_depth, head_dim=model.head_dim,
                   base_head_dim=resolve_base_head_dim(model, cfg), cfg=cfg)

    def for_optimizer(self, optimizer: OptimizerConfig) -> Parametrization:
        """This parametrization with the optimizer config's Muon settings (a no-op for other optimizers)."""
        if optimizer.name not in MUON_FAMILY:
            return self
        return replace(self, muon_adjust=optimizer.muon.adjust_lr)

    def family(self, role: Role) -> str:
        """The optimizer a role steps with: under muon, 'muon' for the hidden matrices inside branches and
        'adamw' for every other role (embeddings, positions, gains, biases, readout keep AdamW's rules)."""
        if self.optimizer in MUON_FAMILY:
            return "muon" if role.is_hidden_matrix else "adamw"
        return self.optimizer

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
        return Multipliers(embedding=c.input_multiplier, branch=c.branch_multiplier * self.r**-self.alpha,
                           readout=readout, attn_scale=attn_scale)

    # ---- per-role rules ------------------------------------------------------------------------
    def rule(self, role: Role) -> RoleRule:
        w = self.m if self.width_scaling else 1.0  # width multiplier, 1 when width is not parametrized
        r = self.r if self.depth_scaling else 1.0  # SP and muP do not parametrize depth: r := 1 in every rule
        init_std, init_value = self._init(role, w)
        family = self.family(role)
        if family in MUON_FAMILY:
            # the orthogonalised update's shape factor sqrt(fan_out/fan_in) (spectral) is width-constant under
            # muP; Moonlight's 0.2 sqrt(max fan) grows like m^1/2, and so would the update's spectral norm (its
            # singular values are all near 1, unlike Adam's nearly low-rank update): m^-1/2, not Adam's 1/m,
            # keeps it width-constant (measured: docs/parametrizations.md, "Muon")
            lr_width = w**-0.5 if self.muon_adjust == "match_rms_adamw" else 1.0  # spectral, original: aspect only
        elif family in SGD_FAMILY:
            # SGD does not normalise gradients: vector-like parameters (embeddings, biases, gains, and the
            # readout behind its 1/m multiplier) get eta * m, matrices eta (mup.MuSGD); the QK-norm gain,
            # a vector of the head size, 1/(its gradient's size) (see _grad_scale)
            if role is Role.QK_GAIN:
                lr_width = 1.0 / self._grad_scale(role, w, r)[0]
            else:
                lr_width = 1.0 if role.is_hidden_matrix else w
        else:
            lr_width = 1.0 / w if role.is_hidden_matrix else 1.0  # Adam normalises entry-wise (mup.MuAdam)
        lr_depth = r**-self.gamma if role.in_branch else 1.0
        return RoleRule(init_std, init_value, lr_width * lr_depth, self._eps(role, w, r),
                        self._wd(role, w, r, lr_width, lr_depth))

    def _grad_scale(self, role: Role, w: float, r: float) -> tuple[float, float]:
        """(width, depth) factors of the typical size of a role's gradient entries, relative to the base
        shape: 1/m for every role under width scaling (the readout multiplier 1/m makes the gradient of the
        residual stream, and so of everything, of order 1/m), and r^-alpha inside branches (the branch
        multiplier scales the gradient reaching a block's parameters).

        The QK-norm gain is the exception in width: one vector of the head size, shared by every head. Each
        head adds a gradient of order 1/m per entry, and the heads' count multiplies it: the entries are of
        order heads/m = base_head_size/head_size (1 when width grows by more heads, 1/m when it grows by
        wider heads; the mup package's rule for a vector whose one dimension is the head size)."""
        depth = r**-self.alpha if role.in_branch else 1.0
        if role is Role.QK_GAIN:
            return (self.base_head_dim / self.head_dim if self.width_scaling else 1.0), depth
        return 1.0 / w, depth

    def _eps(self, role: Role, w: float, r: float) -> float:
        """Adam eps multiplier under parametrization.eps_scaling (see :func:`eps_rule`); 1 for SGD and Muon."""
        if self.family(role) not in ADAM_FAMILY:
            return 1.0
        rule = eps_rule(self.cfg)
        # all_groups: CompleteP's reference code as first published, adam_eps *= 1/m * r^-alpha in every group;
        # residual_blocks: CompleteP Table 1, "AdamW eps (residual blocks)"
        if rule == "all_groups" or (rule == "residual_blocks" and role.in_branch):
            return 1.0 / (w * r**self.alpha)
        if rule == "gradient":  # eps follows the size of each group's gradient entries
            width, depth = self._grad_scale(role, w, r)
            return width * depth
        return 1.0  # constant: the mup package

    def _init(self, role: Role, w: float) -> tuple[float, float]:
        """(init std, constant init) of a role. Init does not depend on the optimizer, nor on depth except
        through the output projections' GPT-2 factor (:func:`output_proj_rule`)."""
        c = self.cfg
        if role.is_hidden_matrix:
            std = c.init_std / math.sqrt(w)
            if role is Role.OUTPUT_PROJ:
                rule = output_proj_rule(c)
                if rule == "gpt2":  # GPT-2's 1/sqrt(2L) at the model's own depth (base_depth never matters)
                    std /= math.sqrt(2 * self.depth)
                elif rule == "base_depth":  # frozen at the base depth: depth is not counted twice
                    std /= math.sqrt(2 * self.base_depth)
            if role is Role.QUERY and c.zero_query:
                std = 0.0
            return std, 0.0
        if role in (Role.BRANCH_GAIN, Role.QK_GAIN, Role.FINAL_GAIN):
            return 0.0, 1.0
        if role in (Role.BRANCH_BIAS, Role.FINAL_BIAS):
            return 0.0, 0.0
        if role is Role.READOUT and c.zero_readout:
            return 0.0, 0.0
        return c.init_std, 0.0  # embedding, position, readout

    def _wd(self, role: Role, w: float, r: float, lr_width: float, lr_depth: float) -> float:
        """Weight decay multiplier: none for gains and biases. Otherwise chosen so that the decay per step
        does not depend on width (and, with wd_depth_scaling: invariant, on depth). AdamW and SGD shrink a
        weight by lr x wd per step, so wd goes like 1/lr; Adam with the L2 penalty in the gradient shrinks
        it by lr x wd / |gradient entry| (Adam divides the penalty by the gradient's RMS), so wd goes like
        |gradient| / lr (adam_wd_scaling: effective_decay), or like AdamW's (lr_inverse, the mup package)."""
        if role.is_gain_or_bias:
            return 0.0
        grad_width, grad_depth = self._grad_scale(role, w, r)
        effective = self.optimizer == "adam" and adam_wd_rule(self.cfg) == "effective_decay"
        width = (grad_width if effective else 1.0) / lr_width
        depth = (grad_depth if effective else 1.0) / lr_depth if self.cfg.wd_depth_scaling == "invariant" else 1.0
        return width * depth

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
        """Absolute per-role settings (init, forward multiplier, optimizer, LR, eps, WD): what a user got."""
        ptz = self.for_optimizer(optimizer)  # callers may have resolved Muon by its name alone
        rows = []
        for role in roles or list(Role):
            rule = ptz.rule(role)
            rows.append(
                {"role": role.value,
                 "init": f"{rule.init_std:.4g}" if rule.init_std else f"const {rule.init_value:g}",
                 "multiplier": self.forward_multiplier(role),
                 "lr": optimizer.base_lr(muon_half=self.family(role) in MUON_FAMILY) * rule.lr_mult,
                 "eps": optimizer.eps * rule.eps_mult if self.family(role) in ADAM_FAMILY else None,
                 "optimizer": self.family(role),
                 "weight_decay": optimizer.weight_decay * rule.wd_mult}
            )
        return rows

    def summary(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "cfg"}
        out["multipliers"] = asdict(self.multipliers())
        out["rules"] = {"eps": eps_rule(self.cfg), "output_proj_init": output_proj_rule(self.cfg),
                        "wd_depth": self.cfg.wd_depth_scaling}
        return out

    def sources(self) -> list[str]:
        """One line per decision that differs between references or is megadepth's own: the rule in effect,
        its source, and the key that switches it (printed under the per-role table)."""
        c, lines = self.cfg, []
        if not self.depth_scaling:
            lines.append(f"depth: not parametrized by {self.name} (r := 1 in every rule)")
        elif self.name == "custom":
            lines.append(f"gamma = {self.gamma:g}, alpha = {self.alpha:g}: as given (parametrization.alpha, .gamma)")
        elif self.optimizer in ADAM_FAMILY + MUON_FAMILY:
            lines.append(f"gamma = 1 - alpha = {self.gamma:g}: Adam's in-branch LR eta r^(alpha-1) (CompleteP "
                         "Table 1; Tensor Programs VI's eta/sqrt(L) for Depth-muP)")
        elif self.name == "depth_mup":
            lines.append("gamma = 1 - 2 alpha = 0: SGD's in-branch LR eta, constant in depth (Tensor Programs "
                         "VI's Depth-muP for SGD)")
        else:
            lines.append(f"gamma = 1 - 2 alpha = {self.gamma:g}: UNSOURCED, {self.name} with SGD (CompleteP is "
                         "defined for AdamW only; 1 - 2 alpha extrapolates Depth-muP's SGD rule); use depth_mup, "
                         "or custom to choose gamma")
        rule = output_proj_rule(c)
        init = f" = {self.rule(Role.OUTPUT_PROJ).init_std:.4g}"
        lines.append({
            "gpt2": f"output_proj init sigma/sqrt(m)/sqrt(2L){init}: GPT-2's depth factor at depth {self.depth} "
                    "(nanoGPT's SP; microsoft/mutransformers' muP GPT-2) [parametrization.output_proj_init]",
            "base_depth": f"output_proj init sigma/sqrt(m)/sqrt(2 L0){init}: CompleteP's depth-independent init "
                          f"(Table 1) times GPT-2's factor at base depth {self.base_depth}, so the base shape is "
                          "SP's model [parametrization.output_proj_init]",
            "none": f"output_proj init sigma/sqrt(m){init}: as every hidden matrix (CompleteP Table 1 and "
                    "reference code) [parametrization.output_proj_init]",
        }[rule])
        if self.optimizer in MUON_FAMILY:
            lines.extend(self.muon_sources())
        if self.optimizer in ADAM_FAMILY + MUON_FAMILY:
            lines.append({
                "all_groups": "adam eps: eps/(m r^alpha) in every group (CompleteP's reference code as first "
                              "published; its fixed version, eps/m outside the blocks, is eps_scaling: gradient) "
                              "[parametrization.eps_scaling]",
                "residual_blocks": "adam eps: eps/(m r^alpha) in residual branches, eps elsewhere (CompleteP "
                                   "Table 1) [parametrization.eps_scaling]",
                "gradient": "adam eps: eps/m, times r^-alpha in branches: the gradients' size (Everett et al. "
                            "2024) [parametrization.eps_scaling]",
                "constant": "adam eps: unscaled (the mup package's MuAdam) [parametrization.eps_scaling]",
            }[eps_rule(c)])
        if self.optimizer in MUON_FAMILY:
            lines.append("weight decay: decoupled (lr x wd per step) in both halves; AdamW's lambda x (1/lr width "
                         "factor) on hidden matrices, so lr x wd is width-independent")
        elif self.optimizer == "adamw":
            lines.append("weight decay: lambda x m on hidden matrices, so lr x wd is width-independent (mup "
                         "MuAdamW; CompleteP Table 1)")
        elif self.optimizer == "adam" and adam_wd_rule(c) == "effective_decay":
            lines.append("weight decay: L2 in the gradient shrinks by lr x wd / |grad|: hidden matrices lambda, "
                         "embeddings and readout lambda/m (derived, docs/parametrizations.md; mup's MuAdam "
                         "uses lambda x m) [parametrization.adam_wd_scaling]")
        elif self.optimizer == "adam":
            lines.append("weight decay: lambda x m on hidden matrices, AdamW's rule (mup's MuAdam; the decay "
                         "per step grows like m under L2) [parametrization.adam_wd_scaling]")
        else:
            lines.append("sgd: vectors and the readout (behind its 1/m multiplier) lr eta x m, wd lambda/m "
                         "(mup.MuSGD; Tensor Programs V's eta/m is for a readout without the multiplier)")
        if self.depth_scaling:
            lines.append("weight decay in depth: " + (
                "not scaled (CompleteP Table 1)" if c.wd_depth_scaling == "none"
                else "scaled so the decay per step is depth-independent (megadepth's option)")
                + " [parametrization.wd_depth_scaling]")
        return lines

    def muon_sources(self) -> list[str]:
        """Muon's rules in words (optimizer.name: muon)."""
        width = {
            "spectral": "update x sqrt(fan_out/fan_in) per orthogonalised matrix (the spectral condition, Yang, "
                        "Simon and Bernstein 2023): width-constant under muP, so the hidden matrices' lr is eta "
                        "at every width",
            "original": "update x sqrt(max(1, fan_out/fan_in)) per orthogonalised matrix (Jordan et al. 2024, "
                        "torch.optim.Muon's default): a function of the aspect ratio, width-constant under muP, "
                        "so the hidden matrices' lr is eta at every width",
            "match_rms_adamw": "update x 0.2 sqrt(max(fan_out, fan_in)) per orthogonalised matrix (Moonlight: "
                               "AdamW's update RMS), with lr eta/sqrt(m) on the hidden matrices: the factor grows "
                               "like sqrt(m), and Adam's 1/m would shrink the update's spectral norm like "
                               "1/sqrt(m) (measured by the coordinate check)",
        }[self.muon_adjust]
        return ["muon: query, key, value, attention out, MLP (SwiGLU gate/up/down) matrices by Muon (Newton-"
                "Schulz on the whole matrix: tensor shards gathered, K and V apart); every other role AdamW "
                "with AdamW's rules",
                f"muon: {width} [optimizer.muon.adjust_lr]",
                "muon in depth: Adam's rules carried over (branch multiplier r^-alpha, in-branch lr r^-(1-alpha)): "
                "Muon's update ignores the gradient's scale as Adam's does; the coordinate check measures "
                "Adam's depth slopes under Muon (docs/parametrizations.md, Muon)"]

    def qk_gain_source(self) -> str:
        """The QK-norm gain's rule in words, with its reasoning (printed when the model has one)."""
        if self.family(Role.QK_GAIN) in SGD_FAMILY:
            width = "lr eta x head_size/base_head_size"
        else:
            width = "lr eta, width-constant (Adam normalises its entries, like every gain)"
        return (f"qk_gain: init 1, no weight decay, {width}; in-branch depth rule as the other gains. Derived "
                "(docs/parametrizations.md, \"The QK-norm gain\"): one head-size vector shared by all heads, so its "
                "gradient entries are of order base_head_size/head_size; measured there in width, not taken from a "
                "reference")

    def format_table(self, optimizer: OptimizerConfig, roles: list[Role] | None = None) -> str:
        """The per-role table and its rule lines (callers may have resolved Muon by its name alone)."""
        return self.for_optimizer(optimizer)._table(optimizer, roles)

    def _table(self, optimizer: OptimizerConfig, roles: list[Role] | None) -> str:
        mult = self.multipliers()
        head = (f"parametrization {self.name} ({self.optimizer}): m = {self.m:g}, r = {self.r:g}, alpha = "
                f"{self.alpha:g}, gamma = {self.gamma:g}; attention scale {mult.attn_scale:.4g}")
        if self.width_scaling:  # the base head size it came from: which way the width grew, made visible
            head += f" (head size {self.head_dim}, base {self.base_head_dim:g})"
        if roles is not None and Role.READOUT not in roles:
            # tied embeddings: no readout row, but the head still multiplies the final hidden state
            head += f"; readout multiplier {mult.readout:.4g} (tied head)"
        muon = self.optimizer in MUON_FAMILY  # an optimizer column only where the roles differ
        opt_head = f" {'optimizer':>9}" if muon else ""
        lines = [head, f"{'role':<12} {'init std':>10} {'fwd mult':>9}{opt_head} {'lr':>11} {'eps':>11} {'wd':>11}"]
        for row in self.describe(optimizer, roles):
            eps = f"{row['eps']:>11.4g}" if row["eps"] is not None else f"{'-':>11}"
            opt = f" {row['optimizer']:>9}" if muon else ""
            lines.append(f"{row['role']:<12} {row['init']:>10} {row['multiplier']:>9.4g}{opt} {row['lr']:>11.4g} "
                         f"{eps} {row['weight_decay']:>11.4g}")
        lines.extend(f"rule: {line}" for line in self.sources())
        if roles is not None and Role.QK_GAIN in roles:
            lines.append(f"rule: {self.qk_gain_source()}")
        return "\n".join(lines)
