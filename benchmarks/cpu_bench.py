"""CPU throughput check: `megadepth bench` against the plain-PyTorch reference at the tiny shape.

The "Training throughput" issue asks for the full stack (DeepSpeed engine, parametrization multipliers,
parallel layers, the training Stepper) within 10% of a minimal plain-PyTorch GPT of the same shape on
CPU, and for Depth-muP's multipliers to cost under 1% against SP. Both sides run eager here (no
torch.compile: inductor's CPU build time would dominate a short run), fp32, one process, one thread by
default (on the 2-core development machine two-thread figures swing by +-15% from run to run). Runs
alternate A/B/C... so that a change in machine load hits every side alike; the medians are compared.

megadepth sets glibc's allocator thresholds on CPU (megadepth/parallel/host_memory.py); the plain script
does not, so it is also run with the same settings through glibc's environment variables: that ratio is
the cost of the stack itself, the other what a user gets against a plain script as it stands. A fifth
side runs megadepth with the setting off (MEGADEPTH_MALLOC_TUNING=0); each process's minor page faults
(start-up included) show what the setting saves. Each side also reports its CPU time per timed step
(time.process_time): on a shared machine it moves far less with the load than wall time does, so the
"plain CPU / ours" column is the steadier ratio there (with one thread it is the same measure).

The Llama row (issue 19) is the same comparison at configs/bench/llama-tiny.yaml (RMSNorm, SwiGLU,
grouped-query attention, rotary): plain_gpt.py's plain Llama block against megadepth, same shape, same
optimizer, interleaved with the other sides; its target is also "within 10% of the plain reference".

    python benchmarks/cpu_bench.py                      # configs/bench/tiny.yaml and llama-tiny, 3 rounds
    python benchmarks/cpu_bench.py --rounds 5 --steps 80 --json out.json
    python benchmarks/cpu_bench.py --rows llama         # only the Llama sides
    python benchmarks/cpu_bench.py --rows muon          # only Muon against AdamW (GPT and Llama)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from megadepth.parallel.host_memory import MMAP_THRESHOLD, TOP_PAD, TRIM_THRESHOLD

ROOT = Path(__file__).resolve().parent.parent


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
              "MALLOC_TOP_PAD_": str(TOP_PAD)}


MUON = "optimizer.name=muon"
"""The Muon sides' one override: Muon for the hidden matrices, AdamW (same settings) for the rest."""


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, int, float]:
    """Run one benchmark process: (the tokens/s of the JSON it writes, its minor page faults, whole
    process, and the CPU milliseconds per timed step it reports). Its stdout is not parsed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
        subprocess.run([*cmd, "--json", str(out)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=env)
        faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before
        result = json.loads(out.read_text())
        return result["tokens_per_s"], faults, result["cpu_ms_per_step"]


def _round_ratios(results: dict[str, list[float]], cpu_ms: dict[str, list[float]]) -> dict[str, list[float]]:
    """megadepth / plain within each round (the two ran back to back, so under the same machine load), by
    wall-clock tokens/s and by CPU time per step: a second view of the medians that shows how much the load
    moved them."""
    pairs = {"megadepth / plain": ("megadepth depth_mup", "plain"),
             "megadepth / tuned plain": ("megadepth depth_mup", "plain, tuned malloc"),
             "llama megadepth / llama plain": ("llama megadepth", "llama plain"),
             "llama megadepth / llama tuned plain": ("llama megadepth", "llama plain, tuned malloc"),
             "muon / adamw": ("megadepth muon", "megadepth depth_mup"),
             "llama muon / llama adamw": ("llama megadepth muon", "llama megadepth")}
    out = {}
    for label, (ours, ref) in pairs.items():
        if ours in results and ref in results:
            out[f"{label} (wall)"] = [a / b for a, b in zip(results[ours], results[ref], strict=True)]
            if "muon" in label:  # a cost: Muon's CPU ms per step over AdamW's (above 1: Muon costs more)
                out[f"{label} (CPU ms per step)"] = [a / b for a, b in zip(cpu_ms[ours], cpu_ms[ref], strict=True)]
            else:
                out[f"{label} (CPU)"] = [b / a for a, b in zip(cpu_ms[ours], cpu_ms[ref], strict=True)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bench/tiny.yaml")
    parser.add_argument("--llama-config", default="configs/bench/llama-tiny.yaml")
    parser.add_argument("--rows", choices=["all", "gpt", "llama", "muon"], default="all",
                        help="the GPT sides, the Llama sides, both (interleaved), or only the Muon and AdamW sides")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every side")
    parser.add_argument("--json", default=None, help="write every measurement here")
    args = parser.parse_args()

    py = sys.executable
    timing = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    base["OMP_NUM_THREADS"] = str(args.threads)
    plain = [py, "benchmarks/plain_gpt.py", args.config, "--no-compile", *timing]
    ours = [py, "-m", "megadepth", "bench", args.config, *timing]
    sides: dict[str, tuple[list[str], dict[str, str]]] = {}
    muon_only = args.rows == "muon"
    if muon_only:
        sides |= {
            "megadepth depth_mup": (ours, base),
            "megadepth muon": ([py, "-m", "megadepth", "bench", args.config, "--set", MUON, *timing], base),
            "llama megadepth": ([py, "-m", "megadepth", "bench", args.llama_config, *timing], base),
            "llama megadepth muon": ([py, "-m", "megadepth", "bench", args.llama_config, "--set", MUON, *timing],
                                     base),
        }
    if args.rows in ("all", "gpt"):
        sides |= {
            "plain": (plain, base),
            "plain, tuned malloc": (plain, base | MALLOC_ENV),
            "megadepth depth_mup": (ours, base),
            "megadepth, glibc default": (ours, base | {"MEGADEPTH_MALLOC_TUNING": "0"}),
            "megadepth sp": ([py, "-m", "megadepth", "bench", args.config, "--set", "parametrization.name=sp",
                              *timing], base),
            "megadepth muon": ([py, "-m", "megadepth", "bench", args.config, "--set", MUON, *timing], base),
        }
    if args.rows in ("all", "llama"):
        sides |= {
            "llama plain": ([py, "benchmarks/plain_gpt.py", args.llama_config, "--no-compile", *timing], base),
            "llama plain, tuned malloc": ([py, "benchmarks/plain_gpt.py", args.llama_config, "--no-compile", *timing],
                                          base | MALLOC_ENV),
            "llama megadepth": ([py, "-m", "megadepth", "bench", args.llama_config, *timing], base),
            "llama megadepth muon": ([py, "-m", "megadepth", "bench", args.llama_config, "--set", MUON, *timing],
                                     base),
        }
    results: dict[str, list[float]] = {name: [] for name in sides}
    faults: dict[str, list[int]] = {name: [] for name in sides}
    cpu_ms: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name, (cmd, env) in sides.items():
            tps, minflt, cpu = _run(cmd, env)
            results[name].append(tps)
            faults[name].append(minflt)
            cpu_ms[name].append(cpu)
            print(f"round {r + 1}/{args.rounds}  {name:<26} {tps:10,.0f} tokens/s  {cpu:8.1f} CPU ms/step  "
                  f"{minflt:10,} page faults", flush=True)
    med = {name: statistics.median(v) for name, v in results.items()}
    med_cpu = {name: statistics.median(v) for name, v in cpu_ms.items()}
    med_faults = {name: statistics.median(v) for name, v in faults.items()}
    load = os.getloadavg()[0]
    configs = {"all": f"{args.config} and {args.llama_config}", "gpt": args.config, "llama": args.llama_config,
               "muon": f"{args.config} and {args.llama_config}"}
    print(f"\n{configs[args.rows]}, {args.steps} timed steps after {args.warmup}, eager fp32, {args.threads} "
          f"thread(s), median of {args.rounds} (load average {load:.1f} on {os.cpu_count()} cores)")
    print(f"{'path':<26}{'tokens/s':>12}{'ratio to plain':>16}{'to tuned plain':>16}{'page faults':>14}"
          f"{'CPU ms/step':>13}{'plain CPU / ours':>18}")
    for name, value in med.items():
        prefix = "llama " if name.startswith("llama ") else ""
        if muon_only:  # no plain reference ran
            print(f"{name:<26}{value:12,.0f}{'-':>16}{'-':>16}{med_faults[name]:14,.0f}{med_cpu[name]:13.1f}{'-':>18}")
            continue
        print(f"{name:<26}{value:12,.0f}{value / med[prefix + 'plain']:16.3f}"
              f"{value / med[prefix + 'plain, tuned malloc']:16.3f}{med_faults[name]:14,.0f}"
              f"{med_cpu[name]:13.1f}{med_cpu[prefix + 'plain'] / med_cpu[name]:18.3f}")
    if "megadepth sp" in med:
        print(f"Depth-muP multipliers vs SP: {med['megadepth depth_mup'] / med['megadepth sp']:.3f} of SP's throughput")
    for muon, adamw in (("megadepth muon", "megadepth depth_mup"), ("llama megadepth muon", "llama megadepth")):
        if muon in med_cpu:
            extra = med_cpu[muon] - med_cpu[adamw]
            print(f"{muon}: the Muon step costs {extra:+.1f} CPU ms per step over AdamW's "
                  f"({med_cpu[muon] / med_cpu[adamw]:.3f} x AdamW's whole step, CPU time)")
    ratios = _round_ratios(results, cpu_ms)
    for name, values in ratios.items():
        print(f"{name}: per-round ratios {', '.join(f'{v:.3f}' for v in values)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "llama_config": args.llama_config,
                                               "rows": args.rows, "steps": args.steps, "threads": args.threads,
                                               "rounds": results, "page_faults": faults, "cpu_ms_per_step": cpu_ms, "median": med,
                                               "round_ratios": ratios, "load_average": load}, indent=2) + "\n")


if __name__ == "__main__":
    main()
