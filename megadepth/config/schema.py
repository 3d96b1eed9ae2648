"""The one typed schema of a megadepth run: frozen pydantic sections that forbid unknown keys, every field
with a docstring that ``megadepth config --explain`` prints."""

from __future__ import annotations

import datetime
import json
import os
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PRESETS = ("sp", "mup", "depth_mup", "completep", "custom")

RENAMED_KEYS = {"model.activation": "model.mlp", "model.rotary_base": "model.rope_theta"}
"""Older spellings still accepted (configs and run directories of earlier versions) -> the key now read."""


def _as_yaml_value(value: Any) -> str:
    """A default as a ``--set`` value reads it back: null, true, 0.95, spectral."""
    return value if isinstance(value, str) else json.dumps(value)


def _accepts_bool(annotation: Any) -> bool:
    """Whether a field's annotation admits a boolean (bool itself, or a union/Literal containing one)."""
    if annotation is bool:
        return True
    return any(_accepts_bool(a) or a is True or a is False for a in get_args(annotation))


def _expand_home(value: str | None) -> str | None:
    """``~`` and ``~user`` in a path, as a shell would expand them (not a folder named ``~``)."""
    return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value


def _expected(annotation: Any) -> str:
    """What a field takes, in words, for the boolean-mistake message."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if annotation in (int, float) or (args and all(a in (int, float) for a in args)):
        return "a number"
    if annotation is str or str in args:
        return "text"
    literals = [a for a in args if isinstance(a, str)]
    if literals:
        return "one of " + ", ".join(repr(a) for a in literals)
    return "another kind of value"


class Section(BaseModel):
    """Base of every config section: frozen, no unknown keys, field docstrings kept as descriptions."""

    # no inf/nan anywhere: `lr: .inf` or `alpha: .nan` would train and be reported as a divergence
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, validate_default=True,
                              allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, data: Any) -> Any:
        """pydantic's lax mode reads true as 1; ``model.depth: true`` is a mistake, not a depth of 1."""
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and not _accepts_bool(field.annotation):
                    what = _expected(field.annotation)
                    hint = "" if what == "a number" else (
                        " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote the value)")
                    raise ValueError(f"{name}: expected {what}, got the boolean {str(value).lower()}{hint}")
        return data


class ModelConfig(Section):
    depth: int = Field(4, ge=1)
    """Number of transformer layers L; each layer holds two residual branches (attention and MLP)."""
    width: int = Field(128, ge=1)
    """Model width d (size of the residual stream)."""
    heads: int = Field(4, ge=1)
    """Number of attention heads; must divide the width."""
    base_depth: int | None = Field(None, ge=1)
    """Depth L0 at which hyperparameters were tuned; the depth multiplier is r = depth / base_depth.
    Unset means 'this model is the base' (r = 1)."""
    base_width: int | None = Field(None, ge=1)
    """Width d0 at which hyperparameters were tuned; the width multiplier is m = width / base_width.
    Unset means 'this model is the base' (m = 1)."""
    base_heads: int | None = Field(None, ge=1)
    """Attention heads of the base shape; the muP attention scale needs its head size base_width / base_heads.
    It says how the width grew: by more heads at a fixed head size (base_heads = base_width / head size), by
    wider heads (base_heads = heads), or both. Must divide base_width; unset, it is heads when base_width
    equals width, and required (or parametrization.base_head_dim) for a width-scaled transformer."""
    base_kv_heads: int | None = Field(None, ge=1)
    """Key/value heads of the base shape (grouped-query attention, model.kv_heads). Width scaling treats the
    key/value projection as a hidden matrix, whose fan-out must grow with the width: the base shape's group
    size (base_heads / base_kv_heads) must equal heads / kv_heads. Unset, it is kv_heads when base_width equals
    width, and required for a width-scaled model with fewer key/value heads than heads."""
    mlp_ratio: float = Field(4.0, gt=0)
    """Hidden width of a non-gated MLP (gelu, relu, abs) as a multiple of the width (fixed when scaling: one
    m for all hidden matrices); model.ffn_hidden overrides it. SwiGLU uses Llama's rule instead."""
    ffn_hidden: int | None = Field(None, ge=1)
    """Hidden width of the MLP, given directly. Unset: mlp_ratio x width (gelu, relu, abs), or Llama's rule for
    swiglu, 8/3 x width rounded up to model.ffn_multiple_of. Under width scaling it should grow with the width
    (the parametrization scales every hidden matrix by the one width multiplier m)."""
    ffn_multiple_of: int = Field(256, ge=1)
    """SwiGLU only, with ffn_hidden unset: the hidden width 8/3 x width is rounded up to a multiple of this
    (Llama's multiple_of)."""
    mlp: Literal["gelu", "relu", "abs", "swiglu"] = "gelu"
    """MLP of the transformer block and non-linearity of the linear block: gelu, relu or abs (two matrices,
    up and down; Tensor Programs VI finds abs maximises feature diversity), or swiglu (Llama's gated MLP:
    down(silu(gate x) * up x), three matrices; transformer block only)."""
    activation: Literal["gelu", "relu", "abs"] | None = Field(None, exclude=True)
    """Older spelling of model.mlp (gelu, relu, abs); refused when both are given and differ."""
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    """Normalisation of the branch inputs and the final hidden state: layernorm (GPT-2; with a bias when
    model.bias) or rmsnorm (Llama; a gain, no mean subtraction, no bias)."""
    kv_heads: int | None = Field(None, ge=1)
    """Key/value heads (grouped-query attention; 1 is multi-query); must divide model.heads. Unset: model.heads
    (multi-head attention). Under tensor parallelism they are split across ranks when parallel.tensor divides
    them, else replicated (parallel.tensor must then be a multiple of them)."""
    qk_norm: bool = False
    """RMSNorm of every query and key head (before rotary positions), with one gain of the head size shared by
    the heads (its own parametrization role, qk_gain)."""
    block: Literal["transformer", "linear"] = "transformer"
    """Residual block: 'transformer' (pre-LN attention + MLP, two branches per layer) or 'linear' (block
    depth 1, Tensor Programs VI's main setting: x + branch * MS(act(W x)), one matrix per branch, mean
    subtraction MS, no attention and no LayerNorm inside; a per-token model, for depth studies)."""
    seq_len: int = Field(256, ge=1)
    """Training sequence length in tokens."""
    max_positions: int | None = Field(None, ge=1)
    """Size of the learned position table; defaults to seq_len. seq_len may not exceed it."""
    vocab_size: int = Field(2048, ge=2)
    """Vocabulary size: the tokenizer's number of pieces (padded to vocab_multiple rows, never predicted).
    Start-up refuses fewer than the tokenizer's and warns about more than the padding explains."""
    vocab_multiple: int = Field(128, ge=1)
    """Pad the embedding's rows to a multiple of this (Megatron's make-vocab-size-divisible-by); must
    be divisible by parallel.tensor. Independent of the layout, so every layout has the same weights."""
    position: Literal["learned", "rotary"] = "learned"
    """Position encoding: a learned table added to the token embedding (GPT-2), or rotary (no parameters)."""
    rope_theta: float = Field(10000.0, gt=0)
    """Base of the rotary frequencies, theta (only with position: rotary; Llama 2 uses 10000, Llama 3 500000)."""
    rotary_base: float | None = Field(None, gt=0, exclude=True)
    """Older spelling of model.rope_theta; refused when both are given and differ."""
    tie_embeddings: bool = True
    """Share the token embedding matrix with the LM head (readout)."""
    bias: bool = False
    """Biases in the attention and MLP linear layers (and LayerNorms)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the embedding and on each branch output; 0 disables it."""
    norm_eps: float = Field(1e-5, gt=0)
    """Epsilon of the LayerNorms or RMSNorms (and of the QK-norm)."""

    @model_validator(mode="before")
    @classmethod
    def _older_spellings(cls, data: Any) -> Any:
        """model.activation and model.rotary_base (configs of earlier runs) become model.mlp and rope_theta."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        valid = {"activation": lambda v: v in ("gelu", "relu", "abs"),
                 "rotary_base": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0}
        for old, new in ((o.removeprefix("model."), n.removeprefix("model.")) for o, n in RENAMED_KEYS.items()):
            if data.get(old) is None or not valid[old](data[old]):
                continue  # a wrong value stays, so the error names the key the user wrote
            if data.get(new) is not None and data[new] != data[old]:
                raise ValueError(f"model.{old} ({data[old]}) and model.{new} ({data[new]}) disagree: model.{old} is "
                                 f"the older spelling of model.{new}; keep one")
            data[new] = data.pop(old)
        return data

    @model_validator(mode="after")
    def _shapes_agree(self) -> ModelConfig:
        if self.width % self.heads:
            raise ValueError(f"model.width ({self.width}) must be divisible by model.heads ({self.heads})")
        if self.kv_heads is not None and (self.kv_heads > self.heads or self.heads % self.kv_heads):
            raise ValueError(f"model.kv_heads ({self.kv_heads}) must divide model.heads ({self.heads}): each "
                             "key/value head serves the same number of query heads")
        if self.base_kv_heads is not None and (self.base_width or self.width) == self.width \
                and self.base_kv_heads != self.n_kv_heads:
            raise ValueError(f"model.base_kv_heads ({self.base_kv_heads}) differs from the key/value heads "
                             f"({self.n_kv_heads}) but this model is its own base shape (model.base_width unset or "
                             "equal to model.width): set model.base_width, or drop model.base_kv_heads")
        if self.block == "linear":
            extras = [f"model.{key}: {value}" for key, value, plain in (
                ("mlp", self.mlp, self.mlp != "swiglu"), ("kv_heads", self.kv_heads, self.kv_heads is None),
                ("qk_norm", self.qk_norm, not self.qk_norm), ("base_kv_heads", self.base_kv_heads,
                                                                  self.base_kv_heads is None)) if not plain]
            if extras:
                raise ValueError(f"{', '.join(extras)} need model.block: transformer (the linear block has one "
                                 "matrix and no attention)")
        if self.max_positions is not None and self.seq_len > self.max_positions:
            raise ValueError(f"model.seq_len ({self.seq_len}) is larger than the position table "
                             f"(model.max_positions = {self.max_positions})")
        if self.position == "rotary" and (self.width // self.heads) % 2:
            raise ValueError("rotary positions need an even head size (model.width / model.heads)")
        if self.base_heads is not None:
            base_width = self.base_width or self.width
            if base_width % self.base_heads:
                raise ValueError(f"model.base_heads ({self.base_heads}) must divide model.base_width ({base_width}): "
                                 "the base head size is base_width / base_heads")
            if base_width == self.width and self.base_heads != self.heads:
                # a stale base_heads would silently change the attention scale of a model at its base width
                base = "is unset" if self.base_width is None else f"equals model.width ({self.width})"
                raise ValueError(f"model.base_heads ({self.base_heads}) differs from model.heads ({self.heads}) but "
                                 f"model.base_width {base}, so this model is its own base shape: set model.base_width "
                                 f"to the width tuned at, or model.base_heads to {self.heads} (or drop it)")
        return self

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads: model.kv_heads, or model.heads when unset."""
        return self.kv_heads or self.heads

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden width: ffn_hidden, else Llama's rule for swiglu, else mlp_ratio x width."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        if self.mlp == "swiglu":
            return -(-int(8 * self.width / 3) // self.ffn_multiple_of) * self.ffn_multiple_of
        return round(self.mlp_ratio * self.width)

    @property
    def positions(self) -> int:
        return self.max_positions or self.seq_len

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


class ParametrizationConfig(Section):
    name: Literal["sp", "mup", "depth_mup", "completep", "custom"] = "depth_mup"
    """Parametrization: sp (standard), mup (width only), depth_mup (alpha = 1/2), completep (alpha = 1)
    or custom (alpha and gamma given). Presets take gamma = 1 - alpha (Adam) or 1 - 2 alpha (SGD)."""
    alpha: float | None = None
    """Branch multiplier exponent: each residual branch is scaled by a * r^-alpha (only with name: custom)."""
    gamma: float | None = None
    """Depth exponent of the learning rate of in-branch parameters (LR * r^-gamma; only with name: custom).
    The presets' 1 - alpha (Adam) and 1 - 2 alpha (SGD) keep each block's per-step feature update O(1/L)."""
    init_std: float = Field(0.02, gt=0)
    """Base init std sigma of matrices and embeddings (at the base shape)."""
    branch_multiplier: float = Field(1.0, gt=0)
    """Base branch multiplier a."""
    input_multiplier: float = Field(1.0, gt=0)
    """Embedding output multiplier alpha_in."""
    output_multiplier: float = Field(1.0, gt=0)
    """Readout multiplier alpha_out (divided by m under width-muP)."""
    attn_multiplier: float = Field(1.0, gt=0)
    """Attention-logit multiplier: the softmax scale is attn_multiplier / sqrt(base head size) at the base
    shape (attn_multiplier * sqrt(base head size) / head size away from it under the width-scaled presets,
    attn_multiplier / sqrt(head size) under SP); the base head size is model.base_width / model.base_heads."""
    base_head_dim: int | None = Field(None, ge=1)
    """Head size at the base shape, the older spelling of model.base_heads (base_width / base_heads, preferred);
    refused when the two disagree, and when it does not divide model.base_width."""
    zero_query: bool = False
    """Initialise the query projection to zero (a standard muP option)."""
    zero_readout: bool = False
    """Initialise an untied LM head to zero (a standard muP option)."""
    eps_scaling: Literal["all_groups", "residual_blocks", "gradient", "constant"] | None = None
    """Adam epsilon rule (adam/adamw only). Unset: all_groups for depth_mup, completep and custom (CompleteP's
    reference code as first published), constant for sp and mup (the `mup` package). all_groups: eps /
    (m r^alpha) in every group; residual_blocks: that inside residual branches, eps elsewhere (CompleteP's
    Table 1); gradient: eps/m everywhere and r^-alpha inside branches, following each group's gradient
    entries (Everett et al. 2024; CompleteP's reference code after its fix; also spelled 'scaled');
    constant: eps everywhere. All four give eps at the base shape."""
    output_proj_init: Literal["gpt2", "base_depth", "none"] | None = None
    """Init std of the matrices that close a residual branch (attention out, MLP out). Unset: gpt2 for sp and
    mup, base_depth for depth_mup, completep and custom. gpt2: sigma/sqrt(m)/sqrt(2 L), GPT-2's factor at
    the model's own depth; refused with the depth presets. base_depth: sigma/sqrt(m)/sqrt(2 L0), frozen at
    the base depth (the base shape then equals SP's model); only with the depth presets. none:
    sigma/sqrt(m) like every hidden matrix (CompleteP's Table 1 and reference code)."""
    wd_depth_scaling: Literal["none", "invariant"] = "none"
    """Depth scaling of hidden-matrix weight decay (depth_mup, completep, custom). none (default; CompleteP's
    Table 1 and reference code): lambda does not change with depth. invariant: the decay per step does not
    depend on depth (lambda x r^gamma with adamw and sgd, lambda x r^(gamma - alpha) with adam). The older
    spelling 'one_minus_alpha' means invariant (other numbers than it once gave with sgd and adam's default)."""
    adam_wd_scaling: Literal["effective_decay", "lr_inverse"] | None = None
    """Width (and, with wd_depth_scaling: invariant, depth) rule of optimizer adam's weight decay, whose L2
    penalty goes through Adam's normalisation. effective_decay (default, docs/parametrizations.md): hidden
    matrices keep lambda, embeddings, position and readout get lambda/m. lr_inverse: AdamW's rule (hidden
    matrices lambda x m), as the `mup` package's MuAdam does. Refused with adamw and sgd (no effect)."""

    @field_validator("eps_scaling", "wd_depth_scaling", mode="before")
    @classmethod
    def _older_spellings(cls, value: Any) -> Any:
        return {"scaled": "gradient", "one_minus_alpha": "invariant"}.get(value, value) if isinstance(
            value, str) else value

    @model_validator(mode="after")
    def _exponents_match_preset(self) -> ParametrizationConfig:
        if self.name == "custom":
            if self.alpha is None or self.gamma is None:
                raise ValueError("parametrization.name 'custom' needs both parametrization.alpha and .gamma")
        elif self.alpha is not None or self.gamma is not None:
            raise ValueError(f"parametrization.alpha/gamma are fixed by the preset '{self.name}'; "
                             "use parametrization.name: custom to choose them")
        return self


class MuonConfig(Section):
    """Muon's settings (optimizer.name: muon): momentum orthogonalised by Newton-Schulz for the hidden
    matrices inside residual branches; every other parameter takes AdamW with the optimizer's own settings."""

    lr: float | None = Field(None, gt=0)
    """Base learning rate of the Muon matrices (at the base shape); each Muon group multiplies it by its rule.
    Unset: optimizer.lr drives both halves. Under adjust_lr: spectral Muon's best LR is several times AdamW's
    best (README: 5 to 17 times the quickstart's on a short run), and beside Muon the AdamW roles also did
    best well above AdamW's own optimum (docs/transfer.md, "Muon"), so one shared LR is a sound default;
    setting this tunes the two apart, as torch's separate Muon and AdamW optimizers do."""
    momentum: float = Field(0.95, ge=0, lt=1)
    """Momentum coefficient mu (the buffer is an average: buf = mu buf + (1 - mu) grad)."""
    nesterov: bool = True
    """Orthogonalise grad + mu (buf - grad) (Nesterov) rather than the buffer itself."""
    ns_steps: int = Field(5, ge=1, le=20)
    """Newton-Schulz iterations (quintic, coefficients 3.4445, -4.7750, 2.0315)."""
    adjust_lr: Literal["spectral", "original", "match_rms_adamw"] = "spectral"
    """Per-matrix update scale. spectral: x sqrt(fan_out / fan_in), the spectral condition for feature learning
    (Yang, Simon and Bernstein 2023), width-constant for hidden matrices. original: x sqrt(max(1, fan_out /
    fan_in)) (Jordan et al. 2024; torch.optim.Muon's default), width-constant too. match_rms_adamw: x 0.2 sqrt(max(fan_out,
    fan_in)) (Moonlight), AdamW's update RMS; its hidden LR goes like 1/sqrt(m) under width scaling (not Adam's
    1/m: the orthogonalised update's flat spectrum; docs/parametrizations.md, "Muon")."""


class OptimizerConfig(Section):
    name: Literal["adamw", "adam", "sgd", "muon"] = "adamw"
    """Optimizer: adamw (decoupled weight decay), adam (L2 penalty in the gradient), sgd (with optional
    momentum) or muon (Muon for hidden matrices in branches, AdamW for the rest; optimizer.muon). The
    parametrization has a rule set for each (muP's Adam and SGD columns, and a Muon column)."""
    lr: float = Field(3e-3, gt=0)
    """Base learning rate eta (at the base shape); each parameter group multiplies it (under muon, the Muon
    matrices take optimizer.muon.lr instead when it is set)."""
    weight_decay: float = Field(0.1, ge=0)
    """Base weight decay lambda; zero for norms and biases."""
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.95)
    """Adam betas."""
    eps: float = Field(1e-8, gt=0)
    """Base Adam epsilon (scaled per group by the parametrization)."""
    grad_clip: float = Field(1.0, ge=0)
    """Global gradient-norm clipping threshold; 0 disables clipping."""
    momentum: float = Field(0.0, ge=0, lt=1)
    """SGD momentum (sgd only)."""
    fused: bool | None = None
    """Use torch's fused Adam/AdamW kernel (CUDA and CPU); unset means on. False: the per-parameter loop."""
    nesterov: bool = False
    """Nesterov momentum (sgd only, needs momentum > 0)."""
    muon: MuonConfig = Field(default_factory=MuonConfig)
    """Muon's own settings (optimizer.name: muon); betas, eps, weight_decay and lr serve its AdamW groups (lr its
    Muon groups too, unless optimizer.muon.lr is set)."""

    @model_validator(mode="after")
    def _sgd_options(self) -> OptimizerConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("optimizer.nesterov needs optimizer.name: sgd and optimizer.momentum > 0")
        if self.momentum and self.name != "sgd":
            own = {"muon": "Muon's is optimizer.muon.momentum", "adam": "Adam's are optimizer.betas",
                   "adamw": "Adam's are optimizer.betas"}[self.name]
            raise ValueError(f"optimizer.momentum is SGD's (optimizer.name: sgd), it has no effect with "
                             f"optimizer.name: {self.name} ({own})")
        if self.name != "muon" and self.muon != MuonConfig():  # defaults pass: resolved configs write them out
            default = MuonConfig()
            changed = [k for k in MuonConfig.model_fields if getattr(self.muon, k) != getattr(default, k)]
            keys = ", ".join(f"optimizer.muon.{k}" for k in changed)
            unset = " ".join(f"--set optimizer.muon.{k}={_as_yaml_value(getattr(default, k))}" for k in changed)
            raise ValueError(f"optimizer.muon has no effect with optimizer.name: {self.name} (set: {keys}); set "
                             f"optimizer.name: muon, or drop it (from the command line: {unset})")
        return self

    def base_lr(self, muon_half: bool) -> float:
        """The base LR a group's rule multiplies: optimizer.muon.lr for the Muon matrices when set, else
        optimizer.lr."""
        return self.muon.lr if muon_half and self.muon.lr is not None else self.lr


class ScheduleConfig(Section):
    name: Literal["cosine", "linear", "wsd", "constant"] = "cosine"
    """LR schedule after warm-up: cosine or linear decay to min_lr_ratio, warmup-stable-decay, or
    constant. Every group keeps its own multiplier (the schedule is a factor)."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up steps from 0 to the full LR."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final LR as a fraction of the peak LR."""
    decay_fraction: float = Field(0.2, gt=0, le=1)
    """wsd only: fraction of the steps spent in the final linear decay."""


class TrainConfig(Section):
    steps: int = Field(100, ge=1)
    """Number of optimizer steps."""
    micro_batch: int = Field(8, ge=1)
    """Sequences per micro-batch per data-parallel rank."""
    grad_accum: int | None = Field(None, ge=1)
    """Micro-batches accumulated per optimizer step; derived from global_batch when unset (else 1)."""
    global_batch: int | None = Field(None, ge=1)
    """Sequences per optimizer step; must equal micro_batch x grad_accum x data-parallel size."""
    seed: int = Field(1234, ge=0)
    """Seed of initialisation, data order and dropout."""
    log_every: int = Field(10, ge=1)
    """Write a metrics record every N steps."""
    eval_every: int = Field(0, ge=0)
    """Evaluate on the validation split every N steps (0: only at the end)."""
    eval_samples: int = Field(64, ge=0)
    """Validation sequences per evaluation (the same ones every time)."""
    save_every: int = Field(0, ge=0)
    """Save a checkpoint every N steps (0: only at the end, when save_final)."""
    save_final: bool = True
    """Save a checkpoint when training ends."""
    stop_after_steps: int = Field(0, ge=0)
    """Stop after this many steps in this process with a checkpoint (0: never), for jobs with a time limit:
    the next job resumes where this one stopped (summary status 'stopped')."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many recent checkpoints to keep."""
    out_dir: str = Field("runs/default", min_length=1)
    """The run directory (config, metrics, summary, checkpoints, W&B run). Unset, it is named after the
    config files on the command line: runs/<their stems joined by '+'>, e.g. runs/tiny for
    configs/model/tiny.yaml, runs/gpt-124m+completep for configs/model/gpt-124m.yaml
    configs/parametrization/completep.yaml (runs/default only with no file; the quickstart names its own).
    The same command finds the same directory, so it resumes there; runs that differ only in --set values,
    or whose files share names in other folders, share it: name each one."""
    init_from: str | None = None
    """Start this run from the weights of another run's checkpoint (its run or checkpoints folder, one step_*
    folder, or merge-tp output; any layout); step, optimizer state, schedule and data order start fresh.
    Used only while this run has no checkpoint of its own."""
    resume: Literal["auto", "never", "must"] = "auto"
    """auto: continue from out_dir/checkpoints/latest when present; never: refuse a run directory that
    has checkpoints; must: fail without one."""
    precision: Literal["auto", "fp32", "bf16-mixed", "bf16"] = "auto"
    """Training precision. bf16-mixed: fp32 parameters, optimizer and residual stream, matmuls in bf16 under
    autocast. bf16: DeepSpeed's bf16 mode with fp32 master weights (needs parallel.zero_stage 1); its bf16
    residual stream rounds away small branch updates of deep models. auto: bf16-mixed on a GPU with bf16,
    fp32 otherwise."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; auto uses CUDA when present."""
    progress: bool = True
    """Show a progress bar on rank 0."""
    compile: bool = False
    """torch.compile each transformer block (not with the pipeline engine); the first steps compile."""

    @field_validator("out_dir", "init_from", mode="after")
    @classmethod
    def _home(cls, value: str | None) -> str | None:
        return _expand_home(value)

    @model_validator(mode="after")
    def _out_dir_not_blank(self) -> TrainConfig:
        if not self.out_dir.strip():
            raise ValueError(f"train.out_dir must name a directory, got {self.out_dir!r}")
        return self


class DataConfig(Section):
    path: str | list[float | str] = "data/sample"
    """A data directory (all shards in it), a shard prefix, or a Megatron-style list alternating
    weight and path to blend several."""
    tokenizer: str | None = None
    """sentencepiece model; defaults to tokenizer.model in the (first) data directory."""
    valid_fraction: float = Field(0.02, ge=0, lt=1)
    """Fraction of documents (taken from the end) held out for validation."""
    num_workers: int = Field(0, ge=0)
    """Data-loader worker processes per rank."""
    cache_dir: str | None = None
    """Directory to cache sample indices in (built in memory when unset)."""

    @field_validator("path", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        """A folder named like a number or a date (``path: 2024``, ``2024-06-01``): YAML reads it as one."""
        if isinstance(value, (int, float)) and not isinstance(value, bool) or isinstance(value, datetime.date):
            return str(value)
        if isinstance(value, list):  # in a blend, numbers are weights; dates can only be folders
            return [str(v) if isinstance(v, datetime.date) else v for v in value]
        return value

    @field_validator("path", "tokenizer", "cache_dir", mode="after")
    @classmethod
    def _home(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [_expand_home(v) if isinstance(v, str) else v for v in value]
        return _expand_home(value)


class ParallelConfig(Section):
    tensor: int = Field(1, ge=1)
    """Tensor-parallel size."""
    pipeline: int = Field(1, ge=1)
    """Pipeline-parallel size (DeepSpeed's pipeline engine; micro-batches = train.grad_accum)."""
    partition: Literal["uniform", "parameters"] = "uniform"
    """How layers are split into pipeline stages: 'uniform' gives every stage the same number of blocks
    (model.depth must be divisible by parallel.pipeline), 'parameters' balances parameter counts."""
    activation_checkpoint_interval: int = Field(0, ge=0)
    """Recompute activations in the backward pass every N blocks (0: off): less memory, more compute.
    Not with model.dropout > 0 (the recompute would draw other masks)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (with tensor > 1)."""
    zero_stage: int = Field(0, ge=0, le=3)
    """DeepSpeed ZeRO stage (pipeline parallelism needs stage 1)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend; auto is nccl on GPUs and gloo on CPUs."""
    timeout_s: int = Field(600, ge=1)
    """Timeout of distributed start-up and collectives, so a broken peer ends the run instead of hanging."""


class WandbConfig(Section):
    mode: Literal["offline", "online", "disabled"] = "offline"
    """offline (default, no account needed; `wandb sync` later), online or disabled."""
    project: str = "megadepth"
    """W&B project."""
    group: str | None = None
    """W&B group (sweeps put all their runs in one)."""
    name: str | None = None
    """W&B run name; defaults to the run directory's name."""
    tags: list[str] = Field(default_factory=list)
    """W&B tags attached to the run."""


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Model shape."""
    parametrization: ParametrizationConfig = Field(default_factory=ParametrizationConfig)
    """How init, multipliers and optimizer settings scale with width and depth."""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    """Optimizer and its base hyperparameters."""
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    """Learning-rate schedule."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Training loop, checkpoints, run directory."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Training data."""
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    """Parallel layout."""
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    """Weights & Biases logging."""

    @model_validator(mode="after")
    def _cross_section(self) -> Config:
        if self.parametrization.zero_query and self.model.qk_norm:
            raise ValueError("parametrization.zero_query with model.qk_norm: the RMSNorm of an all-zero query "
                             "divides by sqrt(eps) (gradients of order 1/sqrt(eps)); drop one of them")
        if self.parallel.sequence_parallel and self.parallel.tensor == 1:
            raise ValueError("parallel.sequence_parallel needs parallel.tensor > 1")
        if self.train.eval_every and self.data.valid_fraction == 0:
            raise ValueError("train.eval_every is set but data.valid_fraction is 0: there is no validation split to "
                             "evaluate on; set train.eval_every: 0 too (no evaluation), or data.valid_fraction > 0")
        return self
