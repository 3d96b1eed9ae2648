"""``train.init_from``: start a new run from another run's weights, at any parallel layout: the source is
merged on the CPU and each parameter of this rank takes its slice, before the engine copies the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from megadepth.common.errors import ConfigError
from megadepth.config.schema import Config, ModelConfig

#: Model keys that decide the shapes of the saved tensors: weights fit only a model with the same ones.
SHAPE_KEYS = ("block", "depth", "width", "heads", "n_kv_heads", "mlp", "mlp_width", "norm", "qk_norm", "vocab_size",
              "vocab_multiple", "positions", "position", "tie_embeddings", "bias")


def shape_differences(saved: ModelConfig, model: ModelConfig) -> str:
    """``model.K A there, B here`` for every shape key that differs ('' when none does)."""
    names = {"positions": "position table (model.max_positions, else model.seq_len)",  # derived, not keys
             "n_kv_heads": "key/value heads (model.kv_heads, else model.heads)",
             "mlp_width": "MLP width (model.ffn_hidden, else from model.mlp_ratio or model.ffn_multiple_of)"}
    differing = [k for k in SHAPE_KEYS if getattr(saved, k) != getattr(model, k)]
    if "width" in differing or "mlp" in differing:  # the MLP width follows them: not a difference of its own
        differing = [k for k in differing if k != "mlp_width"]
    return ", ".join(f"{names.get(k, f'model.{k}')} {getattr(saved, k)} there, {getattr(model, k)} here"
                     for k in differing)


@dataclass(frozen=True)
class WeightSource:
    """A checked checkpoint to take weights from: its checkpoints folder and tag."""

    ckpt_dir: Path
    tag: str

    def __str__(self) -> str:
        return str(self.ckpt_dir / self.tag)


def check_init_source(config: Config) -> WeightSource:
    """Resolve ``train.init_from`` to a complete checkpoint of this model's shape; ConfigError otherwise."""
    from megadepth.train.checkpoint import checkpoints_folder, latest_tag, saved_config

    raw = Path(str(config.train.init_from))
    if not raw.exists():
        raise ConfigError(f"train.init_from: {raw} does not exist")
    raw = checkpoints_folder(raw)
    found = latest_tag(raw) if raw.is_dir() else None
    if found is not None:  # a checkpoints folder (or merge-tp output): its latest complete checkpoint
        ckpt_dir, tag = raw, found
    elif (raw / "config.yaml").is_file():  # one checkpoint (config.yaml is written last: it is complete)
        ckpt_dir, tag = raw.parent, raw.name
    else:
        raise ConfigError(f"train.init_from: {raw} holds no complete checkpoint (give a run's folder, its "
                          "checkpoints folder, one step_* folder in it whose save finished, or merge-tp output)")
    try:
        saved = saved_config(ckpt_dir / tag)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"train.init_from: {ckpt_dir / tag}/config.yaml is not a readable megadepth config "
                          f"({str(exc).splitlines()[0]})") from None
    diffs = shape_differences(saved.model, config.model)
    if diffs:
        raise ConfigError(f"train.init_from: {ckpt_dir / tag} holds a model of another shape ({diffs})")
    return WeightSource(ckpt_dir, tag)


@torch.no_grad()
def load_weights(model: nn.Module, source: WeightSource, name_for: Callable[[str], str] | None = None) -> None:
    """Copy the source's weights into this rank's ``model``; ``name_for`` maps pipeline names to the GPT's."""
    from megadepth.train.merge import consolidated_state

    _, state, _ = consolidated_state(source.ckpt_dir, source.tag)
    for name, param in model.named_parameters():
        if name.startswith("placeholder_"):  # pipeline stages' empty role markers hold no weights
            continue
        key = name_for(name) if name_for else name
        if key not in state:
            raise ConfigError(f"train.init_from: {source} has no parameter {key}")
        full = state[key]
        if getattr(param, "tp_size", 1) > 1:
            full = full.chunk(param.tp_size, dim=param.partition_dim)[param.tp_rank]
        if tuple(full.shape) != tuple(param.shape):
            raise ConfigError(f"train.init_from: {key} is {tuple(full.shape)} in {source}, "
                              f"{tuple(param.shape)} here")
        param.copy_(full.to(device=param.device, dtype=param.dtype))
