"""The table of benchmarks/gpu_bench.sh: megadepth against the plain reference measured in the same run,
and against the nanoGPT anchor of BENCHMARKS.md.

    python benchmarks/bench_table.py OUT_DIR gpt-124m gpt-350m gpt-1.3b
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# BENCHMARKS.md, one H200: nanoGPT + torch.compile tokens/s and MFU
ANCHOR = {"gpt-124m": (512_648, 0.443), "gpt-350m": (193_037, 0.473), "gpt-1.3b": (61_519, 0.564)}


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def table(out: Path, shapes: list[str]) -> str:
    lines = [
        "| shape | megadepth tokens/s | MFU | peak GiB | plain tokens/s | plain MFU | megadepth / plain | megadepth / anchor MFU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape in shapes:
        ours, plain = load(out / f"megadepth-{shape}.json"), load(out / f"plain-{shape}.json")
        anchor_mfu = ANCHOR.get(shape, (None, None))[1]

        def cell(d: dict | None, key: str, fmt: str) -> str:
            return format(d[key], fmt) if d and key in d else "failed"

        ratio = f"{ours['tokens_per_s'] / plain['tokens_per_s']:.3f}" if ours and plain else "-"
        vs_anchor = f"{ours['mfu'] / anchor_mfu:.3f}" if ours and anchor_mfu else "-"
        lines.append(
            f"| {shape} | {cell(ours, 'tokens_per_s', ',.0f')} | {cell(ours, 'mfu', '.1%')} | "
            f"{cell(ours, 'peak_mem', '.1f')} | {cell(plain, 'tokens_per_s', ',.0f')} | {cell(plain, 'mfu', '.1%')} | "
            f"{ratio} | {vs_anchor} |"
        )
    for shape in shapes:  # Depth-muP (the bench configs) against SP at the same shape, where it was run
        ours, sp = load(out / f"megadepth-{shape}.json"), load(out / f"megadepth-sp-{shape}.json")
        if ours and sp:
            lines.append(f"\n{shape}: Depth-muP step {ours['step_ms']:.1f} ms, SP {sp['step_ms']:.1f} ms: the multipliers "
                         f"cost {100 * (ours['step_ms'] / sp['step_ms'] - 1):+.2f}% of the step (target < 1%)")
    first = load(out / f"megadepth-{shapes[0]}.json") or {}
    setting = (f"megadepth: {first.get('precision', '?')}, ZeRO {first.get('zero_stage', '?')}, "
               f"compile {first.get('compile', '?')}, {first.get('parametrization', '?')}")
    return "\n".join([f"device: {first.get('device', '?')}; {setting}", *lines])


if __name__ == "__main__":
    print(table(Path(sys.argv[1]), sys.argv[2:]))
