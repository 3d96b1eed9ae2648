"""The layers of a pre-LayerNorm GPT, each usable on its own (and later as a pipeline stage).

Every module declares the parametrization role of its parameters in ``param_roles``; forward
multipliers arrive as plain numbers (:class:`megadepth.parametrize.Multipliers`), so this file knows
nothing about SP, muP or depth scaling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megadepth.config.schema import ModelConfig
from megadepth.parametrize.roles import Role


def activation_fn(name: str):
    """gelu, relu or abs (Tensor Programs VI: abs maximises feature diversity)."""
    if name == "gelu":
        return F.gelu
    if name == "relu":
        return F.relu
    if name == "abs":
        return torch.abs
    raise ValueError(f"unknown activation '{name}' (choose gelu, relu or abs)")


class LayerNorm(nn.LayerNorm):
    """LayerNorm with an optional bias; ``gain_role``/``bias_role`` say whether it sits in a branch."""

    def __init__(self, width: int, eps: float, bias: bool, in_branch: bool) -> None:
        super().__init__(width, eps=eps, bias=bias)
        self.param_roles = (
            {"weight": Role.BRANCH_GAIN, "bias": Role.BRANCH_BIAS}
            if in_branch
            else {"weight": Role.FINAL_GAIN, "bias": Role.FINAL_BIAS}
        )


class Linear(nn.Linear):
    """nn.Linear whose weight role is given by its owner; the bias is an in-branch bias."""

    def __init__(self, fan_in: int, fan_out: int, bias: bool, role: Role) -> None:
        super().__init__(fan_in, fan_out, bias=bias)
        self.param_roles = {"weight": role, "bias": Role.BRANCH_BIAS}


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half form) applied to queries and keys; no parameters."""

    def __init__(self, head_dim: int, positions: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, heads, seq, head_dim]."""
        seq = x.shape[-2]
        cos = self.cos[:seq].to(x.dtype)
        sin = self.sin[:seq].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        cos = torch.cat((cos, cos), dim=-1)
        sin = torch.cat((sin, sin), dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Embedding(nn.Module):
    """Token embedding (+ learned positions), times the embedding multiplier alpha_in."""

    def __init__(self, cfg: ModelConfig, multiplier: float) -> None:
        super().__init__()
        self.token = nn.Embedding(cfg.vocab_size, cfg.width)
        self.token.param_roles = {"weight": Role.EMBEDDING}
        self.position: nn.Embedding | None = None
        if cfg.position == "learned":
            self.position = nn.Embedding(cfg.positions, cfg.width)
            self.position.param_roles = {"weight": Role.POSITION}
        self.multiplier = multiplier
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.token(tokens)
        if self.position is not None:
            seq = tokens.shape[-1]
            if seq > self.position.num_embeddings:
                raise ValueError(
                    f"sequence of {seq} tokens is longer than the position table ({self.position.num_embeddings})"
                )
            h = h + self.position.weight[:seq]
        return self.dropout(h * self.multiplier)


class Attention(nn.Module):
    """Causal self-attention through torch SDPA (flash / memory-efficient kernels where available)."""

    def __init__(self, cfg: ModelConfig, attn_scale: float) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.head_dim
        self.query = Linear(cfg.width, cfg.width, cfg.bias, Role.QUERY)
        self.key_value = Linear(cfg.width, 2 * cfg.width, cfg.bias, Role.HIDDEN)
        self.out = Linear(cfg.width, cfg.width, cfg.bias, Role.OUTPUT_PROJ)
        self.scale = attn_scale
        self.dropout = cfg.dropout
        self.rotary = Rotary(cfg.head_dim, cfg.positions, cfg.rotary_base) if cfg.position == "rotary" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q = self.query(x).view(batch, seq, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.key_value(x).view(batch, seq, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=self.scale, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(batch, seq, width))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = Linear(cfg.width, cfg.mlp_width, cfg.bias, Role.HIDDEN)
        self.down = Linear(cfg.mlp_width, cfg.width, cfg.bias, Role.OUTPUT_PROJ)
        self.act = activation_fn(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class Block(nn.Module):
    """x <- x + branch * Attn(LN(x)); x <- x + branch * MLP(LN(x)), with branch = a * r^-alpha."""

    def __init__(self, cfg: ModelConfig, branch_multiplier: float, attn_scale: float) -> None:
        super().__init__()
        self.attn_norm = LayerNorm(cfg.width, cfg.norm_eps, cfg.bias, in_branch=True)
        self.attn = Attention(cfg, attn_scale)
        self.mlp_norm = LayerNorm(cfg.width, cfg.norm_eps, cfg.bias, in_branch=True)
        self.mlp = MLP(cfg)
        self.branch = branch_multiplier
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.branch * self.dropout(self.attn(self.attn_norm(x)))
        return x + self.branch * self.dropout(self.mlp(self.mlp_norm(x)))


class LinearBlock(nn.Module):
    """Block depth 1 (Tensor Programs VI's main setting): x <- x + branch * MS(act(W x)).

    One matrix per branch, mean subtraction MS over features, no LayerNorm, no attention: a per-token
    resnet whose depth behaviour the theory describes exactly (Depth-muP is its unique optimal
    parametrization).
    """

    def __init__(self, cfg: ModelConfig, branch_multiplier: float) -> None:
        super().__init__()
        self.linear = Linear(cfg.width, cfg.width, cfg.bias, Role.HIDDEN)
        self.act = activation_fn(cfg.activation)
        self.branch = branch_multiplier
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.act(self.linear(x))
        z = z - z.mean(dim=-1, keepdim=True)
        return x + self.branch * self.dropout(z)


class Head(nn.Module):
    """Final LayerNorm, readout multiplier, LM head (its own matrix, or the tied token embedding)."""

    def __init__(self, cfg: ModelConfig, readout_multiplier: float, tied: nn.Embedding | None) -> None:
        super().__init__()
        self.norm = LayerNorm(cfg.width, cfg.norm_eps, cfg.bias, in_branch=False)
        self.multiplier = readout_multiplier
        self.tied = tied
        self.weight: nn.Parameter | None = None
        if tied is None:
            self.weight = nn.Parameter(torch.empty(cfg.vocab_size, cfg.width))
        self.param_roles = {"weight": Role.READOUT}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the readout multiplier is applied here and only here (pitfall: applying 1/m twice)
        weight = self.tied.weight if self.tied is not None else self.weight
        return F.linear(self.norm(x) * self.multiplier, weight)
