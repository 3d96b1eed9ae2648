"""Merge the tensor-parallel shards of a checkpoint into one TP=1 checkpoint (for export, evaluation,
or continuing on a different layout).

Which dimension each parameter was split along is not guessed from shapes: a skeleton of the model is
built on the meta device at the checkpoint's TP size (no memory, no process group) and each parameter's
``partition_dim`` is read off it, exactly as the trainer sharded it. Replicated parameters must be
identical in every shard; a mismatch is an error, not a silent pick.

Output: ``OUT/<tag>/mp_rank_00_model_states.pt`` (``{"module": state_dict}``, plain tensors, loadable
with ``torch.load(weights_only=True)`` and by DeepSpeed's ``load_checkpoint(load_module_only=True)``),
``OUT/<tag>/config.yaml`` (the run's config at ``parallel.tensor: 1``) and ``OUT/latest``.
Optimizer states are not merged: continue training from the merged weights, not from their momentum.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from megadepth.config.load import ConfigError, to_yaml, validate
from megadepth.config.schema import Config
from megadepth.train.checkpoint import LATEST, latest_tag
from megadepth.train.rundir import atomic_write_text


def _skeleton_partitions(config: Config) -> dict[str, int | None]:
    """state_dict key -> partition dim (None: replicated) for the config's TP size."""
    from megadepth.model import GPT
    from megadepth.parallel.topology import TensorParallel
    from megadepth.parametrize import Parametrization

    ptz = Parametrization.from_config(config.model, config.parametrization, optimizer=config.optimizer.name)
    tp = TensorParallel(size=config.parallel.tensor)
    with torch.device("meta"):
        model = GPT(config.model, ptz.multipliers(), tp)
    return {
        key: (getattr(value, "partition_dim", None) if getattr(value, "tp_size", 1) > 1 else None)
        for key, value in model.state_dict(keep_vars=True).items()
    }


def merge_tensor_parallel(ckpt_dir: str | Path, out_dir: str | Path, tag: str | None = None) -> Path:
    """Merge ``ckpt_dir/<tag>`` (default: the ``latest`` one) into ``out_dir``; returns the shard path."""
    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    tag = tag or latest_tag(ckpt_dir)
    if tag is None or not (ckpt_dir / tag).is_dir():
        raise ConfigError(f"{ckpt_dir}: no complete checkpoint{f' named {tag}' if tag else ''} (no 'latest' pointer)")
    config_file = ckpt_dir / tag / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{config_file} is missing: not a megadepth checkpoint")
    config = validate(yaml.safe_load(config_file.read_text(encoding="utf-8")))
    tp = config.parallel.tensor
    shards = []
    for rank in range(tp):
        path = ckpt_dir / tag / f"mp_rank_{rank:02d}_model_states.pt"
        if not path.is_file():
            raise ConfigError(f"{path} is missing: the checkpoint was saved at parallel.tensor = {tp}")
        shards.append(torch.load(path, map_location="cpu", weights_only=True)["module"])
    partitions = _skeleton_partitions(config)
    if set(partitions) != set(shards[0]):
        raise ConfigError(f"{ckpt_dir / tag}: its parameters do not match the model its config.yaml describes")
    merged = {}
    for key, dim in partitions.items():
        parts = [s[key] for s in shards]
        if dim is None:
            for rank, other in enumerate(parts[1:], start=1):
                if not torch.equal(other, parts[0]):
                    raise ConfigError(f"replicated parameter {key} differs between TP ranks 0 and {rank}")
            merged[key] = parts[0].clone()
        else:
            merged[key] = torch.cat(parts, dim=dim)
    merged_config = config.model_copy(update={"parallel": config.parallel.model_copy(
        update={"tensor": 1, "sequence_parallel": False})})
    target = out_dir / tag / "mp_rank_00_model_states.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save({"module": merged}, tmp)
    tmp.replace(target)
    atomic_write_text(out_dir / tag / "config.yaml", to_yaml(merged_config))
    atomic_write_text(out_dir / LATEST, tag)  # last: the merged checkpoint is complete
    return target
