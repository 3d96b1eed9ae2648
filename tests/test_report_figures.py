"""The report's figures show what was measured and what was fitted, and keep both in view on small grids.

A new user's first sweep (2 depths x 3 LRs) drew its fitted optima below the y axis (invisible), a whole
LR column as "off scale" triangles, and a loss_vs_depth.png of fitted parabola vertices on an axis that
turned 0.003 nats into a steep drop. These tests read back what matplotlib actually drew: the figure
handed to save_figure (the real one still writes the file).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from test_report import make_grid_sweep, make_sweep, smooth_loss

import megadepth.analysis.figures as figures_module
from megadepth.analysis.report import Optimum, report, transfer_ylim

SPAN = 0.1  # nats: the least y span either figure draws (figures.MIN_SPAN), so 0.003 nats looks small

# 2 depths x 3 LRs: the low LR far from converged, the optimum between -8 and -7 (the fitted vertex,
# 5.566, lies below every measured mean), depth 4 better than depth 2 by 0.003 nats
SMALL = {(2, -9): 6.0, (2, -8): 5.60, (2, -7): 5.65, (4, -9): 5.99, (4, -8): 5.597, (4, -7): 5.648}


def small_loss(values: dict) -> float:
    seed = -0.002 if values["train.seed"] == 1 else 0.002  # two seeds: a mean, a spread, a band
    return SMALL[(values["model.depth"], round(math.log2(values["optimizer.lr"])))] + seed


def small_sweep(root: Path) -> Path:
    return make_grid_sweep(root, {"model.depth": [2, 4], "optimizer.lr": {"log2": [-9, -8, -7]},
                                  "train.seed": [1, 2]}, small_loss)


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The figures the report draws, by file name, as they were when saved."""
    drawn: dict[str, Any] = {}
    real_save = figures_module.save_figure

    def keep(fig: Any, out: Path) -> Path:
        fig.canvas.draw()
        drawn[out.name] = fig
        return real_save(fig, out)

    monkeypatch.setattr(figures_module, "save_figure", keep)
    return drawn


def lines(ax: Any, marker: str) -> list[Any]:
    return [line for line in ax.get_lines() if line.get_marker() == marker]


def inside(values: list[float], ylim: tuple[float, float]) -> bool:
    return all(ylim[0] <= v <= ylim[1] for v in values)


def legend_texts(fig: Any) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def test_small_grid_keeps_stars_and_every_measured_mean_in_view(tmp_path: Path, figures: dict[str, Any]) -> None:
    data = report(small_sweep(tmp_path / "sweep"))
    curves = data["panels"][0]["curves"]
    assert all(c["optimum"]["method"] == "fit" for c in curves)
    fig = figures["transfer.png"]
    ax = fig.axes[0]
    ylim = ax.get_ylim()
    stars = lines(ax, "*")
    assert len(stars) == 2
    star_y = [float(y) for s in stars for y in s.get_ydata()]
    assert star_y == pytest.approx([c["optimum"]["loss"] for c in curves])  # drawn where fitted, not clamped
    assert inside(star_y, ylim), (star_y, ylim)
    means = sorted(p["mean"] for c in curves for p in c["points"])
    drawn = sorted(float(y) for line in lines(ax, "o") for y in line.get_ydata())
    assert drawn == pytest.approx(means)  # every measured mean drawn at its value...
    assert inside(drawn, ylim), (drawn, ylim)  # ...inside the axes
    assert lines(ax, "^") == []  # no finite point of this grid is an outlier: nothing is "off scale"
    texts = legend_texts(fig)
    assert any(t.startswith("measured mean ± 1 std") for t in texts), texts
    assert any(t.startswith("fitted optimum") for t in texts), texts
    assert {"depth 2", "depth 4"} <= set(texts)


def test_a_blown_up_point_is_off_scale_but_a_column_every_depth_shares_is_not(tmp_path: Path,
                                                                              figures: dict[str, Any]) -> None:
    good = smooth_loss(noise=0.01)

    def loss(param: str, depth: int, lx: float, seed: int) -> float:
        if param == "good" and depth == 8 and lx == -4:
            return 12.0  # one run blew up and stayed finite (below 2 ln 2048, so not counted as diverged)
        if param == "drift" and lx == -10:
            return 7.5  # every depth far from converged at the smallest LR: the curves' shape, no outlier
        return good(param, depth, lx, seed)

    data = report(make_sweep(tmp_path / "sweep", loss, seeds=(1, 2)))
    fig = figures["transfer.png"]
    for panel, ax in zip(data["panels"], fig.axes, strict=False):
        ylim = ax.get_ylim()
        triangles = [(float(x), float(y)) for line in lines(ax, "^") for x, y in zip(*line.get_data(), strict=True)]
        finite = [(p["log2_x"], p["mean"]) for c in panel["curves"] for p in c["points"] if math.isfinite(p["mean"])]
        if panel["label"] == "sp":
            assert triangles == [(-4.0, pytest.approx(ylim[1]))]  # the one blown-up mean, at the top edge
            assert inside([m for x, m in finite if m != 12.0], ylim)
        else:
            assert triangles == []
            assert inside([m for _, m in finite], ylim) and ylim[1] > 7.5  # the -10 column is drawn
        stars = [float(y) for line in lines(ax, "*") for y in line.get_ydata()]
        assert len(stars) == 4 and inside(stars, ylim)


def test_loss_vs_depth_plots_measured_losses_and_marks_fitted_ones_apart(tmp_path: Path,
                                                                          figures: dict[str, Any]) -> None:
    data = report(small_sweep(tmp_path / "sweep"))
    panel = data["panels"][0]
    ax = figures["loss_vs_depth.png"].axes[0]
    # the reference (depth 2) measured its lowest mean at log2 LR -8: what each depth measured there
    at = [next(p["mean"] for p in c["points"] if p["log2_x"] == -8) for c in panel["curves"]]
    assert at == pytest.approx([5.60, 5.597])
    filled = lines(ax, "o")
    assert filled and all(line.get_ydata().tolist() == pytest.approx(at) for line in filled)
    fitted = [t["loss_at_transferred"] for t in panel["transfer"]]
    assert fitted == pytest.approx([5.566, 5.564], abs=1e-3)  # parabola values: no run measured them
    marks = [line for line in ax.get_lines() if line.get_gid() == "fitted-at-transferred"]
    assert len(marks) == 1 and marks[0].get_marker() not in ("o", "", "None")
    assert marks[0].get_ydata().tolist() == pytest.approx(fitted)
    texts = legend_texts(figures["loss_vs_depth.png"])
    assert any("measured" in t for t in texts) and any(t.startswith("fitted") for t in texts), texts
    # 0.003 nats between the depths does not fill the axis
    lo, hi = ax.get_ylim()
    assert hi - lo >= SPAN
    assert any("all points within" in t.get_text() for t in ax.texts)


def test_loss_vs_depth_on_a_bigger_sweep_draws_the_means_at_the_reference_grid_lr(
        tmp_path: Path, figures: dict[str, Any]) -> None:
    data = report(make_sweep(tmp_path / "sweep", smooth_loss(noise=0.004), seeds=(1, 2)))
    ax = figures["loss_vs_depth.png"].axes[0]
    measured = [line.get_ydata().tolist() for line in lines(ax, "o")]
    assert len(measured) == len(data["panels"])
    for panel, drawn in zip(data["panels"], measured, strict=True):
        ref = next(c for c in panel["curves"] if c["curve"] == panel["reference"])["optimum"]
        means = [next(p["mean"] for p in c["points"] if p["log2_x"] == ref["grid_argmin_log2_x"])
                 for c in panel["curves"]]
        assert drawn == pytest.approx(means)
        best = [min(p["mean"] for p in c["points"]) for c in panel["curves"]]
        own = [line for line in ax.get_lines() if line.get_gid() == "measured-own-best"
               and line.get_ydata().tolist() == pytest.approx(best)]
        assert len(own) == 1  # each depth's own best as measured, not its fitted vertex
        lo, hi = ax.get_ylim()
        assert inside(drawn + best + [t["loss_at_transferred"] for t in panel["transfer"]], (lo, hi))


def test_table_labels_measured_and_fitted_columns(tmp_path: Path) -> None:
    data = report(small_sweep(tmp_path / "sweep"))
    lines_ = data["table"].splitlines()
    group = next(i for i, line in enumerate(lines_) if "measured (grid means)" in line)
    assert "fitted (parabola)" in lines_[group]
    header = lines_[group + 1]
    # each group's title spans its own columns (titles are separated by two spaces or more)
    spans = {m.group().strip("- "): m.span() for m in re.finditer(r"\S(?:.*?\S)?(?=  |$)", lines_[group])}
    measured, fitted = spans["measured (grid means)"], spans["fitted (parabola)"]
    assert measured[0] <= header.index("best log2 lr") and header.index("best loss") < measured[1]
    assert fitted[0] <= header.index("log2 lr ± se") and header.rindex("transfer loss") < fitted[1]
    rows = [line.split() for line in lines_[group + 2: group + 4]]
    # depth, runs, measured best log2 lr, measured best loss, measured transfer loss, fitted log2 lr ...
    assert [r[3] for r in rows] == ["5.600", "5.597"] and [r[2] for r in rows] == ["-8.00", "-8.00"]
    opt = [c["optimum"] for c in data["panels"][0]["curves"]]
    assert [r[5] for r in rows] == [f"{o['log2_x']:.2f}" for o in opt]
    assert [r[9] for r in rows] == [f"{o['loss']:.3f}" for o in opt]  # the fitted vertex, in the fitted group
    assert "+0.0000 at the fitted optimum, +0.0000 measured at the best grid log2 lr (-8.00)" in data["table"]


def test_transfer_ylim_holds_the_optima_columns_and_a_minimum_span() -> None:
    def curve(means: list[float], optimum: float | None = None) -> dict:
        points = [{"log2_x": float(-9 + i), "mean": m, "std": math.nan, "seeds": [{"value": m}]}
                  for i, m in enumerate(means)]
        opt = Optimum(-7.6, None, optimum, None, "fit") if optimum is not None else None
        return {"points": points, "optimum": opt}

    lo, hi = transfer_ylim([{"curves": [curve([6.0, 5.6, 5.65], 5.566), curve([5.99, 5.597, 5.648], 5.564)]}])
    assert lo < 5.564 and hi > 6.0  # the stars, and the whole -9 column
    lo, hi = transfer_ylim([{"curves": [curve([5.6, 5.601, 5.603]), curve([5.599, 5.6, 5.602])]}])
    assert hi - lo >= SPAN  # 0.004 nats apart: not blown up to the full height
    # a column where every curve is far above the others' spread is kept; a lone high point is not
    lo, hi = transfer_ylim([{"curves": [curve([5.0, 5.05, 5.1, 9.0]), curve([5.02, 5.04, 5.08, 9.5])]}])
    assert hi > 9.5
    lo, hi = transfer_ylim([{"curves": [curve([5.0, 5.05, 5.1, 9.0]), curve([5.02, 5.04, 5.08, 5.2])]}])
    assert hi < 9.0
