"""The loss alone: eager vs compiled cross-entropy from bf16 logits, memory and time (CPU or GPU).

    python benchmarks/ce_bench.py [--tokens 8192] [--vocab 32768] [--device cpu]

megadepth computes the loss in fp32 from bf16 logits. Eager, that is an fp32 copy of the full-vocabulary
logits, a saved fp32 log-softmax and an fp32 gradient; compiled (what ``train.compile`` does to the loss,
megadepth.model.gpt.GPT.compile_for_speed), the upcast and the softmax are fused into the kernels and
only the bf16 gradient is written. ``vocab-parallel`` is the tensor-parallel loss (kept eager, its
collectives sit between the steps) on one rank: it works in place on one fp32 buffer. Each mode runs in its own process (peak RSS is per process); the
figure is the growth of peak memory during one forward+backward over the memory the logits already take.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels)


def _vocab_parallel_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    from megadepth.parallel.cross_entropy import vocab_parallel_cross_entropy

    # one rank holding the whole vocabulary: the same kernel work as each rank under TP, no collectives
    return vocab_parallel_cross_entropy(logits, labels, vocab_start=0, vocab_size=logits.shape[-1],
                                        group=None).mean()


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(mode: str, tokens: int, vocab: int, device: torch.device) -> dict:
    """Peak-memory growth of the first full-size forward+backward (after warm-ups at a small shape, so
    nothing earlier set the CPU's per-process peak; a compiled loss also compiles for the new shape
    there, which adds little memory) and the time of a second one."""
    fn = {"eager": _loss, "compiled": torch.compile(_loss, dynamic=False),
          "vocab-parallel": _vocab_parallel_loss}[mode]
    gen = torch.Generator().manual_seed(0)

    def step(n: int) -> tuple[float, float]:
        labels = torch.randint(0, vocab, (n,), generator=gen).to(device)
        logits = torch.randn(n, vocab, generator=gen, dtype=torch.bfloat16).to(device).requires_grad_()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device) / 2**20
        else:
            base = _peak_mib(device)
        start = time.perf_counter()
        fn(logits, labels).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return _peak_mib(device) - base, time.perf_counter() - start

    step(512), step(512)
    grow, _ = step(tokens)
    _, seconds = step(tokens)
    return {"mode": mode, "tokens": tokens, "vocab": vocab, "logits_mib": tokens * vocab * 2 / 2**20,
            "extra_peak_mib": grow, "seconds": seconds, "device": str(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--mode", choices=["eager", "compiled", "vocab-parallel"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode, args.tokens, args.vocab, torch.device(args.device))))
        return
    print(f"| loss | extra peak memory (MiB) | over bf16 logits ({args.tokens * args.vocab * 2 / 2**20:.0f} MiB) "
          f"| forward+backward s |")
    print("|---|---|---|---|")
    for mode in ("eager", "compiled", "vocab-parallel"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--tokens", str(args.tokens),
                              "--vocab", str(args.vocab), "--device", args.device],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"| {mode} | {r['extra_peak_mib']:.0f} | {r['extra_peak_mib'] / r['logits_mib']:.2f}x | "
              f"{r['seconds']:.3f} |")


if __name__ == "__main__":
    main()
