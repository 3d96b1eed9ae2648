"""Mutation tests: deliberate rule breaks, each caught by a fast check, and each check passing without it.

A check that passes on the code as it is says little until it is shown to fail on the code as it must
not be. Every entry of MUTATIONS breaks one rule on a real code path (a function of
megadepth/parametrize/rules.py, or the model's use of a multiplier in megadepth/model/layers.py) and
names the check that must catch it:

- ``coord <preset> <axis>``: a small, fast coordinate check (configs/coord/*.yaml's settings on fewer
  shapes, 5 steps, one seed) on the real training path, failing when any slope is further than
  coord_check.TOLERANCE from the slope docs/parametrizations.md predicts (coord_check.disagreements);
- ``hand-derived``: the built model, its init and its optimizer groups at m = r = 4 against numbers
  worked out by hand from the rules table, and the embedding, block and head forwards against the
  multipliers applied once.

docs/parametrizations.md ("Mutation tests") has the table. Coordinate-check mutations are applied inside
the rank process that runs the check (tests/distributed.py, coord_result_rank).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from megadepth.model import layers
from megadepth.parametrize import rules
from megadepth.parametrize.roles import Role

pytestmark = [pytest.mark.slow]


# ---- the mutations ---------------------------------------------------------------------------------
def _wrap_multipliers(mp: pytest.MonkeyPatch, change: Callable[[Any, rules.Multipliers], rules.Multipliers]) -> None:
    orig = rules.Parametrization.multipliers
    mp.setattr(rules.Parametrization, "multipliers", lambda self: change(self, orig(self)))


def _wrap_rule(mp: pytest.MonkeyPatch, change: Callable[[Any, Role, rules.RoleRule], rules.RoleRule]) -> None:
    orig = rules.Parametrization.rule
    mp.setattr(rules.Parametrization, "rule", lambda self, role: change(self, role, orig(self, role)))


def _r(ptz: Any) -> float:
    return ptz.r if ptz.depth_scaling else 1.0


def branch_missing(mp: pytest.MonkeyPatch) -> None:
    _wrap_multipliers(mp, lambda p, m: replace(m, branch=p.cfg.branch_multiplier))


def branch_twice(mp: pytest.MonkeyPatch) -> None:
    def forward(self: layers.Block, x: torch.Tensor) -> torch.Tensor:
        x = torch.add(x, self.branch * self.dropout(self.attn(self.attn_norm(x))), alpha=self.branch)
        return torch.add(x, self.branch * self.dropout(self.mlp(self.mlp_norm(x))), alpha=self.branch)

    mp.setattr(layers.Block, "forward", forward)


def depth_mup_alpha_one(mp: pytest.MonkeyPatch) -> None:
    mp.setitem(rules.PRESETS, "depth_mup", (True, 1.0))


def branch_lr_depth_missing(mp: pytest.MonkeyPatch) -> None:
    _wrap_rule(mp, lambda p, role, rr: replace(rr, lr_mult=rr.lr_mult * _r(p) ** p.gamma) if role.in_branch else rr)


def gamma_sign_flipped(mp: pytest.MonkeyPatch) -> None:
    orig = rules.preset_gamma
    mp.setattr(rules, "preset_gamma", lambda name, alpha, optimizer: -orig(name, alpha, optimizer))


def branch_gain_lr_depth_missing(mp: pytest.MonkeyPatch) -> None:
    vectors = (Role.BRANCH_GAIN, Role.BRANCH_BIAS)
    _wrap_rule(mp, lambda p, role, rr: replace(rr, lr_mult=rr.lr_mult * _r(p) ** p.gamma) if role in vectors else rr)


def readout_missing(mp: pytest.MonkeyPatch) -> None:
    _wrap_multipliers(mp, lambda p, m: replace(m, readout=p.cfg.output_multiplier))


def readout_twice(mp: pytest.MonkeyPatch) -> None:
    def features(self: layers.Head, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x, scale=self.multiplier) * self.multiplier

    mp.setattr(layers.Head, "features", features)


def hidden_init_unscaled(mp: pytest.MonkeyPatch) -> None:
    orig = rules.Parametrization._init

    def _init(self: Any, role: Role, w: float) -> tuple[float, float]:
        std, value = orig(self, role, w)
        return (std * math.sqrt(w) if role.is_hidden_matrix else std), value

    mp.setattr(rules.Parametrization, "_init", _init)


def output_proj_gpt2_everywhere(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(rules, "output_proj_rule", lambda cfg: "gpt2")


def output_proj_no_depth_factor(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(rules, "output_proj_rule", lambda cfg: "none")


def attention_sqrt_d(mp: pytest.MonkeyPatch) -> None:
    _wrap_multipliers(mp, lambda p, m: replace(m, attn_scale=p.cfg.attn_multiplier / math.sqrt(p.head_dim)))


def eps_depth_missing(mp: pytest.MonkeyPatch) -> None:
    orig = rules.Parametrization._eps
    mp.setattr(rules.Parametrization, "_eps", lambda self, role, w, r: orig(self, role, w, 1.0))


def embedding_multiplier_ignored(mp: pytest.MonkeyPatch) -> None:
    orig = layers.Embedding.finish

    def finish(self: layers.Embedding, h: torch.Tensor, offset: int = 0) -> torch.Tensor:
        kept, self.multiplier = self.multiplier, 1.0
        try:
            return orig(self, h, offset)
        finally:
            self.multiplier = kept

    mp.setattr(layers.Embedding, "finish", finish)


def vectors_get_hidden_lr(mp: pytest.MonkeyPatch) -> None:
    vectors = (Role.EMBEDDING, Role.POSITION, Role.READOUT)
    _wrap_rule(mp, lambda p, role, rr: replace(rr, lr_mult=rr.lr_mult / p.m) if role in vectors and p.width_scaling
               else rr)


def weight_decay_unscaled(mp: pytest.MonkeyPatch) -> None:
    _wrap_rule(mp, lambda p, role, rr: replace(rr, wd_mult=1.0) if role.is_hidden_matrix else rr)


def qk_gain_gets_hidden_lr(mp: pytest.MonkeyPatch) -> None:
    _wrap_rule(mp, lambda p, role, rr: replace(rr, lr_mult=rr.lr_mult / p.m) if role is Role.QK_GAIN and p.width_scaling
               else rr)


def qk_gain_gets_sgd_lr(mp: pytest.MonkeyPatch) -> None:
    _wrap_rule(mp, lambda p, role, rr: replace(rr, lr_mult=rr.lr_mult * p.head_dim / p.base_head_dim)
               if role is Role.QK_GAIN and p.width_scaling else rr)


def _retag(mp: pytest.MonkeyPatch, cls: type, layer: str, role: Role) -> None:
    """Tag the weight of ``cls``'s sub-layer ``layer`` with another role, after the real constructor ran."""
    orig = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        orig(self, *args, **kwargs)
        sub = getattr(self, layer)
        sub.param_roles = {**sub.param_roles, "weight": role}

    mp.setattr(cls, "__init__", __init__)


def swiglu_gate_tagged_as_vector(mp: pytest.MonkeyPatch) -> None:
    _retag(mp, layers.SwiGLU, "gate", Role.EMBEDDING)


def kv_tagged_as_output_proj(mp: pytest.MonkeyPatch) -> None:
    _retag(mp, layers.Attention, "key_value", Role.OUTPUT_PROJ)


def _muon_hidden_lr(factor: Callable[[Any], float]) -> Callable[[pytest.MonkeyPatch], None]:
    def apply(mp: pytest.MonkeyPatch) -> None:
        def change(ptz: Any, role: Role, rule: rules.RoleRule) -> rules.RoleRule:
            if ptz.family(role) != "muon":
                return rule
            return replace(rule, lr_mult=rule.lr_mult * factor(ptz))
        _wrap_rule(mp, change)
    return apply


def muon_rms_takes_adams_inverse_m(mp: pytest.MonkeyPatch) -> None:
    """match_rms_adamw's hidden LR eta/m (Adam's muP rule, the first Muon column) instead of eta/sqrt(m)."""
    _muon_hidden_lr(lambda ptz: ptz.m**-0.5 if ptz.width_scaling and ptz.muon_adjust == "match_rms_adamw" else 1.0)(mp)


def muon_spectral_takes_adams_inverse_m(mp: pytest.MonkeyPatch) -> None:
    """spectral's hidden LR eta/m (Adam's muP rule) instead of width-constant eta."""
    _muon_hidden_lr(lambda ptz: 1.0 / ptz.m if ptz.width_scaling and ptz.muon_adjust == "spectral" else 1.0)(mp)


@dataclass(frozen=True)
class Mutation:
    what: str
    apply: Callable[[pytest.MonkeyPatch], None]
    check: str


MUTATIONS = {m.apply.__name__: m for m in (
    Mutation("branch multiplier missing (a, not a r^-alpha)", branch_missing, "coord completep depth"),
    Mutation("branch multiplier applied twice in the block's forward", branch_twice, "coord completep depth"),
    Mutation("Depth-muP's branch exponent 1 instead of 1/2", depth_mup_alpha_one, "coord depth_mup depth"),
    Mutation("in-branch LR depth factor r^-gamma missing", branch_lr_depth_missing, "coord depth_mup depth"),
    Mutation("gamma's sign flipped (in-branch LR r^+gamma)", gamma_sign_flipped, "coord depth_mup depth"),
    Mutation("in-branch LayerNorm gains without the LR depth factor", branch_gain_lr_depth_missing,
             "hand-derived"),
    Mutation("readout multiplier 1/m missing", readout_missing, "coord mup width"),
    Mutation("readout multiplier applied twice in the head", readout_twice, "coord mup width"),
    Mutation("hidden init not width-scaled (sigma, not sigma/sqrt(m))", hidden_init_unscaled, "coord mup width"),
    Mutation("output projections' GPT-2 1/sqrt(2L) under the depth presets", output_proj_gpt2_everywhere,
             "coord completep depth"),
    Mutation("output projections without GPT-2's 1/sqrt(2L) under SP", output_proj_no_depth_factor,
             "coord sp depth"),
    Mutation("attention 1/sqrt(d_head) under muP", attention_sqrt_d, "hand-derived"),
    Mutation("Adam eps without its depth factor r^-alpha", eps_depth_missing, "hand-derived"),
    Mutation("embedding multiplier ignored in the embedding's forward", embedding_multiplier_ignored,
             "hand-derived"),
    Mutation("embeddings and head get the hidden LR eta/m", vectors_get_hidden_lr, "hand-derived"),
    Mutation("AdamW weight decay not scaled by m on hidden matrices", weight_decay_unscaled, "hand-derived"),
    Mutation("QK-norm gains get the hidden matrices' width rule (Adam LR eta/m)", qk_gain_gets_hidden_lr,
             "hand-derived"),
    Mutation("QK-norm gains get SGD's width rule under Adam (LR eta x head_size/base_head_size)",
             qk_gain_gets_sgd_lr, "hand-derived"),
    Mutation("SwiGLU's gate tagged as a vector (embedding role: init sigma, LR eta, not sigma/sqrt(m), eta/m)",
             swiglu_gate_tagged_as_vector, "hand-derived"),
    Mutation("grouped-query key/value tagged as an output projection (init / sqrt(2 L0))",
             kv_tagged_as_output_proj, "hand-derived"),
    Mutation("Muon match_rms_adamw's hidden LR eta/m (Adam's muP rule) instead of eta/sqrt(m)",
             muon_rms_takes_adams_inverse_m, "coord muon-rms mup width"),
    Mutation("Muon spectral's hidden LR eta/m (Adam's muP rule) instead of eta", muon_spectral_takes_adams_inverse_m,
             "coord muon mup width"),
)}


# ---- the fast coordinate checks --------------------------------------------------------------------
# (setting of configs/coord, preset, depths, widths): configs/coord/*.yaml's settings on fewer shapes
COORD = {
    "coord completep depth": ("transformer", "completep", [2, 4, 8, 16], None),
    "coord depth_mup depth": ("transformer", "depth_mup", [2, 4, 8, 16], None),
    "coord sp depth": ("transformer", "sp", [2, 4, 8, 16, 32], None),  # the embedding's change: all depths
    "coord mup width": ("width", "mup", [4], [32, 64, 128]),
    "coord muon mup width": ("muon-width", "mup", [4], [32, 64, 128]),
    "coord muon-rms mup width": ("muon-width", "mup", [4], [32, 64, 128]),  # adjust_lr: match_rms_adamw
}
COORD_STEPS = 5


def coord_failures(data: Path, tmp: Path, check: str, mutation: str | None) -> list[str]:
    from distributed import coord_result_rank, run_ranks
    from test_coord_check import shipped

    from megadepth.analysis.coord_check import disagreements

    setting, preset, depths, widths = COORD[check]
    cfg = shipped(data, tmp, setting, preset)
    if check.startswith("coord muon-rms"):
        cfg["optimizer"]["muon"]["adjust_lr"] = "match_rms_adamw"
    if setting.endswith("width"):
        cfg["train"]["micro_batch"] = 2  # fewer tokens than the widths: one seed is as flat as three (docs)
    (result,) = run_ranks(coord_result_rank, 1, cfg, depths, widths, COORD_STEPS, [0], mutation)
    return disagreements(result)


# ---- the hand-derived check ------------------------------------------------------------------------
ETA, EPS, WD, SIGMA, ALPHA_IN = 0.01, 1e-8, 0.1, 0.02, 3.0
# m = 128/32 = 4, r = 8/2 = 4, 4 heads (head size 32, base 8), AdamW. Per role (init std, LR, eps, WD);
# None: a constant init (norm gains). Multipliers (branch, readout, attention scale). qk_gain (the Llama
# model's QK-norm gains, below): Adam's LR is width-constant, with the in-branch depth factor r^-gamma, as the
# other gains (docs/parametrizations.md, "The QK-norm gain").
HAND: dict[str, dict[str, Any]] = {
    "sp": {"roles": {"query": (0.02, 0.01, 1e-8, 0.1), "hidden": (0.02, 0.01, 1e-8, 0.1),
                     "output_proj": (0.02 / 4, 0.01, 1e-8, 0.1), "branch_gain": (None, 0.01, 1e-8, 0.0),
                     "final_gain": (None, 0.01, 1e-8, 0.0), "embedding": (0.02, 0.01, 1e-8, 0.1),
                     "position": (0.02, 0.01, 1e-8, 0.1), "readout": (0.02, 0.01, 1e-8, 0.1),
                     "qk_gain": (None, 0.01, 1e-8, 0.0)},
           "mult": (1.0, 1.0, 1 / math.sqrt(32))},
    "mup": {"roles": {"query": (0.01, 0.0025, 1e-8, 0.4), "hidden": (0.01, 0.0025, 1e-8, 0.4),
                      "output_proj": (0.01 / 4, 0.0025, 1e-8, 0.4), "branch_gain": (None, 0.01, 1e-8, 0.0),
                      "final_gain": (None, 0.01, 1e-8, 0.0), "embedding": (0.02, 0.01, 1e-8, 0.1),
                      "position": (0.02, 0.01, 1e-8, 0.1), "readout": (0.02, 0.01, 1e-8, 0.1),
                      "qk_gain": (None, 0.01, 1e-8, 0.0)},
            "mult": (1.0, 0.25, math.sqrt(8) / 32)},
    "depth_mup": {"roles": {"query": (0.01, 0.00125, 1.25e-9, 0.4), "hidden": (0.01, 0.00125, 1.25e-9, 0.4),
                            "output_proj": (0.005, 0.00125, 1.25e-9, 0.4), "branch_gain": (None, 0.005, 1.25e-9, 0.0),
                            "final_gain": (None, 0.01, 1.25e-9, 0.0), "embedding": (0.02, 0.01, 1.25e-9, 0.1),
                            "position": (0.02, 0.01, 1.25e-9, 0.1), "readout": (0.02, 0.01, 1.25e-9, 0.1),
                            "qk_gain": (None, 0.005, 1.25e-9, 0.0)},
                  "mult": (0.5, 0.25, math.sqrt(8) / 32)},
    "completep": {"roles": {"query": (0.01, 0.0025, 6.25e-10, 0.4), "hidden": (0.01, 0.0025, 6.25e-10, 0.4),
                            "output_proj": (0.005, 0.0025, 6.25e-10, 0.4), "branch_gain": (None, 0.01, 6.25e-10, 0.0),
                            "final_gain": (None, 0.01, 6.25e-10, 0.0), "embedding": (0.02, 0.01, 6.25e-10, 0.1),
                            "position": (0.02, 0.01, 6.25e-10, 0.1), "readout": (0.02, 0.01, 6.25e-10, 0.1),
                            "qk_gain": (None, 0.01, 6.25e-10, 0.0)},
                  "mult": (0.25, 0.25, math.sqrt(8) / 32)},
}


def _close(a: float, b: float, rel: float = 1e-6) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)


@torch.no_grad()
def _hand_model(preset: str, model: dict[str, Any]) -> tuple[Any, Any, torch.nn.Module]:
    """The hand-derived checks' model at m = r = 4 (width 32 -> 128, depth 2 -> 8), initialised, in eval mode."""
    from megadepth.config import validate
    from megadepth.model import GPT
    from megadepth.parametrize import Parametrization, initialize

    cfg = validate({
        "model": {"width": 128, "depth": 8, "base_width": 32, "base_heads": 4, "base_depth": 2, "seq_len": 16,
                  "vocab_size": 256, **model},
        "parametrization": {"name": preset, "init_std": SIGMA, "input_multiplier": ALPHA_IN},
        "optimizer": {"name": "adamw", "lr": ETA, "eps": EPS, "weight_decay": WD},
    })
    ptz = Parametrization.from_config(cfg.model, cfg.parametrization, optimizer=cfg.optimizer.name)
    net = GPT(cfg.model, ptz.multipliers())
    initialize(net, ptz, seed=0)
    net.eval()
    return cfg, ptz, net


def hand_derived_failures() -> list[str]:
    """What differs from the hand-derived numbers, for every preset: optimizer groups, init statistics,
    the model's multipliers, and the embedding, block and head forwards with each multiplier applied once."""
    from megadepth.parametrize import param_groups, param_roles

    fails: list[str] = []
    for preset, want in HAND.items():
        cfg, ptz, model = _hand_model(preset, {"heads": 4, "tie_embeddings": False})
        groups = {g["name"]: g for g in param_groups(model, ptz, cfg.optimizer)}
        params = dict(model.named_parameters())
        by_role: dict[str, list[torch.Tensor]] = {}
        for name, role in param_roles(model).items():
            by_role.setdefault(role.value, []).append(params[name].detach().flatten())
        for role, (std, lr, eps, wd) in want["roles"].items():
            if role == "qk_gain":
                continue  # GPT-2 has no QK-norm: llama_hand_failures checks it
            g = groups[role]
            for key, value in (("lr", lr), ("eps", eps), ("weight_decay", wd)):
                if not _close(g[key], value):
                    fails.append(f"{preset} {role} {key} {g[key]:.4g}, by hand {value:.4g}")
            values = torch.cat(by_role[role])
            if std is not None and not _close(float(values.std()), std, rel=0.05):
                fails.append(f"{preset} {role} init std {float(values.std()):.4g}, by hand {std:.4g}")
            if std is None and not bool((values == 1).all()):
                fails.append(f"{preset} {role} not initialised at 1")
        branch, readout, attn = want["mult"]
        block = model.blocks[0]
        found = (block.branch, model.head.multiplier, block.attn.scale, model.embed.multiplier)
        for what, got, value in zip(("branch", "readout", "attention scale", "embedding"), found,
                                    (branch, readout, attn, ALPHA_IN), strict=True):
            if not _close(got, value):
                fails.append(f"{preset} {what} multiplier {got:.4g}, by hand {value:.4g}")
        # the forwards, each multiplier applied once (by hand, from the module's own weights)
        tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
        emb = ALPHA_IN * (model.embed.token.weight[tokens] + model.embed.position.weight[:16])
        if not torch.allclose(model.embed(tokens), emb, rtol=1e-5, atol=1e-7):
            fails.append(f"{preset} embedding forward is not alpha_in (token + position)")
        x = torch.randn(2, 16, 128, generator=torch.Generator().manual_seed(1))
        mid = x + branch * block.attn(F.layer_norm(x, (128,)))
        out = mid + branch * block.mlp(F.layer_norm(mid, (128,)))
        if not torch.allclose(block(x), out, rtol=1e-4, atol=1e-6):
            fails.append(f"{preset} block forward is not x + branch f(x) with branch {branch:g}")
        logits = F.linear(readout * F.layer_norm(x, (128,)), model.head.proj.weight)
        if not torch.allclose(model.head(x), logits, rtol=1e-4, atol=1e-6):
            fails.append(f"{preset} head forward is not W (readout LN(x)) with readout {readout:g}")
    return fails + llama_hand_failures()


# The Llama block's parameters (blocks.i. left off) and the role of HAND whose numbers each must get: SwiGLU's
# gate and up and grouped-query key/value are hidden matrices, SwiGLU's down closes the branch (output_proj),
# RMSNorm gains are branch or final gains, the QK-norm gains their own role.
LLAMA_ROLES = {
    "attn.query.weight": "query", "attn.key_value.weight": "hidden", "attn.out.weight": "output_proj",
    "mlp.gate.weight": "hidden", "mlp.up.weight": "hidden", "mlp.down.weight": "output_proj",
    "attn_norm.weight": "branch_gain", "mlp_norm.weight": "branch_gain", "attn.q_norm.weight": "qk_gain",
    "attn.k_norm.weight": "qk_gain", "head.norm.weight": "final_gain", "embed.token.weight": "embedding",
    "head.proj.weight": "readout",
}
HEADS, KV_HEADS, HEAD_DIM, NORM_EPS = 4, 2, 32, 1e-5


def _rms_norm(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS) * gain


def _rotate(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotary positions by hand: pair i with i + d/2, rotated by position x theta^(-2i/d)."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float32) * 2 / x.shape[-1])
    angle = torch.arange(x.shape[-2], dtype=torch.float32)[:, None] * freqs
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()), dim=-1)


def _llama_block_by_hand(block: torch.nn.Module, x: torch.Tensor, branch: float, scale: float) -> torch.Tensor:
    """x + b Attn(RMS x) then + b SwiGLU(RMS x), from the block's own weights: 4 query heads, 2 key/value heads
    (rows laid out [kv head, key then value, head size]), each query head using key/value head j // 2, QK RMSNorm
    per head before rotary, softmax scale ``scale``."""
    attn, batch, seq = block.attn, x.shape[0], x.shape[1]
    h = _rms_norm(x, block.attn_norm.weight)
    q = (h @ attn.query.weight.T).view(batch, seq, HEADS, HEAD_DIM).transpose(1, 2)
    kv = (h @ attn.key_value.weight.T).view(batch, seq, KV_HEADS, 2, HEAD_DIM)
    k, v = kv[..., 0, :].transpose(1, 2), kv[..., 1, :].transpose(1, 2)
    q, k = _rotate(_rms_norm(q, attn.q_norm.weight)), _rotate(_rms_norm(k, attn.k_norm.weight))
    group = HEADS // KV_HEADS
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    logits = scale * q @ k.transpose(-1, -2)
    logits = logits.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf"))
    y = (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, HEADS * HEAD_DIM)
    mid = x + branch * y @ attn.out.weight.T
    h = _rms_norm(mid, block.mlp_norm.weight)
    mlp = block.mlp
    return mid + branch * (F.silu(h @ mlp.gate.weight.T) * (h @ mlp.up.weight.T)) @ mlp.down.weight.T


@torch.no_grad()
def llama_hand_failures() -> list[str]:
    """The Llama block (RMSNorm, SwiGLU, 4 heads on 2 key/value heads, QK-norm, rotary, untied head) at m = r = 4
    against HAND, parameter by parameter (each must sit in the group, and have the init, of the role it is
    listed under in LLAMA_ROLES), and its block and head forwards by hand, the multipliers applied once."""
    from megadepth.parametrize import param_groups

    fails: list[str] = []
    for preset, want in HAND.items():
        cfg, ptz, model = _hand_model(preset, {
            "heads": HEADS, "kv_heads": KV_HEADS, "base_kv_heads": KV_HEADS, "norm": "rmsnorm", "mlp": "swiglu",
            "ffn_multiple_of": 32, "qk_norm": True, "position": "rotary", "bias": False, "tie_embeddings": False,
            "norm_eps": NORM_EPS})
        group_of = {id(p): g for g in param_groups(model, ptz, cfg.optimizer) for p in g["params"]}
        values: dict[str, list[torch.Tensor]] = {}
        for name, param in model.named_parameters():
            local = name.split(".", 2)[2] if name.startswith("blocks.") else name
            if local not in LLAMA_ROLES:
                fails.append(f"{preset} llama: {name} has no hand-derived numbers")
                continue
            role = LLAMA_ROLES[local]
            _, lr, eps, wd = want["roles"][role]
            g = group_of[id(param)]
            for key, value in (("lr", lr), ("eps", eps), ("weight_decay", wd)):
                if not _close(g[key], value):
                    fails.append(f"{preset} llama {local} ({role}) {key} {g[key]:.4g}, by hand {value:.4g}")
            values.setdefault(local, []).append(param.detach().flatten())
        for local, tensors in values.items():
            std = want["roles"][LLAMA_ROLES[local]][0]
            flat = torch.cat(tensors)
            if std is not None and not _close(float(flat.std()), std, rel=0.05):
                fails.append(f"{preset} llama {local} init std {float(flat.std()):.4g}, by hand {std:.4g}")
            if std is None and not bool((flat == 1).all()):
                fails.append(f"{preset} llama {local} not initialised at 1")
        # the forwards by hand, with gains away from 1 so that a gain left out shows
        gen = torch.Generator().manual_seed(2)
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=gen))
        branch, readout, attn = want["mult"]
        x = torch.randn(2, 16, 128, generator=gen)
        block = model.blocks[0]
        if not torch.allclose(block(x), _llama_block_by_hand(block, x, branch, attn), rtol=1e-4, atol=1e-6):
            fails.append(f"{preset} llama block forward is not the hand-written one (branch {branch:g}, "
                         f"attention scale {attn:.4g})")
        logits = F.linear(readout * _rms_norm(x, model.head.norm.weight), model.head.proj.weight)
        if not torch.allclose(model.head(x), logits, rtol=1e-4, atol=1e-6):
            fails.append(f"{preset} llama head forward is not W (readout RMS(x)) with readout {readout:g}")
    return fails


# ---- the tests -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clean(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[str]]:
    """Each check's failures on the code as it is, computed once per module."""
    memo: dict[str, list[str]] = {}
    tmp = tmp_path_factory.mktemp("clean")

    def failures(check: str) -> list[str]:
        if check not in memo:
            memo[check] = hand_derived_failures() if check == "hand-derived" else coord_failures(
                sample_data, tmp, check, None)
        return memo[check]

    return failures


def test_mutations_are_many_and_each_names_a_check() -> None:
    assert len(MUTATIONS) >= 12
    assert {m.check for m in MUTATIONS.values()} <= {*COORD, "hand-derived"}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_a_mutation_is_caught(name: str, clean: Callable[[str], list[str]], sample_data: Path,
                              tmp_path: Path) -> None:
    mutation = MUTATIONS[name]
    assert clean(mutation.check) == [], f"{mutation.check} fails without the mutation"
    if mutation.check == "hand-derived":
        with pytest.MonkeyPatch.context() as mp:
            mutation.apply(mp)
            caught = hand_derived_failures()
    else:
        caught = coord_failures(sample_data, tmp_path, mutation.check, name)
    assert caught, f"{mutation.check} does not catch: {mutation.what}"
