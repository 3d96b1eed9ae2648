"""Blending several datasets by weight, deterministically and with bounded error on every prefix.

The simple vectorised schedule (dataset ``d`` emits at times ``(k + 0.5) / w_d``, merged by time) is
Webster's apportionment, which does not satisfy quota for three or more datasets. Instead this is
Tijdeman's solution of the "chairman assignment problem" (R. Tijdeman, 1980):
at step ``n`` a dataset is *eligible* when its lag ``n * w_d - count_d >= c`` with ``c = 1 / (2D - 2)``,
and among the eligible ones the one with the earliest deadline ``(count_d + 1 - c) / w_d`` is taken
(ties: lowest index). This guarantees ``|count_d(n) - n * w_d| <= 1 - c < 1`` for every prefix ``n`` and
every dataset ``d``: each dataset's count is the floor or the ceiling of its exact share, always.

The rule depends on the running counts, so it is a plain Python loop; the result can be cached on disk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from megadepth.common.errors import DataError
from megadepth.data.sample_index import load_or_build

__all__ = ["BlendedDataset", "blend_schedule"]

_BLEND_FORMAT = 1


def _normalise(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray([float(x) for x in weights], dtype=np.float64)
    if w.ndim != 1 or len(w) == 0:
        raise DataError("a blend needs at least one weight")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise DataError(f"blend weights must be finite and > 0, got {list(weights)}")
    return w / w.sum()


def blend_schedule(weights: Sequence[float], num_samples: int) -> np.ndarray:
    """Dataset index (int32) for each of the first ``num_samples`` global samples.

    Every prefix of length ``n`` holds, for each dataset ``d``, ``floor(n * w_d)`` or ``ceil(n * w_d)``
    of its samples (weights normalised to sum 1). See the module docstring for the rule.
    """
    w = _normalise(weights)
    out = np.zeros(num_samples, dtype=np.int32)
    num = len(w)
    if num == 1 or num_samples == 0:
        return out
    c = 1.0 / (2 * num - 2)
    wl = [float(x) for x in w]
    inv = [1.0 / x for x in wl]
    counts = [0] * num
    order = range(num)
    eps = 1e-12  # guards the eligibility test against rounding in n * w_d
    for n in range(1, num_samples + 1):
        best = -1
        best_deadline = 0.0
        for d in order:
            if n * wl[d] - counts[d] >= c - eps:
                deadline = (counts[d] + 1 - c) * inv[d]
                if best < 0 or deadline < best_deadline:
                    best, best_deadline = d, deadline
        if best < 0:  # unreachable in exact arithmetic (the lags sum to 1); keep the loop total anyway
            best = max(order, key=lambda d: n * wl[d] - counts[d])
        out[n - 1] = best
        counts[best] += 1
    return out


class BlendedDataset:
    """Global sample ``i`` is sample ``j`` of dataset ``dataset_index[i]``, ``j`` counting per dataset.

    The components are used in order (their own shuffles already randomise them); each must hold at
    least as many samples as the schedule gives it -- the builder sizes them with a margin.
    """

    def __init__(self, datasets: Sequence[Any], weights: Sequence[float], num_samples: int, *,
                 cache_dir: str | Path | None = None) -> None:
        if len(datasets) != len(weights):
            raise DataError(f"{len(datasets)} datasets but {len(weights)} weights")
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.datasets = list(datasets)
        self.weights = _normalise(weights)
        self.num_samples = int(num_samples)
        cache_path = None
        if cache_dir is not None:
            payload = {"format": _BLEND_FORMAT, "weights": [float(x).hex() for x in self.weights],
                       "num_samples": self.num_samples}
            key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
            cache_path = Path(cache_dir) / f"blend_index_{key[:32]}.npz"
        (self.dataset_index, self.dataset_sample_index), self.cache_hit = load_or_build(
            cache_path, ("dataset_index", "dataset_sample_index"),
            lambda c: len(c["dataset_index"]) == self.num_samples, self._schedule,
        )
        self.counts = np.bincount(self.dataset_index, minlength=len(self.datasets))
        for d, (ds, need) in enumerate(zip(self.datasets, self.counts, strict=True)):
            if len(ds) < need:
                raise DataError(f"blend component {d} ({getattr(ds, 'name', type(ds).__name__)}) has "
                                f"{len(ds)} samples but the blend takes {int(need)} from it")

    def _schedule(self) -> tuple[np.ndarray, np.ndarray]:
        dataset_index = blend_schedule(self.weights, self.num_samples)
        dataset_sample_index = np.zeros(self.num_samples, dtype=np.int64)
        for d in range(len(self.datasets)):
            mask = dataset_index == d
            dataset_sample_index[mask] = np.arange(int(mask.sum()), dtype=np.int64)
        return dataset_index, dataset_sample_index

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> np.ndarray:
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range ({self.num_samples} samples)")
        i %= self.num_samples
        return self.datasets[int(self.dataset_index[i])][int(self.dataset_sample_index[i])]

    def __repr__(self) -> str:
        parts = ", ".join(f"{w:.3g}:{len(d)}" for w, d in zip(self.weights, self.datasets, strict=True))
        return f"BlendedDataset(samples={self.num_samples}, components=[{parts}])"
