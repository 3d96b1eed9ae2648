"""Every check that can be made before a process group, model or run directory exists.

`megadepth launch` runs it once for the whole job before starting any process, and each rank runs it
again (cheap) in `megadepth train`, so a bad config costs a second, not a queued cluster job.
"""

from __future__ import annotations

from megadepth.config.load import resolve_batch
from megadepth.config.schema import Config
from megadepth.parallel.distributed import Layout, check_layout
from megadepth.parametrize.checks import check_parametrization
from megadepth.train.data_checks import check_tokenizer


def preflight(config: Config, world_size: int) -> tuple[Layout, int, int]:
    """(layout, grad_accum, global_batch) for ``world_size`` processes; raises ConfigError / DataError."""
    check_parametrization(config)
    layout = check_layout(config, world_size)
    grad_accum, global_batch = resolve_batch(config, layout.data)
    check_tokenizer(config)
    return layout, grad_accum, global_batch
