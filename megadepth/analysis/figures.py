"""The report's figures: transfer.png (the metric against log2 x, a curve per depth, a panel per
parametrization) and loss_vs_depth.png (the loss at the transferred LR against depth)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from megadepth.analysis.fitting import Optimum
from megadepth.analysis.runs import Roles
from megadepth.analysis.table import show_number
from megadepth.analysis.transfer import curve_label, measured_transfer, show
from megadepth.common.io import save_figure
from megadepth.sweep.spec import label_name

MIN_SPAN = 0.1
"""The smallest y span, in nats, both figures draw: points 0.003 nats apart must look close (seeds differ
by hundredths), not fill the axis."""

OUTLIER_SPREAD = 0.25
"""The least spread (nats) of transfer.png's outlier cap (see transfer_ylim), so the grid's measured edges
stay in view when the median is a neighbour of the optimum."""


def _colors(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [cmap(0.1 + 0.8 * i / max(1, n - 1)) for i in range(n)]


def _min_span(bottom: float, top: float) -> tuple[float, float]:
    """``(bottom, top)`` widened about its middle to at least MIN_SPAN (see there for why)."""
    if top - bottom < MIN_SPAN:
        extra = (MIN_SPAN - (top - bottom)) / 2
        return bottom - extra, top + extra
    return bottom, top


def transfer_ylim(panels: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """transfer.png's y range: everything drawn, except means, bands and seeds above a cap (3x the
    means' spread below their median, at least OUTLIER_SPREAD) that no whole LR column exceeds."""
    points = [p for panel in panels for c in panel["curves"] for p in c["points"]]
    means = [p["mean"] for p in points if math.isfinite(p["mean"])]
    optima = [c["optimum"].loss for panel in panels for c in panel["curves"]
              if c.get("optimum") is not None and c["optimum"].loss is not None
              and math.isfinite(c["optimum"].loss)]
    if not means:
        return (0.0, 1.0)
    drawn = list(means) + optima
    for p in points:
        if math.isfinite(p["mean"]) and math.isfinite(p["std"]):
            drawn += [p["mean"] - p["std"], p["mean"] + p["std"]]
        drawn += [s["value"] for s in p["seeds"] if math.isfinite(s["value"])]
    lo, med = min(means), float(np.median(means))
    cap = lo + 3 * max(med - lo, OUTLIER_SPREAD)
    for panel in panels:
        columns: dict[float, list[float]] = {}
        for c in panel["curves"]:
            for p in c["points"]:
                if math.isfinite(p["mean"]):
                    columns.setdefault(round(p["log2_x"], 9), []).append(p["mean"])
        for column in columns.values():
            if len(column) >= 2 and min(column) > cap:
                cap = max(column)
    cap = max([cap, *optima])
    bottom, top = _min_span(min(drawn), min(max(drawn), cap))
    pad = 0.05 * (top - bottom)
    return (bottom - pad, top + 2 * pad)


def _key_handles(kinds: dict[str, bool]) -> tuple[list[Any], list[str]]:
    """transfer.png's key, in black, for the marks that ``kinds`` says were drawn."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    mean = Line2D([], [], color="0.3", marker="o", ms=3.5, lw=1.4)
    band = (Patch(color="0.3", alpha=0.18, lw=0), mean)
    entries: list[tuple[Any, str]] = [(band, "measured mean ± 1 std over seeds") if kinds["band"] else
                                      (mean, "measured mean (one seed: no spread)")]
    optional = {
        "seeds": (Line2D([], [], color="0.3", marker=".", ls="", alpha=0.6), "a seed (measured)"),
        "fit": (Line2D([], [], color="0.7", marker="*", ms=10, mec="black", mew=0.6, ls=""),
                "fitted optimum (parabola vertex) ± stderr"),
        "argmin": (Line2D([], [], color="0.7", marker="D", ms=5, mec="black", mew=0.6, ls=""),
                   "optimum not fitted: measured grid argmin"),
        "diverged": (Line2D([], [], color="0.3", marker="x", ms=7, mew=2, ls=""),
                     "diverged (drawn at the top)"),
        "off": (Line2D([], [], color="0.3", marker="^", ms=6, ls=""), "mean above the axis (outlier)"),
    }
    entries += [entry for kind, entry in optional.items() if kinds[kind]]
    return [h for h, _ in entries], [t for _, t in entries]


def plot_transfer(result: dict[str, Any], roles: Roles, out: Path, title: str) -> Path:
    """transfer.png: see transfer_ylim for its y range and _key_handles for its key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = result["panels"]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), dpi=110, squeeze=False,
                             sharey=True, layout="constrained")
    ylim = transfer_ylim(panels)
    kinds = dict.fromkeys(("band", "seeds", "fit", "argmin", "diverged", "off"), False)
    for k, panel in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        colors = _colors(len(panel["curves"]))
        for color, c in zip(colors, panel["curves"], strict=True):
            pts = c["points"]
            xs, mean, std = (np.array([p[k] for p in pts]) for k in ("log2_x", "mean", "std"))
            ok = np.isfinite(mean)
            ax.plot(xs[ok], np.minimum(mean[ok], ylim[1]), "-o", color=color, ms=3.5, lw=1.4,
                    label=curve_label(roles, c))
            band = ok & np.isfinite(std)
            if band.any():
                kinds["band"] = True
                ax.fill_between(xs[band], (mean - std)[band], (mean + std)[band], color=color, alpha=0.18, lw=0)
            for p in pts:  # individual seeds
                vals = [s["value"] for s in p["seeds"] if math.isfinite(s["value"])]
                if len(vals) > 1:
                    kinds["seeds"] = True
                    ax.plot([p["log2_x"]] * len(vals), np.minimum(vals, ylim[1]), ".", color=color, alpha=0.45, ms=3)
            off = ok & (mean > ylim[1])
            if off.any():
                kinds["off"] = True
                ax.plot(xs[off], [ylim[1]] * int(off.sum()), "^", color=color, ms=6, clip_on=False)
            div = [p["log2_x"] for p in pts if p["n_diverged"]]
            if div:
                kinds["diverged"] = True
                ax.plot(div, [ylim[1]] * len(div), "x", color=color, ms=7, mew=2, clip_on=False)
            opt: Optimum = c["optimum"]
            if opt.log2_x is not None and opt.loss is not None:
                marker = "*" if opt.method == "fit" else "D"
                kinds["fit" if marker == "*" else "argmin"] = True
                ax.errorbar([opt.log2_x], [opt.loss], xerr=[[opt.stderr or 0], [opt.stderr or 0]],
                            fmt=marker, color=color, ms=10 if marker == "*" else 5, mec="black", mew=0.6,
                            capsize=2, zorder=5)
        shift = panel["shift"]
        sub = f"\nshift {shift['log2']:+.2f} log2" if shift else ""
        if shift and shift["stderr"] is not None:
            sub += f" ± {shift['stderr']:.2f}"
        if shift and shift["bounded"]:
            sub += " (a bound: edge optimum)"
        ax.set_title(panel["label"] + sub, fontsize=10)
        ax.set_xlabel(f"log2 {roles.x}")
        if all(float(p["log2_x"]).is_integer() for c in panel["curves"] for p in c["points"]):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # not -8.75: no run was made there
        if k % ncols == 0:
            ax.set_ylabel(roles.metric)
        ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    handles, texts = _key_handles(kinds)
    key_cols = min(len(handles), 2 * ncols - 1)  # an entry takes ~3 inches: one per column of a 5.2-inch panel
    fig.legend(handles, texts, loc="outside lower center", ncol=key_cols, fontsize=8, frameon=False)
    fig.set_size_inches(5.2 * ncols, 4.2 * nrows + 0.4 + 0.2 * math.ceil(len(handles) / key_cols))
    # wrapped to the figure's width (at 9 points ~15 average characters per inch; 13 leaves room)
    curves = f", one curve per {label_name(roles.curve)}" if roles.curve else ""
    fig.suptitle(textwrap.fill(f"{title}: {roles.metric} vs log2 {roles.x}{curves}", width=int(13 * 5.2 * ncols),
                               break_long_words=True), fontsize=9)
    return save_figure(fig, out)


def plot_loss_vs_depth(result: dict[str, Any], roles: Roles, out: Path, title: str) -> Path | None:
    """loss_vs_depth.png: per panel, each depth's measured loss at the reference's best grid LR, its
    own best, and the fitted loss at the reference's fitted optimum (never joined to the measured line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if not roles.curve:
        return None
    fig, ax = plt.subplots(figsize=(6.8, 5.0), dpi=110, layout="constrained")
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    curve_name, xname = label_name(roles.curve), label_name(roles.x)
    values: list[float] = []  # every finite value drawn, for the y range
    diverged: list[tuple[float, Any]] = []
    handles: list[Any] = []  # the key's entries, and their texts
    texts: list[str] = []
    kinds = dict.fromkeys(("fitted", "best", "diverged"), False)
    for k, panel in enumerate(result["panels"]):
        color = cycle[k % len(cycle)]
        numeric = all(isinstance(t["curve"], (int, float)) for t in panel["transfer"])
        order = [t["curve"] for t in panel["transfer"]]
        pos = (lambda v: v) if numeric else (lambda v, _o=order: _o.index(v))
        measured = measured_transfer(panel)
        at = [m for m in measured if m["loss"] is not None and math.isfinite(m["loss"])]
        if at:
            xs, ys = [pos(m["curve"]) for m in at], [m["loss"] for m in at]
            sems = [m["sem"] or 0.0 for m in at]
            ax.errorbar(xs, ys, yerr=sems, fmt="none", ecolor=color, capsize=3)
            ax.plot(xs, ys, "-o", color=color, ms=6, gid="measured-at-transferred")
            values += [y + s for y, s in zip(ys, sems, strict=True)] + [y - s for y, s in zip(ys, sems, strict=True)]
            ref = panel["reference"]
            fitted_lx = panel["transfer"][0]["log2_x"] if panel["transfer"] else None
            handles.append(Line2D([], [], color=color, marker="o", ms=6))
            texts.append(f"{panel['label']}: at the LR of {curve_name} {show(ref)} (measured: log2 {xname} "
                         f"{show_number(at[0]['log2_x'], '.2f')}; fitted: {show_number(fitted_lx, '.2f')})")
        best = [m for m in measured if m["best_loss"] is not None]
        if best:
            kinds["best"] = True
            ax.plot([pos(m["curve"]) for m in best], [m["best_loss"] for m in best], "--", color=color, alpha=0.6,
                    gid="measured-own-best")
            values += [m["best_loss"] for m in best]
        fit = [t for t in panel["transfer"]
               if t["loss_at_transferred"] is not None and math.isfinite(t["loss_at_transferred"])]
        if fit:
            kinds["fitted"] = True
            ax.plot([pos(t["curve"]) for t in fit], [t["loss_at_transferred"] for t in fit], "D", ls="", ms=7,
                    mfc="none", mec=color, mew=1.3, gid="fitted-at-transferred")
            values += [t["loss_at_transferred"] for t in fit]
        diverged += [(pos(m["curve"]), color) for m in measured if m["loss"] == math.inf]
        if numeric:
            ax.set_xscale("log", base=2)
    if not values and not diverged:
        plt.close(fig)
        return None
    bottom, top = (min(values), max(values)) if values else (0.0, 1.0)
    span = top - bottom
    bottom, top = _min_span(bottom, top)
    pad = 0.08 * (top - bottom)
    ax.set_ylim(bottom - pad, top + pad)
    if values and span < MIN_SPAN:
        ax.text(0.99, 0.02, f"all points within {span:.2g} nats; the axis spans at least {MIN_SPAN:g} nats, so "
                "that a difference this small looks small", transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
                color="0.35", wrap=True)
    if diverged:
        kinds["diverged"] = True
        for x, color in diverged:
            ax.plot([x], [top + pad], "x", color=color, ms=8, mew=2, clip_on=False)
    for kind, handle, text in (
        ("best", Line2D([], [], color="0.3", ls="--", alpha=0.6),
         "own best: each depth's lowest measured mean"),
        ("fitted", Line2D([], [], color="0.3", marker="D", ls="", ms=7, mfc="none", mew=1.3),
         "fitted: at the fitted optimum LR (on the depth's parabola, else interpolated): "
         "the table's transfer loss"),
        ("diverged", Line2D([], [], color="0.3", marker="x", ls="", ms=8, mew=2),
         "diverged at that LR (drawn at the top)"),
    ):
        if kinds[kind]:
            handles.append(handle)
            texts.append(text)
    ax.set_xlabel(curve_name)
    ax.set_ylabel(f"{roles.metric} (measured mean ± stderr)")
    ax.set_title(f"{title}: loss at the transferred LR vs {curve_name}\n(deeper should be better when transfer works)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(handles, texts, loc="outside lower center", fontsize=7, frameon=False)
    return save_figure(fig, out)

