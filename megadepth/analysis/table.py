"""The report's text: the printed table (transfer.txt) and transfer.json's content."""

from __future__ import annotations

import math
import textwrap
from typing import Any

from megadepth.analysis.fitting import INTERVAL_LEVEL, Optimum
from megadepth.analysis.runs import Roles, Run
from megadepth.analysis.transfer import FINISHED, curve_label, measured_transfer, show
from megadepth.sweep.spec import label_name


def show_number(v: float | None, fmt: str = ".3f") -> str:
    """A number in the table: '-' when undefined (None, nan), 'inf' for +inf."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v == math.inf:
        return "inf"
    return format(v, fmt)


def format_table(result: dict[str, Any], roles: Roles, meta: dict[str, Any], counts: dict[str, int],
                 runs: list[Run]) -> str:
    """The printed table (and transfer.txt): one block per panel, one row per curve, measured and
    fitted columns apart, then the runs that did not finish or blew up."""
    curve_name, xname = label_name(roles.curve or "curve"), label_name(roles.x)

    def role(key: str | None) -> str:
        mates = roles.linked.get(key or "", [])
        return f"{key} (with {', '.join(mates)})" if key and mates else str(key)

    per = f"one curve per {role(roles.curve)}" if roles.curve else "one curve (no curve axis)"
    lines = [f"transfer report '{meta['name']}': {roles.metric} vs log2({role(roles.x)}), {per}, "
             f"mean over {role(roles.seed) if roles.seed else 'one run'}; runs: "
             + ", ".join(f"{n} {k}" for k, n in counts.items())]
    lines += textwrap.wrap(
        "measured: means over seeds at grid values (a curve's lowest, and its mean at the reference curve's "
        "best grid value minus that lowest); fitted: the parabola's vertex (± its standard error), its loss, "
        "and the loss at the reference's fitted optimum (on the parabola, else interpolated between grid "
        "means) minus the vertex loss.", width=110)
    wl = max(12, len(f"best log2 {xname}"))  # the log2-x columns
    wf = max(18, len(f"log2 {xname} ± se"))
    for panel in result["panels"]:
        lines += ["", panel["label"]]
        names = {id(c): curve_label(roles, c, with_name=False) if roles.curve else "-" for c in panel["curves"]}
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
            fit = (f"{opt.log2_x:7.2f} ± {show_number(opt.stderr, '.2f'):>5}" if opt.method == "fit" else
                   f"{show_number(opt.log2_x, '.2f'):>7} ({opt.method})")
            if opt.method in ("argmin", "edge") and opt.method not in unfitted:
                unfitted.append(opt.method)
            tl = transfer.get(c["curve"], {}).get("transfer_loss")
            lines.append(f"  {names[id(c)]:>{width}}  {f'{n_done}/{n_all}':>7}  {show_number(opt.grid_argmin, '.2f'):>{wl}}  "
                         f"{show_number(m['best_loss']):>9}  {show_number(m['transfer_loss'], '+.4f'):>13}  {fit:>{wf}}  "
                         f"{show_number(None if opt.log2_x is None else 2 ** opt.log2_x, '.3g'):>9}  "
                         f"{show_number(opt.loss):>7}  {show_number(tl, '+.4f'):>13}  {opt.note}")
        if unfitted:
            lines.append(f"  ({') and ('.join(unfitted)}): not fitted; the fitted columns repeat the measured "
                         "grid point")
        shift, slope = panel["shift"], panel["slope"]
        if shift:
            step = panel["grid_step_log2"]
            moved = abs(shift["log2"]) / step if step else None
            text = (f"  optimum shift {curve_name} {show(shift['from'])} -> {show(shift['to'])}: {shift['log2']:+.2f}"
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
            lines.append(f"  transfer loss at {curve_name} {show(shift['to'])} (its loss at the {curve_name} "
                         f"{show(panel['reference'])} optimum minus its own best): {show_number(last['transfer_loss'], '+.4f')} "
                         f"at the fitted optimum, {show_number(seen['transfer_loss'], '+.4f')} measured at the best grid "
                         f"log2 {xname} ({show_number(seen['log2_x'], '.2f')})")
            if shift.get("transfer_loss_interval") is not None:
                lines.append("  " + _interval_text(f"transfer loss at {curve_name} {show(shift['to'])}",
                                                   shift["transfer_loss_interval"], "+.4f", ""))
        change = panel.get("best_change")
        if change:
            lines.append("  " + _difference_text(
                f"best loss change {curve_name} {show(change['from'])} -> {show(change['to'])} (each seed's best grid "
                "loss, paired)", change))
    comparisons = result.get("comparisons") or []
    if comparisons:
        where = f" at the last {curve_name} both have" if roles.curve else ""
        lines += ["", f"between panels{where}: 'A - B' is A's best grid loss minus B's, paired by seed (below 0: "
                  "A trains better, each at its own best LR)"]
        lines += ["  " + _difference_text(f"{c['b']} - {c['a']}" + (f" at {curve_name} {show(c['curve'])}"
                                                                   if roles.curve else ""), c)
                  for c in comparisons]
    table = "\n".join(lines)
    not_finished = [r for r in runs if r.status not in FINISHED]
    if not_finished:
        table += f"\n\n{len(not_finished)} run(s) not in the figures: " + ", ".join(
            f"{k} {n}" for k, n in counts.items() if k not in FINISHED)
        for r in [r for r in not_finished if r.error][:5]:
            table += f"\n  {r.id}: {r.error}"
    blown = [r for r in runs if r.status == "diverged" and r.error]  # finite, but far above ln(vocab)
    if blown:
        table += f"\n\n{len(blown)} run(s) counted as diverged with a finite loss, e.g. {blown[0].id}: {blown[0].error}"
    return table


def _interval_text(what: str, iv: dict[str, Any] | None, fmt: str, unit: str) -> str:
    """One table line for a seed-level interval (or its absence)."""
    if iv is None:
        return f"{what}: no {INTERVAL_LEVEL:.0%} interval"
    return (f"{what}: {iv['level']:.0%} interval [{format(iv['low'], fmt)}, {format(iv['high'], fmt)}]{unit} "
            f"(seed-level mean {format(iv['mean'], fmt)}; Student t, {iv['n']} seeds, t = {iv['t']:.2f})")


def _difference_text(what: str, diff: dict[str, Any]) -> str:
    """One table line for a paired best-loss difference: its seed-level interval, or why there is none."""
    iv = diff["interval"]
    if iv is None:
        return f"{what}: {diff['note']}"
    return (f"{what}: {iv['mean']:+.4f}, {iv['level']:.0%} interval [{iv['low']:+.4f}, {iv['high']:+.4f}] "
            f"(Student t, {iv['n']} seeds, t = {iv['t']:.2f})" + (f"; {diff['note']}" if diff["note"] else ""))


def to_json(result: dict[str, Any], roles: Roles, meta: dict[str, Any], counts: dict[str, int],
              failed: list[Run]) -> dict[str, Any]:
    """transfer.json's content; an undefined value, mean, std or sem is null, never NaN."""

    def defined(v: float | None) -> float | None:
        return None if v is None or math.isnan(v) else v

    panels = []
    for panel in result["panels"]:
        curves = [{"curve": c["curve"], "linked": c["linked"], "label": curve_label(roles, c),
                   "optimum": c["optimum"].as_dict(),
                   "points": [{**p, "mean": defined(p["mean"]), "std": defined(p["std"]), "sem": defined(p["sem"]),
                               "seeds": [{**r, "value": defined(r["value"])} for r in p["seeds"]]}
                              for p in c["points"]]}
                  for c in panel["curves"]]
        panels.append({"panel": panel["panel"], "label": panel["label"], "grid_step_log2": panel["grid_step_log2"],
                       "shift": panel["shift"], "slope": panel["slope"], "reference": panel["reference"],
                       "transfer": panel["transfer"], "best_change": panel.get("best_change"), "curves": curves})
    return {
        "sweep": meta["name"], "source": meta["source"], "metric": roles.metric, "x": roles.x,
        "curve": roles.curve, "seed": roles.seed, "linked": roles.linked,
        "linked_source": meta.get("linked_source"), "panel_axes": roles.panels, "runs": counts,
        "not_finished": [{"id": r.id, "point": r.point, "status": r.status, "error": r.error} for r in failed],
        "panels": panels, "comparisons": result.get("comparisons") or [],
    }

