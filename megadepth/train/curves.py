"""The loss curve a finished run leaves beside its metrics (loss.png)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from megadepth.common.io import save_figure


def plot_loss_curve(records: list[dict[str, Any]], out: Path, title: str = "") -> Path | None:
    """Train loss (and eval loss where recorded) against optimizer step; None when nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def finite(rec: dict[str, Any], key: str) -> bool:
        value = rec.get(key)
        return isinstance(value, (int, float)) and math.isfinite(value)

    train = [(r["step"], r["loss"]) for r in records if finite(r, "loss")]
    evals = [(r["step"], r["eval_loss"]) for r in records if finite(r, "eval_loss")]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, out)
