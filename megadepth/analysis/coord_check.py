"""Coordinate check across depth (and width): does the parametrization keep activations and their
updates of the right size as the model grows?

Each shape trains a few steps on the real training path; a fixed probe batch records per layer the RMS
of the QUANTITIES, whose log-log slopes against depth (and width) are compared with predicted_slopes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megadepth.common.io import save_figure
from megadepth.config.load import validate
from megadepth.config.schema import Config

QUANTITIES = ("residual", "block_output", "residual_change", "block_change", "logits_change")
INIT_QUANTITY = "block_output_init"
"""The block output's slope at step 0: the init alone (every other slope is a mean over steps >= 1)."""
TOLERANCE = 0.15
"""How far a measured slope may be from its prediction (docs/parametrizations.md, "Coordinate checks")."""

# The exponents of docs/parametrizations.md's preset table, written out here and NOT read from
# megadepth.parametrize: a wrong rule there must not move its own prediction.
_PRESET_ALPHA = {"sp": 0.0, "mup": 0.0, "depth_mup": 0.5, "completep": 1.0}
_ADAM = ("adam", "adamw")
_MUON = ("muon",)


@dataclass(frozen=True)
class Shape:
    depth: int
    width: int


def _rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def with_base_shape(config: Config, depths: Sequence[int], widths: Sequence[int] | None) -> tuple[Config, list[str]]:
    """The config with the smallest depth (width) checked as its base where the check varies a
    dimension whose base is unset (else every preset builds the SP model), and notes saying so."""
    notes = []
    model = config.model
    update: dict[str, int] = {}
    if model.base_depth is None and len(set(depths)) > 1:
        update["base_depth"] = min(depths)
        notes.append(f"model.base_depth is not set: fixed at {min(depths)}, the smallest depth checked")
    if model.base_width is None and widths and len(set(widths)) > 1:
        update["base_width"] = min(widths)
        notes.append(f"model.base_width is not set: fixed at {min(widths)}, the smallest width checked")
    if model.base_heads is None and widths and len(set(widths)) > 1:
        update["base_heads"] = model.heads
    if model.base_kv_heads is None and widths and len(set(widths)) > 1:
        update["base_kv_heads"] = model.n_kv_heads  # --widths keeps the heads, so the group size too
    if not update:
        return config, notes
    data = config.model_dump(mode="json")
    data["model"].update(update)
    return validate(data), notes


def shaped_config(config: Config, shape: Shape, steps: int, seed: int) -> Config:
    """The validated config one shape trains with (a ConfigError for a shape the config cannot take)."""
    data = config.model_dump(mode="json")
    data["model"].update(depth=shape.depth, width=shape.width)
    data["train"].update(steps=steps, seed=seed, progress=False, save_final=False, save_every=0,
                         eval_every=0, eval_samples=0, grad_accum=None, global_batch=None)
    data["data"]["valid_fraction"] = 0.0
    data["wandb"]["mode"] = "disabled"
    return validate(data)


@torch.no_grad()
def _probe(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The logits and the residual stream after the embedding and after every block (forward hooks)."""
    streams: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: streams.append(out.detach().float().clone()))
               for m in [model.embed, *model.blocks]]
    was_training = model.training
    model.eval()
    try:
        logits = model(tokens).detach().float()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return streams, logits


def _measure_shape(config: Config, device: torch.device, precision: str) -> tuple[list[dict[str, Any]], int | None]:
    """Train one shape: (records of (step, quantity, layer, value), the step at which something
    stopped being finite, or None)."""
    from megadepth.data import MicroBatchSampler, build_datasets, make_loader
    from megadepth.parallel.topology import build_grid
    from megadepth.train.engine import build_engine
    from megadepth.train.step import Stepper

    cfg = config.train
    train_set, _ = build_datasets(config.data.path, seq_len=config.model.seq_len, seed=cfg.seed,
                                  train_samples=(cfg.steps + 1) * cfg.micro_batch, valid_samples=0,
                                  valid_fraction=0.0, cache_dir=config.data.cache_dir,
                                  vocab_size=config.model.vocab_size)
    grid = build_grid(1, 1, 1, False)
    built = build_engine(config, device, 1, cfg.micro_batch, precision, grid)
    model = built.model
    # the training loop's own step (clipping included), so a coordinate check trains as `train` does
    stepper = Stepper(built, grid, device, 1, cfg.micro_batch, cfg.seed, dropout=config.model.dropout > 0,
                      own_norm=False)
    loader = iter(make_loader(train_set, MicroBatchSampler(len(train_set), 0, cfg.micro_batch, 0, 1)))
    probe = next(loader).to(device)[:, :-1]  # the probe batch is held out of training
    streams0, logits0 = _probe(model, probe)
    blocks0 = [b - a for a, b in zip(streams0[:-1], streams0[1:], strict=True)]
    records: list[dict[str, Any]] = []

    def record(step: int, streams: list[torch.Tensor], logits: torch.Tensor) -> bool:
        """Append this step's measurements; False (nothing appended) when any is not finite."""
        blocks = [b - a for a, b in zip(streams[:-1], streams[1:], strict=True)]
        rows = []
        for layer, h in enumerate(streams):
            rows += [("residual", layer, _rms(h)), ("residual_change", layer, _rms(h - streams0[layer]))]
        for layer, delta in enumerate(blocks, start=1):
            rows += [("block_output", layer, _rms(delta)),
                     ("block_change", layer, _rms(delta - blocks0[layer - 1]))]
        rows.append(("logits_change", len(streams) - 1, _rms(logits - logits0)))
        new = [{"step": step, "quantity": q, "layer": layer, "value": v} for q, layer, v in rows]
        if not all(math.isfinite(r["value"]) for r in new):
            return False
        records.extend(new)
        return True

    try:
        if not record(0, streams0, logits0):
            return records, 0
        for step in range(1, cfg.steps + 1):
            loss = stepper.train_step(loader, step - 1, want_norm=False)
            if not math.isfinite(float(loss)) or not record(step, *_probe(model, probe)):
                return records, step
        return records, None
    finally:
        built.release()  # one engine per shape in this process: each must go before the next (Built.release)


def summarise(records: list[dict[str, Any]]) -> dict[tuple[int, int, int, str], float]:
    """(depth, width, step, quantity) -> the last layer's value, or the mean over blocks."""
    grouped: dict[tuple[int, int, int, str], list[tuple[int, float]]] = {}
    for r in records:
        grouped.setdefault((r["depth"], r["width"], r["step"], r["quantity"]), []).append((r["layer"], r["value"]))
    return {key: float(np.mean([v for _, v in values])) if key[3].startswith("block") else max(values)[1]
            for key, values in grouped.items()}


def fit_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x); nan when fewer than two positive points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0 and math.isfinite(y)]
    if len(pts) < 2:
        return float("nan")
    lx, ly = np.array(pts).T
    return float(np.polyfit(lx, ly, 1)[0])


def slopes(summary: dict[tuple[int, int, int, str], float], axis: str,
           incomplete_from: int | None = None) -> dict[str, dict[str, Any]]:
    """Per quantity: the slope against ``axis`` at each complete step and their mean over steps >= 1
    (a step that lacks a shape, or from ``incomplete_from`` on, goes to ``incomplete_steps``)."""
    idx, other = (0, 1) if axis == "depth" else (1, 0)
    out: dict[str, dict[str, Any]] = {}
    steps = sorted({k[2] for k in summary})
    shapes = {(k[0], k[1]) for k in summary}
    for q in QUANTITIES:
        per_step: dict[int, float] = {}
        incomplete: list[int] = []
        for s in steps:
            present = {(k[0], k[1]) for k in summary if k[2] == s and k[3] == q}
            if not present:
                continue  # not measured at this step at all (the change quantities at step 0 are)
            if present != shapes or (incomplete_from is not None and s >= incomplete_from):
                incomplete.append(s)
                continue
            groups = [sorted((k[idx], v) for k, v in summary.items()
                             if k[2] == s and k[3] == q and k[other] == fixed)
                      for fixed in sorted({k[other] for k in summary})]
            fits = [f for pts in groups if len(pts) >= 2
                    and math.isfinite(f := fit_slope([p[0] for p in pts], [p[1] for p in pts]))]
            if fits:
                per_step[s] = float(np.mean(fits))
        trained = [v for s, v in per_step.items() if s >= 1]
        out[q] = {"per_step": per_step, "mean": float(np.mean(trained)) if trained else float("nan"),
                  "incomplete_steps": incomplete}
    return out


def _exponents(config: Config) -> tuple[bool, float, float] | None:
    """(width scaled, alpha, gamma) the config asks for, from the docs' table (None: SGD, not derived).
    Muon's hidden matrices, like Adam's, take an update whose size ignores the gradient's scale, so its depth
    exponents are Adam's (gamma = 1 - alpha); its width slopes are :func:`_muon_width_slopes`'s."""
    ptz = config.parametrization
    if config.optimizer.name not in _ADAM + _MUON:
        return None
    if ptz.name == "custom":
        return True, float(ptz.alpha), float(ptz.gamma)  # type: ignore[arg-type]
    alpha = _PRESET_ALPHA[ptz.name]
    depth = ptz.name not in ("sp", "mup")
    return ptz.name != "sp", alpha, (1.0 - alpha if depth else 0.0)


def _muon_width_slopes(config: Config, width_scaled: bool, out: dict[str, float | None]) -> dict[str, float | None]:
    """Muon's predictions against width (docs/parametrizations.md, "Coordinate checks",
    "Muon"), written out here, not read from rules.py.

    An orthogonalised update has every singular value near 1. Under a width-scaled preset spectral's factor
    sqrt(fan_out/fan_in) is width-constant (so is original's sqrt(max(1, fan_out/fan_in))), and
    match_rms_adamw's 0.2 sqrt(max fan), which grows like m^1/2, takes the hidden LR's m^-1/2: all give the
    hidden matrices updates of width-constant spectral norm (the spectral condition) while the AdamW roles
    keep muP's rules, so every quantity is flat. (Adam's 1/m there would shrink the matrices' part of every
    change like m^-1/2 against the AdamW roles' O(1): a mix.) SP (no SwiGLU): the init's m^1 as for Adam; its
    changes mix the AdamW gains' and embedding's m^1 through the branch's two m^1/2 matrices with the Muon
    matrices' m^(u + 1/2) (u = 0 spectral and original, 1/2 match_rms_adamw):
    no single power."""
    if width_scaled:
        return {q: 0.0 for q in out}
    if config.model.block != "linear" and config.model.mlp != "swiglu":
        out[INIT_QUANTITY] = 1.0
    return out


def predicted_slopes(config: Config, axis: str) -> dict[str, float | None]:
    """The first-order log-log slope of each quantity against ``axis`` that docs/parametrizations.md
    ("Coordinate checks") derives for the config's rules; None where no single power law is predicted."""
    found = _exponents(config)
    none: dict[str, float | None] = {q: None for q in (*QUANTITIES, INIT_QUANTITY)}
    if found is None:
        return none
    width_scaled, alpha, gamma = found
    linear = config.model.block == "linear"
    out = dict(none)
    if axis == "width" and config.optimizer.name in _MUON:
        return _muon_width_slopes(config, width_scaled, out)
    if axis == "width":
        if width_scaled:
            return {q: 0.0 for q in out}
        if not linear and config.model.mlp != "swiglu":
            # SwiGLU's gated product of two m^1/2 factors, times down's m^1/2, is m^3/2 at init against the
            # attention branch's m^1 (and m^2 against m^3/2 in their own updates): a mix, no single power
            out.update({INIT_QUANTITY: 1.0, "block_change": 1.5, "residual_change": 1.5})
        return out
    if linear and alpha < 0.5:
        return out  # the stream multiplies by (1 + O(1)) per block: exponential in depth, no power law
    rule = config.parametrization.output_proj_init or ("gpt2" if config.parametrization.name in ("sp", "mup")
                                                      else "base_depth")
    p = -0.5 if rule == "gpt2" and not linear else 0.0
    init = -alpha + p
    # block depth 1: the input-change term r^-alpha wins, unless gamma < 0 makes the own update larger
    change = 0.0 - (min(alpha, alpha + gamma) if linear else alpha + gamma)  # (0.0 - 0.0: no -0.0)
    out.update({INIT_QUANTITY: init, "block_change": change, "residual_change": max(0.0, 1.0 - alpha - gamma),
                "logits_change": 0.0})
    if init == change:
        out["block_output"] = init  # init and change scale alike (CompleteP): so does their sum
    if alpha > 0:
        out["residual"] = 0.0  # the embedding's O(1) plus O(1) from the blocks
    return out


def compare(result: dict[str, Any], config: Config) -> None:
    """Add ``measured`` and ``predicted`` to every slope of ``result`` (and ``block_output_init``)."""
    for axis, per_q in result["slopes"].items():
        predicted = predicted_slopes(config, axis)
        init = per_q["block_output"]["per_step"].get(0, float("nan"))
        per_q[INIT_QUANTITY] = {"per_step": {0: init}, "mean": init,
                                "incomplete_steps": [0] if 0 in per_q["block_output"]["incomplete_steps"] else []}
        for q, v in per_q.items():
            v.update(measured=v["mean"], predicted=predicted[q])


def disagreements(result: dict[str, Any], tolerance: float = TOLERANCE) -> list[str]:
    """'axis quantity: measured x, predicted y' for every slope more than ``tolerance`` off."""
    out = []
    for axis, per_q in result["slopes"].items():
        for q, v in per_q.items():
            pred, meas = v.get("predicted"), v.get("measured", float("nan"))
            if pred is not None and not (math.isfinite(meas) and abs(meas - pred) <= tolerance):
                out.append(f"{axis} {q}: measured {meas:+.3f}, predicted {pred:+.3f}")
    return out


def run_coord_check(config: Config, depths: Sequence[int], widths: Sequence[int] | None, steps: int,
                    seeds: Sequence[int] = (0,), progress: bool = True) -> dict[str, Any]:
    """Measure every (depth, width, seed); returns the coord.json content (records averaged over seeds)."""
    from tqdm import tqdm

    from megadepth.parallel import distributed as dist

    config, _ = with_base_shape(config, depths, widths)
    widths = list(widths or [config.model.width])
    env = dist.read_env()
    device = dist.resolve_device(config, env)
    precision = dist.resolve_precision(config, device)
    dist.prepare_deepspeed_env(device)
    dist.init_distributed(config, env, device)
    shapes = [Shape(d, w) for w in widths for d in depths]
    sums: dict[tuple[int, int, int, str, int], list[float]] = {}
    diverged: list[dict[str, int]] = []
    for shape in tqdm(shapes, desc="coord-check", disable=not progress):
        for seed in seeds:
            cfg = shaped_config(config, shape, steps, seed)
            measured, bad_step = _measure_shape(cfg, device, precision)
            if bad_step is not None:
                diverged.append({"depth": shape.depth, "width": shape.width, "seed": seed, "step": bad_step})
            for r in measured:
                sums.setdefault((shape.depth, shape.width, r["step"], r["quantity"], r["layer"]), []).append(r["value"])
    records = [{"depth": d, "width": w, "step": s, "quantity": q, "layer": layer, "value": float(np.mean(v))}
               for (d, w, s, q, layer), v in sorted(sums.items())]
    summary = summarise(records)
    # a shape or seed that diverged at step k has no records from k on: those steps are incomplete
    incomplete_from = min((d["step"] for d in diverged), default=None)
    result: dict[str, Any] = {
        "parametrization": config.parametrization.name, "optimizer": config.optimizer.name,
        "lr": config.optimizer.lr, "base_depth": config.model.base_depth,
        "base_width": config.model.base_width, "depths": list(depths), "widths": widths, "steps": steps,
        "seeds": list(seeds), "records": records, "diverged": diverged, "slopes": {},
    }
    if config.optimizer.name == "muon":  # the Muon matrices' own LR and update scale
        result.update(muon_lr=config.optimizer.base_lr(muon_half=True), adjust_lr=config.optimizer.muon.adjust_lr)
    if len(set(depths)) > 1:
        result["slopes"]["depth"] = slopes(summary, "depth", incomplete_from)
    if len(set(widths)) > 1:
        result["slopes"]["width"] = slopes(summary, "width", incomplete_from)
    compare(result, config)
    return result


def plot_coord_check(result: dict[str, Any], out: Path) -> Path:
    """coord.png: one panel per quantity, one line per step, x = depth (and a row for width)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(result["records"])
    axes_needed = [a for a in ("depth", "width") if a in result["slopes"]] or ["depth"]
    fig, axes = plt.subplots(len(axes_needed), len(QUANTITIES), figsize=(4 * len(QUANTITIES), 3.4 * len(axes_needed)),
                             squeeze=False, dpi=100)
    steps = sorted({k[2] for k in summary})
    cmap = plt.get_cmap("viridis")
    for row, axis in enumerate(axes_needed):
        idx, fixed_idx = (0, 1) if axis == "depth" else (1, 0)
        fixed = sorted({k[fixed_idx] for k in summary})[-1]
        for col, q in enumerate(QUANTITIES):
            ax = axes[row][col]
            for s in steps:
                pts = sorted((k[idx], v) for k, v in summary.items() if k[2] == s and k[3] == q and k[fixed_idx] == fixed)
                if pts and not (s == 0 and q.endswith("change")):
                    ax.plot(*zip(*pts, strict=True), "o-", color=cmap(s / max(1, steps[-1])), label=f"step {s}", ms=3)
            slope = result["slopes"].get(axis, {}).get(q, {}).get("mean", float("nan"))
            ax.set_xscale("log", base=2)
            if any(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
                ax.set_yscale("log")
            else:  # nothing positive to draw (e.g. every shape diverged): a log axis would fail
                ax.text(0.5, 0.5, "no finite data", ha="center", va="center", transform=ax.transAxes)
            other = "width" if axis == "depth" else "depth"
            ax.set_title(f"{q} ({other} {fixed})\nslope vs {axis}: {slope:+.2f}", fontsize=9)
            ax.set_xlabel(axis)
            ax.grid(alpha=0.3, which="both")
        axes[row][0].set_ylabel("RMS over coordinates")
        if axes[row][0].get_lines():
            axes[row][0].legend(fontsize=7)
    fig.suptitle(f"coordinate check: {result['parametrization']} ({optimizer_words(result)})")
    fig.tight_layout()
    return save_figure(fig, out)


def format_slopes(result: dict[str, Any]) -> str:
    predicted = any(v.get("predicted") is not None for per_q in result["slopes"].values() for v in per_q.values())
    lines = [f"coordinate check: {result['parametrization']} ({optimizer_words(result)}), mean log-log slope over "
             "steps >= 1 (block_output_init: step 0), " + (
                 "predicted in brackets" if predicted else "no predicted slopes for this setting "
                 "(docs/parametrizations.md, 'What the slopes should be')")]
    for axis, per_q in result["slopes"].items():
        lines.append("  vs " + axis + ": " + ", ".join(
            f"{q} {v['mean']:+.3f}" + (f" [{v['predicted']:+.2f}]" if v.get("predicted") is not None else "")
            for q, v in per_q.items()))
    off = disagreements(result)
    if off:
        lines.append(f"  more than {TOLERANCE:g} from the prediction: " + "; ".join(off))
    left_out = sorted({s for per_q in result["slopes"].values() for v in per_q.values()
                       for s in v.get("incomplete_steps", []) if s >= 1})
    if left_out:
        span = f"step {left_out[0]}" if len(left_out) == 1 else f"steps {left_out[0]} to {left_out[-1]}"
        lines.append(f"  {span} left out of the slopes: a shape or seed had diverged by step {left_out[0]}")
    return "\n".join(lines)


def optimizer_words(result: dict[str, Any]) -> str:
    """'adamw, lr 0.003'; under Muon also its matrices' LR and update scale ('muon, lr 0.1, Muon lr 0.2,
    adjust_lr original')."""
    words = result["optimizer"] + (f", lr {result['lr']:g}" if "lr" in result else "")
    if "muon_lr" in result:
        words += f", Muon lr {result['muon_lr']:g}, adjust_lr {result['adjust_lr']}"
    return words
