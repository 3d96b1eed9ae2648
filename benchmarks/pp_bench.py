"""Pipeline bubble: step time at PP=1 and PP=2 with 1, 4 and 8 micro-batches, against the theoretical
bubble fraction (p-1)/(m+p-1).

    python benchmarks/pp_bench.py            # CPU (gloo, one thread per rank) here; GPUs where present

Method: PP=1 runs in one process on ONE thread, so its time per micro-batch t is the whole model's
compute on one core. PP=2 runs two ranks of one thread each; with no bubble and no communication a step
of m micro-batches would take m * t / 2. The measured bubble (with communication) is
1 - (m t / 2) / T_pp2(m), printed next to the theory. Everything goes through `megadepth train` /
`megadepth launch` and DeepSpeed's pipeline engine, ZeRO-1, fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from common import ROOT, ensure_sample_data, median_step_s, run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--micro-batches", default="1,4,8")
    parser.add_argument("--data", default=str(ROOT / "data" / "sample"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    data = Path(args.data)
    ensure_sample_data(data)
    ms = [int(x) for x in args.micro_batches.split(",")]
    base = [f"data.path={data}", f"train.steps={args.steps}", "train.log_every=1", "train.eval_every=0",
            "train.eval_samples=0", "train.save_final=false", "train.progress=false", "wandb.mode=disabled",
            f"model.width={args.width}", f"model.base_width={args.width}", f"model.depth={args.depth}",
            f"model.seq_len={args.seq}", f"train.micro_batch={args.micro_batch}", "train.global_batch=null",
            "data.valid_fraction=0", "parallel.zero_stage=1"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in ms:
            tokens = m * args.micro_batch * args.seq
            sets = [*base, f"train.grad_accum={m}"]
            t1 = median_step_s(run_training(1, sets, Path(tmp) / f"pp1-m{m}", 1), tokens, args.warmup)
            t2 = median_step_s(run_training(2, [*sets, "parallel.pipeline=2"], Path(tmp) / f"pp2-m{m}", 1),
                               tokens, args.warmup)
            ideal = t1 / 2
            rows.append({"micro_batches": m, "pp1_step_s": t1, "pp2_step_s": t2, "speedup": t1 / t2,
                         "bubble_measured": 1 - ideal / t2, "bubble_theory": 1 / (m + 1)})
    print(f"\nPipeline bubble: depth {args.depth}, width {args.width}, seq {args.seq}, micro-batch {args.micro_batch}, "
          "fp32, one thread per rank")
    print(f"{'m':>3} {'PP=1 step s':>12} {'PP=2 step s':>12} {'speed-up':>9} {'bubble (measured)':>18} {'(p-1)/(m+p-1)':>14}")
    for r in rows:
        print(f"{r['micro_batches']:>3} {r['pp1_step_s']:>12.3f} {r['pp2_step_s']:>12.3f} {r['speedup']:>9.2f} "
              f"{r['bubble_measured']:>18.2f} {r['bubble_theory']:>14.2f}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (figures are only "
          "comparable on an otherwise idle machine)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
