"""Data-parallel micro-batch order whose whole state is one number: samples consumed so far.

Megatron's pretraining sampler: global sample order is 0, 1, 2, ... (the datasets shuffle themselves);
each micro-step takes the next ``micro_batch * dp_size`` samples and rank ``r`` gets the ``r``-th chunk
of ``micro_batch``. A checkpoint stores the position; resuming continues exactly where the run stopped,
and layouts with the same samples per optimizer step consume the same samples.

torch is imported inside functions: ``megadepth prep`` imports this package and need not pay for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["MicroBatchSampler", "collate_samples", "make_loader"]


class MicroBatchSampler:
    """Yields this rank's list of sample indices for each micro-step, from ``consumed_samples`` on; stops
    when less than a full micro-step remains, so that every rank runs the same number of steps."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch: int, dp_rank: int,
                 dp_size: int) -> None:
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"need 0 <= dp_rank < dp_size, got dp_rank={dp_rank}, dp_size={dp_size}")
        if total_samples < 0 or consumed_samples < 0:
            raise ValueError(f"total_samples and consumed_samples must be >= 0, got {total_samples}, "
                             f"{consumed_samples}")
        self.total_samples = int(total_samples)
        self.consumed_samples = int(consumed_samples)
        self.micro_batch = int(micro_batch)
        self.dp_rank = int(dp_rank)
        self.dp_size = int(dp_size)

    @property
    def step_samples(self) -> int:
        """Samples consumed by one micro-step over all data-parallel ranks."""
        return self.micro_batch * self.dp_size

    def __len__(self) -> int:
        """Micro-steps left."""
        return max(0, self.total_samples - self.consumed_samples) // self.step_samples

    def __iter__(self) -> Iterator[list[int]]:
        start = self.consumed_samples + self.dp_rank * self.micro_batch
        for _ in range(len(self)):
            yield list(range(start, start + self.micro_batch))
            start += self.step_samples


def collate_samples(samples: list[np.ndarray]) -> Any:
    """Stack ``seq_len + 1``-token samples into one ``torch.LongTensor [B, seq_len + 1]`` (one
    ``from_numpy``, not torch's per-element default collate)."""
    import torch

    return torch.from_numpy(np.stack([np.asarray(s, dtype=np.int64) for s in samples]))


def make_loader(dataset: Any, sampler: MicroBatchSampler, num_workers: int = 0,
                pin_memory: bool = False) -> Any:
    """A ``torch.utils.data.DataLoader`` over ``dataset`` in ``sampler``'s order; workers, if any, prefetch
    2 batches each and persist across iterations (datasets re-open their memory maps in each)."""
    from torch.utils.data import DataLoader

    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(prefetch_factor=2, persistent_workers=True)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                        collate_fn=collate_samples, **kwargs)
    return _OneLineErrors(loader) if num_workers > 0 else loader


class _OneLineErrors:
    """Iterates a worker-backed DataLoader; a DataError raised in a worker comes out as its own one-line
    message, not torch's "Caught DataError in DataLoader worker process 0. Original Traceback ..."."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        from megadepth.common.errors import DataError

        try:
            yield from self.loader
        except DataError as exc:
            raise DataError(_worker_message(exc)) from None


def _worker_message(exc: BaseException) -> str:
    """The original message of an exception torch re-raised from a DataLoader worker (else ``str(exc)``)."""
    text = str(exc)
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return text
    last = text.rstrip().splitlines()[-1]
    for name in (type(exc).__qualname__, f"{type(exc).__module__}.{type(exc).__qualname__}"):
        if last.startswith(f"{name}: "):
            return last[len(name) + 2:]
    head, sep, rest = last.partition(": ")
    return rest if sep and head.rsplit(".", 1)[-1] == type(exc).__name__ else last
