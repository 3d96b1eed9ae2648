"""From runs to what the report shows: per panel and curve the points, the fitted optimum, its shift
and slope across curves, the transfer losses, and intervals over seeds."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from megadepth.analysis.fitting import (
    INTERVAL_LEVEL,
    Optimum,
    fit_optimum,
    interpolate,
    parabola,
    seed_interval,
    weighted_slope,
)
from megadepth.analysis.runs import Roles, Run, hashable
from megadepth.common.errors import ConfigError
from megadepth.common.typed_yaml import leaf
from megadepth.sweep.spec import label_name

FINISHED = ("completed", "diverged")


def show(value: Any) -> str:
    """A value as the table and the figures show it: floats to 4 significant digits."""
    return format(value, ".4g") if isinstance(value, float) else str(value)


def curve_label(roles: Roles, curve: dict[str, Any], *, with_name: bool = True) -> str:
    """A curve's name: its value of the curve key and of the keys linked to it ("width 32, heads 4")."""
    if not roles.curve:
        return "runs"
    name = label_name(roles.curve)
    parts = [f"{name} {show(curve['curve'])}" if with_name else show(curve["curve"])]
    parts += [f"{label_name(k)} {show(v)}" for k, v in (curve.get("linked") or {}).items()]
    return ", ".join(parts)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))


def _point(xval: float, group: list[Run], roles: Roles) -> dict[str, Any]:
    """One grid value of a curve: the metric over seeds (+inf if any seed diverged)."""
    done = [r for r in group if r.status in FINISHED]
    diverged = sum(1 for r in done if r.value == math.inf)
    fin = [r.value for r in done if math.isfinite(r.value)]
    sem = None
    if not done:
        mean = std = math.nan
    elif diverged:
        mean, std = math.inf, math.nan
    else:
        mean = float(np.mean(fin))
        std = float(np.std(fin, ddof=1)) if len(fin) > 1 else math.nan
        sem = std / math.sqrt(len(fin)) if len(fin) > 1 else None
    return {"x": xval, "log2_x": math.log2(xval), "mean": mean, "std": std, "sem": sem,
            "n": len(done), "n_diverged": diverged, "n_missing": len(group) - len(done),
            "seeds": [{"seed": r.point.get(roles.seed) if roles.seed else None, "value": r.value,
                       "status": r.status, "id": r.id} for r in group]}


def analyse(runs: list[Run], roles: Roles, window: int = 3) -> dict[str, Any]:
    """Everything the table, the figures and transfer.json show."""
    panel_values: dict[tuple[Any, ...], dict[str, Any]] = {}
    cells: dict[tuple[Any, ...], dict[Any, dict[float, list[Run]]]] = {}
    for r in runs:
        if roles.x not in r.point:
            continue
        pkey = tuple(hashable(r.point.get(a)) for a in roles.panels)
        panel_values.setdefault(pkey, {a: r.point.get(a) for a in roles.panels})
        cval = hashable(r.point.get(roles.curve)) if roles.curve else None
        xval = r.point[roles.x]
        if not isinstance(xval, (int, float)) or isinstance(xval, bool) or xval <= 0:
            unset = (" (null: the point leaves the key unset; give every point a number, e.g. the value it "
                     "falls back to)") if xval is None else ""
            raise ConfigError(f"report: the x axis '{roles.x}' needs positive numbers (it is fitted in log2), "
                              f"got {xval!r}{unset}")
        cells.setdefault(pkey, {}).setdefault(cval, {}).setdefault(float(xval), []).append(r)

    panels = []
    for pkey in cells:  # panels in grid order (the spec's order of parametrizations)
        curves = []
        for cval in sorted(cells[pkey], key=_sort_key):
            by_x = cells[pkey][cval]
            points = [_point(xval, sorted(by_x[xval], key=lambda r: _sort_key(r.point.get(roles.seed))
                                          if roles.seed else 0), roles) for xval in sorted(by_x)]
            opt = fit_optimum([p["log2_x"] for p in points], [p["mean"] for p in points],
                              [p["sem"] for p in points], window, counts=[p["n"] - p["n_diverged"] for p in points])
            first = next(r for rs in by_x.values() for r in rs)
            curves.append({"curve": cval, "linked": {k: first.point.get(k) for k in roles.linked.get(roles.curve or "", [])},
                           "points": points, "optimum": opt})
        label = ", ".join(show(v) if leaf(a) == "name" else f"{label_name(a)}={show(v)}"
                          for a, v in panel_values[pkey].items())
        panels.append({"panel": panel_values[pkey], "label": label or "all runs", "curves": curves,
                       **_transfer(curves), "best_change": best_change(curves)})
    return {"panels": panels, "comparisons": compare_panels(panels)}


def _transfer(curves: list[dict[str, Any]]) -> dict[str, Any]:
    """Shift of the optimum (first curve with one -> last), its slope, and each curve's transfer loss."""
    steps = sorted({round(b["log2_x"] - a["log2_x"], 9) for c in curves
                    for a, b in zip(c["points"], c["points"][1:], strict=False)})
    out: dict[str, Any] = {"grid_step_log2": steps[0] if steps else None, "shift": None, "slope": None,
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
        shift.update({"interval": iv["shift"], "transfer_loss_interval": iv["transfer_loss"],
                      "interval_method": iv["method"], "interval_note": iv["note"], "seed_estimates": iv["seeds"]})
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
        at = opt.value(ref_opt.log2_x) if opt.method == "fit" else None
        if at is None:
            at = interpolate(lx, [p["mean"] for p in c["points"]], ref_opt.log2_x)
        at_sem = interpolate(lx, [p["sem"] if p["sem"] is not None else math.nan for p in c["points"]],
                             ref_opt.log2_x)
        out["transfer"].append({
            "curve": c["curve"], "log2_x": ref_opt.log2_x, "loss_at_transferred": at,
            "loss_at_transferred_sem": at_sem if at_sem is not None and math.isfinite(at_sem) else None,
            "best_loss": opt.loss,
            "transfer_loss": (at - opt.loss) if at is not None and opt.loss is not None else None})
    return out


def measured_transfer(panel: dict[str, Any]) -> list[dict[str, Any]]:
    """What the runs measured, per curve: its mean at the reference's best grid LR (no interpolation),
    its own lowest mean and the difference (``transfer_loss``)."""
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


SeedOptimum = tuple[float, float, tuple[float, float, float]]  # log2_x, loss, (a, b, c)


def seed_optima(curve: dict[str, Any]) -> tuple[dict[Any, SeedOptimum], str]:
    """Each seed's own optimum of a fitted curve (its parabola in the mean fit's window), and why a
    seed has none (it is left out)."""
    opt: Optimum = curve["optimum"]
    if opt.method != "fit" or opt.window is None:
        return {}, f"its optimum is not fitted ({opt.method})"
    pts = [p for p in curve["points"] if opt.value(p["log2_x"]) is not None]  # the fit window
    t = np.array([p["log2_x"] - opt.center for p in pts])
    per_seed: dict[Any, list[float]] = {}
    for k, p in enumerate(pts):
        for r in p["seeds"]:
            value = r["value"] if r["status"] in FINISHED else math.nan
            per_seed.setdefault(hashable(r["seed"]), [math.nan] * len(pts))[k] = value
    out: dict[Any, SeedOptimum] = {}
    why = ""
    for seed, ys in per_seed.items():
        if not all(math.isfinite(y) for y in ys):
            why = f"seed {show(seed)} has no finished, finite run at every fit point"
            continue
        _, _, (a, b, c) = parabola(t, np.array(ys))
        if not a > 0:
            why = f"seed {show(seed)}'s own parabola is not convex"
            continue
        ts = min(max(-b / (2 * a), float(t[0])), float(t[-1]))
        out[seed] = (opt.center + ts, a * ts * ts + b * ts + c, (a, b, c))
    return out, why


def _seed_transfer_loss(curve: dict[str, Any], own: SeedOptimum, seed: Any, at_lx: float) -> float | None:
    """One seed's loss on ``curve`` at ``at_lx`` minus its own vertex loss."""
    opt: Optimum = curve["optimum"]
    if opt.value(at_lx) is not None:
        a, b, c = own[2]
        t = at_lx - opt.center
        at: float | None = a * t * t + b * t + c
    else:
        vals = [next((r["value"] for r in p["seeds"] if hashable(r["seed"]) == seed and r["status"] in FINISHED),
                     math.nan) for p in curve["points"]]
        at = interpolate([p["log2_x"] for p in curve["points"]], vals, at_lx)
    if at is None or not math.isfinite(at):
        return None
    return at - own[1]


def transfer_intervals(ref: dict[str, Any], last: dict[str, Any],
                       level: float = INTERVAL_LEVEL) -> dict[str, Any]:
    """Student-t intervals, paired by seed, for the shift (``ref`` -> ``last``) and ``last``'s transfer
    loss; None (the note says why) unless every seed has an optimum on both curves and there are two."""
    out: dict[str, Any] = {"method": "student-t over seed-level fitted optima, paired by seed",
                           "shift": None, "transfer_loss": None, "seeds": [], "note": ""}
    lo, why_lo = seed_optima(ref)
    hi, why_hi = seed_optima(last)
    if why_lo or why_hi or not lo or not hi:
        which = ref if (why_lo or not lo) else last
        out["note"] = f"no interval: at {show(which['curve'])}, {why_lo or why_hi or 'no seed optimum'}"
        return out
    if set(lo) != set(hi):
        out["note"] = "no interval: the two curves do not have the same seeds"
        return out
    seeds = list(lo)
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


def seed_bests(curve: dict[str, Any]) -> tuple[dict[Any, float], dict[Any, str]]:
    """Each seed's lowest finished loss over the curve's grid (its own best LR, not fitted), and why each
    other seed is left out: it needs one finished run at every grid value (else its best would be over
    fewer LRs) and a finite loss at one of them."""
    per_seed: dict[Any, list[float]] = {}
    for p in curve["points"]:
        for r in p["seeds"]:
            value = r["value"] if r["status"] in FINISHED else math.nan
            per_seed.setdefault(hashable(r["seed"]), []).append(value)
    out: dict[Any, float] = {}
    left_out: dict[Any, str] = {}
    n_points = len(curve["points"])
    for seed, values in per_seed.items():
        if len(values) > n_points:
            left_out[seed] = "more than one run at a grid value"
        elif len(values) < n_points or any(math.isnan(v) for v in values):
            left_out[seed] = "no finished run at some grid value"
        elif not any(math.isfinite(v) for v in values):
            left_out[seed] = "diverged at every grid value"
        else:
            out[seed] = min(v for v in values if math.isfinite(v))
    return out, left_out


def paired_difference(a: dict[str, Any], b: dict[str, Any], level: float = INTERVAL_LEVEL) -> dict[str, Any]:
    """Seed by seed, curve ``b``'s best grid loss minus curve ``a``'s, and a Student-t interval over the
    differences of the seeds both curves have a best for: do the two reach different losses, each at its
    own best LR? The note names every seed left out and why; no interval below 2 seeds."""
    lo, out_a = seed_bests(a)
    hi, out_b = seed_bests(b)
    seeds = [seed for seed in lo if seed in hi]
    reasons = {**{s: f"{r} at {show(a['curve'])}" for s, r in out_a.items()},
               **{s: f"{r} at {show(b['curve'])}" for s, r in out_b.items()}}
    reasons.update({s: "not on both curves" for s in (set(lo) ^ set(hi)) if s not in reasons})
    diffs = {seed: hi[seed] - lo[seed] for seed in seeds}
    interval = seed_interval(list(diffs.values()), level)
    notes = [f"seed {show(s)} left out ({r})" for s, r in sorted(reasons.items(), key=lambda kv: str(kv[0]))]
    if interval is None:
        notes.insert(0, f"no interval: {len(diffs)} seed(s) with a best on both curves (at least 2 needed)")
    return {"method": "student-t over each seed's best-grid-loss difference, paired by seed",
            "interval": interval, "seeds": [{"seed": s, "difference": d} for s, d in diffs.items()],
            "note": "; ".join(notes)}


def best_change(curves: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first curve -> the last: how much each seed's best loss changes (depth 2 -> 16: does the deeper
    model train better at its own tuned LR?)."""
    if len(curves) < 2:
        return None
    first, last = curves[0], curves[-1]
    return {"from": first["curve"], "to": last["curve"], **paired_difference(first, last)}


def compare_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Between two panels that differ in one panel axis (parametrizations), at the last curve value they
    share: the second's best grid loss minus the first's, paired by seed (which parametrization trains the
    deepest model best)."""
    out = []
    for i, a in enumerate(panels):
        for b in panels[i + 1:]:
            if sum(a["panel"].get(k) != v for k, v in b["panel"].items()) != 1:
                continue  # two panel axes: compare along one at a time, not width 64's sp with width 128's completep
            by_a = {c["curve"]: c for c in a["curves"]}
            shared = [c for c in b["curves"] if c["curve"] in by_a]
            if not shared:
                continue
            curve = shared[-1]
            out.append({"a": a["label"], "b": b["label"], "curve": curve["curve"],
                        **paired_difference(by_a[curve["curve"]], curve)})
    return out
