"""Hashes of a `prep run`'s outputs on a fixed corpus, to show that a refactor changed no byte.

Builds (once, into --corpus) three WARC files of 240 real pages (benchmarks/prep_bench.py's corpus) plus the
bundled WET fixture, runs the pipeline with one worker into --work, and writes the SHA-256 of every output
file (shards, tokenizer, documents and rejected Parquet; not manifest.json, plan.json, the report or the
lock, which hold timings) with the document and token counts. Run it before and after a change and diff:

    python benchmarks/prep_output_hashes.py before.json   # ... change ...
    python benchmarks/prep_output_hashes.py after.json && diff before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="JSON file for the hashes")
    ap.add_argument("--corpus", default="/tmp/megadepth-prep-hashes/corpus", help="built once, then reused")
    ap.add_argument("--work", default="/tmp/megadepth-prep-hashes/run", help="replaced on every run")
    args = ap.parse_args()
    from prep_bench import build_corpus

    from data_prep.pipeline import plan_run, run_plan

    corpus, work = Path(args.corpus), Path(args.work)
    if not corpus.exists():
        build_corpus(corpus, 240, 3)
    shutil.rmtree(work, ignore_errors=True)
    (work / "in").mkdir(parents=True)
    for f in [*sorted(corpus.glob("*.warc.gz")), ROOT / "tests/fixtures/commoncrawl/whirlwind.warc.wet.gz"]:
        shutil.copy(f, work / "in" / f.name)  # the same input paths on every run: they are in the outputs
    out = work / "out"
    manifest, _ = run_plan(plan_run([str(p) for p in sorted((work / "in").iterdir())], out,
                                    overrides=["tokenizer.vocab_size=600", "language.languages=null"]),
                           workers=1, progress=False)
    skip = {"manifest.json", "plan.json", "report.txt", ".prep.lock"}
    hashes = {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest()
              for f in sorted(out.rglob("*")) if f.is_file() and "work" not in f.parts and f.name not in skip}
    hashes.update(documents=manifest["documents"], tokens=manifest["tokens"])
    Path(args.out).write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    print(f"{len(hashes) - 2} files, {manifest['documents']} documents, {manifest['tokens']} tokens -> {args.out}")


if __name__ == "__main__":
    main()
