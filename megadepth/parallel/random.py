"""RNG streams for tensor parallelism (Megatron's "model-parallel RNG tracker").

Dropout on replicated activations must draw the SAME mask on every tensor-parallel rank: the default
generator, seeded identically across them. Dropout on sharded activations (attention heads, sequence
shards) must draw DIFFERENT masks per rank: it runs inside ``tracker.fork()``, a second stream seeded
with the tensor-parallel rank. The trainer reseeds both per micro-batch, so resumed runs draw the masks
they would have drawn. (Initialisation uses neither: see megadepth.parametrize.apply.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class RNGTracker:
    """One extra RNG stream (CPU and, when present, the current CUDA device)."""

    def __init__(self) -> None:
        self._cpu: torch.Tensor | None = None
        self._cuda: torch.Tensor | None = None

    def seed(self, seed: int) -> None:
        cpu = torch.random.get_rng_state()
        cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
        torch.manual_seed(seed)
        self._cpu = torch.random.get_rng_state()
        self._cuda = torch.cuda.get_rng_state() if cuda is not None else None
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)

    @contextmanager
    def fork(self) -> Iterator[None]:
        """Run the body on the tracked stream; the default stream is left as it was."""
        if self._cpu is None:
            yield
            return
        cpu = torch.random.get_rng_state()
        cuda = torch.cuda.get_rng_state() if self._cuda is not None else None
        torch.random.set_rng_state(self._cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(self._cuda)
        try:
            yield
        finally:
            self._cpu = torch.random.get_rng_state()
            torch.random.set_rng_state(cpu)
            if cuda is not None:
                self._cuda = torch.cuda.get_rng_state()
                torch.cuda.set_rng_state(cuda)
