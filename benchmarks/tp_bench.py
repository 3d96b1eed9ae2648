"""Tensor-parallel benchmark: step time at TP=1 and TP=2 through the real training path, with the
communication volume each step needs, and the TP=1 cost of the parallel layers against nn.Linear.

    python benchmarks/tp_bench.py                 # CPU (gloo) here; CUDA (nccl) where there are GPUs
    python benchmarks/tp_bench.py --width 512 --steps 30

Each layout runs `megadepth train` / `megadepth launch` as a user would (DeepSpeed engine, gloo on CPU)
on the embedded sample data (built with `megadepth prep sample` if missing) and reads tokens/s from
metrics.jsonl; the figures are ratios against TP=1 measured in the same run. Nothing here is asserted:
benchmarks measure, tests check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, ensure_sample_data, median_step_s, run_training


def comm_volume(depth: int, width: int, seq: int, micro_batch: int, tp: int, bytes_per: int, grad_accum: int,
                tied: bool = True) -> dict[str, float]:
    """Bytes each rank sends per optimizer step for the tensor-parallel collectives.

    Per layer and micro-batch: attention-out and MLP-out reduce in the forward, attention-in and MLP-in
    reduce in the backward (4 all-reduces of one activation, or 4 all-gather + 4 reduce-scatter under
    sequence parallelism: the same bytes). Plus the vocab-parallel embedding's forward reduce and the
    head input's backward reduce. A ring all-reduce sends 2(t-1)/t of the tensor per rank.
    """
    activation = micro_batch * seq * width * bytes_per
    reductions = 4 * depth + 2
    per_rank = reductions * 2 * (tp - 1) / tp * activation * grad_accum
    return {"all_reduces_per_micro_batch": reductions, "activation_bytes": activation, "bytes_per_rank_per_step": per_rank}


def run_layout(tp: int, args: argparse.Namespace, data: Path, out: Path) -> dict[str, float]:
    sets = [
        f"data.path={data}", f"train.steps={args.steps}", "train.log_every=1",
        "train.eval_every=0", "train.eval_samples=0", "train.save_final=false", "train.progress=false",
        "wandb.mode=disabled", f"model.width={args.width}", f"model.base_width={args.width}",
        f"model.depth={args.depth}", f"model.heads={args.heads}", f"model.seq_len={args.seq}",
        f"train.micro_batch={args.micro_batch}", "train.grad_accum=1", "train.global_batch=null",
        f"parallel.tensor={tp}", "data.valid_fraction=0",
    ]
    records = run_training(tp, sets, out, threads_per_rank=max(1, (os.cpu_count() or 1) // tp))
    step_s = median_step_s(records, args.micro_batch * args.seq, args.warmup)
    return {"tokens_per_s": args.micro_batch * args.seq / step_s, "step_ms": 1000 * step_s}


def layer_overhead(width: int, tokens: int, repeats: int) -> dict[str, float]:
    """Forward+backward time of ColumnParallelLinear / RowParallelLinear at TP=1 against nn.Linear."""
    import torch

    from megadepth.parallel.layers import ColumnParallelLinear, RowParallelLinear
    from megadepth.parallel.topology import TensorParallel
    from megadepth.parametrize.roles import Role

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tp = TensorParallel()
    pairs = {
        "column": (ColumnParallelLinear(width, 4 * width, False, Role.HIDDEN, tp), torch.nn.Linear(width, 4 * width, bias=False)),
        "row": (RowParallelLinear(4 * width, width, False, Role.OUTPUT_PROJ, tp), torch.nn.Linear(4 * width, width, bias=False)),
    }
    out = {}
    for name, (ours, ref) in pairs.items():
        ours, ref = ours.to(device, dtype), ref.to(device, dtype)
        torch.nn.init.normal_(ours.weight, std=0.02)
        ref.weight.data.copy_(ours.weight.data)
        x = torch.randn(tokens, ref.in_features, device=device, dtype=dtype, requires_grad=True)

        def once(layer: torch.nn.Module, x: torch.Tensor = x) -> float:
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            layer(x).float().pow(2).mean().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

        for _ in range(5):  # warm-up
            once(ours), once(ref)
        # interleaved, so drifts of a shared machine hit both alike
        pairs_t = [(once(ours), once(ref)) for _ in range(repeats)]
        t_ours = statistics.median(a for a, _ in pairs_t)
        t_ref = statistics.median(b for _, b in pairs_t)
        out[name] = t_ours / t_ref
    out["device"] = device
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data", default=str(ROOT / "data" / "sample"))
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    data = Path(args.data)
    ensure_sample_data(data)
    results: dict[str, object] = {"shape": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        for tp in (1, 2):
            results[f"tp{tp}"] = run_layout(tp, args, data, Path(tmp) / f"tp{tp}")
            results[f"tp{tp}"].update(comm_volume(args.depth, args.width, args.seq, args.micro_batch, tp, 4, 1))
    results["layer_overhead_tp1"] = layer_overhead(args.width, args.micro_batch * args.seq, 40)

    base = results["tp1"]["step_ms"]  # type: ignore[index]
    print(f"\nTP benchmark: depth {args.depth}, width {args.width}, seq {args.seq}, micro-batch {args.micro_batch}, fp32")
    print(f"{'layout':<8} {'step ms':>9} {'tokens/s':>10} {'step time / TP=1':>16} "
          f"{'all-reduces/mb':>15} {'MB sent/rank/step':>18}")
    for tp in (1, 2):
        r = results[f"tp{tp}"]  # type: ignore[index]
        print(f"TP={tp:<5} {r['step_ms']:>9.1f} {r['tokens_per_s']:>10,.0f} {r['step_ms'] / base:>16.2f} "
              f"{r['all_reduces_per_micro_batch'] if tp > 1 else 0:>15} {r['bytes_per_rank_per_step'] / 1e6:>18.2f}")
    ov = results["layer_overhead_tp1"]
    print(f"TP=1 parallel layers vs nn.Linear on {ov['device']}: column {ov['column']:.3f}x, row {ov['row']:.3f}x")  # type: ignore[index]
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (figures are only "
          "comparable on an otherwise idle machine)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
