"""`megadepth bench`: time optimizer steps through exactly the training code path, on random tokens. MFU
follows docs/throughput.md (6 N + 12 L d T flops per token), against the H200's dense bf16 peak by default.
"""

from __future__ import annotations

import itertools
import resource
import time
from collections.abc import Iterator
from typing import Any

import torch

from megadepth.config.schema import Config, ModelConfig

H200_PEAK_TFLOPS = 989.4


def flops_per_token(depth: int, width: int, seq_len: int, vocab: int, block_matrices: int | None = None) -> float:
    """6 N + 12 L d T, N = the block matrices (12 d^2 per layer for GPT-2's block unless ``block_matrices``
    gives the count) + the vocabulary matrix once (the head's matmul, tied or not)."""
    per_layer = 12 * width**2 if block_matrices is None else block_matrices
    n = depth * per_layer + vocab * width
    return 6 * n + 12 * depth * width * seq_len


def model_flops_per_token(m: ModelConfig) -> float:
    """flops_per_token for a model config: the block's matrices counted from its shape, so that grouped
    key/value heads and SwiGLU's three hidden matrices are counted as built (12 d^2 for GPT-2's block; the
    linear block keeps that convention too)."""
    if m.block != "transformer":
        return flops_per_token(m.depth, m.width, m.seq_len, m.padded_vocab)
    attn = 2 * m.width * m.heads * m.head_dim + 2 * m.width * m.n_kv_heads * m.head_dim
    mlp = (3 if m.mlp == "swiglu" else 2) * m.width * m.mlp_width
    return flops_per_token(m.depth, m.width, m.seq_len, m.padded_vocab, attn + mlp)


def _random_batches(config: Config, device: torch.device, seed: int) -> Iterator[torch.Tensor]:
    """Endless random token batches of [micro_batch, seq_len + 1], made once and cycled."""
    gen = torch.Generator().manual_seed(seed)
    m = config.model
    pool = [torch.randint(0, m.vocab_size, (config.train.micro_batch, m.seq_len + 1), generator=gen)
            for _ in range(4)]
    pool = [b.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else b for b in pool]
    yield from itertools.cycle(pool)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bench(config: Config, steps: int, warmup: int, peak_tflops: float = H200_PEAK_TFLOPS) -> dict[str, Any]:
    """Build the engine for this rank and time ``steps`` optimizer steps after ``warmup`` ones."""
    from megadepth.config.load import resolve_batch
    from megadepth.parallel import distributed
    from megadepth.parallel.topology import build_grid
    from megadepth.parametrize.checks import check_parametrization
    from megadepth.train.engine import build_engine
    from megadepth.train.step import Stepper

    env = distributed.read_env()
    check_parametrization(config)
    layout = distributed.check_layout(config, env.world_size)
    grad_accum, global_batch = resolve_batch(config, layout.data)
    device = distributed.resolve_device(config, env)
    precision = distributed.resolve_precision(config, device)
    distributed.prepare_deepspeed_env(device)
    distributed.limit_cpu_threads(device, env)
    distributed.init_distributed(config, env, device)
    built = None
    try:
        grid = build_grid(layout.pipeline, layout.tensor, layout.data, config.parallel.sequence_parallel)
        built = build_engine(config, device, grad_accum, global_batch, precision, grid)
        stepper = Stepper(built, grid, device, grad_accum, config.train.micro_batch, config.train.seed,
                          dropout=config.model.dropout > 0, own_norm=False)
        batches = _random_batches(config, device, config.train.seed + grid.data_rank)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        loss = None
        for step in range(warmup):
            loss = stepper.train_step(batches, step, want_norm=False)
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for step in range(warmup, warmup + steps):
            loss = stepper.train_step(batches, step, want_norm=False)
        _sync(device)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        m = config.model
        tokens_per_s = steps * global_batch * m.seq_len / elapsed
        fpt = model_flops_per_token(m)
        peak = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)  # KiB -> GiB (Linux)
        return {
            "tokens_per_s": tokens_per_s, "step_ms": 1000 * elapsed / steps,
            "cpu_ms_per_step": 1000 * cpu / steps,  # this process's CPU time: steadier than wall time on a busy host
            "mfu": tokens_per_s * fpt / (peak_tflops * 1e12), "peak_mem": peak, "flops_per_token": fpt,
            "peak_tflops": peak_tflops, "final_loss": float(loss) if loss is not None else float("nan"),
            "steps": steps, "warmup": warmup,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "precision": precision, "world_size": env.world_size,
            "layout": {"pipeline": layout.pipeline, "tensor": layout.tensor, "data": layout.data},
            "zero_stage": config.parallel.zero_stage, "global_batch": global_batch, "seq_len": m.seq_len,
            "depth": m.depth, "width": m.width, "vocab": m.padded_vocab,
            "parametrization": config.parametrization.name, "optimizer": config.optimizer.name,
            "compile": config.train.compile,
            "threads": torch.get_num_threads(),
        }
    finally:
        if built is not None:
            built.release()
        distributed.shutdown()
