"""FineWeb's extraction and quality steps with datatrove itself: the reference of the quality benchmark.

Runs inside the benchmark's own environment (``benchmarks/prep_quality.py --setup-reference`` makes it;
datatrove, trafilatura and spaCy pinned there), never imports megadepth, and is started by the benchmark
as a subprocess on the very pages (the same decoded HTML) the benchmark scores megadepth on:

    Trafilatura(favour_precision=True, timeout=T)   # datatrove's extractor, in its sandbox process
    GopherRepetitionFilter()
    GopherQualityFilter()
    C4QualityFilter(filter_no_terminal_punct=False)
    FineWebQualityFilter()

FineWeb's own pipeline runs these after its URL filter and a language filter; the benchmark leaves both
out (no URL lists, no language model download), as megadepth's settings can be run without language id
for the comparison. Each filter's ``filter`` is called directly, in order, so the first rule that drops a
page is known; C4's line removal changes the text that FineWeb's rules see, as in the pipeline.

Input: JSON lines ``{"id", "html"}``. Output (``--out``): JSON lines ``{"id", "text", "out", "drop", "value"}``
for the first pass, then one line ``{"timing": ..., "versions": ...}``: CPU seconds of this process and of
its children (the extraction sandbox), for start-up and for ``--docs`` documents (the pages cycled; each
cycle gets a fresh sandbox, forked from this process, hence an empty trafilatura duplicate cache), so
the figure is per core, like megadepth's.

End to end (``--warc FOLDER``): datatrove's own pipeline from WARC files on disk to written JSON lines,
as FineWeb runs it (less its URL and language filters), with datatrove's executor:

    LocalPipelineExecutor(pipeline=[WarcReader(FOLDER), Trafilatura(favour_precision=True, timeout=T),
                                    GopherRepetitionFilter(), GopherQualityFilter(),
                                    C4QualityFilter(filter_no_terminal_punct=False), FineWebQualityFilter(),
                                    JsonlWriter(WORK/output)],
                          tasks=FILES, workers=1, logging_dir=WORK/logs)

one task per WARC file, run one after another in this process (``workers=1``); each task forks its own
extraction sandbox, so trafilatura's duplicate cache is per file, as in FineWeb (one task per crawl file).
Output (``--out``): one JSON object: documents read, documents written (the JSON lines counted), CPU
seconds (this process and its reaped children: the sandboxes, the executor's manager) of start-up
(interpreter, imports, spaCy's word tokenizer) and of the executor's run, wall seconds, and each step's
counters (datatrove's own stats).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from importlib import metadata


def _cpu() -> float:
    """CPU seconds of this process and of its reaped children (datatrove's extraction sandbox)."""
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + child.ru_utime + child.ru_stime


_FAILURES = (("timeout", "extract:timeout"), ("clean_error", "extract:error"), ("broken_process", "extract:crash"))


def _feed(batch: list[dict], extractor, failed: dict[str, str]):
    """The documents of ``batch`` for the extractor; when the extractor asks for the next one, the previous
    one is finished, so a failure counter that moved meanwhile names why it was not forwarded."""
    from datatrove.data import Document

    def counts() -> tuple[float, ...]:
        return tuple(extractor.stats[k].total for k, _ in _FAILURES)

    prev_id, before = None, counts()
    for p in batch:
        now = counts()
        if prev_id is not None and now != before:
            failed[prev_id] = next(r for (_, r), a, b in zip(_FAILURES, before, now, strict=True) if a != b)
        prev_id, before = p["id"], now
        yield Document(text=p["html"], id=p["id"])
    now = counts()
    if prev_id is not None and now != before:
        failed[prev_id] = next(r for (_, r), a, b in zip(_FAILURES, before, now, strict=True) if a != b)


#: datatrove's reasons under the names megadepth's filters give them (the same rules), so tables compare
_REASONS = {
    "gopher_short_doc": "short_doc", "gopher_long_doc": "long_doc",
    "gopher_below_avg_threshold": "below_avg_word_length", "gopher_above_avg_threshold": "above_avg_word_length",
    "gopher_too_many_hashes": "too_many_hashes", "gopher_too_many_ellipsis": "too_many_ellipsis",
    "gopher_too_many_bullets": "too_many_bullets", "gopher_too_many_end_ellipsis": "too_many_end_ellipsis",
    "gopher_below_alpha_threshold": "below_alpha_threshold", "gopher_enough_stop_words": "not_enough_stop_words",
}  # fmt: skip
#: reason -> (the filter's attribute holding its threshold, whether the rule is a minimum)
_THRESHOLDS = {
    "dup_line_frac": ("dup_line_frac", False), "dup_para_frac": ("dup_para_frac", False),
    "dup_line_char_frac": ("dup_line_char_frac", False), "dup_para_char_frac": ("dup_para_char_frac", False),
    "short_doc": ("min_doc_words", True), "long_doc": ("max_doc_words", False),
    "below_avg_word_length": ("min_avg_word_length", True), "above_avg_word_length": ("max_avg_word_length", False),
    "too_many_hashes": ("max_symbol_word_ratio", False), "too_many_ellipsis": ("max_symbol_word_ratio", False),
    "too_many_bullets": ("max_bullet_lines_ratio", False), "too_many_end_ellipsis": ("max_ellipsis_lines_ratio", False),
    "below_alpha_threshold": ("max_non_alpha_words_ratio", True), "not_enough_stop_words": ("min_stop_words", True),
    "too_few_sentences": ("min_num_sentences", True), "line_punct_ratio": ("line_punct_thr", True),
    "short_line_ratio": ("short_line_threshold", False), "char_dup_ratio": ("char_duplicates_ratio", False),
    "list_ratio": ("new_line_ratio", False),
}  # fmt: skip


def rule_value(flt, drop: str, text: str) -> str:
    """The value the page had for the rule that dropped it: the threshold at which datatrove's filter stops
    failing with that reason (bisection on a copy of the filter; datatrove reports only the reason), in the
    benchmark's form ("0.034 > 0.01", "31 < 50"); "" for a rule without a threshold."""
    import copy

    from datatrove.data import Document

    reason = drop.partition(":")[2]
    attr, is_min, entry = *_THRESHOLDS.get(reason, (None, False)), None
    for kind, prefix, suffix in (("top_n_grams", "top_", "_gram"), ("dup_n_grams", "duplicated_", "_n_grams")):
        if attr is None and reason.startswith(prefix) and reason.endswith(suffix):
            attr, is_min, entry = kind, False, int(reason[len(prefix) : -len(suffix)])
    if attr is None:
        return ""
    current = getattr(flt, attr)
    if entry is not None:
        current = dict(current)[entry]

    def fails(thr: float) -> bool:
        probe = copy.copy(flt)
        if entry is None:
            setattr(probe, attr, thr)
        else:
            setattr(probe, attr, tuple((n, thr if n == entry else f) for n, f in getattr(flt, attr)))
        res = probe.filter(Document(text=text, id="probe"))
        why = res[1] if isinstance(res, tuple) else None
        return _REASONS.get(why, why) == reason

    integer = isinstance(current, int) and not isinstance(current, bool)
    if is_min:
        lo, hi = 0, current
    else:
        lo, hi = current, max(1.0, float(current))
        while fails(hi) and hi < 1e9:
            hi *= 2
    steps = 64 if integer else 40
    for _ in range(steps):
        if integer and hi - lo <= 1:
            break
        mid = (lo + hi) // 2 if integer else (lo + hi) / 2
        if fails(mid) != is_min:
            lo = mid
        else:
            hi = mid
    value = lo if is_min else hi
    return f"{value} {'<' if is_min else '>'} {current}" if integer else \
        f"{value:.3g} {'<' if is_min else '>'} {current:g}"


def end_to_end(warc_dir: str, work: str, timeout: float, out_path: str) -> None:
    """datatrove's pipeline from the WARC files in ``warc_dir`` to JSON lines under ``work``, timed."""
    import gzip
    from pathlib import Path

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import JsonlWriter

    files = sorted(p for p in Path(warc_dir).rglob("*") if p.is_file())
    if not files:
        raise SystemExit(f"no WARC files in {warc_dir}")
    out_dir, logs = Path(work) / "output", Path(work) / "logs"
    # the word tokenizer (spaCy) is loaded once per process (datatrove caches it): start-up, not the first page
    GopherQualityFilter().filter(Document(text="Warm up the word tokenizer with a sentence.", id="warmup"))
    executor = LocalPipelineExecutor(
        pipeline=[
            WarcReader(str(warc_dir)),
            Trafilatura(favour_precision=True, timeout=timeout),
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            C4QualityFilter(filter_no_terminal_punct=False),
            FineWebQualityFilter(),
            JsonlWriter(str(out_dir)),
        ],
        tasks=len(files),
        workers=1,
        logging_dir=str(logs),
    )
    startup = _cpu()
    wall0 = time.perf_counter()
    stats = executor.run()
    run_cpu = _cpu() - startup
    wall = time.perf_counter() - wall0
    written = 0
    for path in sorted(out_dir.rglob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            written += sum(1 for _ in f)
    steps = [(step.name, {k: v.total for k, v in step.stats.items()}) for step in stats.stats]
    read, extract, *rules = (counts for _, counts in steps)
    drops = {r: int(extract[k]) for k, r in _FAILURES if extract.get(k)}
    empty = extract.get("dropped", 0)
    if empty:
        drops["extract:empty"] = int(empty)
    for name, counts in zip(("gopher_rep", "gopher_qual", "c4", "fineweb"), rules, strict=False):
        for k, v in counts.items():
            if k.startswith("dropped_") and v:
                why = k.removeprefix("dropped_")
                drops[f"{name}:{_REASONS.get(why, why)}"] = int(v)
    result = {
        "files": len(files),
        "documents": int(read.get("documents", 0)),
        "kept": written,
        "startup_cpu_s": startup,
        "run_cpu_s": run_cpu,
        "total_cpu_s": _cpu(),
        "wall_s": wall,
        "drops": dict(sorted(drops.items(), key=lambda kv: -kv[1])),
        "steps": dict(steps),
        "versions": {name: metadata.version(name) for name in ("datatrove", "trafilatura", "spacy", "lxml", "warcio")},
    }
    Path(out_path).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--pages", help="JSON lines {id, html}: the steps on decoded pages")
    src.add_argument("--warc", help="a folder of WARC files: datatrove's pipeline end to end")
    ap.add_argument("--work", help="with --warc: where the pipeline writes its output and logs")
    ap.add_argument("--out", required=True)
    ap.add_argument("--docs", type=int, default=0, help="documents for the speed figure (pages cycled)")
    ap.add_argument("--timeout", type=float, default=2.0, help="datatrove's per-document extraction limit")
    args = ap.parse_args(argv)
    if args.warc:
        if not args.work:
            ap.error("--warc needs --work")
        end_to_end(args.warc, args.work, args.timeout, args.out)
        return 0

    cpu0 = _cpu()
    from loguru import logger

    logger.remove()  # datatrove logs every sandbox start and timeout at INFO
    logger.add(sys.stderr, level="ERROR")
    from datatrove.data import Document
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    extractor = Trafilatura(favour_precision=True, timeout=args.timeout)
    filters = [
        ("gopher_rep", GopherRepetitionFilter()),
        ("gopher_qual", GopherQualityFilter()),
        ("c4", C4QualityFilter(filter_no_terminal_punct=False)),
        ("fineweb", FineWebQualityFilter()),
    ]
    with open(args.pages, encoding="utf-8") as f:
        pages = [json.loads(line) for line in f]
    # the word tokenizer (spaCy) loads on first use: part of start-up, not of the first document
    filters[1][1].filter(Document(text="Warm up the word tokenizer with a sentence.", id="warmup"))
    startup = _cpu() - cpu0

    results: dict[str, dict] = {}
    dropped_by: dict[str, tuple] = {}
    n_docs = max(args.docs, len(pages))
    done = 0
    t0 = _cpu()
    wall0 = time.perf_counter()
    first = True
    while done < n_docs:
        batch = pages[: n_docs - done]
        failed: dict[str, str] = {}
        docs = _feed(batch, extractor, failed)
        for doc in extractor.run(docs):
            text = doc.text
            drop = None
            for name, flt in filters:
                seen = doc.text
                res = flt.filter(doc)
                ok, why = res if isinstance(res, tuple) else (res, None)
                if not ok:
                    drop = f"{name}:{_REASONS.get(why, why) or 'dropped'}"
                    if first:
                        dropped_by[doc.id] = (flt, seen)
                    break
            if first:
                results[doc.id] = {"id": doc.id, "text": text, "out": None if drop else doc.text, "drop": drop}
        if first:
            for p in batch:  # pages the extractor did not forward
                reason = failed.get(p["id"], "extract:empty")
                results.setdefault(p["id"], {"id": p["id"], "text": None, "out": None, "drop": reason})
        done += len(batch)
        first = False  # the next cycle's sandbox is a fresh fork: trafilatura's duplicate cache starts empty
    cpu = _cpu() - t0
    wall = time.perf_counter() - wall0
    for doc_id, (flt, seen) in dropped_by.items():
        results[doc_id]["value"] = rule_value(flt, results[doc_id]["drop"], seen)
    with open(args.out, "w", encoding="utf-8") as out:
        for p in pages:
            out.write(json.dumps(results[p["id"]], ensure_ascii=False) + "\n")
        timing = {"startup_cpu_s": startup, "docs": done, "cpu_s": cpu, "wall_s": wall}
        versions = {name: metadata.version(name) for name in ("datatrove", "trafilatura", "spacy", "lxml")}
        out.write(json.dumps({"timing": timing, "versions": versions}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
