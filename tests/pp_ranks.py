"""Rank functions for the pipeline tests (importable by the forkserver ranks)."""

from __future__ import annotations

from typing import Any

import torch


def _build(config_dict: dict, weights: Any = None):
    from megadepth.config import validate
    from megadepth.parallel.distributed import init_distributed, prepare_deepspeed_env, read_env
    from megadepth.parallel.topology import build_grid
    from megadepth.train.engine import build_engine
    from megadepth.train.preflight import preflight

    config = validate(config_dict)
    env = read_env()
    device = torch.device("cpu")
    layout, accum, global_batch = preflight(config, env.world_size)
    prepare_deepspeed_env(device)
    init_distributed(config, env, device)
    grid = build_grid(layout.pipeline, layout.tensor, layout.data, config.parallel.sequence_parallel)
    return config, grid, build_engine(config, device, accum, global_batch, "fp32", grid, weights=weights)


def tied_weights_after_steps(config_dict: dict, steps: int) -> dict[str, Any]:
    """Train ``steps`` pipeline steps on random tokens; the tied embedding as this stage holds it,
    before and after."""
    config, grid, built = _build(config_dict)
    weight = built.model.tied_modules["embed"].weight
    before = weight.detach().numpy().copy()
    gen = torch.Generator().manual_seed(0)
    cfg = config.model

    def batches():
        while True:
            tokens = torch.randint(0, cfg.vocab_size, (config.train.micro_batch, cfg.seq_len + 1), generator=gen)
            yield tokens[:, :-1], tokens[:, 1:]

    for _ in range(steps):
        built.engine.train_batch(data_iter=batches())
    after = weight.detach().numpy().copy()
    torch.distributed.destroy_process_group()
    return {"stage": grid.pipe_rank, "before": before, "after": after}


def built_stage(config_dict: dict) -> dict[str, Any]:
    """Build the engine for the config's layout on this rank and report what this stage holds:
    its initial weights under their plain-GPT names, its optimizer groups, its branch multipliers."""
    config, grid, built = _build(config_dict)
    names = dict(built.model.named_parameters())
    if built.pipeline:
        from megadepth.model.pipeline import canonical_name

        state = {canonical_name(n, config.model.depth, config.model.tie_embeddings): p.detach().numpy().copy()
                 for n, p in names.items() if not n.startswith("placeholder_")}
    else:
        state = {n: p.detach().numpy().copy() for n, p in names.items()}
    groups = sorted((g["name"], g["lr"], g.get("eps"), g["weight_decay"]) for g in built.groups)
    branches = sorted({m.branch for m in built.model.modules() if hasattr(m, "branch")})
    torch.distributed.destroy_process_group()
    return {"state": state, "groups": groups, "branches": branches, "stage": grid.pipe_rank}


def weights_from_checkpoint(config_dict: dict) -> dict[str, Any]:
    """Build the engine for the config's layout with train.init_from resolved as the trainer does, and
    report this rank's parameters under their plain-GPT names with how they are sliced."""
    from megadepth.config import validate
    from megadepth.train.init_from import check_init_source

    source = check_init_source(validate(config_dict))
    config, grid, built = _build(config_dict, weights=source)
    out = {}
    for name, p in built.model.named_parameters():
        if name.startswith("placeholder_"):
            continue
        if built.pipeline:
            from megadepth.model.pipeline import canonical_name

            name = canonical_name(name, config.model.depth, config.model.tie_embeddings)
        out[name] = (p.detach().numpy().copy(), getattr(p, "tp_size", 1), getattr(p, "partition_dim", None),
                     getattr(p, "tp_rank", 0))
    torch.distributed.destroy_process_group()
    return out
