"""Shared by the benchmark scripts: run megadepth as a user would and read its metrics."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ensure_sample_data(data: Path) -> None:
    """The embedded sample data (built once with `megadepth prep sample`)."""
    if not (data / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "megadepth", "prep", "sample", "--out", str(data)], check=True, cwd=ROOT)


def run_training(nproc: int, sets: list[str], out: Path, threads_per_rank: int) -> list[dict]:
    """`megadepth train` (one process) or `megadepth launch` (several) on configs/quickstart.yaml with
    ``sets`` overrides; returns the metrics records."""
    cmd = [sys.executable, "-m", "megadepth"]
    cmd += ["train"] if nproc == 1 else ["launch", "--nproc-per-node", str(nproc)]
    cmd += ["configs/quickstart.yaml", "--set", f"train.out_dir={out}"]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_rank)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def median_step_s(records: list[dict], tokens_per_step: int, warmup: int) -> float:
    """Median seconds per optimizer step from the logged tokens/s, skipping warm-up steps."""
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r and r["step"] > warmup]
    return tokens_per_step / statistics.median(rates)
