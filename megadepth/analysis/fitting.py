"""The statistics behind ``megadepth report``: ``fit_optimum`` (a parabola in log2(LR) around the grid
argmin, with a delta-method standard error) and ``seed_interval`` (Student's t over per-seed values)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from megadepth.common.errors import ConfigError

LOPSIDED = 20.0
"""Without a second gentle-side point (rule 4 of :func:`fit_optimum`): the steep side of the bracket may
rise at most this many times the gentle side's rise (more puts the vertex over 0.45 grid steps away)."""

STEEPER = 4.0
"""With two gentle-side points (rule 4 of :func:`fit_optimum`): the steep neighbour may rise at most this
many times what the parabola through the gentle side and the argmin predicts there."""


@dataclass
class Optimum:
    """The estimated optimum of one curve, in log2(x)."""

    log2_x: float | None
    stderr: float | None
    loss: float | None
    loss_stderr: float | None
    method: str  # fit | argmin | edge | none
    note: str = ""
    grid_argmin: float | None = None
    window: tuple[float, float] | None = None
    coef: tuple[float, float, float] | None = None  # a, b, c of a t^2 + b t + c, t = log2_x - center
    center: float = 0.0

    def value(self, lx: float) -> float | None:
        """The fitted parabola at ``lx`` if ``lx`` lies in the fit window, else None."""
        if self.coef is None or self.window is None or not (self.window[0] - 1e-9 <= lx <= self.window[1] + 1e-9):
            return None
        a, b, c = self.coef
        t = lx - self.center
        return a * t * t + b * t + c

    def as_dict(self) -> dict[str, Any]:
        return {"log2_x": self.log2_x, "x": None if self.log2_x is None else 2.0 ** self.log2_x,
                "stderr_log2": self.stderr, "loss": self.loss, "loss_stderr": self.loss_stderr,
                "method": self.method, "note": self.note, "grid_argmin_log2_x": self.grid_argmin,
                "window_log2_x": list(self.window) if self.window else None}


def parabola(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The least-squares parabola through ``(t, y)``: its design matrix, pseudo-inverse and ``(a, b, c)``."""
    design = np.stack([t * t, t, np.ones_like(t)], axis=1)
    pinv = np.linalg.pinv(design)
    a, b, c = (float(v) for v in pinv @ y)
    return design, pinv, (a, b, c)


def fit_optimum(lx: Sequence[float], mean: Sequence[float], sem: Sequence[float | None], window: int = 3,
                counts: Sequence[int] | None = None) -> Optimum:
    """The optimum of one curve: grid values ``lx`` (log2 x, increasing), the mean loss at each (+inf:
    diverged, nan: no finished run), each mean's standard error (None: one seed) and optionally the
    finished seeds behind each. The first rule that applies decides; only ``fit`` is not the grid argmin:

    1. ``window`` must be odd and >= 3 (else ConfigError); no finite mean: ``none``.
    2. One grid value, or the argmin at an end of the grid: ``edge`` (never extrapolated).
    3. A neighbour of the argmin diverged or has no finished run: ``argmin``.
    4. A lopsided bracket (the steep neighbour near divergence or far from converged): ``argmin``. Its
       rise may be at most STEEPER times what the parabola through the gentle side predicts (when there
       is a second gentle point), else LOPSIDED times the gentle rise, plus the argmin's noise.
    5. A least-squares parabola in log2 x through the contiguous finite points within ``window // 2`` of
       the argmin; not convex: ``argmin``; else its vertex, clamped to those points: ``fit``.
    6. The means' variances: their standard errors squared; a one-seed point takes the seed variance
       pooled over the others (with ``counts``); else, over 3 points, the fit's residual variance.
    7. A fitted loss further below the argmin's mean than twice its standard error, twice the gentle rise
       or 1.25/8 of the steep rise (a vertex half a step away dips 1/8 of it): ``argmin``.
    8. Standard errors of the optimum and its loss: the delta method over the variances of rule 6.
    """
    if window < 3 or window % 2 == 0:
        raise ConfigError(f"--window must be an odd number of grid points, at least 3 (got {window})")
    lx = [float(v) for v in lx]
    y = [float(v) for v in mean]
    finite = [i for i, v in enumerate(y) if math.isfinite(v)]
    if not finite:
        return Optimum(None, None, None, None, "none", "no finished, finite point")
    best = min(finite, key=lambda i: y[i])

    def unfitted(method: str, note: str) -> Optimum:
        return Optimum(lx[best], None, y[best], sem[best], method, note, grid_argmin=lx[best])

    # 2. an edge
    if len(y) == 1:
        return unfitted("edge", "a single grid value: nothing to compare with; extend the grid")
    if best in (0, len(y) - 1):
        side = "lowest" if best == 0 else "highest"
        missing = ", ".join(_fmt_lx(lx[i]) for i, v in enumerate(y) if math.isnan(v))
        if math.isnan(y[1 if best == 0 else -2]):
            return unfitted("edge", f"best at the {side} grid value so far: no finished run yet at log2 x = "
                                    f"{missing}; finish the sweep")
        return unfitted("edge", f"best at the {side} grid value: extend the grid"
                                + (f" (no finished run yet at log2 x = {missing})" if missing else ""))
    # 3. an unfinished neighbour
    lo, hi = max(0, best - window // 2), min(len(y) - 1, best + window // 2)
    if not (math.isfinite(y[best - 1]) and math.isfinite(y[best + 1])):
        return unfitted("argmin", "a neighbouring grid value diverged" if math.inf in y[lo:hi + 1]
                        else "a neighbouring grid value is missing")
    # 4. a lopsided bracket
    rises = (y[best - 1] - y[best], y[best + 1] - y[best])
    noise = 2 * float(sem[best]) if sem[best] is not None and math.isfinite(sem[best]) else 0.0  # type: ignore[arg-type]
    steep_side = -1 if rises[0] > rises[1] else 1
    gentle2 = best - 2 * steep_side
    predicted = None
    if 0 <= gentle2 < len(y) and math.isfinite(y[gentle2]):
        xs = [lx[gentle2], lx[best - steep_side], lx[best]]
        coef = np.polyfit(np.array(xs) - lx[best], [y[gentle2], y[best - steep_side], y[best]], 2)
        predicted = float(np.polyval(coef, lx[best + steep_side] - lx[best])) - y[best]
        limit = STEEPER * max(predicted, min(rises)) + noise
        why = f"over {STEEPER:g}x what the other side's curve predicts, {max(predicted, min(rises)):.3g}"
    else:
        limit = LOPSIDED * max(min(rises), noise)
        why = f"over {LOPSIDED:g}x the other side's"
    if max(rises) > limit:
        what = "is near divergence" if steep_side > 0 else "is far from converged (too steep to fit)"
        return unfitted("argmin", f"a neighbouring grid value {what} (the {'lower' if steep_side < 0 else 'higher'} "
                                  f"one's loss rises {max(rises):.3g}, {why}): not fitted")
    # 5. the parabola
    left = right = best
    while left > lo and math.isfinite(y[left - 1]):
        left -= 1
    while right < hi and math.isfinite(y[right + 1]):
        right += 1
    idx = list(range(left, right + 1))
    center = lx[best]
    t = np.array([lx[i] - center for i in idx])
    ys = np.array([y[i] for i in idx])
    design, pinv, (a, b, c) = parabola(t, ys)
    if not a > 0:
        return unfitted("argmin", "points around the argmin are not convex")
    t_star = min(max(-b / (2 * a), float(t[0])), float(t[-1]))
    loss = a * t_star * t_star + b * t_star + c
    # 6. the variances of the means
    variances: np.ndarray | None = None
    note = ""
    known = [i for i in idx if sem[i] is not None and math.isfinite(sem[i])]  # type: ignore[arg-type]
    if len(known) == len(idx):
        variances = np.array([float(sem[i]) ** 2 for i in idx])  # type: ignore[arg-type]
    elif known and counts is not None:
        # pooled seed variance s^2 = sum (n_i - 1) s_i^2 / sum (n_i - 1), with s_i^2 = n_i sem_i^2
        dof = sum(counts[i] - 1 for i in known)
        pooled = sum((counts[i] - 1) * counts[i] * float(sem[i]) ** 2 for i in known) / dof  # type: ignore[arg-type]
        variances = np.array([float(sem[i]) ** 2 if i in known else pooled / max(counts[i], 1)  # type: ignore[arg-type]
                              for i in idx])
        single = [_fmt_lx(lx[i]) for i in idx if i not in known]
        note = f"one seed at log2 x = {', '.join(single)}: its error pooled from the other fit points' seeds"
    elif len(idx) > 3:
        resid = ys - design @ np.array([a, b, c])
        variances = np.full(len(idx), float(resid @ resid) / (len(idx) - 3))
    elif known:
        note = "a seed missing at a fit point: no uncertainty"
    elif counts is not None and max(counts) > 1:
        note = "seeds missing at the fit points (one seed each): no uncertainty"
    else:
        note = "one seed: no uncertainty"
    # 7. no deeper than the data allow
    best_se = math.sqrt(float(variances[idx.index(best)])) if variances is not None else 0.0
    dip = 1.25 * min(max(rises), max(predicted, 0.0)) / 8 if predicted is not None else 0.0
    if loss < y[best] - max(2 * best_se, 2 * min(rises), dip):
        return unfitted("argmin", f"the fitted minimum ({loss:.4g}) lies further below the best grid mean than "
                                  "its neighbours and seeds allow: not fitted")
    # 8. the delta method
    stderr = loss_stderr = None
    if variances is not None:
        cov = pinv @ np.diag(variances) @ pinv.T
        g = np.array([b / (2 * a * a), -1 / (2 * a), 0.0])
        stderr = float(math.sqrt(max(g @ cov @ g, 0.0)))
        h = np.array([b * b / (4 * a * a), -b / (2 * a), 1.0])
        loss_stderr = float(math.sqrt(max(h @ cov @ h, 0.0)))
    return Optimum(center + t_star, stderr, loss, loss_stderr, "fit", grid_argmin=lx[best],
                   window=(lx[idx[0]], lx[idx[-1]]), coef=(a, b, c), center=center, note=note)


def _fmt_lx(value: float) -> str:
    return format(value, "g") if float(value).is_integer() else format(value, ".2f")


def weighted_slope(xs: Sequence[float], ys: Sequence[float], ses: Sequence[float | None]) -> tuple[float, float | None]:
    """Slope of ys against xs (weighted by 1/se^2 when every se is known and positive) and its stderr."""
    x, y = np.array(xs, dtype=float), np.array(ys, dtype=float)
    known = all(s is not None and s > 0 for s in ses)
    w = 1.0 / np.array(ses, dtype=float) ** 2 if known else np.ones_like(x)
    xm = float((w * x).sum() / w.sum())
    sxx = float((w * (x - xm) ** 2).sum())
    ym = float((w * y).sum() / w.sum())
    # y centred too: sum w (x - xm) y is the same in exact arithmetic, but with weights that differ by
    # orders of magnitude sum w (x - xm) is not 0 in floating point and multiplies y's offset
    slope = float((w * (x - xm) * (y - ym)).sum() / sxx)
    if known:
        return slope, math.sqrt(1.0 / sxx)
    if len(x) > 2:
        intercept = ym - slope * xm
        resid = y - (slope * x + intercept)
        return slope, math.sqrt(float(resid @ resid) / (len(x) - 2) / sxx)
    return slope, None


def interpolate(lx: Sequence[float], values: Sequence[float], at: float) -> float | None:
    """Linear interpolation in log2 x; None outside the grid or by a missing point, inf by a diverged one."""
    for x, v in zip(lx, values, strict=False):
        if abs(x - at) < 1e-9:
            return None if math.isnan(v) else v
    for i in range(len(lx) - 1):
        if lx[i] < at < lx[i + 1]:
            a, b = values[i], values[i + 1]
            if math.isnan(a) or math.isnan(b):
                return None
            if math.isinf(a) or math.isinf(b):
                return math.inf
            w = (at - lx[i]) / (lx[i + 1] - lx[i])
            return (1 - w) * a + w * b
    return None


INTERVAL_LEVEL = 0.95
"""The coverage of the shift's and the transfer loss's intervals."""


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_quantile(p: float, dof: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``dof`` degrees of freedom (no scipy here)."""
    if not 0.0 < p < 1.0 or not dof > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and dof > 0, got p={p}, dof={dof}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    if p == 0.5:
        return 0.0
    tail = 1.0 - p  # P(T > t) = I_{dof/(dof+t^2)}(dof/2, 1/2) / 2, decreasing in t: bisect
    lo, hi = 0.0, 1.0
    while _betainc(dof / 2, 0.5, dof / (dof + hi * hi)) / 2 > tail:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if _betainc(dof / 2, 0.5, dof / (dof + mid * mid)) / 2 > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def seed_interval(values: Sequence[float], level: float = INTERVAL_LEVEL) -> dict[str, Any] | None:
    """A ``level`` Student-t interval for the mean of ``values`` (one estimate per seed: with 2 or 3
    seeds the spread itself is uncertain); None for fewer than two values or a non-finite one."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n < 2 or not all(math.isfinite(v) for v in vals):
        return None
    mean = float(np.mean(vals))
    sd = float(np.std(vals, ddof=1))
    t = t_quantile((1.0 + level) / 2.0, n - 1)
    half = t * sd / math.sqrt(n)
    return {"level": level, "low": mean - half, "high": mean + half, "mean": mean, "n": n, "dof": n - 1,
            "t": t, "sd": sd}
