"""Optimizers megadepth brings itself (torch's cover Adam, AdamW and SGD)."""

from megadepth.optim.muon import COUNTER, MuonAdamW, newton_schulz, orthogonalised_update, shape_factor

__all__ = ["COUNTER", "MuonAdamW", "newton_schulz", "orthogonalised_update", "shape_factor"]
