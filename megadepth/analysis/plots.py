"""Plots a person would rather look at than read: PNG files through matplotlib's Agg backend."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def save_figure(fig: Any, out: Path) -> Path:
    """Write ``fig`` to ``out`` as a PNG through a temporary file renamed into place (a reader never sees
    a half-written image), and close it."""
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        fig.savefig(tmp)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not keep a half-written image eating space
        raise
    finally:
        plt.close(fig)
    return out


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
