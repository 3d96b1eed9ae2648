"""Rounding of the residual stream in bf16 vs bf16-mixed, by parametrization and depth (CPU, seconds).

    python benchmarks/residual_precision.py [--depths 4 16 64 128] [--width 64]

For each preset and depth: a freshly initialised model of configs/bench/tiny.yaml's shape (base depth 4),
the relative error of the blocks' summed contribution to the residual stream against fp32
(megadepth.analysis.precision). The table backs the choice of bf16-mixed as the GPU default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from megadepth.analysis.precision import residual_rounding_error
from megadepth.config.load import load_config
from megadepth.model import GPT
from megadepth.parametrize import Parametrization, initialize

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 16, 64, 128])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--presets", nargs="+", default=["sp", "depth_mup", "completep"])
    args = ap.parse_args()
    tokens = torch.randint(0, 2048, (4, 128), generator=torch.Generator().manual_seed(0))
    print("| parametrization | depth | bf16-mixed error | bf16 error | bf16 / bf16-mixed |")
    print("|---|---|---|---|---|")
    for preset in args.presets:
        for depth in args.depths:
            cfg = load_config([ROOT / "configs/bench/tiny.yaml"],
                              overrides=[f"model.depth={depth}", "model.base_depth=4", f"model.width={args.width}",
                                         f"parametrization.name={preset}"])
            ptz = Parametrization.from_config(cfg.model, cfg.parametrization, optimizer=cfg.optimizer.name)
            model = GPT(cfg.model, ptz.multipliers())
            initialize(model, ptz, seed=0)
            mixed = residual_rounding_error(model, tokens, "bf16-mixed")
            pure = residual_rounding_error(model, tokens, "bf16")
            print(f"| {preset} | {depth} | {mixed:.4f} | {pure:.4f} | {pure / mixed:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
