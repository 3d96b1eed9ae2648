"""Benchmark of the Common Crawl pipeline (data_prep) on one machine, all figures from one run.

Builds WARC files offline from real pages (pydoc's HTML for the standard library, article pages around
CPython's documentation prose; see data_prep.corpus), then measures on the same pages:

1. the extraction-only ceiling: FastWARC read + resiliparse main-content extraction, one core;
2. the whole local pipeline with one worker (read, decode, extract, language id, Gopher/C4/FineWeb
   rules, exact + MinHash dedup, tokenization with EOS, shard + Parquet writing), end-to-end docs/s,
   with the tokenizer given and, separately, the tokenizer training time;
3. tokenization: tokens/s of the pipeline's tokenize stage (Parquet read, PII masking, encode, EOS,
   .bin/.idx + Parquet writing) against raw ``sentencepiece.encode`` on the same texts, one thread;
4. scaling: wall time of the pipeline with 2 workers against 1;
5. peak memory of a 1-worker run at two corpus sizes (bounded by shard size, not by input size);
6. the cost of listing the dropped documents (``OUT/rejected/``): the run's rejected rows written again
   through the same writer, per row and as a share of the extract stage's CPU time, and their size.

Rates per core are CPU seconds of the measuring process (robust on a shared machine); the scaling
figure is wall time and prints the load average next to it.

    python benchmarks/prep_bench.py [--pages 2000] [--files 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_corpus(root: Path, pages: int, files: int) -> list[Path]:
    """Half pydoc module pages (heavy HTML, mostly dropped by the quality rules, as most of a crawl is),
    half articles of 10 prose paragraphs drawn at random (real text, distinct pages); every 20th page
    is a copy of an earlier one under another URL with a changed footer (a near duplicate)."""
    import random

    from data_prep.corpus import (
        article_html,
        module_doc_pages,
        prose_paragraphs,
        warc_response,
        warcinfo,
        write_warc,
    )

    rng = random.Random(0)
    modules = module_doc_pages()
    paras = prose_paragraphs()
    made: list[tuple[str, str]] = []
    for k in range(pages):
        if k % 20 == 19 and made:
            url, html = made[rng.randrange(len(made))]
            made.append((url.replace(".example/", f".example/copy{k}/"),
                         html.replace("</body>", f"<footer><p>Mirror {k}</p></footer></body>")))
        elif k % 2 == 0:
            name, html = modules[(k // 2) % len(modules)]
            made.append((f"https://docs.example/{k}/{name}.html", html))
        else:
            group = rng.sample(paras, 10)
            made.append((f"https://blog.example/{k}", article_html(" ".join(group[0].split()[:6]), group)))
    per_file = (pages + files - 1) // files
    paths = []
    for f in range(files):
        recs = [warcinfo(f"bench-{f}.warc.gz")]
        for url, html in made[f * per_file : (f + 1) * per_file]:
            recs += warc_response(url, html.encode("utf-8"))
        paths.append(write_warc(root / f"bench-{f:03d}.warc.gz", recs))
    return paths


def ceiling(paths: list[Path]) -> tuple[int, float]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    n = 0
    t0 = time.process_time()
    for p in paths:
        for r in ArchiveIterator(str(p), record_types=WarcRecordType.response, fsspec_args=False):
            body = r.reader.read()
            extract_plain_text(bytes_to_str(body, detect_encoding(body)), main_content=True)
            n += 1
    return n, time.process_time() - t0


def run_pipeline(paths, out: Path, workers: int, overrides: list[str]) -> tuple[dict, float, float]:
    """(manifest, wall seconds, CPU seconds of this process: all of the work when workers == 1)."""
    from data_prep.pipeline import plan_run, run_plan

    shutil.rmtree(out, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    plan = plan_run([str(p) for p in paths], out, overrides=overrides)
    manifest, _ = run_plan(plan, workers=workers, progress=False)
    return manifest, time.perf_counter() - t0, time.process_time() - c0


def rejected_cost(out: Path) -> tuple[int, float, int]:
    """(rows, CPU seconds to write them again row by row as the extract stage does, Parquet bytes)."""
    import pyarrow.parquet as pq

    from data_prep.rejected import RejectedWriter

    rows = [r for p in sorted((out / "rejected").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    w = RejectedWriter(out / "rejected-again.parquet", False, 2000)
    keys = ("id", "url", "source", "rule", "value", "threshold", "language", "language_score")
    t0 = time.process_time()
    for r in rows:
        w.add(*(r[k] for k in keys))
    w.commit()
    seconds = time.process_time() - t0
    size = sum(p.stat().st_size for p in (out / "rejected").glob("*.parquet"))
    return len(rows), seconds, size


def raw_encode(tokenizer: Path, texts: list[str]) -> tuple[int, float]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    t0 = time.process_time()
    n = sum(len(ids) for ids in sp.encode(texts, num_threads=1))
    return n, time.process_time() - t0


_RSS = """
import resource, sys
from data_prep.pipeline import plan_run, run_plan
plan = plan_run(sys.argv[2:], sys.argv[1], overrides=[o for o in sys.stdin.read().split("\\n") if o])
run_plan(plan, workers=1, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(paths, out: Path, overrides: list[str]) -> float:
    """Peak RSS of a fresh process running the pipeline with 1 worker (the library, not the megadepth
    command, whose parser imports torch for other subcommands)."""
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, "-c", _RSS, str(out), *map(str, paths)],
        input="\n".join(overrides), capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return int(proc.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=2000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tmp = Path(tempfile.mkdtemp(prefix="prep-bench-"))
    try:
        t0 = time.perf_counter()
        paths = build_corpus(tmp / "in", args.pages, args.files)
        size = sum(p.stat().st_size for p in paths)
        print(f"corpus: {args.pages} pages in {len(paths)} WARC files, {size / 1e6:.1f} MB gz "
              f"(built in {time.perf_counter() - t0:.1f} s)")

        n_pages, t_ceiling = ceiling(paths)
        ceil_rate = n_pages / t_ceiling
        print(f"extraction-only ceiling (fastwarc + resiliparse, 1 core): {ceil_rate:,.0f} pages/s")

        # tokenizer training, once; the timed runs use the trained model (a one-off cost per corpus)
        m_train, _, t_train = run_pipeline(paths, tmp / "train", 1, ["tokenizer.vocab_size=1024"])
        tok = tmp / "tokenizer.model"
        shutil.copy(tmp / "train" / "tokenizer.model", tok)
        given = [f"tokenizer.model={tok}"]

        m1, t1, c1 = run_pipeline(paths, tmp / "w1", 1, given)
        docs_in = m1["stages"]["extract_and_filter"]["documents_in"]
        e2e = docs_in / c1
        print(f"pipeline, 1 worker, end to end: {e2e:,.0f} docs/s ({docs_in} docs in {c1:.2f} CPU s, "
              f"{t1:.2f} s wall) -> {e2e / ceil_rate:.2f} of the ceiling")
        print(f"  with tokenizer training in the run: {docs_in / t_train:,.0f} docs/s "
              f"(training {m_train['stages']['tokenizer']['seconds']:.1f} s)")
        ex = m1["stages"]["extract_and_filter"]
        print(f"  extract stage alone: {ex['docs_per_s']:,.0f} docs/s; by step: {ex['seconds_by_step']}")
        print(f"  kept {ex['documents_out']}, duplicates removed {m1['stages']['dedup']['exact_duplicates']} exact "
              f"+ {m1['stages']['dedup']['near_duplicates']} near, {m1['tokens']:,} tokens")

        n_rej, t_rej, b_rej = rejected_cost(tmp / "w1")
        print(f"rejected/: {n_rej} rows, {b_rej / max(n_rej, 1):.0f} bytes each; writing them: "
              f"{1e6 * t_rej / max(n_rej, 1):.1f} us per row = {100 * t_rej / ex['seconds']:.2f} % of the extract stage")

        import pyarrow.parquet as pq

        texts = []
        for part in sorted((tmp / "w1" / "documents").glob("*.parquet")):
            texts += pq.read_table(part, columns=["text"]).column(0).to_pylist()
        n_raw, t_raw = raw_encode(tok, texts)
        raw_rate = n_raw / t_raw
        tk = m1["stages"]["tokenize"]
        ours = tk["tokens_per_s"]
        print(f"tokenization: raw sentencepiece.encode {raw_rate / 1e6:.2f}M tokens/s, tokenize stage "
              f"{ours / 1e6:.2f}M tokens/s -> {ours / raw_rate:.2f} of raw")

        m2, t2, _ = run_pipeline(paths, tmp / "w2", 2, given)
        same = all(
            (tmp / "w1" / s["prefix"]).with_suffix(".bin").read_bytes()
            == (tmp / "w2" / s["prefix"]).with_suffix(".bin").read_bytes()
            for s in m1["shards"]
        )
        load = os.getloadavg()[0]
        print(f"2 workers: {t2:.2f} s vs {t1:.2f} s wall -> speed-up {t1 / t2:.2f}x (shards identical: {same}; "
              f"load average {load:.1f} on {os.cpu_count()} cores)")

        small = paths[: max(1, len(paths) // 2)]
        rss_small = peak_rss_mb(small, tmp / "rss1", given)
        rss_all = peak_rss_mb(paths, tmp / "rss2", given)
        print(f"peak RSS, 1 worker: {rss_small:.0f} MB for {len(small)} file(s), {rss_all:.0f} MB for {len(paths)}")
        figures = {
            "pages": args.pages,
            "files": len(paths),
            "ceiling_pages_per_s": round(ceil_rate, 1),
            "pipeline_docs_per_s": round(e2e, 1),
            "pipeline_fraction_of_ceiling": round(e2e / ceil_rate, 3),
            "pipeline_docs_per_s_with_training": round(docs_in / t_train, 1),
            "raw_encode_tokens_per_s": round(raw_rate),
            "tokenize_stage_tokens_per_s": ours,
            "tokenize_fraction_of_raw": round(ours / raw_rate, 3),
            "wall_1_worker_s": round(t1, 3),
            "wall_2_workers_s": round(t2, 3),
            "speedup_2_workers": round(t1 / t2, 3),
            "load_average": round(os.getloadavg()[0], 2),
            "shards_identical_1_vs_2_workers": same,
            "peak_rss_mb": {str(len(small)): round(rss_small), str(len(paths)): round(rss_all)},
            "rejected_rows": n_rej,
            "rejected_bytes_per_row": round(b_rej / max(n_rej, 1), 1),
            "rejected_write_us_per_row": round(1e6 * t_rej / max(n_rej, 1), 2),
            "rejected_share_of_extract": round(t_rej / ex["seconds"], 5),
        }
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        print(json.dumps(figures))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
