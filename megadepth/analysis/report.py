"""``megadepth report DIR``: does the optimal learning rate transfer across depth?

Per panel and curve of a sweep: the fitted optimum over log2 LR, its shift and slope across curves, the
transfer losses, and each seed's best loss compared across curves and panels, written to DIR/report/
(transfer.png, loss_vs_depth.png, transfer.json, .txt)."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from megadepth.analysis.figures import plot_loss_vs_depth, plot_transfer, transfer_ylim
from megadepth.analysis.fitting import (
    Optimum,
    fit_optimum,
    interpolate,
    seed_interval,
    t_quantile,
    weighted_slope,
)
from megadepth.analysis.runs import choose_roles, load_runs
from megadepth.analysis.table import format_table, to_json
from megadepth.analysis.transfer import FINISHED, analyse, transfer_intervals
from megadepth.common.errors import ConfigError
from megadepth.common.io import atomic_write_json, atomic_write_text
from megadepth.sweep.spec import METRICS

__all__ = ["Optimum", "add_cli", "fit_optimum", "interpolate", "report", "seed_interval", "t_quantile",
           "transfer_intervals", "transfer_ylim", "weighted_slope"]


def report(root: str | Path, *, metric: str | None = None, x: str | None = None, curve: str | None = None,
           seed: str | None = None, window: int = 3, out: str | Path | None = None) -> dict[str, Any]:
    """Analyse a sweep directory and write its report; returns transfer.json's content (+ 'table')."""
    root = Path(root)
    runs, meta = load_runs(root, metric)
    roles = choose_roles(meta, x, curve, seed, [r.point for r in runs])
    counts = dict(Counter(r.status for r in runs))
    if not any(r.status in FINISHED for r in runs):
        state = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no runs"
        hint = (f"; the runs have no {roles.metric} (try --metric final_loss)" if counts.get("no metric") else
                "; run (or finish) the sweep first: megadepth sweep SWEEP.yaml --out DIR")
        raise ConfigError(f"report: {root} has no finished runs ({state}){hint}")
    result = analyse(runs, roles, window)
    target = Path(out) if out else root / "report"
    table = format_table(result, roles, meta, counts, runs)
    data = to_json(result, roles, meta, counts, [r for r in runs if r.status not in FINISHED])
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_json(target / "transfer.json", data)
    atomic_write_text(target / "transfer.txt", table + "\n")
    plot_transfer(result, roles, target / "transfer.png", meta["name"])
    depth_png = plot_loss_vs_depth(result, roles, target / "loss_vs_depth.png", meta["name"])
    if depth_png is None:  # an earlier report's figure would otherwise stand beside this report's files
        (target / "loss_vs_depth.png").unlink(missing_ok=True)
    data["table"] = table
    data["files"] = [str(target / "transfer.png"), *([str(depth_png)] if depth_png else []),
                     str(target / "transfer.json"), str(target / "transfer.txt")]
    return data


def _cmd_report(args: argparse.Namespace) -> int:
    data = report(args.dir, metric=args.metric, x=args.x, curve=args.curve, seed=args.seed, window=args.window,
                  out=args.out)
    print(data["table"])
    print("wrote " + ", ".join(data["files"]))
    if not any(f.endswith("loss_vs_depth.png") for f in data["files"]):
        why = "no finished point to plot yet" if data.get("curve") else "there is no curve axis"
        print(f"(no loss_vs_depth.png: {why})")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``megadepth report``."""
    p = subparsers.add_parser(
        "report", help="read a sweep: optimal LR per depth (fitted), its shift, transfer loss; plots",
        description="Writes DIR/report/transfer.png, loss_vs_depth.png (when there is a curve axis), "
        "transfer.json and transfer.txt and prints the table. See docs/transfer.md.",
    )
    p.add_argument("dir", metavar="DIR", help="a sweep directory (or a directory of run directories)")
    p.add_argument("--metric", choices=METRICS, default=None, help="default: the sweep's metric")
    p.add_argument("--x", default=None, metavar="KEY", help="the swept axis to optimise (default optimizer.lr)")
    p.add_argument("--curve", default=None, metavar="KEY", help="one curve per value of (default model.depth)")
    p.add_argument("--seed", default=None, metavar="KEY", help="averaged over (default train.seed)")
    p.add_argument("--window", type=int, default=3, metavar="N",
                   help="grid points in the parabola fit around the best one (odd, >= 3; default 3)")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write (default DIR/report)")
    p.set_defaults(func=_cmd_report)
