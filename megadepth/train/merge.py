"""Merge the tensor-parallel shards of a checkpoint into one TP=1 checkpoint of plain weights (no optimizer
states): ``OUT/<tag>/mp_rank_00_model_states.pt``, its ``config.yaml`` and ``OUT/latest``. Each parameter's
split dimension is read off a meta-device skeleton of the model, exactly as the trainer sharded it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import yaml

from megadepth.common.errors import ConfigError
from megadepth.common.io import atomic_write_text
from megadepth.config.load import to_yaml, validate
from megadepth.config.schema import Config
from megadepth.train import checkpoint


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


def _read_config(ckpt_dir: Path, tag: str | None) -> tuple[Config, str]:
    if tag is not None and not (ckpt_dir / tag).is_dir():
        there = ", ".join(checkpoint.complete_tags(ckpt_dir)) or "none"
        raise ConfigError(f"{ckpt_dir}: no checkpoint named {tag} (complete ones there: {there})")
    tag = tag or checkpoint.latest_tag(ckpt_dir)
    if tag is None:
        raise ConfigError(f"{ckpt_dir}: no complete checkpoint (no 'latest' pointer)")
    config_file = ckpt_dir / tag / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{config_file} is missing: not a megadepth checkpoint")
    return validate(yaml.safe_load(config_file.read_text(encoding="utf-8"))), tag


def _load(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"{path} is missing: {what}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a class outside plain tensors and containers: never built
        raise ConfigError(f"{path} holds objects other than tensors, refused (weights are loaded weights-only): "
                          f"{checkpoint.refusal(e)}") from None
    except Exception as e:  # a truncated or foreign file: torch raises RuntimeError, EOFError
        raise ConfigError(f"{path} cannot be read ({type(e).__name__}: {e}): the checkpoint is damaged") from None
    return data.get("module", data)


def _shards_plain(config: Config, folder: Path) -> list[dict[str, torch.Tensor]]:
    """One state dict per tensor-parallel rank of a checkpoint saved by the plain engine."""
    tp = config.parallel.tensor
    if config.parallel.zero_stage == 3:  # DeepSpeed's files hold pieces; the trainer gathered each shard
        return [_load(folder / checkpoint.gathered_weights_file(rank), f"a parallel.zero_stage 3 checkpoint saved "
                      f"at parallel.tensor = {tp} (written by a megadepth from before 2026-11-29?)")
                for rank in range(tp)]
    return [_load(folder / f"mp_rank_{rank:02d}_model_states.pt",
                  f"the checkpoint was saved at parallel.tensor = {tp}") for rank in range(tp)]


def _shards_pipeline(config: Config, folder: Path) -> list[dict[str, torch.Tensor]]:
    """The same from a pipeline checkpoint (a file per layer and tensor rank), in the plain GPT's names."""
    from megadepth.model.pipeline import canonical_name

    m = config.model
    layers = m.depth + (3 if m.tie_embeddings else 4)  # the tied head (layer L+3) has no file of its own
    shards: list[dict[str, torch.Tensor]] = []
    for rank in range(config.parallel.tensor):
        shard: dict[str, torch.Tensor] = {}
        for idx in range(layers):
            local = _load(folder / f"layer_{idx:02d}-model_{rank:02d}-model_states.pt",
                          f"pipeline layer {idx} of tensor rank {rank} (parallel.pipeline = {config.parallel.pipeline})")
            for key, value in local.items():
                name = f"tied_modules.embed.{key}" if idx == 0 else f"{idx}.{key}"
                shard[canonical_name(name, m.depth, m.tie_embeddings)] = value
        if m.tie_embeddings:  # the plain GPT's state dict lists the tied matrix under the head too
            shard["head.tied.weight"] = shard["embed.token.weight"]
        shards.append(shard)
    return shards


def consolidated_state(ckpt_dir: str | Path, tag: str | None = None) -> tuple[Config, dict[str, torch.Tensor], str]:
    """(config at TP = PP = 1, the plain GPT's state dict, tag) from a checkpoint of any layout."""
    ckpt_dir = checkpoint.checkpoints_folder(Path(ckpt_dir))
    config, tag = _read_config(ckpt_dir, tag)
    folder = ckpt_dir / tag
    shards = _shards_pipeline(config, folder) if config.parallel.pipeline > 1 else _shards_plain(config, folder)
    partitions = _skeleton_partitions(config)
    if set(partitions) != set(shards[0]):
        raise ConfigError(f"{folder}: its parameters do not match the model its config.yaml describes")
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
    broken = [key for key, t in merged.items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if broken:
        raise ConfigError(f"{folder}: {len(broken)} tensor(s) hold NaN or inf (e.g. {broken[0]}): the run "
                          "diverged before this checkpoint; use an earlier one (--tag)")
    # one plain file, whatever ZeRO stage saved them (a ZeRO-3 config would send readers to gathered shards)
    single = config.model_copy(update={"parallel": config.parallel.model_copy(
        update={"tensor": 1, "pipeline": 1, "sequence_parallel": False, "zero_stage": 0})})
    return single, merged, tag


def _check_out(source: Path, out_dir: Path) -> None:
    """The output must be a new (or empty) folder outside the source run (inside, it replaced the checkpoint)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a directory")
    blocked = next((p for p in out_dir.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise ConfigError(f"--out {out_dir}: {blocked} is a file, not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ConfigError(f"--out {out_dir} exists and is not an empty directory; merge into a new one")
    root = source.resolve()
    run = root.parent if root.name == "checkpoints" else root
    target = out_dir.resolve()
    if target == run or run in target.parents:
        raise ConfigError(f"--out {out_dir} is inside the run being merged ({run}); merge into a folder outside it")


def merge_tensor_parallel(ckpt_dir: str | Path, out_dir: str | Path, tag: str | None = None) -> Path:
    """Merge ``ckpt_dir/<tag>`` (default: ``latest``) into one TP = PP = 1 checkpoint in ``out_dir``."""
    out_dir = Path(out_dir)
    checkpoint.check_tag(tag)  # the command line's --tag: a checkpoint name, not a path out of the folder
    _check_out(Path(ckpt_dir), out_dir)
    merged_config, merged, tag = consolidated_state(ckpt_dir, tag)
    target = out_dir / tag / "mp_rank_00_model_states.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save({"module": merged}, tmp)
    tmp.replace(target)
    atomic_write_text(out_dir / tag / "config.yaml", to_yaml(merged_config))
    atomic_write_text(out_dir / checkpoint.LATEST, tag)  # last: the merged checkpoint is complete
    return target
