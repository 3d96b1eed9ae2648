"""Rank functions for the Muon tests (importable by the forkserver ranks)."""

from __future__ import annotations


def train_counting(config_dict: dict) -> dict:
    """Train; returns the summary and how many Newton-Schulz orthogonalisations this process ran."""
    from megadepth.config import validate
    from megadepth.optim import COUNTER
    from megadepth.train.loop import train

    before = COUNTER.calls
    summary = train(validate(config_dict))
    return {"summary": summary, "orthogonalisations": COUNTER.calls - before}
