"""The tokenizer, tokenize and finalize stages' units (what they write: :mod:`data_prep.stages`)."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from data_prep import rejected as rj
from data_prep import stages
from data_prep.plan import SINGLE, Plan
from data_prep.tokenizer import ShardWriter, install_shards, load_tokenizer, tokenizer_fields, write_manifest
from megadepth.common.errors import DataError
from megadepth.common.io import atomic_write_bytes, sha256_file, temporary_path

__all__ = ["build_manifest", "run_finalize", "run_tokenize", "run_tokenizer"]

_U64 = 1 << 64


def run_tokenizer(plan: Plan, unit: str) -> dict:
    import xxhash

    from data_prep.tokenizer import train_tokenizer

    t0 = time.perf_counter()
    c = plan.config
    out_dir = plan.stage_dir("tokenizer")
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / stages.TOKENIZER
    if c.tokenizer.model:
        src = Path(c.tokenizer.model)
        if sha256_file(src) != plan.tokenizer_sha256:
            raise DataError(f"tokenizer {src} changed since the plan was made")
        atomic_write_bytes(final, src.read_bytes())
        stages.check_tokenizer(final)
        return {"trained": False, "source": str(src), "seconds": round(time.perf_counter() - t0, 4)}
    offsets = stages.offsets(plan)
    removed = stages.removed(plan)
    extracted = [plan.read_marker("extract", u) for u in plan.units("extract")]
    if not any(m["kept"] for m in extracted):
        raise rj.nothing_survived_error(plan, _link)
    total_chars = sum(m["kept_chars"] for m in extracted)
    rate = min(1.0, c.tokenizer.sample_chars / max(total_chars, 1))
    cut = int(rate * (_U64 - 1))
    sampled = Counter()

    def sample():
        for i, first, batch, mask in stages.kept_batches(plan, range(len(plan.inputs)), offsets, removed, ["text"]):
            for row, (keep, text) in enumerate(zip(mask, batch.column(0).to_pylist(), strict=True), first):
                if keep and xxhash.xxh3_64_intdigest(f"{i:06d}:{row}".encode()) <= cut:
                    sampled["documents"] += 1
                    sampled["chars"] += len(text)
                    yield text

    train_tokenizer(sample(), out_dir / "tokenizer", c.tokenizer.vocab_size, c.tokenizer.model_type, c.tokenizer.seed)
    stages.check_tokenizer(final)
    return {"trained": True, "sample_documents": sampled["documents"], "sample_chars": sampled["chars"],
            "seconds": round(time.perf_counter() - t0, 4)}


def run_tokenize(plan: Plan, unit: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    c = plan.config
    sp = stages.cached(plan, "sp", lambda: stages.check_tokenizer(plan.stage_dir("tokenizer") / stages.TOKENIZER))
    offsets = stages.offsets(plan)
    removed = stages.removed(plan)
    sd = plan.stage_dir("tokenize")
    (sd / stages.DOCS_DIR).mkdir(parents=True, exist_ok=True)
    prefix = sd / f"shard_{unit}"
    parquet = sd / stages.DOCS_DIR / f"part-{unit}.parquet"
    tmp = temporary_path(parquet)
    fps = c.shards.files_per_shard
    schema = stages.doc_schema().append(pa.field("tokens", pa.int32()))
    writer = ShardWriter(sp, lambda n: prefix)
    pqw = pq.ParquetWriter(tmp, schema, compression="zstd")
    rejected = rj.RejectedWriter(sd / rj.REJECTED_DIR / f"{unit}.parquet", c.rejected.keep_text, c.shards.row_group_docs)
    details = rj.load_duplicates(plan.stage_dir("cluster")) if len(removed) else None
    sources = [x.path for x in plan.inputs]
    t_docs = 0.0
    try:
        files = range(int(unit) * fps, min((int(unit) + 1) * fps, len(plan.inputs)))
        for i, row, batch, m in stages.kept_batches(plan, files, offsets, removed):
            if not m.all():
                gone = ~m
                gids = offsets[i] + row + np.flatnonzero(gone)
                rejected.add_table(rj.dedup_rows(batch.filter(pa.array(gone)), gids, removed, details, offsets,
                                                 sources, c.rejected.keep_text))
                batch = batch.filter(pa.array(m))
            if batch.num_rows == 0:
                continue
            lengths = writer.add(batch.column("text").to_pylist(), c.tokenizer.num_threads)
            td = time.process_time()
            pqw.write_batch(batch.append_column("tokens", pa.array(lengths.astype(np.int32))))
            t_docs += time.process_time() - td
            stages._maybe_die("tokenize", unit)
        td = time.process_time()
        pqw.close()
        t_docs += time.process_time() - td
        rejected_info = rejected.commit()
        writer.close()
        if writer.shards:
            os.replace(tmp, parquet)
        else:
            tmp.unlink(missing_ok=True)
    except BaseException:
        writer.abort()
        pqw.close()
        tmp.unlink(missing_ok=True)
        rejected.abort()
        raise
    shard = writer.shards[0] if writer.shards else {"prefix": None, "documents": 0, "tokens": 0}
    return {"shard": shard["prefix"], "documents": shard["documents"], "tokens": shard["tokens"],
            "seconds": round(time.perf_counter() - t0, 4), "cpu_seconds": round(time.process_time() - cpu0, 4),
            "encode_seconds": round(writer.encode_seconds, 4), "documents_parquet_seconds": round(t_docs, 4),
            "rejected": rejected_info}


def _link(src: Path, dst: Path) -> None:
    """``dst`` becomes the same file as ``src`` (a hard link; a copy across file systems), atomically."""
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = temporary_path(dst)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def run_finalize(plan: Plan, unit: str) -> dict:
    out = plan.out
    rj.check_rejected(plan)  # before anything changes: a refused rerun leaves a finished directory as it was
    (out / stages.MANIFEST).unlink(missing_ok=True)  # a half-updated directory never looks complete
    tok_markers = [(u, plan.read_marker("tokenize", u)) for u in plan.units("tokenize")]
    shards = [(u, m) for u, m in tok_markers if m["shard"]]
    if not shards:
        raise rj.nothing_survived_error(plan, _link)
    sd = plan.stage_dir("tokenize")
    install_shards(sd, out, [f"shard_{u}" for u, _ in shards], _link)
    docs_dir = out / stages.DOCS_DIR
    docs_dir.mkdir(exist_ok=True)
    wanted_parts = {f"part-{u}.parquet" for u, _ in shards}
    for f in docs_dir.glob("*.parquet"):
        if f.name not in wanted_parts:
            f.unlink()
    for u, _ in shards:
        _link(sd / stages.DOCS_DIR / f"part-{u}.parquet", docs_dir / f"part-{u}.parquet")
    _link(plan.stage_dir("tokenizer") / stages.TOKENIZER, out / stages.TOKENIZER)
    rj.collect_rejected(plan, _link)
    for stale in (out / "work").rglob(".*.tmp"):  # left by killed units; every unit is done by now
        stale.unlink(missing_ok=True)
    write_manifest(out, build_manifest(plan))
    return {"shards": len(shards)}


def build_manifest(plan: Plan) -> dict:
    """``manifest.json``: inputs, configuration and its hash, counts per stage and rule, shards."""
    c = plan.config
    fps = c.shards.files_per_shard
    ex = [plan.read_marker("extract", u) for u in plan.units("extract")]
    read_stats: Counter = Counter()
    timing: Counter = Counter()  # update, not +: a count or step of 0 stays
    for m in ex:
        read_stats.update(m["stats"])
        timing.update(m.get("timing", {}))
    cluster = plan.read_marker("cluster", SINGLE) if plan.units("cluster") else dict.fromkeys(
        ("removed", "exact_duplicates", "near_duplicates", "clusters", "seconds"), 0)
    buckets = [plan.read_marker("buckets", u) for u in plan.units("buckets")]
    tok_info = plan.read_marker("tokenizer", SINGLE)
    tok = [(u, plan.read_marker("tokenize", u)) for u in plan.units("tokenize")]
    tok_path = plan.out / stages.TOKENIZER
    dropped = {k[5:]: v for k, v in sorted(read_stats.items()) if k.startswith("drop:") and v}
    skipped = {k: v for k, v in sorted(read_stats.items()) if k.startswith(("skip:", "corrupt:")) and v}
    n_docs = sum(m["documents"] for _, m in tok)
    n_tokens = sum(m["tokens"] for _, m in tok)
    docs_in = read_stats["docs_in"]
    kept = sum(m["kept"] for m in ex)

    def rate(n: float, s: float) -> float | None:
        return round(n / s, 1) if s > 0 else None

    ex_seconds = sum(m.get("cpu_seconds", m["seconds"]) for m in ex)
    tok_seconds = sum(m.get("cpu_seconds", m["seconds"]) for _, m in tok)
    enc_seconds = sum(m["encode_seconds"] for _, m in tok)
    doc_seconds = sum(m["documents_parquet_seconds"] for _, m in tok)
    dedup_seconds = sum(m["seconds"] for m in buckets) + float(cluster["seconds"])
    return {
        "format": "megadepth-shards",
        "format_version": 1,
        "producer": "megadepth prep run (Common Crawl pipeline)",
        "config_hash": plan.config_hash,
        "stage_hashes": plan.hashes,
        "config": c.model_dump(mode="json"),
        "inputs": [i.to_json() for i in plan.inputs],
        "unread_inputs": plan.unread,
        **tokenizer_fields(tok_path, load_tokenizer(tok_path), tok_info["trained"], tok_info.get("source"),
                           c.tokenizer.model_type if tok_info["trained"] else None,
                           sample_documents=tok_info.get("sample_documents")),
        "documents": n_docs,
        "tokens": n_tokens,
        "documents_parquet": f"{stages.DOCS_DIR}/part-*.parquet",
        "rejected": rj.summarize(c.rejected.keep_text, [*ex, *(m for _, m in tok)]),
        "stages": {
            "read": {
                "files": len(plan.inputs), "unread_files": plan.unread["count"], "records": read_stats["read:records"],
                "documents_out": docs_in, "skipped": skipped,
                "damaged_files": [m["input"] for m in ex if m.get("damaged")],
                "files_read_leniently": read_stats["read:fallback_files"], "non_utf8_pages": read_stats["read:non_utf8"],
            },
            "extract_and_filter": {
                "documents_in": docs_in, "documents_out": kept, "dropped": dropped,
                "seconds": round(ex_seconds, 3), "docs_per_s": rate(docs_in, ex_seconds),
                "seconds_by_step": {k: round(v, 3) for k, v in sorted(timing.items())},
            },
            "dedup": {
                "documents_in": kept, "documents_out": kept - cluster["removed"],
                "exact_duplicates": cluster["exact_duplicates"], "near_duplicates": cluster["near_duplicates"],
                "clusters": cluster["clusters"], "seconds": round(dedup_seconds, 3), "docs_per_s": rate(kept, dedup_seconds),
            },
            "tokenizer": {"trained": tok_info["trained"], "sample_documents": tok_info.get("sample_documents"),
                          "seconds": tok_info["seconds"]},
            "tokenize": {
                "documents": n_docs, "tokens": n_tokens, "eos_appended": True,
                "pii_masked": {"emails": read_stats["pii:emails"], "ipv4": read_stats["pii:ipv4"]},
                "seconds": round(tok_seconds, 3), "documents_parquet_seconds": round(doc_seconds, 3),
                "tokens_per_s": rate(n_tokens, tok_seconds - doc_seconds),
                "tokens_per_s_with_documents_parquet": rate(n_tokens, tok_seconds),
                "encode_tokens_per_s": rate(n_tokens, enc_seconds),
            },
        },
        "shards": [
            {"prefix": m["shard"], "documents": m["documents"], "tokens": m["tokens"],
             "parquet": f"{stages.DOCS_DIR}/part-{u}.parquet",
             "inputs": [x.path for x in plan.inputs[int(u) * fps:(int(u) + 1) * fps]]}
            for u, m in tok
            if m["shard"]
        ],
    }

