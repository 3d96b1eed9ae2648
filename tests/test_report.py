"""The transfer report recovers known optima from synthetic sweeps, and survives diverged and missing runs.

Synthetic runs follow the run-directory contract (config.yaml, metrics.jsonl, summary.json written
last) and the sweep's own index (written by the sweep code itself), from a known loss(LR, depth).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from megadepth.analysis.report import fit_optimum, interpolate, report
from megadepth.cli import main
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
