"""The table of benchmarks/gpu_bench.sh: megadepth against the plain reference measured in the same run,
and against the nanoGPT anchor (nanoGPT + torch.compile on one H200, docs/throughput.md).

    python benchmarks/bench_table.py OUT_DIR gpt-124m gpt-350m gpt-1.3b

OUT_DIR holds gpu_bench.sh's megadepth-SHAPE.json, plain-SHAPE.json, megadepth-sp-SHAPE.json and
megadepth-muon-SHAPE.json; a
missing or unreadable file shows as "failed" or "-".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# the nanoGPT anchor, one H200 (docs/throughput.md): nanoGPT + torch.compile tokens/s and MFU
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
    for shape in shapes:  # Muon (hidden matrices) + AdamW (the rest) against AdamW alone at the same shape
        ours, muon = load(out / f"megadepth-{shape}.json"), load(out / f"megadepth-muon-{shape}.json")
        if ours and muon:
            lines.append(f"\n{shape}: AdamW step {ours['step_ms']:.1f} ms, Muon {muon['step_ms']:.1f} ms: Muon's "
                         f"Newton-Schulz and TP gathers cost {100 * (muon['step_ms'] / ours['step_ms'] - 1):+.2f}% of "
                         "the step")
    first = load(out / f"megadepth-{shapes[0]}.json") or {}
    setting = (f"megadepth: {first.get('precision', '?')}, ZeRO {first.get('zero_stage', '?')}, "
               f"compile {first.get('compile', '?')}, {first.get('parametrization', '?')}")
    return "\n".join([f"device: {first.get('device', '?')}; {setting}", *lines])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Print the markdown table of a benchmarks/gpu_bench.sh output directory: megadepth "
        "against the plain reference and the nanoGPT anchor.")
    parser.add_argument("out", metavar="OUT_DIR", type=Path, help="the directory gpu_bench.sh wrote ($OUT)")
    parser.add_argument("shapes", metavar="SHAPE", nargs="+",
                        help=f"bench shapes, in table order (anchors: {', '.join(ANCHOR)})")
    args = parser.parse_args(argv)
    print(table(args.out, args.shapes))


if __name__ == "__main__":
    main()
