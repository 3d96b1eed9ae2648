"""Loading training configs (merge files, apply ``--set`` overrides, validate) through
:class:`megadepth.common.typed_yaml.TypedYaml`, plus the default run directory, the resolved YAML and the
batch arithmetic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from pydantic import BaseModel

from megadepth.common.errors import ConfigError
from megadepth.common.typed_yaml import TypedYaml, deep_merge, schema_fields
from megadepth.config.schema import Config

__all__ = ["all_keys", "apply_override", "default_out_dir", "explain", "load_config", "parse_override", "read_yaml",
           "resolve_batch", "to_yaml", "validate"]

CONFIG = TypedYaml(Config, ConfigError, "config")
"""The training config's loader; the functions below are its methods."""

read_yaml = CONFIG.read
parse_override = CONFIG.parse_override
apply_override = CONFIG.apply_override
validate = CONFIG.validate


def all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the schema, e.g. ``model.depth``."""
    return [key for key, _ in schema_fields(model, prefix)]


DEFAULT_RUN_ROOT = "runs"
"""Where a run directory goes when no file or --set names train.out_dir (see :func:`default_out_dir`)."""


def default_out_dir(paths: Sequence[str | Path]) -> str | None:
    """``runs/<stems of the config files, joined by '+'>`` (``runs/gpt-124m+completep``); None without files.
    From the command line alone, so every rank and a rerun after a preemption find the same directory.
    Long names keep their first 100 bytes and a digest."""
    stems = list(dict.fromkeys(Path(p).stem for p in paths))
    if not stems:
        return None
    name = "+".join(stems)
    if len(name.encode()) > 120:  # a file name may hold 255 bytes: keep a readable head and a digest of the rest
        import hashlib

        head = name.encode()[:100].decode("utf-8", errors="ignore")
        name = f"{head}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return f"{DEFAULT_RUN_ROOT}/{name}"


def load_config(paths: Sequence[str | Path], overrides: Sequence[str] = ()) -> Config:
    """Merge ``paths`` left to right, apply ``overrides`` (``a.b=c``) in order, validate (see default_out_dir)."""
    data = CONFIG.merge(paths, overrides)
    train = data.get("train")
    derived = default_out_dir(paths)
    if derived is not None and (train is None or isinstance(train, Mapping) and "out_dir" not in train):
        data = deep_merge(data, {"train": {"out_dir": derived}})
    return validate(data)


def to_yaml(config: Config) -> str:
    """The resolved config as YAML (what goes into every run directory and checkpoint)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def explain(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, docstring) for every leaf field: the schema's documentation."""
    return [(key, repr(field.get_default(call_default_factory=True)), " ".join((field.description or "").split()))
            for key, field in schema_fields(model, prefix)]


def resolve_batch(config: Config, dp_size: int) -> tuple[int, int]:
    """(grad_accum, global_batch) for a data-parallel size, checking global = micro x accum x dp."""
    train = config.train
    per_step = train.micro_batch * dp_size
    if train.grad_accum is None and train.global_batch is not None:
        if train.global_batch % per_step:
            raise ConfigError(f"train.global_batch ({train.global_batch}) is not divisible by train.micro_batch "
                              f"({train.micro_batch}) x data-parallel size ({dp_size})")
        return train.global_batch // per_step, train.global_batch
    accum = train.grad_accum or 1
    if train.global_batch is not None and train.global_batch != per_step * accum:
        raise ConfigError(f"train.global_batch ({train.global_batch}) != train.micro_batch ({train.micro_batch}) x "
                          f"train.grad_accum ({accum}) x data-parallel size ({dp_size}) = {per_step * accum}")
    return accum, per_step * accum
