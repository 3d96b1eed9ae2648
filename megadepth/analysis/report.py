"""``megadepth report DIR``: does the optimal learning rate transfer across depth?

Reads a sweep directory (``sweep.json`` + ``runs/<id>/``; or any directory of run directories, the axes
then being the config keys that differ between runs) and, per panel (parametrization, plus any other
axis that is not the x axis, the curve axis or the seed, nor linked to one of them: linked axes such as
``"model.width,model.heads"`` move together, so heads labels the width curves instead of splitting
them into panels), per curve (depth):

- aggregates the metric over seeds at every grid value of x (log2 LR): mean, standard deviation,
  standard error; a point where any seed diverged counts as diverged (loss +inf) and is drawn as such;
- estimates the optimum by fitting a parabola in log2(x) to the ``window`` grid points around the grid
  argmin (3 by default: exact through the argmin and its neighbours), with a standard error propagated
  from the seeds' spread (delta method; a fit point left with one seed by a missing run uses the seed
  variance pooled over the other fit points; with one seed and a window of more than 3 points, from the
  fit's residuals). An argmin at the edge of the grid (or on a grid of one value), next to a diverged
  point, or in a lopsided bracket (one neighbour near divergence, or far from converged on the low-LR side:
  see ``LOPSIDED``) cannot be bracketed:
  it is reported as such (no uncertainty), never extrapolated; a run whose finite loss is above
  2 ln(vocab_size) counts as diverged;
- the shift of the optimum from the shallowest to the deepest curve in log2 units, and its slope against
  log2(depth) (optimum ~ depth^slope);
- the transfer loss: each curve's loss at the shallowest curve's optimum minus its own best loss.

Writes DIR/report/transfer.png (one panel per parametrization: metric vs log2 x, one curve per depth,
measured mean and +-1 std band over seeds, individual seeds as dots, diverged points as crosses at the
top, the fitted optima as stars, a key saying which marks are measured and which fitted),
DIR/report/loss_vs_depth.png (against depth: each depth's measured mean at the reference's best grid LR and
its own lowest measured mean, the fitted loss at the reference's fitted optimum marked apart; when there is
a curve axis and a finished point to plot), DIR/report/transfer.json and DIR/report/transfer.txt (the
printed table, its measured and fitted columns in labelled groups). Both figures keep what they draw in
view on small grids; see transfer_ylim and MIN_SPAN.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from megadepth.analysis.fitting import (  # noqa: F401 - fit_optimum and the statistics are report's API too
    INTERVAL_LEVEL,
    LOPSIDED,
    STEEPER,
    Optimum,
    _fmt_lx,
    fit_optimum,
    interpolate,
    seed_interval,
    t_quantile,
    weighted_slope,
)
from megadepth.analysis.plots import save_figure
from megadepth.config.load import ConfigError
from megadepth.train.rundir import atomic_write_json, atomic_write_text

METRICS = ("final_eval_loss", "final_loss")

BLOWN_UP = 2.0
"""A finished run whose loss exceeds this many times ln(vocab_size), the loss of a uniform guess, blew
up and merely stayed finite: the report counts it as diverged."""


# ----------------------------------------------------------------------------------------------------
# Intervals over seeds


def seed_optima(curve: dict[str, Any]) -> tuple[dict[Any, tuple[float, float, tuple[float, float, float]]], str]:
    """Each seed's own optimum of a fitted curve: the parabola through that seed's values at the mean
    fit's window (the same grid values the mean's vertex came from), its vertex clamped to the window as
    the mean's is. Returns ``{seed: (log2_x, loss, (a, b, c))}`` and, when some seed has none (a missing
    or diverged value in the window, a parabola that is not convex), why; that seed is left out."""
    opt: Optimum = curve["optimum"]
    if opt.method != "fit" or opt.window is None:
        return {}, f"its optimum is not fitted ({opt.method})"
    pts = [p for p in curve["points"] if opt.window[0] - 1e-9 <= p["log2_x"] <= opt.window[1] + 1e-9]
    t = np.array([p["log2_x"] - opt.center for p in pts])
    pinv = np.linalg.pinv(np.stack([t * t, t, np.ones_like(t)], axis=1))
    per_seed: dict[Any, list[float]] = {}
    for k, p in enumerate(pts):
        for r in p["seeds"]:
            per_seed.setdefault(_hashable(r["seed"]), [math.nan] * len(pts))[k] = (
                r["value"] if r["status"] in ("completed", "diverged") else math.nan)
    out: dict[Any, tuple[float, float, tuple[float, float, float]]] = {}
    why = ""
    for seed, ys in per_seed.items():
        if not all(math.isfinite(y) for y in ys):
            why = f"seed {_v(seed)} has no finished, finite run at every fit point"
            continue
        a, b, c = (float(v) for v in pinv @ np.array(ys))
        if not a > 0:
            why = f"seed {_v(seed)}'s own parabola is not convex"
            continue
        ts = min(max(-b / (2 * a), float(t[0])), float(t[-1]))
        out[seed] = (opt.center + ts, a * ts * ts + b * ts + c, (a, b, c))
    return out, why


def _seed_transfer_loss(curve: dict[str, Any], own: tuple[float, float, tuple[float, float, float]], seed: Any,
                        at_lx: float) -> float | None:
    """One seed's transfer loss on ``curve``: its loss at ``at_lx`` (its own parabola inside the fit
    window, else linear between its grid values, as the mean's) minus its own vertex loss."""
    opt: Optimum = curve["optimum"]
    if opt.window is not None and opt.window[0] - 1e-9 <= at_lx <= opt.window[1] + 1e-9:
        a, b, c = own[2]
        t = at_lx - opt.center
        at: float | None = a * t * t + b * t + c
    else:
        lx, vals = [], []
        for p in curve["points"]:
            v = next((r["value"] for r in p["seeds"] if _hashable(r["seed"]) == seed
                      and r["status"] in ("completed", "diverged")), math.nan)
            lx.append(p["log2_x"])
            vals.append(v)
        at = interpolate(lx, vals, at_lx)
    if at is None or not math.isfinite(at):
        return None
    return at - own[1]


def transfer_intervals(ref: dict[str, Any], last: dict[str, Any],
                       level: float = INTERVAL_LEVEL) -> dict[str, Any]:
    """Intervals for the shift of the optimum (``ref`` -> ``last``) and for ``last``'s transfer loss,
    from seed-level fitted optima: each seed is one replicate of the whole experiment (tune the LR on
    ``ref`` with that seed, move to ``last``), its shift is its own optimum on ``last`` minus its own on
    ``ref``, its transfer loss ``last``'s loss at its own ``ref`` optimum minus its own best; the interval
    is Student's t over those per-seed values (:func:`seed_interval`), paired by seed. Returns
    ``{"shift": interval | None, "transfer_loss": interval | None, "seeds": [...], "note": str}``; an
    interval is None (the note says why) unless every seed common to both curves has an optimum on
    both, and there are at least two: dropping the seeds whose parabola failed would keep the lucky
    ones."""
    out: dict[str, Any] = {"method": "student-t over seed-level fitted optima, paired by seed",
                           "shift": None, "transfer_loss": None, "seeds": [], "note": ""}
    lo, why_lo = seed_optima(ref)
    hi, why_hi = seed_optima(last)
    if why_lo or why_hi or not lo or not hi:
        which = ref if (why_lo or not lo) else last
        out["note"] = f"no interval: at {_v(which['curve'])}, {why_lo or why_hi or 'no seed optimum'}"
        return out
    seeds = [s for s in lo if s in hi]
    if set(lo) != set(hi):
        out["note"] = "no interval: the two curves do not have the same seeds"
        return out
    shifts = [hi[s][0] - lo[s][0] for s in seeds]
    losses = [_seed_transfer_loss(last, hi[s], s, lo[s][0]) for s in seeds]
    out["seeds"] = [{"seed": s, "shift": d, "transfer_loss": tl} for s, d, tl in zip(seeds, shifts, losses, strict=True)]
    out["shift"] = seed_interval(shifts, level)
    if all(v is not None for v in losses):
        out["transfer_loss"] = seed_interval([float(v) for v in losses], level)  # type: ignore[arg-type]
    if out["shift"] is None:
        out["note"] = f"no interval: {len(seeds)} seed(s) with an optimum on both curves (at least 2 needed)"
    elif out["transfer_loss"] is None:
        out["note"] = "no transfer-loss interval: a seed has no loss at its reference optimum"
    return out


# ----------------------------------------------------------------------------------------------------
# Reading runs


@dataclass
class Run:
    id: str
    point: dict[str, Any]
    status: str
    value: float  # the metric; +inf diverged; nan missing
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Layout:
    """Which axis plays which part."""

    x: str
    curve: str | None
    seed: str | None
    panels: list[str]
    metric: str
    # role key (x, curve, seed) -> the linked keys that move with it: part of that role, not panels
    linked: dict[str, list[str]] = field(default_factory=dict)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = data
    return out


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def load_runs(root: Path, metric: str | None) -> tuple[list[Run], dict[str, Any]]:
    """The runs of a sweep directory (or of a plain directory of run directories) and the sweep's meta."""
    from megadepth.sweep.spec import NON_RESULT_KEYS, NON_RESULT_SECTIONS
    from megadepth.sweep.state import read_json, read_state

    if not root.is_dir():
        raise ConfigError(f"report: {root} is not a directory")
    index = read_json(root / "sweep.json")
    if index is not None and isinstance(index.get("runs"), list):
        meta = {"name": index.get("name", root.name), "axes": list(index.get("axes", [])),
                "report": dict(index.get("report") or {}), "metric": index.get("metric"), "source": "sweep.json"}
        entries = [(str(e["id"]), dict(e.get("point") or {})) for e in index["runs"] if "id" in e]
        run_root = root / "runs"
        groups = _spec_links(root / str(index.get("spec") or "sweep.yaml"), meta["axes"])
        meta["linked"], meta["linked_source"] = (groups, "sweep spec") if groups is not None else \
            (_infer_links([p for _, p in entries], meta["axes"]), "inferred")
    else:
        run_root = root / "runs" if (root / "runs").is_dir() else root
        dirs = sorted(d for d in run_root.iterdir() if d.is_dir() and (d / "config.yaml").is_file())
        if not dirs:
            raise ConfigError(f"report: {root} is not a sweep directory (no sweep.json) and holds no run "
                              "directories (no */config.yaml); run `megadepth sweep SWEEP.yaml --out DIR` first")
        flat = {}
        for d in dirs:
            try:
                flat[d.name] = _flatten(yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {})
            except yaml.YAMLError:
                continue
        keys = sorted({k for f in flat.values() for k in f})
        axes = [k for k in keys
                if k not in NON_RESULT_KEYS and k.split(".")[0] not in NON_RESULT_SECTIONS
                and len({repr(_hashable(f.get(k))) for f in flat.values()}) > 1]
        meta = {"name": root.name, "axes": axes, "report": {}, "metric": None, "source": "run directories"}
        entries = [(name, {k: f.get(k) for k in axes}) for name, f in flat.items()]
        meta["linked"], meta["linked_source"] = _infer_links([p for _, p in entries], axes), "inferred"
    runs: list[Run] = []
    metric_name = metric or meta.get("metric")
    for rid, point in entries:
        state = read_state(run_root / rid, rid)
        runs.append(Run(rid, point, state.status, math.nan, state.error, state.summary))
    if metric_name is None:  # a plain directory: eval loss where runs have it, else train loss
        has_eval = any(math.isfinite(_metric_of(r, "final_eval_loss")) for r in runs if r.status == "completed")
        metric_name = "final_eval_loss" if has_eval else "final_loss"
    if metric_name not in METRICS:
        raise ConfigError(f"report: --metric must be one of {', '.join(METRICS)}, got '{metric_name}'")
    for r in runs:
        r.value = math.inf if r.status == "diverged" else (_metric_of(r, metric_name) if r.status == "completed"
                                                            else math.nan)
        if r.status == "completed" and r.value != r.value:
            r.status = "no metric"
        elif r.status == "completed" and math.isinf(r.value):
            r.status = "diverged"
        elif r.status == "completed":
            vocab = _vocab_size(run_root / r.id)
            if vocab is not None and r.value > BLOWN_UP * math.log(vocab):
                r.error = (f"{metric_name} {r.value:.4g} > {BLOWN_UP:g} ln(vocab_size {vocab}) = "
                           f"{BLOWN_UP * math.log(vocab):.4g}: blew up, counted as diverged")
                r.status, r.value = "diverged", math.inf
    meta["metric"] = metric_name
    return runs, meta


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader when there is one: many runs


def _vocab_size(run_dir: Path) -> int | None:
    """model.vocab_size from a run's config.yaml (the trainer's), else its sweep_config.yaml; None when
    neither can be read, and such a run is then judged by its loss being finite alone."""
    for name in ("config.yaml", "sweep_config.yaml"):
        try:
            data = yaml.load((run_dir / name).read_text(encoding="utf-8"), Loader=_YAML_LOADER)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        model = data.get("model") if isinstance(data, dict) else None
        vocab = model.get("vocab_size") if isinstance(model, dict) else None
        if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 1:
            return vocab
    return None



def _spec_links(spec_path: Path, axes: Sequence[str]) -> list[list[str]] | None:
    """The linked axes (``"model.width,model.heads": [[32, 4], ...]``) of a sweep, from its frozen spec.

    sweep.json lists the axes flat, so the grouping comes from DIR/sweep.yaml's grid keys. None when the
    spec cannot be read (the caller then infers the links from the points, as for a plain directory)."""
    try:
        data = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    grid = data.get("grid") if isinstance(data, dict) else None
    if not isinstance(grid, dict):
        return None
    groups = [[k.strip() for k in str(name).split(",")] for name in grid]
    return [g for g in groups if len(g) > 1 and all(k in axes for k in g)]


def _values(points: Sequence[dict[str, Any]], key: str) -> list[str]:
    return [repr(_hashable(p.get(key))) for p in points]


def _determines(points: Sequence[dict[str, Any]], a: str, b: str) -> bool:
    """Whether ``a``'s value fixes ``b``'s in every point (b is a function of a)."""
    seen: dict[str, str] = {}
    return all(seen.setdefault(va, vb) == vb for va, vb in zip(_values(points, a), _values(points, b), strict=True))


def _infer_links(points: Sequence[dict[str, Any]], axes: Sequence[str]) -> list[list[str]]:
    """Axes that move together without a spec saying so: keys whose values are in one-to-one
    correspondence over the runs (e.g. width and heads changed together by hand). Such keys are not
    independent axes, so treating them as separate ones would split one curve into panels of one curve
    each. Keys with a single value are constants, not links."""
    varied = [k for k in axes if len(set(_values(points, k))) > 1]
    groups: list[list[str]] = []
    for key in varied:
        for group in groups:
            if _determines(points, group[0], key) and _determines(points, key, group[0]):
                group.append(key)
                break
        else:
            groups.append([key])
    return [g for g in groups if len(g) > 1]


def _metric_of(run: Run, name: str) -> float:
    from megadepth.sweep.state import as_float

    return as_float(run.summary.get(name))


def choose_layout(meta: dict[str, Any], x: str | None, curve: str | None, seed: str | None,
                  points: Sequence[dict[str, Any]] = ()) -> Layout:
    """Which axis is x, curve, seed and which are panels.

    An x, curve or seed given on the command line must be an axis, and the three must be different
    axes that do not move together (a curve linked to x would hold one x value: nothing to fit). The
    defaults (the sweep's ``report:`` section, else optimizer.lr / model.depth / train.seed) fall back
    to "none" for curve and seed when they are not usable, so a sweep without a depth or seed axis
    still reports. Linked keys that the role key determines move with it (they label its curves) and
    are not panel axes."""
    axes = list(meta["axes"])
    groups: list[list[str]] = [list(g) for g in meta.get("linked") or []]
    rep = meta.get("report") or {}
    listing = f"axes: {', '.join(axes) or 'none'}"

    def moves_with(a: str, b: str) -> list[str] | None:
        """The linked group in which a and b move together (one fixes the other), else None."""
        for g in groups:
            if a in g and b in g and (_determines(points, a, b) or _determines(points, b, a)):
                return g
        return None

    x = x or rep.get("x") or "optimizer.lr"
    if x not in axes:
        raise ConfigError(f"report: the x axis '{x}' is not an axis of this sweep ({listing}); choose one with --x")
    taken: list[tuple[str, str]] = [("x", x)]

    def pick(role: str, given: str | None, default: str) -> str | None:
        key = given or rep.get(role) or default
        problem = None
        if key not in axes:
            problem = f"--{role} '{key}' is not an axis of this sweep"
        for other_role, other in taken:
            if key == other:
                problem = f"--{role} '{key}' is already the {other_role} axis; x, curve and seed must be different axes"
            elif moves_with(key, other):
                problem = (f"--{role} '{key}' is linked to the {other_role} axis '{other}' (they move together), so it "
                           f"cannot be the {role} axis")
        if problem is None:
            taken.append((role, key))
            return key
        if given:
            raise ConfigError(f"report: {problem} ({listing})")
        return None  # a default that does not fit this sweep: no such axis

    curve_axis = pick("curve", curve, "model.depth")
    seed_axis = pick("seed", seed, "train.seed")
    linked: dict[str, list[str]] = {}
    for _, key in taken:
        mates = [k for g in groups if key in g for k in g if k != key and _determines(points, key, k)]
        if mates:
            linked[key] = mates
    roles = {key for _, key in taken} | {k for mates in linked.values() for k in mates}
    panels = [a for a in axes if a not in roles]
    return Layout(x, curve_axis, seed_axis, panels, meta["metric"], linked)


# ----------------------------------------------------------------------------------------------------
# Analysis


def _v(value: Any) -> str:
    """A value as the table and the figures show it: floats to 4 significant digits (an LR of
    2**-10 as 0.0009766, not 0.0009765625), so columns line up; everything else as is."""
    if isinstance(value, float):
        return format(value, ".4g")
    return str(value)


def _label(key: str, value: Any) -> str:
    leaf = key.rsplit(".", 1)[-1]
    return _v(value) if leaf == "name" else f"{leaf}={_v(value)}"


def curve_label(layout: Layout, curve: dict[str, Any], *, with_name: bool = True) -> str:
    """A curve's name: its value of the curve key and of the keys linked to it ("width 32, heads 4")."""
    if not layout.curve:
        return "runs"
    name = layout.curve.rsplit(".", 1)[-1]
    parts = [f"{name} {_v(curve['curve'])}" if with_name else _v(curve["curve"])]
    parts += [f"{k.rsplit('.', 1)[-1]} {_v(v)}" for k, v in (curve.get("linked") or {}).items()]
    return ", ".join(parts)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))


def analyse(runs: list[Run], layout: Layout, window: int = 3) -> dict[str, Any]:
    """Everything the table, the figures and transfer.json show."""
    panel_keys: dict[tuple[Any, ...], dict[str, Any]] = {}
    cells: dict[tuple[Any, ...], dict[Any, dict[float, list[Run]]]] = {}
    for r in runs:
        if layout.x not in r.point:
            continue
        pkey = tuple(_hashable(r.point.get(a)) for a in layout.panels)
        panel_keys.setdefault(pkey, {a: r.point.get(a) for a in layout.panels})
        cval = _hashable(r.point.get(layout.curve)) if layout.curve else None
        xval = r.point[layout.x]
        if not isinstance(xval, (int, float)) or isinstance(xval, bool) or xval <= 0:
            raise ConfigError(f"report: the x axis '{layout.x}' needs positive numbers (it is fitted in log2), "
                              f"got {xval!r}")
        cells.setdefault(pkey, {}).setdefault(cval, {}).setdefault(float(xval), []).append(r)

    panels = []
    for pkey in cells:  # panels in grid order (the spec's order of parametrizations)
        curves = []
        for cval in sorted(cells[pkey], key=_sort_key):
            by_x = cells[pkey][cval]
            points = []
            for xval in sorted(by_x):
                group = sorted(by_x[xval], key=lambda r: _sort_key(r.point.get(layout.seed)) if layout.seed else 0)
                done = [r for r in group if r.status in ("completed", "diverged")]
                vals = [r.value for r in done]
                diverged = sum(1 for v in vals if v == math.inf)
                fin = [v for v in vals if math.isfinite(v)]
                if not done:
                    mean = std = math.nan
                    sem = None
                elif diverged:
                    mean, std, sem = math.inf, math.nan, None
                else:
                    mean = float(np.mean(fin))
                    std = float(np.std(fin, ddof=1)) if len(fin) > 1 else math.nan
                    sem = std / math.sqrt(len(fin)) if len(fin) > 1 else None
                points.append({
                    "x": xval, "log2_x": math.log2(xval), "mean": mean, "std": std, "sem": sem,
                    "n": len(done), "n_diverged": diverged, "n_missing": len(group) - len(done),
                    "seeds": [{"seed": r.point.get(layout.seed) if layout.seed else None, "value": r.value,
                               "status": r.status, "id": r.id} for r in group],
                })
            lx = [p["log2_x"] for p in points]
            opt = fit_optimum(lx, [p["mean"] for p in points], [p["sem"] for p in points], window,
                              counts=[p["n"] - p["n_diverged"] for p in points])
            first = next(r for rs in by_x.values() for r in rs)
            curves.append({"curve": cval, "linked": {k: first.point.get(k) for k in layout.linked.get(layout.curve or "", [])},
                           "points": points, "optimum": opt})
        panel = {"panel": panel_keys[pkey],
                 "label": ", ".join(_label(a, v) for a, v in panel_keys[pkey].items()) or "all runs",
                 "curves": curves}
        panel.update(_transfer(curves, layout))
        panels.append(panel)
    return {"panels": panels}


def _grid_step(curves: list[dict[str, Any]]) -> float | None:
    steps = sorted({round(b["log2_x"] - a["log2_x"], 9) for c in curves for a, b in zip(c["points"], c["points"][1:], strict=False)})
    return steps[0] if steps else None


def _transfer(curves: list[dict[str, Any]], layout: Layout) -> dict[str, Any]:
    """Shift of the optimum (shallowest -> deepest), its slope against log2(depth), transfer losses."""
    out: dict[str, Any] = {"grid_step_log2": _grid_step(curves), "shift": None, "slope": None,
                           "reference": None, "transfer": []}
    have = [c for c in curves if c["optimum"].log2_x is not None]
    if not have:
        return out
    ref = have[0]  # the shallowest curve with an optimum: whose LR is transferred
    ref_opt: Optimum = ref["optimum"]
    out["reference"] = ref["curve"]
    numeric = all(isinstance(c["curve"], (int, float)) and not isinstance(c["curve"], bool) and c["curve"] > 0
                  for c in have)
    if len(have) >= 2:
        last = have[-1]
        lo, hi = ref_opt, last["optimum"]
        se = math.sqrt(lo.stderr ** 2 + hi.stderr ** 2) if lo.stderr is not None and hi.stderr is not None else None
        # an optimum at the grid edge is only known to lie at or beyond it: the shift is then a bound
        shift: dict[str, Any] = {"from": ref["curve"], "to": last["curve"], "log2": hi.log2_x - lo.log2_x,
                                 "stderr": se, "bounded": "edge" in (lo.method, hi.method)}
        if numeric and last["curve"] != ref["curve"]:
            shift["per_doubling"] = shift["log2"] / math.log2(last["curve"] / ref["curve"])
        iv = transfer_intervals(ref, last)
        shift["interval"] = iv["shift"]  # 95%, Student's t over the seeds' own fitted optima (paired)
        shift["transfer_loss_interval"] = iv["transfer_loss"]
        shift["interval_method"] = iv["method"]
        shift["interval_note"] = iv["note"]
        shift["seed_estimates"] = iv["seeds"]
        out["shift"] = shift
        fitted = [c for c in have if c["optimum"].method == "fit"]
        if numeric and len(fitted) >= 2 and len({c["curve"] for c in fitted}) >= 2:
            slope, slope_se = weighted_slope([math.log2(c["curve"]) for c in fitted],
                                             [c["optimum"].log2_x for c in fitted],
                                             [c["optimum"].stderr for c in fitted])
            out["slope"] = {"value": slope, "stderr": slope_se, "curves": [c["curve"] for c in fitted]}
    for c in curves:
        opt: Optimum = c["optimum"]
        lx = [p["log2_x"] for p in c["points"]]
        means = [p["mean"] for p in c["points"]]
        at = opt.value(ref_opt.log2_x) if opt.method == "fit" else None
        if at is None:
            at = interpolate(lx, means, ref_opt.log2_x)
        sems = [p["sem"] if p["sem"] is not None else math.nan for p in c["points"]]
        at_sem = interpolate(lx, sems, ref_opt.log2_x)
        entry = {"curve": c["curve"], "log2_x": ref_opt.log2_x,
                 "loss_at_transferred": at,
                 "loss_at_transferred_sem": at_sem if at_sem is not None and math.isfinite(at_sem) else None,
                 "best_loss": opt.loss,
                 "transfer_loss": (at - opt.loss) if at is not None and opt.loss is not None else None}
        out["transfer"].append(entry)
    return out


# ----------------------------------------------------------------------------------------------------
# Output

MIN_SPAN = 0.1
"""The smallest y span, in the metric's units (nats), that transfer.png and loss_vs_depth.png draw.
Matplotlib fits the axis to the data, so two depths 0.003 nats apart filled the whole height of
loss_vs_depth.png and read as a steep drop. Seeds of one CPU sweep point differ by 0.02 to 0.2 nats
(the bands of docs/figures/transfer-cpu.png): differences of a few hundredths are within seed noise at
these budgets. On a span of at least a tenth of a nat, 0.003 nats is 3% of the height, not all of it.
loss_vs_depth.png says so on the axis when its points span less."""

OUTLIER_SPREAD = 0.25
"""transfer.png's top is capped at 3x the means' spread below their median over the lowest mean, so one
blown-up LR does not flatten the curves; that spread counts as at least this many nats. With three LRs
per curve the median is a neighbour of the optimum and the spread tiny: a cap of 3 x 0.05 nats made a
measured edge of the grid 0.4 nats above the optimum an "off scale" triangle. A blown-up run is nats
above the rest (a uniform guess over 2048 tokens is 7.6 nats), beyond 0.75 from the best mean."""


def _f(v: float | None, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v == math.inf:
        return "inf"
    return format(v, fmt)


def measured_transfer(panel: dict[str, Any]) -> list[dict[str, Any]]:
    """What the runs measured, beside the fitted transfer numbers, one entry per curve (in the panel's
    order): its mean at the reference curve's best grid LR (``log2_x``: the grid point with the reference's
    lowest mean, not its fitted optimum, which lies between grid points where no run was made), that
    point's standard error, its own lowest mean (``best_loss``, at ``best_log2_x``) and the difference
    (``transfer_loss``). The fitted transfer loss (``panel["transfer"]``) reads the fitted parabola; these
    values are means of runs, so a figure or a table can show which numbers were measured. Nothing is
    interpolated: a curve without a finished run at that LR has no value (None); +inf where a seed
    diverged there."""
    ref = next((c for c in panel["curves"] if c["optimum"].log2_x is not None), None)  # as in _transfer
    at_lx = ref["optimum"].grid_argmin if ref is not None else None
    out = []
    for c in panel["curves"]:
        finite = [p for p in c["points"] if math.isfinite(p["mean"])]
        best = min(finite, key=lambda p: p["mean"]) if finite else None
        at = None if at_lx is None else next((p for p in c["points"] if abs(p["log2_x"] - at_lx) < 1e-9), None)
        loss = None if at is None or math.isnan(at["mean"]) else at["mean"]
        transfer = None
        if loss is not None and best is not None:
            transfer = math.inf if math.isinf(loss) else loss - best["mean"]
        out.append({"curve": c["curve"], "log2_x": at_lx, "loss": loss,
                    "sem": at["sem"] if at is not None and loss is not None and math.isfinite(loss) else None,
                    "best_log2_x": None if best is None else best["log2_x"],
                    "best_loss": None if best is None else best["mean"], "transfer_loss": transfer})
    return out


def format_table(result: dict[str, Any], layout: Layout, meta: dict[str, Any], counts: dict[str, int]) -> str:
    """The printed table (and transfer.txt): one block per panel, one row per curve.

    The columns come in two labelled groups, because a fitted vertex is a number no run produced: the
    measured group holds means of runs (the lowest grid mean and its LR; the mean at the reference curve's
    best grid LR minus it), the fitted group the parabola's optimum, its loss and the fitted transfer
    loss (the numbers transfer.json holds). A row that was not fitted says so in brackets (argmin, edge)
    and its optimum columns repeat its measured grid point."""
    curve_name = (layout.curve or "curve").rsplit(".", 1)[-1]
    xname = layout.x.rsplit(".", 1)[-1]

    def role(key: str | None) -> str:
        mates = layout.linked.get(key or "", [])
        return f"{key} (with {', '.join(mates)})" if key and mates else str(key)

    per = f"one curve per {role(layout.curve)}" if layout.curve else "one curve (no curve axis)"
    lines = [f"transfer report '{meta['name']}': {layout.metric} vs log2({role(layout.x)}), {per}, "
             f"mean over {role(layout.seed) if layout.seed else 'one run'}; runs: "
             + ", ".join(f"{n} {k}" for k, n in counts.items())]
    lines += textwrap.wrap(
        "measured: means over seeds at grid values (a curve's lowest, and its mean at the reference curve's "
        "best grid value minus that lowest); fitted: the parabola's vertex (± its standard error), its loss, "
        "and the loss at the reference's fitted optimum (on the parabola, else interpolated between grid "
        "means) minus the vertex loss.", width=110)
    wl = max(12, len(f"best log2 {xname}"))  # the log2-x columns
    wf = max(18, len(f"log2 {xname} ± se"))
    for panel in result["panels"]:
        lines.append("")
        lines.append(panel["label"])
        names = {id(c): curve_label(layout, c, with_name=False) if layout.curve else "-" for c in panel["curves"]}
        width = max([6, len(curve_name), *(len(n) for n in names.values())])
        lines.append(f"  {'':>{width}}  {'':>7}  {' measured (grid means) ':-^{wl + 2 + 9 + 2 + 13}}  "
                     f"{' fitted (parabola) ':-^{wf + 2 + 9 + 2 + 7 + 2 + 13}}")
        lines.append(f"  {curve_name:>{width}}  {'runs':>7}  {'best log2 ' + xname:>{wl}}  {'best loss':>9}  "
                     f"{'transfer loss':>13}  {'log2 ' + xname + ' ± se':>{wf}}  {xname:>9}  {'loss':>7}  "
                     f"{'transfer loss':>13}  note")
        transfer = {t["curve"]: t for t in panel["transfer"]}
        measured = {m["curve"]: m for m in measured_transfer(panel)}
        unfitted = []
        for c in panel["curves"]:
            opt: Optimum = c["optimum"]
            m = measured[c["curve"]]
            n_done = sum(p["n"] for p in c["points"])
            n_all = n_done + sum(p["n_missing"] for p in c["points"])
            fit = (f"{opt.log2_x:7.2f} ± {_f(opt.stderr, '.2f'):>5}" if opt.method == "fit" else
                   f"{_f(opt.log2_x, '.2f'):>7} ({opt.method})")
            if opt.method in ("argmin", "edge") and opt.method not in unfitted:
                unfitted.append(opt.method)
            tl = transfer.get(c["curve"], {}).get("transfer_loss")
            lines.append(f"  {names[id(c)]:>{width}}  {f'{n_done}/{n_all}':>7}  {_f(opt.grid_argmin, '.2f'):>{wl}}  "
                         f"{_f(m['best_loss']):>9}  {_f(m['transfer_loss'], '+.4f'):>13}  {fit:>{wf}}  "
                         f"{_f(None if opt.log2_x is None else 2 ** opt.log2_x, '.3g'):>9}  "
                         f"{_f(opt.loss):>7}  {_f(tl, '+.4f'):>13}  {opt.note}")
        if unfitted:
            lines.append(f"  ({') and ('.join(unfitted)}): not fitted; the fitted columns repeat the measured "
                         "grid point")
        shift, slope = panel["shift"], panel["slope"]
        if shift:
            step = panel["grid_step_log2"]
            moved = abs(shift["log2"]) / step if step else None
            text = (f"  optimum shift {curve_name} {_v(shift['from'])} -> {_v(shift['to'])}: {shift['log2']:+.2f}"
                    + (f" ± {shift['stderr']:.2f}" if shift["stderr"] is not None else "") + " log2 units")
            if "per_doubling" in shift:
                text += f" ({shift['per_doubling']:+.2f} per doubling of {curve_name})"
            if moved is not None:
                text += f"; {moved:.1f} grid step(s)"
            if shift["bounded"]:
                text += " [an optimum is at the grid edge: a bound, not an estimate]"
            lines.append(text)
            lines.append("  " + _interval_text("shift", shift.get("interval"), "+.2f", " log2 units")
                         + (f" ({shift['interval_note']})" if shift.get("interval_note") else ""))
        if slope:
            lines.append(f"  fitted optimum ~ {curve_name}^({slope['value']:+.3f}"
                         + (f" ± {slope['stderr']:.3f}" if slope["stderr"] is not None else "") + ")")
        if shift:  # the same two curves as the shift: the reference and the last one with an optimum
            last, seen = transfer[shift["to"]], measured[shift["to"]]
            lines.append(f"  transfer loss at {curve_name} {_v(shift['to'])} (its loss at the {curve_name} "
                         f"{_v(panel['reference'])} optimum minus its own best): {_f(last['transfer_loss'], '+.4f')} "
                         f"at the fitted optimum, {_f(seen['transfer_loss'], '+.4f')} measured at the best grid "
                         f"log2 {xname} ({_f(seen['log2_x'], '.2f')})")
            if shift.get("transfer_loss_interval") is not None:
                lines.append("  " + _interval_text(f"transfer loss at {curve_name} {_v(shift['to'])}",
                                                   shift["transfer_loss_interval"], "+.4f", ""))
    return "\n".join(lines)


def _interval_text(what: str, iv: dict[str, Any] | None, fmt: str, unit: str) -> str:
    """One table line for a seed-level interval (or its absence)."""
    if iv is None:
        return f"{what}: no {INTERVAL_LEVEL:.0%} interval"
    return (f"{what}: {iv['level']:.0%} interval [{format(iv['low'], fmt)}, {format(iv['high'], fmt)}]{unit} "
            f"(seed-level mean {format(iv['mean'], fmt)}; Student t, {iv['n']} seeds, t = {iv['t']:.2f})")


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
    """transfer.png's y range. Everything drawn is inside it, every fitted optimum (star) and every grid
    argmin (diamond) included, except means, bands and seeds above a cap: 3x the spread of the means
    below their median over the lowest mean (the spread at least OUTLIER_SPREAD), so a blown-up LR does
    not squash the curves; those are drawn at the top, a mean as a triangle. The cap never hides a whole
    LR column: where every curve of a panel (two or more) that finished an LR is above the cap, the
    curves rise there, the LR is no outlier, and the range holds its means. The bottom is not capped,
    and the span is at least MIN_SPAN so that tiny differences do not fill the height."""
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
    """transfer.png's key, in black: which marks are measurements, which are fitted, which are off the
    axis (the marks that ``kinds`` says were drawn)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    entries: list[tuple[Any, str]] = []
    mean = Line2D([], [], color="0.3", marker="o", ms=3.5, lw=1.4)
    if kinds["band"]:
        entries.append(((Patch(color="0.3", alpha=0.18, lw=0), mean), "measured mean ± 1 std over seeds"))
    else:
        entries.append((mean, "measured mean (one seed: no spread)"))
    if kinds["seeds"]:
        entries.append((Line2D([], [], color="0.3", marker=".", ls="", alpha=0.6), "a seed (measured)"))
    if kinds["fit"]:
        entries.append((Line2D([], [], color="0.7", marker="*", ms=10, mec="black", mew=0.6, ls=""),
                        "fitted optimum (parabola vertex) ± stderr"))
    if kinds["argmin"]:
        entries.append((Line2D([], [], color="0.7", marker="D", ms=5, mec="black", mew=0.6, ls=""),
                        "optimum not fitted: measured grid argmin"))
    if kinds["diverged"]:
        entries.append((Line2D([], [], color="0.3", marker="x", ms=7, mew=2, ls=""), "diverged (drawn at the top)"))
    if kinds["off"]:
        entries.append((Line2D([], [], color="0.3", marker="^", ms=6, ls=""), "mean above the axis (outlier)"))
    return [h for h, _ in entries], [t for _, t in entries]


def plot_transfer(result: dict[str, Any], layout: Layout, out: Path, title: str) -> Path:
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
            xs = np.array([p["log2_x"] for p in pts])
            mean = np.array([p["mean"] for p in pts])
            std = np.array([p["std"] for p in pts])
            ok = np.isfinite(mean)
            label = curve_label(layout, c)
            ax.plot(xs[ok], np.minimum(mean[ok], ylim[1]), "-o", color=color, ms=3.5, lw=1.4, label=label)
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
        ax.set_xlabel(f"log2 {layout.x}")
        if all(float(p["log2_x"]).is_integer() for c in panel["curves"] for p in c["points"]):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # not -8.75: no run was made there
        if k % ncols == 0:
            ax.set_ylabel(layout.metric)
        ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    handles, texts = _key_handles(kinds)
    key_cols = min(len(handles), 2 * ncols - 1)  # an entry takes ~3 inches: one per column of a 5.2-inch panel
    fig.legend(handles, texts, loc="outside lower center", ncol=key_cols, fontsize=8, frameon=False)
    fig.set_size_inches(5.2 * ncols, 4.2 * nrows + 0.4 + 0.2 * math.ceil(len(handles) / key_cols))
    # wrapped to the figure's width: one panel is 5.2 inches, too narrow for a long title on one line
    # (at 9 points a line holds ~15 average characters per inch; 13 leaves room for wide ones)
    curves = f", one curve per {layout.curve.rsplit('.', 1)[-1]}" if layout.curve else ""
    fig.suptitle(textwrap.fill(f"{title}: {layout.metric} vs log2 {layout.x}{curves}", width=int(13 * 5.2 * ncols),
                               break_long_words=True), fontsize=9)
    return save_figure(fig, out)


def plot_loss_vs_depth(result: dict[str, Any], layout: Layout, out: Path, title: str) -> Path | None:
    """loss_vs_depth.png: per panel, what each depth MEASURED at the reference depth's best grid LR (solid,
    ± standard error; see measured_transfer) and its lowest measured mean (dashed), and, as hollow
    diamonds, the fitted loss at the reference's fitted optimum that the table's transfer loss uses. A
    fitted vertex is no run's loss, so it is never joined into the measured line. The y span is at least
    MIN_SPAN and a note says when the points differ by less."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if not layout.curve:
        return None
    fig, ax = plt.subplots(figsize=(6.8, 5.0), dpi=110, layout="constrained")
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    curve_name = layout.curve.rsplit(".", 1)[-1]
    xname = layout.x.rsplit(".", 1)[-1]
    values: list[float] = []  # every finite value drawn, for the y range
    diverged: list[tuple[float, Any]] = []
    handles: list[Any] = []
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
            texts.append(f"{panel['label']}: at the LR of {curve_name} {_v(ref)} (measured: log2 {xname} "
                         f"{_f(at[0]['log2_x'], '.2f')}; fitted: {_f(fitted_lx, '.2f')})")
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
    if kinds["best"]:
        handles.append(Line2D([], [], color="0.3", ls="--", alpha=0.6))
        texts.append("own best: each depth's lowest measured mean")
    if kinds["fitted"]:
        handles.append(Line2D([], [], color="0.3", marker="D", ls="", ms=7, mfc="none", mew=1.3))
        texts.append("fitted: at the fitted optimum LR (on the depth's parabola, else interpolated): "
                     "the table's transfer loss")
    if kinds["diverged"]:
        handles.append(Line2D([], [], color="0.3", marker="x", ls="", ms=8, mew=2))
        texts.append("diverged at that LR (drawn at the top)")
    ax.set_xlabel(curve_name)
    ax.set_ylabel(f"{layout.metric} (measured mean ± stderr)")
    ax.set_title(f"{title}: loss at the transferred LR vs {curve_name}\n(deeper should be better when transfer works)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(handles, texts, loc="outside lower center", fontsize=7, frameon=False)
    return save_figure(fig, out)


def _jsonable(result: dict[str, Any], layout: Layout, meta: dict[str, Any], counts: dict[str, int],
              failed: list[Run]) -> dict[str, Any]:
    """transfer.json's content. A value, mean, std or sem that is not defined (an unfinished run; no
    finished seed; fewer than two; a diverged seed) is null, never NaN: the "nan" strings JSON forces
    read as numbers to some tools, and sem was already null where std was "nan"."""

    def defined(v: float | None) -> float | None:
        return None if v is None or math.isnan(v) else v

    panels = []
    for panel in result["panels"]:
        curves = [{"curve": c["curve"], "linked": c["linked"], "label": curve_label(layout, c),
                   "optimum": c["optimum"].as_dict(),
                   "points": [{**p, "mean": defined(p["mean"]), "std": defined(p["std"]), "sem": defined(p["sem"]),
                               "seeds": [{**r, "value": defined(r["value"])} for r in p["seeds"]]}
                              for p in c["points"]]}
                  for c in panel["curves"]]
        panels.append({"panel": panel["panel"], "label": panel["label"], "grid_step_log2": panel["grid_step_log2"],
                       "shift": panel["shift"], "slope": panel["slope"], "reference": panel["reference"],
                       "transfer": panel["transfer"], "curves": curves})
    return {
        "sweep": meta["name"], "source": meta["source"], "metric": layout.metric, "x": layout.x,
        "curve": layout.curve, "seed": layout.seed, "linked": layout.linked,
        "linked_source": meta.get("linked_source"), "panel_axes": layout.panels, "runs": counts,
        "not_finished": [{"id": r.id, "point": r.point, "status": r.status, "error": r.error} for r in failed],
        "panels": panels,
    }


def report(root: str | Path, *, metric: str | None = None, x: str | None = None, curve: str | None = None,
           seed: str | None = None, window: int = 3, out: str | Path | None = None) -> dict[str, Any]:
    """Analyse a sweep directory and write its report; returns transfer.json's content (+ 'table')."""
    root = Path(root)
    runs, meta = load_runs(root, metric)
    layout = choose_layout(meta, x, curve, seed, [r.point for r in runs])
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    finished = [r for r in runs if r.status in ("completed", "diverged")]
    if not finished:
        state = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no runs"
        hint = (f"; the runs have no {layout.metric} (try --metric final_loss)" if counts.get("no metric") else
                "; run (or finish) the sweep first: megadepth sweep SWEEP.yaml --out DIR")
        raise ConfigError(f"report: {root} has no finished runs ({state}){hint}")
    result = analyse(runs, layout, window)
    target = Path(out) if out else root / "report"
    table = format_table(result, layout, meta, counts)
    not_finished = [r for r in runs if r.status not in ("completed", "diverged")]
    if not_finished:
        table += f"\n\n{len(not_finished)} run(s) not in the figures: " + ", ".join(
            f"{k} {n}" for k, n in counts.items() if k not in ("completed", "diverged"))
        for r in [r for r in not_finished if r.error][:5]:
            table += f"\n  {r.id}: {r.error}"
    blown = [r for r in runs if r.status == "diverged" and r.error]  # finite, but far above ln(vocab)
    if blown:
        table += f"\n\n{len(blown)} run(s) counted as diverged with a finite loss, e.g. {blown[0].id}: {blown[0].error}"
    data = _jsonable(result, layout, meta, counts, not_finished)
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_json(target / "transfer.json", data)
    atomic_write_text(target / "transfer.txt", table + "\n")
    plot_transfer(result, layout, target / "transfer.png", meta["name"])
    depth_png = plot_loss_vs_depth(result, layout, target / "loss_vs_depth.png", meta["name"])
    if depth_png is None:  # an earlier report's figure would otherwise stand beside this report's files
        (target / "loss_vs_depth.png").unlink(missing_ok=True)
    data["table"] = table
    data["files"] = [str(target / "transfer.png"), *([str(depth_png)] if depth_png else []),
                     str(target / "transfer.json"), str(target / "transfer.txt")]
    return data


# ----------------------------------------------------------------------------------------------------
# CLI


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
        "report",
        help="read a sweep: optimal LR per depth (fitted), its shift, transfer loss; plots",
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
