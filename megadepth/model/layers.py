"""The layers of a pre-norm decoder, each usable on its own (and as a pipeline stage): GPT-2's block
(LayerNorm, gelu MLP, multi-head attention) and Llama's (RMSNorm, SwiGLU, grouped-query attention,
optional QK-norm), chosen by model.norm, model.mlp, model.kv_heads and model.qk_norm.

Every module declares the parametrization role of its parameters in ``param_roles``; forward multipliers
arrive as plain numbers, so this file knows nothing about SP, muP or depth scaling. Under tensor
parallelism attention heads are split across ranks (query/key/value column-parallel, output
row-parallel), the MLP column-then-row, the vocabulary by rows; with sequence parallelism the residual
stream, norms and dropout work on sequence shards between those regions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megadepth.config.schema import ModelConfig
from megadepth.parallel.cross_entropy import vocab_parallel_cross_entropy
from megadepth.parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    replicated,
)
from megadepth.parallel.mappings import all_reduce_grad, copy_to_tp, gather_from_sequence, scatter_to_sequence
from megadepth.parallel.topology import TensorParallel
from megadepth.parametrize.roles import Role
from megadepth.parametrize.rules import Multipliers

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "abs": torch.abs}


def activation_fn(name: str):
    """gelu, relu or abs (Tensor Programs VI: abs maximises feature diversity)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}' (choose gelu, relu or abs)")
    return _ACTIVATIONS[name]


class Norm(nn.Module):
    """LayerNorm (with an optional bias) or RMSNorm (a gain only), replicated on every tensor-parallel rank.

    ``in_branch`` decides the role (a branch gain/bias or the final norm). Under sequence parallelism
    each rank normalises its own sequence shard, so the gradients of the (replicated) gain and bias are
    summed over the group.
    """

    def __init__(self, kind: str, width: int, eps: float, bias: bool, in_branch: bool, tp: TensorParallel) -> None:
        super().__init__()
        self.kind = kind
        self.eps = eps
        self.tp = tp
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if bias and kind == "layernorm" else None
        self.param_roles = {"weight": Role.BRANCH_GAIN if in_branch else Role.FINAL_GAIN,
                            "bias": Role.BRANCH_BIAS if in_branch else Role.FINAL_BIAS}

    def forward(self, x: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """norm(x), or norm(x) * scale with the scale applied to the gain and bias vectors instead of to the
        activations: one elementwise pass less."""
        weight, bias = replicated(self.weight, self.tp), replicated(self.bias, self.tp)
        if scale is not None:
            weight = weight * scale
            bias = bias * scale if bias is not None else None
        if self.kind == "rmsnorm":
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        return F.layer_norm(x, (x.shape[-1],), weight, bias, self.eps)


class QKNorm(nn.Module):
    """RMSNorm over each head of the queries or keys, one gain of the head size shared by every head (role
    qk_gain). Every tensor-parallel rank holds other heads (and under sequence parallelism the same heads
    of the whole sequence), so the gain's gradient is summed over the tensor-parallel group."""

    def __init__(self, head_dim: int, eps: float, tp: TensorParallel) -> None:
        super().__init__()
        self.eps = eps
        self.tp = tp
        self.weight = nn.Parameter(torch.ones(head_dim))
        self.param_roles = {"weight": Role.QK_GAIN}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = all_reduce_grad(self.weight, self.tp.group) if self.tp.enabled else self.weight
        return F.rms_norm(x, (x.shape[-1],), weight, self.eps)


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half form) applied to queries and keys; no parameters."""

    def __init__(self, head_dim: int, positions: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x: [batch, heads, seq, head_dim] at positions offset, offset + 1, ... (offset: the tokens already
        in a KV cache, whose keys were rotated for their own positions)."""
        end = offset + x.shape[-2]
        if end > self.cos.shape[0]:
            raise ValueError(f"position {end - 1} is past the rotary table ({self.cos.shape[0]} positions)")
        cos, sin = self.cos[offset:end].to(x.dtype), self.sin[offset:end].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class LayerCache:
    """One attention layer's keys and values of the tokens seen so far (after QK-norm and rotary), so that
    generation feeds only the new tokens: inference in one process (no tensor parallelism, no dropout)."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Tokens held: the position of the next token."""
        return 0 if self.keys is None else self.keys.shape[-2]

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens' keys and values ([batch, kv_heads, seq, head_dim]); returns all of them."""
        if self.keys is not None:
            k, v = torch.cat((self.keys, k), dim=-2), torch.cat((self.values, v), dim=-2)
        self.keys, self.values = k, v
        return k, v


class Embedding(nn.Module):
    """Token embedding (+ learned positions), times the embedding multiplier alpha_in: the residual stream
    (this rank's sequence shard under sequence parallelism). ``with_token=False``: only the part after the
    token lookup (a pipeline stage)."""

    def __init__(self, cfg: ModelConfig, multiplier: float, tp: TensorParallel, with_token: bool = True) -> None:
        super().__init__()
        self.tp = tp
        self.token = VocabParallelEmbedding(cfg.padded_vocab, cfg.width, tp) if with_token else None
        self.position: nn.Embedding | None = None
        if cfg.position == "learned":
            self.position = nn.Embedding(cfg.positions, cfg.width)
            self.position.param_roles = {"weight": Role.POSITION}
        self.multiplier = multiplier
        self.dropout = _BranchDropout(cfg.dropout, tp)  # each rank drops out its own sequence shard

    def forward(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return self.finish(self.token(tokens), offset)

    def finish(self, h: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Positions (from ``offset``: tokens already in a KV cache), multiplier, (sequence scatter), dropout
        on the looked-up token embeddings."""
        if self.position is not None:
            end = offset + h.shape[1]
            if end > self.position.num_embeddings:
                raise ValueError(f"sequence of {end} tokens is longer than the position table "
                                 f"({self.position.num_embeddings})")
            h = torch.add(h, self.position.weight[offset:end]).mul_(self.multiplier)  # the sum is not saved for backward
        else:
            h = h * self.multiplier
        if self.tp.sequence_parallel:
            h = scatter_to_sequence(h, self.tp.group)
        return self.dropout(h)


class Attention(nn.Module):
    """Causal self-attention through torch SDPA, heads split across the tensor-parallel group; grouped-query
    attention when model.kv_heads < model.heads (each key/value head serves heads / kv_heads query heads).

    The key/value matrix is laid out head by head ([kv_heads, 2, head_dim] rows). When parallel.tensor divides
    the key/value heads, a contiguous split of its rows gives each rank the keys and values of its own query
    heads. With fewer key/value heads than ranks, every rank holds the whole (small) matrix, uses the rows of
    the one key/value head its query heads share, and the gradient is summed over the group (Megatron's rule
    for replicated key/value heads).
    """

    def __init__(self, cfg: ModelConfig, attn_scale: float, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.heads = tp.shard(cfg.heads, "model.heads")
        self.head_dim = cfg.head_dim
        kv_heads = cfg.n_kv_heads
        self.query = ColumnParallelLinear(cfg.width, cfg.heads * cfg.head_dim, cfg.bias, Role.QUERY, tp)
        kv_width = 2 * kv_heads * cfg.head_dim
        self.kv_replicated = tp.enabled and kv_heads % tp.size != 0
        if self.kv_replicated:
            if tp.size % kv_heads:
                raise ValueError(f"model.kv_heads ({kv_heads}) and the tensor-parallel size ({tp.size}): neither "
                                 "divides the other")
            self.kv_heads = 1
            own = tp.rank * kv_heads // tp.size  # the key/value head of this rank's query heads
            self.kv_rows = slice(own * 2 * cfg.head_dim, (own + 1) * 2 * cfg.head_dim)
            self.key_value = ColumnParallelLinear(cfg.width, kv_width, cfg.bias, Role.HIDDEN, TensorParallel())
        else:
            self.kv_heads = kv_heads // tp.size
            self.kv_rows = None
            self.key_value = ColumnParallelLinear(cfg.width, kv_width, cfg.bias, Role.HIDDEN, tp)
        self.out = RowParallelLinear(cfg.heads * cfg.head_dim, cfg.width, cfg.bias, Role.OUTPUT_PROJ, tp)
        self.scale = attn_scale
        self.dropout = cfg.dropout
        self.rotary = Rotary(cfg.head_dim, cfg.positions, cfg.rope_theta) if cfg.position == "rotary" else None
        self.q_norm = QKNorm(cfg.head_dim, cfg.norm_eps, tp) if cfg.qk_norm else None
        self.k_norm = QKNorm(cfg.head_dim, cfg.norm_eps, tp) if cfg.qk_norm else None

    def _keys_values(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's keys and values, [batch, seq, kv_heads x 2 x head_dim], from the entered input."""
        if self.kv_rows is None:
            return self.key_value(x, entered=True)
        weight = all_reduce_grad(self.key_value.weight, self.tp.group)[self.kv_rows]
        bias = self.key_value.bias
        if bias is not None:
            bias = all_reduce_grad(bias, self.tp.group)[self.kv_rows]
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """Causal attention over x, or (``cache``) over the cached tokens and x, x's tokens following them."""
        x = self.query.enter(x)  # one gather (or one backward all-reduce) for query, keys and values
        q = self.query(x, entered=True)
        kv = self._keys_values(x)
        batch, seq = q.shape[0], q.shape[1]  # the full sequence (gathered under sequence parallelism)
        q = q.view(batch, seq, self.heads, self.head_dim).transpose(1, 2)
        k, v = kv.view(batch, seq, self.kv_heads, 2, self.head_dim).permute(3, 0, 2, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        offset = 0 if cache is None else cache.length
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        if cache is not None:
            k, v = cache.extend(k, v)
        gqa = self.kv_heads != self.heads
        with self.tp.rng.fork():  # attention dropout differs per head, so per tensor-parallel rank
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=_after_cache_mask(offset, seq, q.device),
                                               is_causal=offset == 0, scale=self.scale, enable_gqa=gqa,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, seq, self.heads * self.head_dim))


def _after_cache_mask(offset: int, seq: int, device: torch.device) -> torch.Tensor | None:
    """The causal mask of ``seq`` new queries after ``offset`` cached keys: None when nothing is cached (then
    is_causal) or for one query (it sees every key). SDPA's is_causal aligns the triangle top-left, which
    for fewer queries than keys would hide cached keys from the new queries."""
    if offset == 0 or seq == 1:
        return None
    keys = torch.arange(offset + seq, device=device)
    return keys[None, :] <= (torch.arange(seq, device=device) + offset)[:, None]


class MLP(nn.Module):
    """up, activation, down: the GPT-2 MLP (gelu, relu or abs)."""

    def __init__(self, cfg: ModelConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.up = ColumnParallelLinear(cfg.width, cfg.mlp_width, cfg.bias, Role.HIDDEN, tp)
        self.down = RowParallelLinear(cfg.mlp_width, cfg.width, cfg.bias, Role.OUTPUT_PROJ, tp)
        self.act = activation_fn(cfg.mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class SwiGLU(nn.Module):
    """down(silu(gate x) * up x), Llama's gated MLP: gate and up column-parallel (hidden matrices), down
    row-parallel (it closes the branch: the output-projection role)."""

    def __init__(self, cfg: ModelConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.gate = ColumnParallelLinear(cfg.width, cfg.mlp_width, cfg.bias, Role.HIDDEN, tp)
        self.up = ColumnParallelLinear(cfg.width, cfg.mlp_width, cfg.bias, Role.HIDDEN, tp)
        self.down = RowParallelLinear(cfg.mlp_width, cfg.width, cfg.bias, Role.OUTPUT_PROJ, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gate.enter(x)  # one gather (or backward all-reduce) for both input matrices
        return self.down(F.silu(self.gate(x, entered=True)) * self.up(x, entered=True))


class _BranchDropout(nn.Module):
    """Dropout on the residual stream: sequence shards draw per-rank masks, replicated activations one."""

    def __init__(self, p: float, tp: TensorParallel) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p)
        self.tp = tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.sequence_parallel and self.dropout.p > 0:
            with self.tp.rng.fork():
                return self.dropout(x)
        return self.dropout(x)


class Block(nn.Module):
    """x <- x + branch * Attn(norm(x)); x <- x + branch * MLP(norm(x)), with branch = a * r^-alpha. The norm is
    LayerNorm or RMSNorm, the MLP GPT-2's or SwiGLU (model.norm, model.mlp)."""

    def __init__(self, cfg: ModelConfig, branch_multiplier: float, attn_scale: float, tp: TensorParallel) -> None:
        super().__init__()
        self.attn_norm = Norm(cfg.norm, cfg.width, cfg.norm_eps, cfg.bias, in_branch=True, tp=tp)
        self.attn = Attention(cfg, attn_scale, tp)
        self.mlp_norm = Norm(cfg.norm, cfg.width, cfg.norm_eps, cfg.bias, in_branch=True, tp=tp)
        self.mlp = SwiGLU(cfg, tp) if cfg.mlp == "swiglu" else MLP(cfg, tp)
        self.branch = branch_multiplier
        self.dropout = _BranchDropout(cfg.dropout, tp)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        # x + branch * f(x) as one add-with-alpha: one elementwise pass (and its backward) less per branch
        x = torch.add(x, self.dropout(self.attn(self.attn_norm(x), cache)), alpha=self.branch)
        return torch.add(x, self.dropout(self.mlp(self.mlp_norm(x))), alpha=self.branch)


class LinearBlock(nn.Module):
    """Block depth 1 (Tensor Programs VI's main setting): x <- x + branch * MS(act(W x)), MS a mean
    subtraction over features: a per-token resnet whose depth behaviour the theory describes exactly.
    Under tensor parallelism W's output is gathered (MS needs every feature)."""

    def __init__(self, cfg: ModelConfig, branch_multiplier: float, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.linear = ColumnParallelLinear(cfg.width, cfg.width, cfg.bias, Role.HIDDEN, tp, gather_output=True)
        self.act = activation_fn(cfg.mlp)
        self.branch = branch_multiplier
        self.dropout = _BranchDropout(cfg.dropout, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.act(self.linear(x))
        z = z - z.mean(dim=-1, keepdim=True)
        return torch.add(x, self.dropout(z), alpha=self.branch)


def block_spec(cfg: ModelConfig, mult: Multipliers, tp: TensorParallel) -> tuple[type[nn.Module], tuple]:
    """The residual block class of ``model.block`` and its constructor arguments."""
    if cfg.block == "linear":
        return LinearBlock, (cfg, mult.branch, tp)
    return Block, (cfg, mult.branch, mult.attn_scale, tp)


def tied_logits(embedding: VocabParallelEmbedding, h: torch.Tensor) -> torch.Tensor:
    """This rank's vocabulary slice of the logits through the tied token-embedding matrix."""
    tp = embedding.tp
    h = gather_from_sequence(h, tp.group) if tp.sequence_parallel else copy_to_tp(h, tp.group)
    return F.linear(h, embedding.weight)


class Head(nn.Module):
    """Final norm, readout multiplier, LM head (its own vocab-parallel matrix, or the tied token
    embedding). ``forward`` returns this rank's slice of the vocabulary's logits; ``with_proj=False``
    builds only the norm and multiplier (a pipeline stage: the projection is a stage of its own)."""

    def __init__(self, cfg: ModelConfig, readout_multiplier: float, tp: TensorParallel,
                 tied: VocabParallelEmbedding | None, with_proj: bool = True) -> None:
        super().__init__()
        self.tp = tp
        self.norm = Norm(cfg.norm, cfg.width, cfg.norm_eps, cfg.bias, in_branch=False, tp=tp)
        self.multiplier = readout_multiplier
        self.tied = tied
        self.proj: ColumnParallelLinear | None = None
        if tied is None and with_proj:
            self.proj = ColumnParallelLinear(cfg.width, cfg.padded_vocab, False, Role.READOUT, tp)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # the readout multiplier is applied here and only here (pitfall: applying 1/m twice)
        return self.norm(x, scale=self.multiplier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if self.proj is not None:
            return self.proj(h)
        if self.tied is not None:
            return tied_logits(self.tied, h)
        return h


class LMLoss:
    """Mean next-token cross-entropy (fp32) from this rank's vocabulary slice of the logits; padding
    columns are never predicted. A plain callable so the pipeline engine can use it as its loss_fn."""

    def __init__(self, cfg: ModelConfig, tp: TensorParallel) -> None:
        self.tp = tp
        self.vocab_size = cfg.vocab_size
        self.vocab_start = tp.rank * (cfg.padded_vocab // tp.size)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self.tp.enabled:
            logits = logits[..., : self.vocab_size] if logits.shape[-1] > self.vocab_size else logits
            return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))
        per_token = vocab_parallel_cross_entropy(logits, labels, vocab_start=self.vocab_start,
                                                 vocab_size=self.vocab_size, group=self.tp.group)
        return per_token.mean()
