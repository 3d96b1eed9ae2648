"""Combinations that would silently run a different parametrization than asked: refused at start-up.
Combinations that run but that no reference defines: a warning on stderr, once per process."""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

from megadepth.common.errors import ConfigError
from megadepth.config.schema import Config
from megadepth.parametrize.rules import (
    ADAM_FAMILY,
    MUON_FAMILY,
    SGD_FAMILY,
    base_head_problem,
    kv_heads_problem,
    scales_depth,
    scales_width,
)

_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Print a warning to stderr once per process (and only where RANK is unset or 0)."""
    if message in _warned:
        return
    _warned.add(message)
    if os.environ.get("RANK", "0") == "0":
        print(f"megadepth: WARNING: {message}", file=sys.stderr, flush=True)


def check_parametrization(config: Config) -> None:
    """Static checks of the config; each failure names the keys involved."""
    model, ptz, opt = config.model, config.parametrization, config.optimizer
    if opt.name not in ADAM_FAMILY + SGD_FAMILY + MUON_FAMILY:
        raise ConfigError(f"optimizer.name '{opt.name}' has no parametrization rule")
    if opt.name in MUON_FAMILY:
        _check_muon_layout(config)
    for key, base, size, ratio in (("width", model.base_width, model.width, "m"),
                                   ("depth", model.base_depth, model.depth, "r")):
        if base and base > size:
            raise ConfigError(f"model.base_{key} ({base}) is larger than model.{key} ({size}): tune at the "
                              f"base shape and scale up ({ratio} >= 1)")
    if model.tie_embeddings and ptz.zero_readout:
        raise ConfigError("parametrization.zero_readout with model.tie_embeddings would zero the shared "
                          "token embedding; untie the embeddings or drop zero_readout")
    _check_rule_options(config)
    problem = base_head_problem(model, ptz) or kv_heads_problem(model, ptz)
    if problem:
        raise ConfigError(problem)
    _check_ignored_block_keys(config)
    _warn_mlp_width_unlike_m(config)
    if model.block == "linear":
        ignored = {"model.position: rotary": model.position == "rotary",
                   "parametrization.zero_query": ptz.zero_query,
                   "parametrization.attn_multiplier": ptz.attn_multiplier != 1.0,
                   "parametrization.base_head_dim": ptz.base_head_dim is not None,
                   "model.base_heads": model.base_heads is not None}
        _refuse_ignored(ignored, "model.block: linear (no attention)")


def _refuse_ignored(ignored: dict[str, bool], setting: str) -> None:
    """One error naming every key of ``ignored`` that is set (True) and has no effect with ``setting``."""
    set_keys = [k for k, on in ignored.items() if on]
    if set_keys:
        raise ConfigError(f"{', '.join(set_keys)} has no effect with {setting}")


def _check_muon_layout(config: Config) -> None:
    """Muon runs where it sees whole matrices: ZeRO 0 (its optimizer is the engine's) and ZeRO 1, also in
    the pipeline engine (the Muon matrices step beside ZeRO's flat partitions: megadepth.optim.beside_zero).
    Refused rather than degraded: ZeRO 2 and 3 (untested: stage 2 reduces gradients in backward hooks, stage
    3 partitions the weights themselves) and precision bf16 (bf16 weights outside ZeRO's fp32 master copy)."""
    par = config.parallel
    if par.zero_stage > 1:
        raise ConfigError(f"optimizer.name: muon with parallel.zero_stage {par.zero_stage}: not supported (Muon "
                          "orthogonalises whole matrices; it runs at parallel.zero_stage 0 or 1, the pipeline "
                          "engine included)")
    if config.train.precision == "bf16":
        raise ConfigError("optimizer.name: muon with train.precision bf16: not supported (Muon would step the "
                          "bf16 weights without an fp32 master copy); use fp32 or bf16-mixed")


def _check_ignored_block_keys(config: Config) -> None:
    """Model keys set away from their defaults that the chosen block options never read: refused by name (a
    user who set them expected an effect)."""
    model = config.model
    defaults = type(model)()
    ignored = {
        f"model.mlp_ratio ({model.mlp_ratio:g})": model.mlp_ratio != defaults.mlp_ratio and (
            model.mlp == "swiglu" or model.ffn_hidden is not None),
        f"model.ffn_multiple_of ({model.ffn_multiple_of})": model.ffn_multiple_of != defaults.ffn_multiple_of and (
            model.mlp != "swiglu" or model.ffn_hidden is not None),
        f"model.rope_theta ({model.rope_theta:g})": model.rope_theta != defaults.rope_theta
        and model.position != "rotary",
    }
    reads = (f"model.mlp: {model.mlp}" + (", model.ffn_hidden" if model.ffn_hidden is not None else "")
             + f", model.position: {model.position}")
    _refuse_ignored(ignored, f"{reads} (the MLP width comes from model.ffn_hidden when set, else mlp_ratio for "
                             "gelu/relu/abs and ffn_multiple_of for swiglu; rope_theta is read by rotary positions "
                             "only); drop it")


def _warn_mlp_width_unlike_m(config: Config) -> None:
    """A width-scaled run whose MLP width does not grow like the width (Llama's rounding of 8/3 x width):
    megadepth scales every hidden matrix by the one width multiplier m, so say how far the MLP is from it."""
    model, ptz = config.model, config.parametrization
    base_width = model.base_width or model.width
    if model.block != "transformer" or base_width == model.width or not scales_width(ptz.name) \
            or model.ffn_hidden is not None:
        return
    base_mlp = type(model)(width=base_width, heads=1, mlp=model.mlp, mlp_ratio=model.mlp_ratio,
                           ffn_multiple_of=model.ffn_multiple_of).mlp_width
    m, grew = model.width / base_width, model.mlp_width / base_mlp
    if abs(grew / m - 1) > 1e-9:
        warn_once(f"the MLP width grows by {grew:.4g} ({base_mlp} at the base width {base_width}, {model.mlp_width} "
                  f"here) while the width grows by m = {m:g}: the parametrization scales the MLP matrices by m, "
                  "as if the MLP grew like the width (with swiglu, 8/3 x width is rounded up to "
                  "model.ffn_multiple_of; a smaller multiple, or model.ffn_hidden in proportion, keeps the ratio)")


def _check_rule_options(config: Config) -> None:
    """The rule options of docs/parametrizations.md ("Rule sources"): refused where they would have no
    effect or count depth twice; a warning where the combination has no published source."""
    ptz, opt = config.parametrization, config.optimizer
    depth = scales_depth(ptz.name)
    if ptz.output_proj_init == "gpt2" and depth:
        raise ConfigError(f"parametrization.output_proj_init: gpt2 with {ptz.name}: its branch multiplier "
                          "already scales depth (r^-alpha); GPT-2's 1/sqrt(2L) would count depth twice (no "
                          "reference does this); use base_depth (the default) or none")
    if ptz.output_proj_init == "base_depth" and not depth:
        raise ConfigError(f"parametrization.output_proj_init: base_depth with {ptz.name}, which does not "
                          "parametrize depth (model.base_depth would change its model); use gpt2 (the "
                          "default) or none")
    if opt.name in SGD_FAMILY and ptz.eps_scaling is not None:
        raise ConfigError("parametrization.eps_scaling has no effect with optimizer.name: sgd (no eps); drop it")
    if opt.name != "adam" and ptz.adam_wd_scaling is not None:
        raise ConfigError(f"parametrization.adam_wd_scaling has no effect with optimizer.name: {opt.name} "
                          "(it decays by lr x wd per step, and wd always goes inversely to the LR); drop it")
    if ptz.name == "completep" and opt.name in SGD_FAMILY:
        warn_once("parametrization.name: completep with optimizer.name: sgd has no published source: "
                  "CompleteP (Dey et al. 2025) is defined for AdamW; megadepth extrapolates Tensor Programs "
                  "VI's SGD rule (gamma = 1 - 2 alpha = -1: in-branch LR x r, growing with depth). Use "
                  "depth_mup for SGD, or parametrization.name: custom with alpha and gamma of your choosing")


def verify_attention_scale(device: torch.device, dtype: torch.dtype) -> None:
    """Prove, on the real device and dtype, that the attention kernel honours a non-default softmax scale
    (muP's 1/d_head): a backend that dropped ``scale`` would silently train SP attention."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 16, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    scale = 0.37 / 16
    got = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale).float()
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(torch.triu(torch.ones(8, 8, dtype=torch.bool, device=device), 1), float("-inf"))
    ref = scores.softmax(-1) @ v.float()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    if not torch.allclose(got, ref, atol=tol, rtol=tol):
        raise ConfigError("the attention kernel ignores the softmax scale the parametrization sets (max "
                          f"error {float((got - ref).abs().max()):.3g} on {device}, {dtype}); refusing to "
                          "train")
