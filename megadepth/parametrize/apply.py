"""Applying a parametrization to a model: deterministic init and optimizer parameter groups."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from megadepth.config.schema import OptimizerConfig
from megadepth.parametrize.roles import Role
from megadepth.parametrize.rules import ADAM_FAMILY, MUON_FAMILY, Parametrization


def param_roles(model: nn.Module) -> dict[str, Role]:
    """Role of every parameter of ``model`` by its full name, from the modules' ``param_roles`` dicts (local
    name -> Role). Every trainable parameter must be covered: an untagged one raises."""
    roles: dict[str, Role] = {}
    for mod_name, module in model.named_modules():
        for local, role in getattr(module, "param_roles", {}).items():
            if getattr(module, local, None) is None:
                continue  # optional parameter (e.g. bias=False)
            roles[f"{mod_name}.{local}" if mod_name else local] = role
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in roles]
    if missing:
        raise ValueError(f"parameters without a parametrization role: {', '.join(missing)}")
    return roles


def stable_seed(seed: int, name: str) -> int:
    """A per-parameter seed that depends only on (seed, name): the same under any parallel layout and
    construction order, and across processes (unlike Python's salted hash())."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def initialize(model: nn.Module, ptz: Parametrization, seed: int,
               name_for: Callable[[str], str] | None = None) -> None:
    """Initialise every parameter from its role's rule, each from its own seeded generator; tensor-parallel
    shards draw the whole global tensor and keep their slice, so TP=2 gathered equals TP=1."""
    params = dict(model.named_parameters())
    for name, role in param_roles(model).items():
        param = params[name]
        rule = ptz.rule(role)
        seed_name = name_for(name) if name_for else name  # pipeline stages map to the plain GPT's names
        if rule.init_std == 0.0:
            param.fill_(rule.init_value)
            continue
        # draw the GLOBAL tensor and keep this rank's slice: identical weights under any layout
        global_shape = getattr(param, "global_shape", tuple(param.shape))
        gen = torch.Generator(device=param.device).manual_seed(stable_seed(seed, seed_name))
        values = torch.empty(global_shape, dtype=torch.float32, device=param.device)
        values.normal_(0.0, rule.init_std, generator=gen)
        if getattr(param, "tp_size", 1) > 1:
            values = values.chunk(param.tp_size, dim=param.partition_dim)[param.tp_rank]
        param.copy_(values)


def param_groups(model: nn.Module, ptz: Parametrization, optimizer: OptimizerConfig) -> list[dict]:
    """One optimizer group per role present, with absolute lr, weight decay (and Adam's eps), its role
    ``name`` and ``lr_mult`` (its LR relative to its base LR: optimizer.lr, or optimizer.muon.lr for Muon's
    matrices when set). Tied parameters appear once. Under muon, a
    group's ``use_muon`` says which half of megadepth.optim.MuonAdamW steps it, and key/value matrices are
    tagged so that Muon orthogonalises K and V apart."""
    ptz = ptz.for_optimizer(optimizer)
    roles = param_roles(model)
    params = dict(model.named_parameters())
    by_role: dict[Role, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for name, role in roles.items():
        p = params[name]
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        by_role.setdefault(role, []).append(p)
    groups = []
    for role in Role:  # fixed order: identical group order on every rank and stage
        if role not in by_role:
            continue
        rule = ptz.rule(role)
        family = ptz.family(role)
        base_lr = optimizer.base_lr(muon_half=family in MUON_FAMILY)
        group = {"name": role.value, "params": by_role[role], "lr": base_lr * rule.lr_mult,
                 "lr_mult": rule.lr_mult, "weight_decay": optimizer.weight_decay * rule.wd_mult}
        if family in ADAM_FAMILY:
            group.update(eps=optimizer.eps * rule.eps_mult, betas=tuple(optimizer.betas))
        if optimizer.name in MUON_FAMILY:
            muon = optimizer.muon
            group.update(use_muon=family in MUON_FAMILY, momentum=muon.momentum, nesterov=muon.nesterov,
                         ns_steps=muon.ns_steps, adjust_lr=muon.adjust_lr)
        groups.append(group)
    if optimizer.name in MUON_FAMILY:
        _tag_key_value(model, ptz.head_dim)
    return groups


def _tag_key_value(model: nn.Module, head_dim: int) -> None:
    """Mark every key_value weight (rows [kv_heads, 2 (k, v), head_dim]) for Muon's K/V split; pipeline stages
    keep the name's ending."""
    from megadepth.optim.muon import mark_kv_split

    for name, p in model.named_parameters():
        if name.endswith("attn.key_value.weight"):
            mark_kv_split(p, head_dim)


def roles_present(model: nn.Module) -> list[Role]:
    present = set(param_roles(model).values())
    return [r for r in Role if r in present]


def count_params(params: Iterable[nn.Parameter]) -> int:
    """Parameters counted once each (tied matrices once)."""
    return sum(p.numel() for p in {id(p): p for p in params}.values())
