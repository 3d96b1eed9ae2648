"""The transfer report recovers known optima from synthetic sweeps, and survives diverged and missing runs.

Synthetic runs follow the run-directory contract (config.yaml, metrics.jsonl, summary.json written
last) and the sweep's own index (written by the sweep code itself), from a known loss(LR, depth).
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from megadepth.analysis.report import fit_optimum, interpolate, report, transfer_ylim, weighted_slope
from megadepth.cli import main
from megadepth.common.errors import ConfigError
from megadepth.sweep.runner import SweepDir, write_index
from megadepth.sweep.spec import expand, parse_spec

DEPTHS = [2, 4, 8, 16]


def true_optimum(param: str, depth: int) -> float:
    """log2 of the optimal LR: fixed for 'good', moving +0.5 per doubling of depth for 'drift'."""
    return -7.3 if param == "good" else -7.3 + 0.5 * math.log2(depth / 2)


def base_loss(depth: int) -> float:
    return 3.0 - 0.05 * math.log2(depth)  # deeper is better at its own optimum


def write_run(run_dir: Path, config: dict, summary: dict, steps: int = 10) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    with (run_dir / "metrics.jsonl").open("w") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps({"step": step, "consumed_tokens": step * 256, "loss": 5.0 - step * 0.1, "lr": 1e-3,
                                "grad_norm": 1.0, "tokens_per_s": 1e4, "elapsed_s": step * 0.1}) + "\n")
        f.write(json.dumps({"step": steps, "eval_loss": summary.get("final_eval_loss")}) + "\n")
    (run_dir / "summary.json").write_text(json.dumps(summary))  # last, as the trainer does


def make_sweep(root: Path, loss: Callable[[str, int, float, int], float], *, params=("good", "drift"),
               lrs=tuple(range(-10, -3)), seeds=(1, 2, 3), skip: Callable[[dict], bool] = lambda v: False) -> Path:
    """A finished sweep: the sweep code expands and indexes the grid; each run's files hold loss(...)."""
    spec = parse_spec({
        "name": "synthetic",
        "config": {"model": {"base_depth": 2}, "wandb": {"mode": "disabled"}},
        "grid": {"parametrization.name": ["sp", "completep"][: len(params)], "model.depth": DEPTHS,
                 "optimizer.lr": {"log2": list(lrs)}, "train.seed": list(seeds)},
        "budget": {"steps": 10},
        "metric": "final_eval_loss",
    })
    sweep = SweepDir(root)
    names = dict(zip(["sp", "completep"], params, strict=False))
    points = expand(spec)
    for point in points:
        v = point.values
        if skip(v):
            continue
        value = loss(names[v["parametrization.name"]], v["model.depth"], math.log2(v["optimizer.lr"]), v["train.seed"])
        status = "diverged" if not math.isfinite(value) else "completed"
        summary = {"status": status, "final_loss": "nan" if status == "diverged" else value + 0.01,
                   "final_eval_loss": "nan" if status == "diverged" else value, "steps": 10, "tokens": 2560,
                   "wall_s": 1.0}
        cfg = point.config.model_dump(mode="json")
        cfg["train"]["out_dir"] = str(sweep.run_dir(point))
        write_run(sweep.run_dir(point), cfg, summary)
    write_index(spec, sweep, points)
    return root


def smooth_loss(noise: float = 0.0) -> Callable[[str, int, float, int], float]:
    """Not a parabola (log-cosh in log2 LR, asymmetric: steeper towards large LRs), with seed noise."""

    def loss(param: str, depth: int, lx: float, seed: int) -> float:
        d = lx - true_optimum(param, depth)
        k = 0.12 if d < 0 else 0.18
        rng = random.Random(f"{param}/{depth}/{lx}/{seed}")  # the same draw every time
        return base_loss(depth) + k * 2 * math.log(math.cosh(d)) + noise * rng.gauss(0, 1)

    return loss


def test_fit_recovers_a_parabola_exactly_and_propagates_seed_error() -> None:
    lx = [-10, -9, -8, -7, -6]
    y = [0.5 * (x + 7.6) ** 2 + 2.0 for x in lx]
    opt = fit_optimum(lx, y, [None] * 5)
    assert opt.method == "fit" and opt.log2_x == pytest.approx(-7.6) and opt.loss == pytest.approx(2.0)
    assert opt.stderr is None  # one seed, 3-point window: no way to tell
    a = fit_optimum(lx, y, [0.01] * 5)
    b = fit_optimum(lx, y, [0.02] * 5)
    assert a.stderr > 0 and b.stderr == pytest.approx(2 * a.stderr)
    wide = fit_optimum(lx, [v + 0.01 * (-1) ** i for i, v in enumerate(y)], [None] * 5, window=5)
    assert wide.stderr is not None and abs(wide.log2_x + 7.6) < 0.05  # from the residuals of 5 points
    # the propagated error agrees with the spread of refits under that noise
    rng = random.Random(0)
    refits = [fit_optimum(lx, [v + rng.gauss(0, 0.01) for v in y], [0.01] * 5).log2_x for _ in range(400)]
    mean = sum(refits) / len(refits)
    spread = math.sqrt(sum((r - mean) ** 2 for r in refits) / (len(refits) - 1))
    assert spread == pytest.approx(a.stderr, rel=0.2)


def test_fit_edge_diverged_neighbour_and_missing() -> None:
    lx = [-10, -9, -8, -7]
    edge = fit_optimum(lx, [3.0, 2.9, 2.8, 2.7], [None] * 4)
    assert edge.method == "edge" and edge.log2_x == -7 and "extend the grid" in edge.note
    div = fit_optimum(lx, [3.0, 2.9, 2.8, math.inf], [None] * 4)
    assert div.method == "argmin" and div.log2_x == -8 and "diverged" in div.note  # not bracketed
    div = fit_optimum([-10, -9, -8, -7, -6], [3.0, 2.9, 2.8, 2.85, math.inf], [None] * 5)
    assert div.method == "fit"
    div = fit_optimum([-10, -9, -8, -7, -6], [3.0, 2.9, 2.8, math.inf, math.inf], [None] * 5)
    assert div.method == "argmin" and div.log2_x == -8 and "diverged" in div.note
    assert fit_optimum(lx, [math.inf] * 4, [None] * 4).method == "none"
    assert interpolate([-9, -8], [2.0, math.inf], -8.5) == math.inf
    assert interpolate([-9, -8], [2.0, 3.0], -8.25) == pytest.approx(2.75)
    assert interpolate([-9, -8], [2.0, 3.0], -7.0) is None


def test_fit_rules_without_a_fit_say_why() -> None:
    """The rules of fit_optimum's docstring that end without a fit, each with its note."""
    lx = [-10, -9, -8, -7]
    none = fit_optimum(lx, [math.nan] * 4, [None] * 4)
    assert none.method == "none" and none.log2_x is None and none.note == "no finished, finite point"
    missing = fit_optimum(lx, [3.0, 2.9, 2.8, math.nan], [None] * 4)  # rule 3: no run yet at a neighbour
    assert missing.method == "argmin" and missing.log2_x == -8 and missing.note == "a neighbouring grid value is missing"
    # rule 5: the bracket passes rule 4, but the 5-point least-squares parabola opens downwards
    concave = fit_optimum([-10, -9, -8, -7, -6], [0.1, 1.0, 0.0, 1.0, 0.1], [None] * 5, window=5)
    assert concave.method == "argmin" and concave.log2_x == -8 and "not convex" in concave.note

def test_report_recovers_known_optima_shift_and_transfer_loss(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "sweep", smooth_loss(noise=0.004))
    data = report(root)
    panels = {p["label"]: p for p in data["panels"]}
    assert set(panels) == {"sp", "completep"}
    for label, param in (("sp", "good"), ("completep", "drift")):
        panel = panels[label]
        for curve in panel["curves"]:
            opt = curve["optimum"]
            assert opt["method"] == "fit"
            truth = true_optimum(param, curve["curve"])
            assert abs(opt["log2_x"] - truth) < 0.25, (label, curve["curve"], opt)
            assert 0 < opt["stderr_log2"] < 0.5
            assert opt["loss"] == pytest.approx(base_loss(curve["curve"]), abs=0.03)
            assert all(p["n"] == 3 and p["std"] > 0 for p in curve["points"])
        expected_shift = true_optimum(param, 16) - true_optimum(param, 2)
        assert panel["shift"]["from"] == 2 and panel["shift"]["to"] == 16
        assert panel["shift"]["log2"] == pytest.approx(expected_shift, abs=0.3)
        assert panel["slope"]["value"] == pytest.approx(expected_shift / 3, abs=0.1)
        deep = panel["transfer"][-1]
        assert deep["curve"] == 16 and deep["transfer_loss"] >= -0.01
    assert panels["sp"]["transfer"][-1]["transfer_loss"] < 0.02  # the optimum did not move
    assert panels["completep"]["transfer"][-1]["transfer_loss"] > 0.05  # it moved by 1.5 log2 units
    assert panels["sp"]["transfer"][0]["transfer_loss"] == pytest.approx(0.0, abs=1e-9)
    out = root / "report"
    for name in ("transfer.png", "loss_vs_depth.png", "transfer.json", "transfer.txt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    saved = json.loads((out / "transfer.json").read_text())
    assert saved["metric"] == "final_eval_loss" and saved["x"] == "optimizer.lr" and saved["curve"] == "model.depth"
    assert saved["runs"] == {"completed": 2 * 4 * 7 * 3}
    table = (out / "transfer.txt").read_text()
    assert "optimum shift depth 2 -> 16" in table and "transfer loss" in table


def test_report_with_diverged_and_missing_runs_does_not_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = smooth_loss()

    def loss(param: str, depth: int, lx: float, seed: int) -> float:
        if lx >= -5 and depth >= 8:
            return math.inf  # large LRs blow up deep models
        if param == "drift" and depth == 16:
            return math.inf  # a whole curve diverged
        return good(param, depth, lx, seed)

    # some runs never finished (pending: no summary)
    root = make_sweep(tmp_path / "sweep", loss, skip=lambda v: v["train.seed"] == 3 and v["model.depth"] == 4)
    code = main(["report", str(root)])
    out = capsys.readouterr().out
    assert code == 0
    assert "diverged" in out and "pending" in out
    data = json.loads((root / "report" / "transfer.json").read_text())
    sp = next(p for p in data["panels"] if p["label"] == "sp")
    deep = next(c for c in sp["curves"] if c["curve"] == 16)
    assert [p["n_diverged"] for p in deep["points"] if p["log2_x"] >= -5] == [3, 3]
    assert deep["points"][-1]["mean"] == "inf"  # JSON cannot hold inf: written as a string
    assert deep["optimum"]["method"] == "fit"  # the optimum (-7.3) is two grid steps below the first diverged
    cp = next(p for p in data["panels"] if p["label"] == "completep")
    gone = next(c for c in cp["curves"] if c["curve"] == 16)
    assert gone["optimum"]["method"] == "none"
    assert cp["shift"]["to"] == 8  # the deepest curve with an optimum
    assert data["runs"]["pending"] == 2 * 7
    assert all(p["n"] == 2 for c in sp["curves"] if c["curve"] == 4 for p in c["points"])
    assert (root / "report" / "transfer.png").is_file()


def test_report_edge_optimum_is_flagged(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "sweep", smooth_loss(), lrs=(-12, -11, -10, -9), seeds=(1,), params=("good",))
    data = report(root)
    assert all(c["optimum"]["method"] == "edge" for c in data["panels"][0]["curves"])
    assert "extend the grid" in data["table"] and "a bound, not an estimate" in data["table"]


def test_report_on_plain_run_directories_infers_axes(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    loss = smooth_loss()
    for depth in (2, 8):
        for lx in range(-10, -4):
            cfg = {"model": {"depth": depth, "width": 64}, "optimizer": {"lr": 2.0 ** lx},
                   "train": {"seed": 1, "out_dir": str(root / f"d{depth}_lr{lx}")}, "wandb": {"group": "x"}}
            value = loss("good", depth, lx, 1)
            write_run(root / f"d{depth}_lr{lx}", cfg,
                      {"status": "completed", "final_loss": value, "final_eval_loss": value, "steps": 10})
    data = report(root)
    assert data["source"] == "run directories" and data["curve"] == "model.depth" and data["panel_axes"] == []
    assert [round(c["optimum"]["log2_x"], 1) for c in data["panels"][0]["curves"]] == pytest.approx([-7.3, -7.3],
                                                                                                     abs=0.25)


def test_report_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is not a directory" in err and "\n" not in err

    (tmp_path / "empty").mkdir()
    code = main(["report", str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not a sweep directory" in err

    # a sweep whose runs have not finished
    root = make_sweep(tmp_path / "sweep", smooth_loss(), skip=lambda v: True)
    code = main(["report", str(root)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no finished runs" in err and "pending" in err and "\n" not in err
    assert not (root / "report").exists()

    root = make_sweep(tmp_path / "sweep2", smooth_loss(), lrs=(-9, -8, -7), seeds=(1,), params=("good",))
    code = main(["report", str(root), "--x", "model.width"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "'model.width' is not an axis" in err
    code = main(["report", str(root), "--window", "4"])
    assert code == 2 and "odd number" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# Roles, linked axes, reference curve, formatting, JSON nulls, pooled seed error


def make_grid_sweep(root: Path, grid: dict, loss: Callable[[dict], float], *, name: str = "synthetic",
                    skip: Callable[[dict], bool] = lambda v: False, frozen_spec: bool = True) -> Path:
    """A finished sweep over any grid (``loss`` maps a point's values to its metric; +inf: diverged),
    with the frozen spec DIR/sweep.yaml as `megadepth sweep` writes it (``frozen_spec=False``: without)."""
    spec = parse_spec({"name": name, "config": {"model": {"base_depth": 2}, "wandb": {"mode": "disabled"}},
                       "grid": grid, "budget": {"steps": 10}, "metric": "final_eval_loss"})
    sweep = SweepDir(root)
    points = expand(spec)
    for point in points:
        if skip(point.values):
            continue
        value = loss(point.values)
        status = "diverged" if not math.isfinite(value) else "completed"
        summary = {"status": status, "final_loss": "nan" if status == "diverged" else value + 0.01,
                   "final_eval_loss": "nan" if status == "diverged" else value, "steps": 10}
        cfg = point.config.model_dump(mode="json")
        cfg["train"]["out_dir"] = str(sweep.run_dir(point))
        write_run(sweep.run_dir(point), cfg, summary)
    write_index(spec, sweep, points)
    if frozen_spec:
        (root / "sweep.yaml").write_text(spec.frozen_yaml())
    return root


def width_loss(values: dict) -> float:
    """Optimum at log2 LR -7 for width 32 and -8 for width 64 (exact parabola, no noise)."""
    opt = -7.0 - math.log2(values["model.width"] / 32)
    return 3.0 + 0.1 * (math.log2(values["optimizer.lr"]) - opt) ** 2 + 0.001 * values.get("train.seed", 0)


LINKED_GRID = {"model.width,model.heads": [[32, 4], [64, 8]], "optimizer.lr": {"log2": [-10, -9, -8, -7, -6, -5]},
               "train.seed": [1, 2]}


@pytest.mark.parametrize("frozen_spec", [True, False])
def test_linked_axes_move_with_the_curve_key(tmp_path: Path, frozen_spec: bool) -> None:
    root = make_grid_sweep(tmp_path / "sweep", LINKED_GRID, width_loss, frozen_spec=frozen_spec)
    data = report(root, curve="model.width")
    assert data["panel_axes"] == [] and len(data["panels"]) == 1  # heads is not a panel axis
    assert data["linked"] == {"model.width": ["model.heads"]}
    assert data["linked_source"] == ("sweep spec" if frozen_spec else "inferred")
    curves = data["panels"][0]["curves"]
    assert [c["curve"] for c in curves] == [32, 64]
    assert [c["linked"] for c in curves] == [{"model.heads": 4}, {"model.heads": 8}]
    assert [c["label"] for c in curves] == ["width 32, heads 4", "width 64, heads 8"]
    assert [c["optimum"]["log2_x"] for c in curves] == pytest.approx([-7.0, -8.0])
    assert data["panels"][0]["shift"]["log2"] == pytest.approx(-1.0)
    assert "one curve per model.width (with model.heads)" in data["table"]
    assert "32, heads 4" in data["table"] and "heads=4" not in data["table"]


def test_linked_axes_in_plain_run_directories_and_a_product_is_not_linked(tmp_path: Path) -> None:
    def write(root: Path, combos: list[tuple[int, int]]) -> None:
        for width, heads in combos:
            for lx in range(-10, -4):
                name = f"w{width}_h{heads}_lr{lx}"
                cfg = {"model": {"width": width, "heads": heads, "depth": 2}, "optimizer": {"lr": 2.0 ** lx},
                       "train": {"seed": 1, "out_dir": str(root / name)}}
                value = width_loss({"model.width": width, "optimizer.lr": 2.0 ** lx})
                write_run(root / name, cfg, {"status": "completed", "final_loss": value, "final_eval_loss": value})

    write(tmp_path / "linked", [(32, 4), (64, 8)])  # changed together by hand: one-to-one
    data = report(tmp_path / "linked", curve="model.width")
    assert data["panel_axes"] == [] and data["linked"] == {"model.width": ["model.heads"]}
    assert [c["label"] for c in data["panels"][0]["curves"]] == ["width 32, heads 4", "width 64, heads 8"]

    write(tmp_path / "product", [(32, 4), (32, 8), (64, 4), (64, 8)])  # independent: heads stays a panel axis
    data = report(tmp_path / "product", curve="model.width")
    assert data["linked"] == {} and data["panel_axes"] == ["model.heads"]
    assert [p["label"] for p in data["panels"]] == ["heads=4", "heads=8"]
    assert all([c["curve"] for c in p["curves"]] == [32, 64] for p in data["panels"])


def test_curve_and_seed_must_be_distinct_axes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_sweep(tmp_path / "sweep", smooth_loss(), lrs=(-9, -8, -7), seeds=(1, 2), params=("good",))
    axes = "axes: parametrization.name, model.depth, optimizer.lr, train.seed"
    for args, problem in ((["--curve", "model.width"], "--curve 'model.width' is not an axis"),
                          (["--curve", "optimizer.lr"], "--curve 'optimizer.lr' is already the x axis"),
                          (["--seed", "model.depth"], "--seed 'model.depth' is already the curve axis"),
                          (["--seed", "optimizer.lr"], "--seed 'optimizer.lr' is already the x axis"),
                          (["--seed", "train.sed"], "--seed 'train.sed' is not an axis")):
        code = main(["report", str(root), *args])
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert code == 2 and problem in err and axes in err and "\n" not in err, (args, err)
        assert captured.out == ""
    assert not (root / "report").exists()
    # an axis linked to x cannot be the curve: each curve would hold a single x value
    linked = make_grid_sweep(tmp_path / "linked", {"model.width,optimizer.lr": [[32, 2.0 ** -8], [64, 2.0 ** -7]],
                                                   "train.seed": [1]}, width_loss)
    code = main(["report", str(linked), "--curve", "model.width"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "linked to the x axis 'optimizer.lr'" in err and "\n" not in err
    # defaults that do not fit fall back to "no such axis": a sweep without a depth axis still reports
    data = report(make_grid_sweep(tmp_path / "nodepth", LINKED_GRID, width_loss))
    assert data["curve"] is None and data["seed"] == "train.seed"
    assert [p["label"] for p in data["panels"]] == ["width=32, heads=4", "width=64, heads=8"]
    assert "one curve (no curve axis)" in data["table"]
    (tmp_path / "nodepth" / "report" / "loss_vs_depth.png").write_bytes(b"an earlier report's figure")
    assert main(["report", str(tmp_path / "nodepth")]) == 0
    printed = capsys.readouterr().out
    assert "no loss_vs_depth.png: there is no curve axis" in printed
    assert not (tmp_path / "nodepth" / "report" / "loss_vs_depth.png").exists()


def test_transfer_title_fits_a_single_panel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import megadepth.analysis.figures as figures_module

    boxes = []
    real_save = figures_module.save_figure

    def measure(fig, out):  # the suptitle's extent against the figure's, as it will be drawn
        if out.name == "transfer.png":
            fig.canvas.draw()
            suptitle = next(t for t in fig.texts if t.get_text() == fig.get_suptitle())
            boxes.append(suptitle.get_window_extent())
            boxes.append(fig.bbox)
        return real_save(fig, out)

    monkeypatch.setattr(figures_module, "save_figure", measure)
    root = make_sweep(tmp_path / "sweep", smooth_loss(), lrs=(-9, -8, -7), seeds=(1,), params=("good",))
    report(root)
    box, fig_box = boxes
    assert box.x0 >= 0 and box.x1 <= fig_box.x1 and box.y1 <= fig_box.y1, (box, fig_box)


def test_reference_curve_is_the_first_with_an_optimum(tmp_path: Path) -> None:
    good = smooth_loss()

    def loss(param: str, depth: int, lx: float, seed: int) -> float:
        return math.inf if depth == 2 else good(param, depth, lx, seed)  # the shallowest curve all diverged

    root = make_sweep(tmp_path / "sweep", loss, seeds=(1,), params=("drift",))
    data = report(root)
    panel = data["panels"][0]
    assert panel["reference"] == 4 and panel["shift"]["from"] == 4 and panel["shift"]["to"] == 16
    ref = next(c for c in panel["curves"] if c["curve"] == 4)["optimum"]["log2_x"]
    assert ref == pytest.approx(true_optimum("drift", 4), abs=0.3)
    assert all(t["log2_x"] == ref for t in panel["transfer"])
    assert next(t for t in panel["transfer"] if t["curve"] == 4)["transfer_loss"] == pytest.approx(0.0, abs=1e-12)
    assert "transfer loss at depth 16 (its loss at the depth 4 optimum minus its own best)" in data["table"]
    saved = json.loads((root / "report" / "transfer.json").read_text())
    assert saved["panels"][0]["reference"] == 4


def test_table_formats_curve_values_and_aligns_columns(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "sweep", smooth_loss(), lrs=(-10, -9, -8, 100), seeds=(1,), params=("good",))
    data = report(root, x="model.depth", curve="optimizer.lr")
    table = data["table"]
    assert "0.0009765625" not in table and "1.2676506002282294e+30" not in table
    assert "0.0009766" in table and "1.268e+30" in table  # 2**-10 and 2**100 to 4 significant digits
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("lr "))
    rows = lines[header + 1: header + 5]
    assert [r.split()[0] for r in rows] == ["0.0009766", "0.001953", "0.003906", "1.268e+30"]
    # the runs column ("1/1") ends under its header in every row
    assert {r.index("/") + 2 for r in rows} == {lines[header].index("runs") + len("runs")}


def test_shift_bounded_means_only_a_bound(tmp_path: Path) -> None:
    fitted = report(make_sweep(tmp_path / "fit", smooth_loss(), seeds=(1,), params=("good",)))
    assert fitted["panels"][0]["shift"]["bounded"] is False and "a bound" not in fitted["table"]
    edge = report(make_sweep(tmp_path / "edge", smooth_loss(), lrs=(-12, -11, -10, -9), seeds=(1,), params=("good",)))
    assert edge["panels"][0]["shift"]["bounded"] is True and "a bound, not an estimate" in edge["table"]
    saved = json.loads((tmp_path / "edge" / "report" / "transfer.json").read_text())
    assert saved["panels"][0]["shift"]["bounded"] is True


def test_undefined_std_sem_and_mean_are_null_in_json(tmp_path: Path) -> None:
    def loss(param: str, depth: int, lx: float, seed: int) -> float:
        return math.inf if lx == -4 else smooth_loss()(param, depth, lx, seed)

    # depth 2: seed 2 missing at -9 (one seed there) and both seeds missing at -10 (no run at all)
    root = make_sweep(tmp_path / "sweep", loss, seeds=(1, 2), params=("good",),
                      skip=lambda v: v["model.depth"] == 2 and (math.log2(v["optimizer.lr"]) == -10
                                                                or (math.log2(v["optimizer.lr"]) == -9
                                                                    and v["train.seed"] == 2)))
    report(root)
    text = (root / "report" / "transfer.json").read_text()
    assert '"nan"' not in text
    points = {p["log2_x"]: p for p in
              next(c for c in json.loads(text)["panels"][0]["curves"] if c["curve"] == 2)["points"]}
    assert points[-10]["mean"] is None and points[-10]["std"] is None and points[-10]["sem"] is None
    assert points[-9]["n"] == 1 and points[-9]["std"] is None and points[-9]["sem"] is None
    assert points[-4]["mean"] == "inf" and points[-4]["std"] is None and points[-4]["sem"] is None
    a, b = (smooth_loss()("good", 2, -8.0, s) for s in (1, 2))
    assert points[-8]["std"] == pytest.approx(abs(a - b) / math.sqrt(2))  # sample std of two values
    assert points[-8]["sem"] == pytest.approx(abs(a - b) / 2)


def test_a_missing_seed_at_a_fit_point_borrows_the_pooled_seed_variance(tmp_path: Path) -> None:
    loss = smooth_loss(noise=0.01)
    # depth 2, LR 2^-7 (the grid argmin: optimum -7.3): seed 2 never finished
    root = make_sweep(tmp_path / "sweep", loss, seeds=(1, 2), params=("good",),
                      skip=lambda v: v["model.depth"] == 2 and math.log2(v["optimizer.lr"]) == -7
                      and v["train.seed"] == 2)
    data = report(root)
    curve = next(c for c in data["panels"][0]["curves"] if c["curve"] == 2)
    opt = curve["optimum"]
    assert opt["window_log2_x"] == [-8.0, -6.0] and opt["method"] == "fit"
    assert "one seed at log2 x = -7" in opt["note"] and "no uncertainty" not in data["table"]

    # by hand: the parabola through (-1, y0), (0, y1), (1, y2) has its vertex at t* = (y0 - y2) / (2 (y0 - 2 y1 + y2))
    vals = {lx: [loss("good", 2, float(lx), s) for s in ((1, 2) if lx != -7 else (1,))] for lx in (-8, -7, -6)}
    means = [sum(v) / len(v) for v in vals.values()]
    var = {lx: sum((x - sum(v) / 2) ** 2 for x in v) for lx, v in vals.items() if len(v) == 2}  # ddof 1, n = 2
    pooled = (var[-8] + var[-6]) / 2
    var_mean = [var[-8] / 2, pooled / 1, var[-6] / 2]

    def vertex(y: list[float]) -> float:
        return -7 + (y[0] - y[2]) / (2 * (y[0] - 2 * y[1] + y[2]))

    assert opt["log2_x"] == pytest.approx(vertex(means))
    h = 1e-6
    grad = [(vertex([m + h * (i == j) for j, m in enumerate(means)]) - vertex(means)) / h for i in range(3)]
    expected = math.sqrt(sum(g * g * v for g, v in zip(grad, var_mean, strict=True)))
    assert opt["stderr_log2"] == pytest.approx(expected, rel=1e-4)


def test_fit_notes_say_why_there_is_no_uncertainty() -> None:
    lx = [-10, -9, -8, -7, -6]
    y = [0.5 * (x + 7.6) ** 2 + 2.0 for x in lx]
    assert fit_optimum(lx, y, [None] * 5, counts=[1] * 5).note == "one seed: no uncertainty"
    # two seeds elsewhere, but each fit point (-9, -8, -7) has one: nothing to pool from
    missing = fit_optimum(lx, y, [0.01, None, None, None, 0.01], counts=[2, 1, 1, 1, 2])
    assert missing.stderr is None and "seeds missing at the fit points" in missing.note
    # without counts a partial set of standard errors cannot be pooled, and the note does not claim one seed
    partial = fit_optimum(lx, y, [0.01, 0.01, None, 0.01, 0.01])
    assert partial.stderr is None and partial.note == "a seed missing at a fit point: no uncertainty"


# ----------------------------------------------------------------------------------------------------
# Lopsided brackets, blown-up runs, one grid value, partial sweeps, the slope, the figure's range


def test_a_lopsided_bracket_is_not_fitted() -> None:
    """A flat bottom next to an LR near divergence (finite, far worse): the parabola through the three
    points put its vertex 0.32 below every measured mean (and could go negative)."""
    lx = [-7, -6, -5, -4, -3]
    for means in ([5.30, 4.95, 4.90, 7.60, 7.62], [5.30, 4.95, 4.90, 30.0, 7.62]):
        for window in (3, 5):
            opt = fit_optimum(lx, means, [0.01] * 5, window=window)
            assert opt.method == "argmin" and opt.log2_x == -5 and opt.loss == 4.90, (means, window, opt)
            assert "near divergence" in opt.note
    # the same shape mirrored: the small-LR side is the steep one
    opt = fit_optimum(lx, [7.62, 7.60, 4.90, 4.95, 5.30], [0.01] * 5)
    assert opt.method == "argmin" and opt.log2_x == -5 and "lower one" in opt.note
    assert "far from converged" in opt.note and "near divergence" not in opt.note
    # the gentle side's own curve (5.0, 4.1, 4.0) predicts a rise of 0.7 at the steep neighbour: at 4.0 + 3.0
    # it is near divergence; at 4.0 + 1.9 it is fitted, but the vertex through the bracket (4.0 - 0.9^2 / 4 =
    # 3.7975) lies deeper below the best mean than the gentle side allows (twice its rise, 0.2): argmin
    opt = fit_optimum([-8, -7, -6, -5], [5.0, 4.1, 4.0, 7.0], [0.01] * 4)
    assert opt.method == "argmin" and opt.loss == 4.0 and "what the other side's curve predicts" in opt.note
    opt = fit_optimum([-8, -7, -6, -5], [5.0, 4.1, 4.0, 5.9], [0.01] * 4)
    assert opt.method == "argmin" and opt.loss == 4.0 and "further below the best grid mean" in opt.note
    # without a second gentle-side point the ratio decides: 0.1 vs 2.5 is over 20x
    opt = fit_optimum([-7, -6, -5], [4.1, 4.0, 6.5], [0.01] * 3)
    assert opt.method == "argmin" and "over 20x the other side's" in opt.note
    # the fitted vertex may not lie deeper below the best mean than the data allow
    opt = fit_optimum([-8, -7, -6, -5], [5.0, 4.1, 4.0, 5.3], [0.01] * 4, window=5)
    assert opt.method == "fit" and opt.loss >= 4.0 - 1.25 * 1.3 / 8
    # a smooth asymmetric bracket is still fitted: rises 0.9 and 0.1 (vertex 0.4 steps from the argmin)
    opt = fit_optimum([-10, -9, -8, -7, -6], [0.5 * (x + 7.6) ** 2 + 2.0 for x in (-10, -9, -8, -7, -6)], [0.01] * 5)
    assert opt.method == "fit" and opt.log2_x == pytest.approx(-7.6) and opt.loss == pytest.approx(2.0)
    # smooth curves with the optimum almost halfway between grid points (rise ratios 24 and 99): a ratio
    # rule alone took these for a blow-up
    lx = [-9, -8, -7, -6, -5]
    for vertex in (-6.54, -6.51, -6.46):
        opt = fit_optimum(lx, [3 + 0.1 * (x - vertex) ** 2 for x in lx], [0.001] * 5)
        assert opt.method == "fit" and opt.log2_x == pytest.approx(vertex) and opt.loss == pytest.approx(3.0), opt


def test_a_finite_loss_far_above_ln_vocab_counts_as_diverged(tmp_path: Path) -> None:
    """A run that blew up but stayed finite (loss 1e6, ln(2048) = 7.6) used to be a 'completed' point whose
    huge mean bent the fit (a fitted loss of -3e6 was seen)."""
    def loss(param: str, depth: int, lx: float, seed: int) -> float:
        return 1e6 if lx == -6 and depth == 2 else smooth_loss()(param, depth, lx, seed)

    root = make_sweep(tmp_path / "sweep", loss, seeds=(1, 2), params=("good",))
    data = report(root)
    curve = next(c for c in data["panels"][0]["curves"] if c["curve"] == 2)
    point = next(p for p in curve["points"] if p["log2_x"] == -6)
    assert point["n_diverged"] == 2 and point["mean"] == math.inf
    assert curve["optimum"]["method"] == "argmin" and "diverged" in curve["optimum"]["note"]
    assert data["runs"] == {"completed": 4 * 7 * 2 - 2, "diverged": 2}
    assert "2 ln(vocab_size 2048)" in data["table"]
    # a loss above ln(vocab) but below twice it is a bad run, not a blown-up one
    root = make_sweep(tmp_path / "sweep2", lambda p, d, lx, s: 9.0 if lx == -4 else smooth_loss()(p, d, lx, s),
                      seeds=(1,), params=("good",))
    assert report(root)["runs"] == {"completed": 4 * 7}


def test_a_single_grid_value_is_not_a_measured_shift(tmp_path: Path) -> None:
    """With one LR there is nothing to bracket: the optimum used to be an 'argmin' and the shift a
    measured +0.00 (bounded false)."""
    opt = fit_optimum([-7], [5.0], [0.01])
    assert opt.method == "edge" and "single grid value" in opt.note
    data = report(make_sweep(tmp_path / "sweep", smooth_loss(), lrs=(-7,), seeds=(1, 2), params=("good",)))
    assert {c["optimum"]["method"] for c in data["panels"][0]["curves"]} == {"edge"}
    assert data["panels"][0]["shift"]["bounded"] is True and "a bound, not an estimate" in data["table"]


def test_an_unfinished_neighbour_is_not_a_reason_to_extend_the_grid(tmp_path: Path) -> None:
    """A partial sweep whose best so far is at the end of the grid because the next LRs have not run yet
    was told to extend the grid."""
    opt = fit_optimum([-10, -9, -8], [3.0, math.nan, math.nan], [None] * 3)
    assert opt.method == "edge" and "extend the grid" not in opt.note
    assert "no finished run yet at log2 x = -9, -8" in opt.note
    # a finished, worse neighbour: the grid does need extending (and the table says what has not run)
    far = fit_optimum([-10, -9, -8], [3.0, 3.1, math.nan], [None] * 3).note
    assert "extend the grid" in far and "no finished run yet at log2 x = -8" in far
    root = make_sweep(tmp_path / "sweep", smooth_loss(), seeds=(1,), params=("good",),
                      skip=lambda v: v["model.depth"] == 2 and math.log2(v["optimizer.lr"]) > -10)
    data = report(root)
    curve = next(c for c in data["panels"][0]["curves"] if c["curve"] == 2)
    assert curve["optimum"]["method"] == "edge" and "finish the sweep" in curve["optimum"]["note"]


def test_weighted_slope_with_very_different_weights() -> None:
    """Two points: the slope is their difference, whatever the weights (the uncentred sum gave +0.235)."""
    slope, stderr = weighted_slope([1, 2], [-5.5, -5.6194], [1.05e-8, 0.727])
    assert slope == pytest.approx(-0.1194, abs=1e-9) and stderr == pytest.approx(0.727, rel=1e-6)
    slope, _ = weighted_slope([0, 1, 2], [10.0, 12.0, 14.0], [None, None, None])
    assert slope == pytest.approx(2.0)


def test_transfer_figure_range_holds_bands_and_seeds_below_the_means() -> None:
    """The y range came from the means alone: a ±std band or a seed below the lowest mean was cut off,
    and with one LR every seed dot was outside the axes."""
    def point(lx: float, seeds: list[float]) -> dict:
        mean = sum(seeds) / len(seeds)
        std = math.sqrt(sum((v - mean) ** 2 for v in seeds) / (len(seeds) - 1))
        return {"log2_x": lx, "mean": mean, "std": std, "seeds": [{"value": v} for v in seeds]}

    one_lr = [{"curves": [{"points": [point(-7, [4.6, 5.4])]}]}]  # mean 5.0, std 0.566
    lo, hi = transfer_ylim(one_lr)
    assert lo < 4.6 and hi > 5.0  # (the top keeps its cap: seeds above it are drawn on the top edge)
    # a blown-up mean is still capped at the top (drawn as a triangle), the low seed still shown
    curve = {"points": [point(-8, [5.2, 5.3]), point(-7, [4.7, 5.1]), point(-6, [5.25, 5.35]),
                        point(-5, [90.0, 110.0])]}
    lo, hi = transfer_ylim([{"curves": [curve]}])
    assert lo < 4.7 and hi < 20


# ----------------------------------------------------------------------------------------------------
# Intervals honest for 3 seeds: Student's t over seed-level fitted optima


def test_t_quantile_matches_the_table() -> None:
    from megadepth.analysis.report import t_quantile

    for dof, want in ((1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (10, 2.228), (30, 2.042), (1e7, 1.960)):
        assert t_quantile(0.975, dof) == pytest.approx(want, abs=1e-3)
    assert t_quantile(0.025, 2) == pytest.approx(-4.303, abs=1e-3)
    assert t_quantile(0.95, 2) == pytest.approx(2.920, abs=1e-3)


def test_seed_interval_uses_t_with_n_minus_1_degrees_of_freedom() -> None:
    from megadepth.analysis.report import seed_interval

    iv = seed_interval([0.0, 1.0, 2.0])
    assert iv is not None and iv["n"] == 3 and iv["dof"] == 2 and iv["mean"] == pytest.approx(1.0)
    half = 4.3027 / math.sqrt(3)  # sd = 1: the normal 1.96 would give 1.13, not 2.48
    assert iv["low"] == pytest.approx(1.0 - half, abs=1e-3) and iv["high"] == pytest.approx(1.0 + half, abs=1e-3)
    assert seed_interval([1.0]) is None and seed_interval([1.0, math.inf]) is None


def _curve(depth: int, opt: float, sigma: float, seeds: int, rng: random.Random, lxs=(-10, -9, -8, -7, -6)) -> dict:
    """A curve dict as ``analyse`` makes it: a parabola with its vertex at ``opt``, independent seed noise."""
    from megadepth.analysis.report import fit_optimum

    points = []
    for lx in lxs:
        vals = [3.0 + 0.08 * (lx - opt) ** 2 + rng.gauss(0, sigma) for _ in range(seeds)]
        mean = sum(vals) / seeds
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (seeds - 1))
        points.append({"log2_x": float(lx), "mean": mean, "sem": sd / math.sqrt(seeds), "n": seeds, "n_diverged": 0,
                       "seeds": [{"seed": s + 1, "value": v, "status": "completed"} for s, v in enumerate(vals)]})
    fit = fit_optimum([p["log2_x"] for p in points], [p["mean"] for p in points], [p["sem"] for p in points],
                      counts=[seeds] * len(points))
    return {"curve": depth, "points": points, "optimum": fit}


def test_shift_interval_covers_the_true_shift_about_95_percent_with_3_seeds() -> None:
    """Many synthetic 3-seed experiments with a known shift of -1 log2 units: the t interval over the seeds'
    own optima covers it in about 95% of them. The old report gave only ± one delta-method standard
    error, which with 3 seeds covers about two times in three; a normal ±1.96 of it about nine in ten."""
    from megadepth.analysis.report import transfer_intervals

    rng = random.Random(7)
    covered = one_se = fitted = 0
    for _ in range(300):
        ref, last = _curve(2, -7.6, 0.01, 3, rng), _curve(16, -8.6, 0.01, 3, rng)
        if ref["optimum"].method != "fit" or last["optimum"].method != "fit":
            continue
        iv = transfer_intervals(ref, last)
        if iv["shift"] is None:
            continue
        fitted += 1
        covered += iv["shift"]["low"] <= -1.0 <= iv["shift"]["high"]
        se = math.hypot(ref["optimum"].stderr, last["optimum"].stderr)
        shift = last["optimum"].log2_x - ref["optimum"].log2_x
        one_se += abs(shift + 1.0) <= se
    print(f"{fitted} experiments: t interval covers {covered / fitted:.0%}, +-1 s.e. {one_se / fitted:.0%}")
    assert fitted >= 250
    assert 0.90 <= covered / fitted <= 0.99
    assert one_se / fitted < 0.8


def test_transfer_intervals_need_every_seed_on_both_curves() -> None:
    from megadepth.analysis.report import transfer_intervals

    rng = random.Random(1)
    ref, last = _curve(2, -7.6, 0.005, 3, rng), _curve(16, -8.4, 0.005, 3, rng)
    iv = transfer_intervals(ref, last)
    assert iv["shift"]["n"] == 3 and iv["transfer_loss"]["n"] == 3 and len(iv["seeds"]) == 3
    assert iv["transfer_loss"]["mean"] > 0  # depth 16 at depth 2's optimum is worse than at its own
    last["points"][2]["seeds"][1]["status"] = "failed"  # one seed missing at a fit point
    last["points"][2]["seeds"][1]["value"] = math.nan
    iv = transfer_intervals(ref, last)
    assert iv["shift"] is None and "seed 2" in iv["note"]


def test_report_prints_and_saves_the_seed_level_intervals(tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "sweep", smooth_loss(noise=0.004))
    data = report(root)
    for panel in data["panels"]:
        shift = panel["shift"]
        iv = shift["interval"]
        assert iv["n"] == 3 and iv["dof"] == 2 and iv["t"] == pytest.approx(4.303, abs=1e-3)
        assert iv["low"] <= shift["log2"] + 0.3 and shift["log2"] - 0.3 <= iv["high"]
        assert shift["transfer_loss_interval"]["n"] == 3
        assert "student-t" in shift["interval_method"]
    saved = json.loads((root / "report" / "transfer.json").read_text())
    assert saved["panels"][0]["shift"]["interval"]["dof"] == 2
    table = (root / "report" / "transfer.txt").read_text()
    assert "shift: 95% interval [" in table and "Student t, 3 seeds" in table
    assert "transfer loss at depth 16: 95% interval [" in table


def test_best_loss_change_and_panel_comparisons_are_paired_by_seed(tmp_path: Path) -> None:
    """Each seed's best grid loss: its change from depth 2 to 16 within a panel, and the difference between
    panels at depth 16, with Student-t intervals over the seeds; numbers worked out from the synthetic losses
    (the minimum sits on the grid at log2 LR -7). A seed missing a grid value is named, not counted."""
    from megadepth.analysis.fitting import t_quantile

    def loss(param: str, depth: int, lx: float, seed: int) -> float:
        gain = (0.02 if param == "good" else 0.01) * math.log2(depth / 2) * (1 + 0.1 * seed)
        return 3.0 + (0.05 if param == "drift" else 0.0) - gain + 0.03 * seed + 0.1 * (lx + 7) ** 2

    data = report(make_sweep(tmp_path / "sweep", loss, lrs=range(-9, -4)))
    panels = {p["label"]: p for p in data["panels"]}
    for label, per_doubling in (("sp", 0.02), ("completep", 0.01)):
        change = panels[label]["best_change"]
        assert (change["from"], change["to"]) == (2, 16)
        diffs = [-per_doubling * 3 * (1 + 0.1 * s) for s in (1, 2, 3)]
        assert [d["difference"] for d in change["seeds"]] == pytest.approx(diffs)
        half = t_quantile(0.975, 2) * statistics.stdev(diffs) / math.sqrt(3)
        iv = change["interval"]
        assert (iv["mean"], iv["low"], iv["high"]) == pytest.approx(
            (statistics.mean(diffs), statistics.mean(diffs) - half, statistics.mean(diffs) + half))
    (between,) = data["comparisons"]
    assert (between["a"], between["b"], between["curve"]) == ("sp", "completep", 16)
    expected = [0.05 + 0.03 * (1 + 0.1 * s) for s in (1, 2, 3)]  # drift's smaller gain, plus its offset
    assert [d["difference"] for d in between["seeds"]] == pytest.approx(expected)
    assert between["interval"]["low"] > 0
    table = (tmp_path / "sweep" / "report" / "transfer.txt").read_text()
    assert "best loss change depth 2 -> 16 (each seed's best grid loss, paired): -0.0720" in table
    assert "completep - sp at depth 16: +0.0860" in table and "'A - B' is A's best grid loss minus B's" in table
    assert json.loads((tmp_path / "sweep" / "report" / "transfer.json").read_text())["comparisons"][0]["curve"] == 16

    gap = report(make_sweep(tmp_path / "gap", loss, lrs=range(-9, -4), skip=lambda v: v["model.depth"] == 16
                            and v["train.seed"] == 2 and v["optimizer.lr"] == 2.0 ** -5))
    sp = next(p for p in gap["panels"] if p["label"] == "sp")
    assert sp["best_change"]["interval"]["n"] == 2 and [d["seed"] for d in sp["best_change"]["seeds"]] == [1, 3]
    assert sp["best_change"]["note"] == "seed 2 left out (no finished run at some grid value at 16)"

    def with_seed_2_diverged(param: str, depth: int, lx: float, seed: int) -> float:
        return math.inf if (param, depth, seed) == ("good", 16, 2) else loss(param, depth, lx, seed)

    broken = report(make_sweep(tmp_path / "broken", with_seed_2_diverged, lrs=range(-9, -4)))
    (between,) = broken["comparisons"]
    assert between["interval"]["n"] == 2
    assert between["note"] == "seed 2 left out (diverged at every grid value at 16)"
    table = (tmp_path / "broken" / "report" / "transfer.txt").read_text()
    assert "completep - sp at depth 16: " in table and "seed 2 left out (diverged at every grid value" in table


def test_a_sweep_json_without_its_run_directories_reports_the_same(tmp_path: Path) -> None:
    """Published results ship sweep.json alone (docs/results/): the report reads the status and metrics it
    recorded per run, gives the same analysis as with the run directories, and says where they came from."""
    import shutil

    root = make_sweep(tmp_path / "sweep", smooth_loss(noise=0.004), skip=lambda v: v["train.seed"] == 3
                      and v["optimizer.lr"] == 2.0 ** -4)
    full = report(root)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(root / "sweep.json", alone / "sweep.json")
    shipped = report(alone)
    assert shipped["panels"] == json.loads(json.dumps(full["panels"]))
    assert shipped["runs"] == full["runs"] and full["runs"].get("pending") == 2 * 4
    assert full["source"] == "sweep.json" and "from its recorded results" in shipped["source"]

    index = json.loads((alone / "sweep.json").read_text())
    index["runs"][0].update(status="failed", error="boom")
    (alone / "sweep.json").write_text(json.dumps(index))
    assert report(alone)["not_finished"][0]["error"] == "boom"
    for bad, says in ((lambda i: i["runs"].__setitem__(1, "a string"), "runs[1] is not a run"),
                      (lambda i: i["runs"][2].update(point=[1, 2]), "runs[2] is not a run"),
                      (lambda i: i["runs"][3].update(status="exploded"), "runs[3] has status 'exploded'"),
                      (lambda i: i.update(axes="parametrization.name"), "'axes' is not a list")):
        corrupt = json.loads(json.dumps(index))
        bad(corrupt)
        (alone / "sweep.json").write_text(json.dumps(corrupt))
        with pytest.raises(ConfigError, match=f"sweep.json is not a sweep index megadepth wrote: {re.escape(says)}"):
            report(alone)
