"""Typed, validated configuration: the schema and the YAML loader."""

from megadepth.common.errors import ConfigError
from megadepth.config.load import all_keys, explain, load_config, resolve_batch, to_yaml, validate
from megadepth.config.schema import (
                                     Config,
                                     DataConfig,
                                     ModelConfig,
                                     OptimizerConfig,
                                     ParallelConfig,
                                     ParametrizationConfig,
                                     ScheduleConfig,
                                     TrainConfig,
                                     WandbConfig,
)

__all__ = ["Config", "ConfigError", "DataConfig", "ModelConfig", "OptimizerConfig", "ParallelConfig",
           "ParametrizationConfig", "ScheduleConfig", "TrainConfig", "WandbConfig", "all_keys", "explain",
           "load_config", "resolve_batch", "to_yaml", "validate"]
