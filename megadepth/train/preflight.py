"""Every check that can be made before a process group, model or run directory exists.

`megadepth launch` runs it once for the whole job before starting any process, and each rank runs it
again (cheap) in `megadepth train`, so a bad config costs a second, not a queued cluster job.
"""

from __future__ import annotations

from megadepth.config.load import ConfigError, resolve_batch
from megadepth.config.schema import Config
from megadepth.parallel.distributed import Layout, check_layout
from megadepth.parametrize.checks import check_parametrization
from megadepth.train.data_checks import check_tokenizer


def preflight(config: Config, world_size: int) -> tuple[Layout, int, int]:
    """(layout, grad_accum, global_batch) for ``world_size`` processes; raises ConfigError / DataError."""
    check_parametrization(config)
    layout = check_layout(config, world_size)
    grad_accum, global_batch = resolve_batch(config, layout.data)
    _check_eval(config, layout)
    check_tokenizer(config)
    return layout, grad_accum, global_batch


def _check_eval(config: Config, layout: Layout) -> None:
    """Evaluation settings that would otherwise fail on every rank, or evaluate nothing and report NaN."""
    t = config.train
    if t.eval_every and t.eval_samples == 0:
        raise ConfigError("train.eval_every is set but train.eval_samples is 0: there is nothing to evaluate")
    per_round = t.micro_batch * layout.data
    if layout.pipeline > 1 and t.eval_samples % per_round:
        # the pipeline engine evaluates whole micro-batches on every data rank
        raise ConfigError(
            f"with parallel.pipeline > 1, train.eval_samples must be a multiple of micro_batch x data-parallel "
            f"size = {t.micro_batch} x {layout.data} = {per_round} (got {t.eval_samples})"
        )
