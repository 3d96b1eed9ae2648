"""What each unit of each stage does (see :mod:`data_prep.plan` for units, layout and markers).

extract    one input file -> ``docs/NNNNNN.parquet`` (id, url, date, text, language, language_score,
           source) + ``sig/NNNNNN.{keys,docs}.npy`` (per key row: sorted 64-bit band / exact keys and
           the row each belongs to) + ``rejected/NNNNNN.parquet`` (the pages dropped, see
           :mod:`data_prep.rejected`). Read -> select -> decode -> HTML to text -> language -> Gopher
           repetition -> Gopher quality -> C4 -> FineWeb -> PII masking -> dedup keys.
buckets    one (key row, key range) -> ``edges/UNIT.npy``: pairs of global document ids whose keys are
           equal (each later document linked to the first one with that key).
cluster    all edges -> union-find -> ``removed.npy``: sorted global ids of every document that is not
           the smallest id of its cluster. Exact-key edges are joined first so the two kinds of
           duplicate are counted apart (``duplicates.npy``: each one's kind and kept copy).
tokenizer  trains sentencepiece on an order-independent hash sample of the kept text (or copies a given
           model) -> ``tokenizer.model``.
tokenize   one group of input files -> encode + EOS -> ``shard_GGGGG.bin/.idx`` and
           ``documents/part-GGGGG.parquet`` with the same documents in the same order, and the
           duplicates it leaves out -> ``rejected/GGGGG.parquet``.
finalize   links shards, document parts, rejected parts and the tokenizer into OUT/, writes
           ``manifest.json`` last.

A document's global id is its row in its input file's extract output plus the number of documents
kept from all earlier input files; smaller ids win in deduplication, so the earliest copy in input
order survives, whatever the number of workers.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from data_prep import rejected as rj
from data_prep.plan import SINGLE, Plan
from megadepth.common.errors import DataError
from megadepth.common.io import atomic_write_array, atomic_write_bytes, sha256_file, temporary_path
from megadepth.data import IndexedDatasetWriter, best_dtype, bin_path, idx_path

__all__ = ["MANIFEST", "run_unit"]

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.model"
DOCS_DIR = "documents"
_DOC_COLUMNS = ("id", "url", "date", "text", "language", "language_score", "source")
_U64 = 1 << 64

#: Pages per batch of the extract stage (and the most text a batch holds, in characters): enough for
#: each step to run warm in the CPU caches, small enough to bound memory.
_BATCH_DOCS = 256
_BATCH_CHARS = 8 << 20

# Objects that are costly to build (LID model, extractor) are kept per process, per plan.
_CACHE: dict[tuple[str, str], Any] = {}


def _cached(plan: Plan, name: str, build):
    key = (plan.config_hash, name)
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def _maybe_die(stage: str, unit: str) -> None:
    """Test hook: ``MEGADEPTH_PREP_DIE=stage:unit`` kills this process mid-unit, like a node failure."""
    if os.environ.get("MEGADEPTH_PREP_DIE") == f"{stage}:{unit}":
        os._exit(137)


def _doc_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("url", pa.string()),
            ("date", pa.string()),
            ("text", pa.large_string()),
            ("language", pa.string()),
            ("language_score", pa.float32()),
            ("source", pa.string()),
        ]
    )


# ------------------------------------------------------------------------------------------ extract


class _Extractor:
    """Everything the extract stage needs, built once per process."""

    def __init__(self, plan: Plan) -> None:
        from data_prep.extract import Extractor
        from data_prep.filters import build_filters
        from data_prep.langid import LanguageIdentifier
        from data_prep.minhash import MinHasher

        c = plan.config
        self.urls = _url_filter(plan) if c.url_filter.enabled else None
        self.html = Extractor(c.extract)
        model = Path(c.language.model) if c.language.enabled and plan.language_model_sha256 else None
        if model is not None and model.is_file() and sha256_file(model) != plan.language_model_sha256:
            raise DataError(f"language.model {model} changed since the plan was made")
        self.lid = LanguageIdentifier(c.language) if c.language.enabled else None
        self.filters = build_filters(c)
        d = c.dedup
        self.minhash = MinHasher(d.ngram, d.bands, d.rows, d.seed) if d.minhash else None


def _url_filter(plan: Plan):
    from data_prep.urls import UrlFilter

    return UrlFilter(plan.config.url_filter, plan.url_lists_sha256)  # each list read once, its hash checked


def _extract(plan: Plan, unit: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_prep.extract import decode_html
    from data_prep.minhash import exact_key, normalize_words
    from data_prep.pii import mask_pii
    from data_prep.records import RawDoc, read_documents

    i = int(unit)
    inp = plan.inputs[i]
    c = plan.config
    tools = _cached(plan, "extract", lambda: _Extractor(plan))
    d = c.dedup
    n_rows = d.bands + 1
    stats: Counter = Counter()
    timing: Counter = Counter()
    sd = plan.stage_dir("extract")
    out = sd / "docs" / f"{unit}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    (sd / "sig").mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(out)
    schema = _doc_schema()
    cols: dict[str, list] = {k: [] for k in _DOC_COLUMNS}
    keys: list[np.ndarray] = []
    kept = kept_chars = 0
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    writer = pq.ParquetWriter(tmp, schema, compression="zstd")
    rejected = rj.RejectedWriter(sd / rj.REJECTED_DIR / f"{unit}.parquet", c.rejected.keep_text, c.shards.row_group_docs)
    extract_drops = rj.ExtractDrops()
    source = inp.path

    def flush() -> None:
        if cols["id"]:
            writer.write_table(pa.table(cols, schema=schema), row_group_size=c.shards.row_group_docs)
            for v in cols.values():
                v.clear()

    def keep(raw: RawDoc, text: str, lang: str, score: float) -> None:
        """Quality rules, PII masking and dedup keys of one page that passed language id."""
        nonlocal kept, kept_chars
        now = time.process_time()
        reason = None
        for name, f in tools.filters:
            new, why = f(text)
            if new is None:
                reason = f"drop:{name}:{why}"
                break
            text = new
        t2 = time.process_time()
        timing["filters"] += t2 - now
        now = t2
        if reason is not None:
            stats[reason] += 1
            rejected.add(raw.id, raw.url, source, reason[5:], getattr(why, "value", None),
                         getattr(why, "threshold", None), lang or None, score if lang else None, text)
            return
        if c.pii.enabled:
            text, n_email, n_ip = mask_pii(text, c.pii.emails, c.pii.ips)
            stats["pii:emails"] += n_email
            stats["pii:ipv4"] += n_ip
        words = normalize_words(text)
        row = np.zeros(n_rows, dtype=np.uint64)
        if tools.minhash is not None:
            row[: d.bands] = tools.minhash.keys(words)
        row[d.bands] = exact_key(words)
        keys.append(row)
        cols["id"].append(raw.id)
        cols["url"].append(raw.url)
        cols["date"].append(raw.date)
        cols["text"].append(text)
        cols["language"].append(lang)
        cols["language_score"].append(score)
        cols["source"].append(inp.path)
        kept += 1
        kept_chars += len(text)
        if len(cols["id"]) >= c.shards.row_group_docs:
            flush()
            _maybe_die("extract", unit)
        timing["dedup_keys"] += time.process_time() - now

    def run_batch(batch: list[tuple[RawDoc, str]]) -> None:
        """Language id of the whole batch, then the rest page by page, in input order."""
        if tools.lid is None:
            for raw, text in batch:
                keep(raw, text, "", 0.0)
            return
        now = time.process_time()
        langs = [tools.lid.identify(text) for _, text in batch]
        timing["language"] += time.process_time() - now
        for (raw, text), (lang, score) in zip(batch, langs, strict=True):
            if tools.lid.keep(lang, score):
                keep(raw, text, lang, score)
            else:
                stats["drop:language"] += 1
                # a value only when an allowed language scored too low; another language says so itself
                low = tools.lid.languages is None or lang in tools.lid.languages
                rejected.add(raw.id, raw.url, source, "language", score if low else None,
                             tools.lid.threshold if low else None, lang, score, text)

    try:
        # Pages go through the steps in batches (read + extract a batch, identify its languages, then
        # rules and keys page by page): each step's code and tables (fastText's model above all) stay
        # in the CPU caches across a batch instead of being evicted by resiliparse on every page, which
        # made language id ~1.7x slower per page in the pipeline than alone. Same pages, same order.
        batch: list[tuple[RawDoc, str]] = []
        batch_chars = 0
        clock = time.process_time()
        for raw in read_documents(inp, c.read, stats):
            now = time.process_time()
            timing["read"] += now - clock
            stats["docs_in"] += 1
            if tools.urls is not None:
                why = tools.urls.reason(raw.url)
                t2 = time.process_time()
                timing["url_filter"] += t2 - now
                now = t2
                if why is not None:
                    stats[f"drop:url:{why}"] += 1
                    rejected.add(raw.id, raw.url, source, f"url:{why}")
                    clock = now
                    continue
            if raw.html is not None:
                text = tools.html(decode_html(raw.html, raw.charset, stats), stats)
                raw.html = None  # the batch keeps the text, not the page
                t2 = time.process_time()
                timing["html"] += t2 - now
                now = t2
            else:
                text = raw.text.strip()
                raw.text = None
            if text is not None:
                batch.append((raw, text))
                batch_chars += len(text)
            else:
                rejected.add(raw.id, raw.url, source, extract_drops.rule(stats))
            if len(batch) >= _BATCH_DOCS or batch_chars >= _BATCH_CHARS:
                run_batch(batch)
                batch.clear()
                batch_chars = 0
                now = time.process_time()
            clock = now
        run_batch(batch)
        flush()
        writer.close()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        rejected.abort()
        raise
    mat = np.stack(keys, axis=1) if keys else np.zeros((n_rows, 0), dtype=np.uint64)
    order = np.argsort(mat, axis=1, kind="stable").astype(np.uint32)
    sorted_keys = np.take_along_axis(mat, order.astype(np.int64), axis=1)
    for name, arr in (("keys", sorted_keys), ("docs", order)):
        atomic_write_array(sd / "sig" / f"{unit}.{name}.npy", arr)
    rejected_info = rejected.commit()
    os.replace(tmp, out)
    stats["kept"] = kept
    return {
        "input": inp.path,
        "rejected": rejected_info,
        "damaged": any(k.startswith("corrupt:") and v for k, v in stats.items()),
        "kept": kept,
        "kept_chars": kept_chars,
        "stats": dict(sorted(stats.items())),
        "seconds": round(time.perf_counter() - t_start, 4),
        "cpu_seconds": round(time.process_time() - cpu_start, 4),
        "timing": {k: round(v, 4) for k, v in sorted(timing.items())},
    }


def _offsets(plan: Plan) -> np.ndarray:
    """Global id of each input file's first kept document (and the total at the end).

    Read from every extract marker once per process and plan: the later stages run only
    on a finished extract stage, and a unit calling this afresh would read all ~90,000 markers of a
    crawl per unit (quadratic in the number of files)."""

    def build() -> np.ndarray:
        kept = [plan.read_marker("extract", u)["kept"] for u in plan.units("extract")]
        return np.concatenate(([0], np.cumsum(kept, dtype=np.int64)))

    return _cached(plan, "offsets", build)


# ------------------------------------------------------------------------------------------ buckets


def _buckets(plan: Plan, unit: str) -> dict:
    t0 = time.perf_counter()
    k = int(unit[1:4])
    p = int(unit.split("-p")[1])
    parts = plan.config.dedup.partitions
    lo = np.uint64(p * _U64 // parts)
    hi = None if p == parts - 1 else np.uint64((p + 1) * _U64 // parts)
    offsets = _offsets(plan)
    sd = plan.stage_dir("extract") / "sig"
    all_keys, all_ids = [], []
    for i, u in enumerate(plan.units("extract")):
        if offsets[i + 1] == offsets[i]:
            continue
        keys = np.load(sd / f"{u}.keys.npy", mmap_mode="r")[k]
        docs = np.load(sd / f"{u}.docs.npy", mmap_mode="r")[k]
        a = int(np.searchsorted(keys, lo, side="left"))
        b = len(keys) if hi is None else int(np.searchsorted(keys, hi, side="left"))
        if b > a:
            all_keys.append(np.array(keys[a:b]))
            all_ids.append(docs[a:b].astype(np.int64) + offsets[i])
    edges = np.zeros((0, 2), dtype=np.int64)
    if all_keys:
        keys = np.concatenate(all_keys)
        ids = np.concatenate(all_ids)
        order = np.lexsort((ids, keys))
        keys, ids = keys[order], ids[order]
        same = keys[1:] == keys[:-1]
        if same.any():
            # each run of equal keys: link every member to the run's first (smallest id) member
            starts = np.concatenate(([True], ~same))
            run_first = ids[np.maximum.accumulate(np.where(starts, np.arange(len(ids)), 0))]
            member = ~starts
            edges = np.stack([run_first[member], ids[member]], axis=1)
    atomic_write_array(plan.stage_dir("buckets") / "edges" / f"{unit}.npy", edges)
    return {"edges": int(len(edges)), "seconds": round(time.perf_counter() - t0, 4)}


# ------------------------------------------------------------------------------------------ cluster


def _cluster(plan: Plan, unit: str) -> dict:
    from data_prep.minhash import union_find_roots

    t0 = time.perf_counter()
    bands = plan.config.dedup.bands
    exact, fuzzy = [], []
    for u in plan.units("buckets"):
        e = np.load(plan.stage_dir("buckets") / "edges" / f"{u}.npy")
        (exact if int(u[1:4]) == bands else fuzzy).append(e)
    ex = np.concatenate(exact) if exact else np.zeros((0, 2), dtype=np.int64)
    fz = np.concatenate(fuzzy) if fuzzy else np.zeros((0, 2), dtype=np.int64)
    nodes = np.unique(np.concatenate([ex.ravel(), fz.ravel()]))
    n = len(nodes)
    ex_c = np.searchsorted(nodes, ex)
    fz_c = np.searchsorted(nodes, fz)
    own = np.arange(n)
    roots_exact = union_find_roots(n, ex_c[:, 0], ex_c[:, 1])
    n_exact = int((roots_exact != own).sum())
    both = np.concatenate([ex_c, fz_c])
    roots = union_find_roots(n, both[:, 0], both[:, 1])
    removed = nodes[roots != own]
    clusters = int(len(np.unique(roots[roots != own])))
    out = plan.stage_dir("cluster") / "removed.npy"
    rj.save_duplicates(out.parent, nodes, own, roots_exact, roots)
    atomic_write_array(out, np.sort(removed).astype(np.int64))
    return {
        "exact_duplicates": n_exact,
        "near_duplicates": int(len(removed)) - n_exact,
        "removed": int(len(removed)),
        "clusters": clusters,
        "edges": {"exact": int(len(ex)), "minhash": int(len(fz))},
        "seconds": round(time.perf_counter() - t0, 4),
    }


def _removed(plan: Plan) -> np.ndarray:
    if not plan.units("cluster"):
        return np.zeros(0, dtype=np.int64)
    return np.load(plan.stage_dir("cluster") / "removed.npy", mmap_mode="r")


def _kept_rows(plan: Plan, i: int, offsets: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Rows of input ``i``'s extract output that survive deduplication (a boolean mask)."""
    n = int(offsets[i + 1] - offsets[i])
    mask = np.ones(n, dtype=bool)
    a, b = np.searchsorted(removed, [offsets[i], offsets[i + 1]])
    mask[np.asarray(removed[a:b]) - offsets[i]] = False
    return mask


# ---------------------------------------------------------------------------------------- tokenizer


def _tokenizer(plan: Plan, unit: str) -> dict:
    import pyarrow.parquet as pq
    import xxhash

    from data_prep.text_shards import train_tokenizer

    t0 = time.perf_counter()
    c = plan.config
    out_dir = plan.stage_dir("tokenizer")
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / TOKENIZER
    if c.tokenizer.model:
        src = Path(c.tokenizer.model)
        if sha256_file(src) != plan.tokenizer_sha256:
            raise DataError(f"tokenizer {src} changed since the plan was made")
        atomic_write_bytes(final, src.read_bytes())
        _check_tokenizer(final)
        return {"trained": False, "source": str(src), "seconds": round(time.perf_counter() - t0, 4)}
    offsets = _offsets(plan)
    removed = _removed(plan)
    extracted = [plan.read_marker("extract", u) for u in plan.units("extract")]
    if not any(m["kept"] for m in extracted):
        raise rj.nothing_survived_error(plan, _link)
    total_chars = sum(m["kept_chars"] for m in extracted)
    rate = min(1.0, c.tokenizer.sample_chars / max(total_chars, 1))
    cut = int(rate * (_U64 - 1))
    sampled = Counter()

    def sample():
        for i, u in enumerate(plan.units("extract")):
            if offsets[i + 1] == offsets[i]:
                continue
            mask = _kept_rows(plan, i, offsets, removed)
            pf = pq.ParquetFile(plan.stage_dir("extract") / "docs" / f"{u}.parquet")
            row = 0
            for batch in pf.iter_batches(columns=["text"], batch_size=c.shards.row_group_docs):
                for text in batch.column(0).to_pylist():
                    if mask[row] and xxhash.xxh3_64_intdigest(f"{u}:{row}".encode()) <= cut:
                        sampled["documents"] += 1
                        sampled["chars"] += len(text)
                        yield text
                    row += 1

    train_tokenizer(
        sample(), out_dir / "tokenizer", c.tokenizer.vocab_size, c.tokenizer.model_type, c.tokenizer.seed
    )
    _check_tokenizer(final)
    return {
        "trained": True,
        "sample_documents": sampled["documents"],
        "sample_chars": sampled["chars"],
        "seconds": round(time.perf_counter() - t0, 4),
    }


def _check_tokenizer(path: Path):
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_proto=path.read_bytes())
    except (RuntimeError, OSError, TypeError) as e:
        raise DataError(f"{path}: not a readable sentencepiece model ({e})") from None
    if sp.eos_id() < 0:
        raise DataError(f"{path}: the tokenizer has no EOS piece (documents must end in EOS)")
    return sp


# ----------------------------------------------------------------------------------------- tokenize


def _tokenize(plan: Plan, unit: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    c = plan.config
    g = int(unit)
    sp = _cached(plan, "sp", lambda: _check_tokenizer(plan.stage_dir("tokenizer") / TOKENIZER))
    eos = int(sp.eos_id())
    dtype = best_dtype(int(sp.get_piece_size()))
    offsets = _offsets(plan)
    removed = _removed(plan)
    sd = plan.stage_dir("tokenize")
    (sd / DOCS_DIR).mkdir(parents=True, exist_ok=True)
    prefix = sd / f"shard_{unit}"
    parquet = sd / DOCS_DIR / f"part-{unit}.parquet"
    tmp = temporary_path(parquet)
    fps = c.shards.files_per_shard
    files = range(g * fps, min((g + 1) * fps, len(plan.inputs)))
    schema = _doc_schema().append(pa.field("tokens", pa.int32()))
    writer = IndexedDatasetWriter(prefix, dtype)
    pqw = pq.ParquetWriter(tmp, schema, compression="zstd")
    rejected = rj.RejectedWriter(sd / rj.REJECTED_DIR / f"{unit}.parquet", c.rejected.keep_text, c.shards.row_group_docs)
    details = rj.load_duplicates(plan.stage_dir("cluster")) if len(removed) else None
    sources = [x.path for x in plan.inputs]
    n_docs = n_tokens = 0
    t_encode = t_docs = 0.0
    try:
        for i in files:
            if offsets[i + 1] == offsets[i]:
                continue
            mask = _kept_rows(plan, i, offsets, removed)
            pf = pq.ParquetFile(plan.stage_dir("extract") / "docs" / f"{i:06d}.parquet")
            row = 0
            for batch in pf.iter_batches(batch_size=c.shards.row_group_docs):
                m = mask[row : row + batch.num_rows]
                if not m.all():
                    gone = ~m
                    gids = offsets[i] + row + np.flatnonzero(gone)
                    rejected.add_table(rj.dedup_rows(batch.filter(pa.array(gone)), gids, removed, details, offsets,
                                                  sources, c.rejected.keep_text))
                    batch = batch.filter(pa.array(m))
                row += len(m)
                if batch.num_rows == 0:
                    continue
                texts = batch.column(batch.schema.get_field_index("text")).to_pylist()
                te = time.process_time()
                encoded = sp.encode(texts, num_threads=c.tokenizer.num_threads)
                t_encode += time.process_time() - te
                lengths = np.empty(len(encoded), dtype=np.int64)
                for j, ids in enumerate(encoded):
                    ids.append(eos)
                    lengths[j] = len(ids)
                total = int(lengths.sum())
                flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype, count=total)
                ends = np.cumsum(lengths)
                start = 0
                for end in ends.tolist():
                    writer.add_document(flat[start:end])
                    start = end
                n_docs += len(encoded)
                n_tokens += total
                td = time.process_time()
                pqw.write_batch(batch.append_column("tokens", pa.array(lengths.astype(np.int32))))
                t_docs += time.process_time() - td
                _maybe_die("tokenize", unit)
        td = time.process_time()
        pqw.close()
        t_docs += time.process_time() - td
        rejected_info = rejected.commit()
        if n_docs:
            writer.finalize()
            os.replace(tmp, parquet)
        else:
            writer.abort()
            tmp.unlink(missing_ok=True)
    except BaseException:
        writer.abort()
        pqw.close()
        tmp.unlink(missing_ok=True)
        rejected.abort()
        raise
    seconds = time.perf_counter() - t0
    return {
        "shard": prefix.name if n_docs else None,
        "documents": n_docs,
        "tokens": n_tokens,
        "seconds": round(seconds, 4),
        "cpu_seconds": round(time.process_time() - cpu0, 4),
        "encode_seconds": round(t_encode, 4),
        "documents_parquet_seconds": round(t_docs, 4),
        "rejected": rejected_info,
    }


# ----------------------------------------------------------------------------------------- finalize


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


def _sum_stats(markers: list[dict]) -> Counter:
    total: Counter = Counter()
    for m in markers:
        total.update(m["stats"])
    return total


def _finalize(plan: Plan, unit: str) -> dict:
    out = plan.out
    rj.check_rejected(plan)  # before anything changes: a refused rerun leaves a finished directory as it was
    (out / MANIFEST).unlink(missing_ok=True)  # a half-updated directory never looks complete
    tok_markers = [(u, plan.read_marker("tokenize", u)) for u in plan.units("tokenize")]
    shards = [(u, m) for u, m in tok_markers if m["shard"]]
    if not shards:
        raise rj.nothing_survived_error(plan, _link)
    wanted_shards = {f"shard_{u}" for u, _ in shards}
    for f in out.glob("shard_*"):
        if f.is_file() and f.name.rsplit(".", 1)[0] not in wanted_shards:
            f.unlink()
    docs_dir = out / DOCS_DIR
    docs_dir.mkdir(exist_ok=True)
    wanted_parts = {f"part-{u}.parquet" for u, _ in shards}
    for f in docs_dir.glob("*.parquet"):
        if f.name not in wanted_parts:
            f.unlink()
    sd = plan.stage_dir("tokenize")
    for u, _ in shards:
        _link(bin_path(sd / f"shard_{u}"), bin_path(out / f"shard_{u}"))
        _link(idx_path(sd / f"shard_{u}"), idx_path(out / f"shard_{u}"))
        _link(sd / DOCS_DIR / f"part-{u}.parquet", docs_dir / f"part-{u}.parquet")
    _link(plan.stage_dir("tokenizer") / TOKENIZER, out / TOKENIZER)
    rj.collect_rejected(plan, _link)
    for stale in (out / "work").rglob(".*.tmp"):  # left by killed units; every unit is done by now
        stale.unlink(missing_ok=True)
    manifest = build_manifest(plan)
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return {"shards": len(shards)}


def build_manifest(plan: Plan) -> dict:
    """``manifest.json``: inputs, configuration and its hash, counts per stage and rule, shards."""
    import sentencepiece as spm

    c = plan.config
    ex = [plan.read_marker("extract", u) for u in plan.units("extract")]
    read_stats = _sum_stats(ex)
    cluster = plan.read_marker("cluster", SINGLE) if plan.units("cluster") else None
    buckets = [plan.read_marker("buckets", u) for u in plan.units("buckets")]
    tok_info = plan.read_marker("tokenizer", SINGLE)
    tok = [(u, plan.read_marker("tokenize", u)) for u in plan.units("tokenize")]
    tok_path = plan.out / TOKENIZER
    sp = spm.SentencePieceProcessor(model_proto=tok_path.read_bytes())
    vocab = int(sp.get_piece_size())
    dropped = {k[5:]: v for k, v in sorted(read_stats.items()) if k.startswith("drop:") and v}
    skipped = {k: v for k, v in sorted(read_stats.items()) if k.startswith(("skip:", "corrupt:")) and v}
    n_docs = sum(m["documents"] for _, m in tok)
    n_tokens = sum(m["tokens"] for _, m in tok)
    docs_in = read_stats["docs_in"]
    kept = sum(m["kept"] for m in ex)

    def rate(n: float, s: float) -> float | None:
        return round(n / s, 1) if s > 0 else None

    ex_seconds = sum(m.get("cpu_seconds", m["seconds"]) for m in ex)
    timing: Counter = Counter()
    for m in ex:
        timing.update(m.get("timing", {}))
    tok_seconds = sum(m.get("cpu_seconds", m["seconds"]) for _, m in tok)
    enc_seconds = sum(m["encode_seconds"] for _, m in tok)
    doc_seconds = sum(m["documents_parquet_seconds"] for _, m in tok)
    dedup_seconds = sum(m["seconds"] for m in buckets) + (cluster["seconds"] if cluster else 0.0)
    return {
        "format": "megadepth-shards",
        "format_version": 1,
        "producer": "megadepth prep run (Common Crawl pipeline)",
        "config_hash": plan.config_hash,
        "stage_hashes": plan.hashes,
        "config": c.model_dump(mode="json"),
        "inputs": [i.to_json() for i in plan.inputs],
        "unread_inputs": plan.unread,
        "tokenizer": {
            "file": TOKENIZER,
            "sha256": sha256_file(tok_path),
            "trained": tok_info["trained"],
            "source": tok_info.get("source"),
            "model_type": c.tokenizer.model_type if tok_info["trained"] else None,
            "vocab_size": vocab,
            "unk_id": int(sp.unk_id()),
            "bos_id": int(sp.bos_id()),
            "eos_id": int(sp.eos_id()),
            "pad_id": int(sp.pad_id()),
            "sample_documents": tok_info.get("sample_documents"),
        },
        "vocab_size": vocab,
        "eos_id": int(sp.eos_id()),
        "dtype": best_dtype(vocab).name,
        "documents": n_docs,
        "tokens": n_tokens,
        "documents_parquet": f"{DOCS_DIR}/part-*.parquet",
        "rejected": rj.summarize(c.rejected.keep_text, [*ex, *(m for _, m in tok)]),
        "stages": {
            "read": {
                "files": len(plan.inputs),
                "unread_files": plan.unread["count"],
                "records": read_stats["read:records"],
                "documents_out": docs_in,
                "skipped": skipped,
                "damaged_files": [m["input"] for m in ex if m.get("damaged")],
                "files_read_leniently": read_stats["read:fallback_files"],
                "non_utf8_pages": read_stats["read:non_utf8"],
            },
            "extract_and_filter": {
                "documents_in": docs_in,
                "documents_out": kept,
                "dropped": dropped,
                "seconds": round(ex_seconds, 3),
                "docs_per_s": rate(docs_in, ex_seconds),
                "seconds_by_step": {k: round(v, 3) for k, v in sorted(timing.items())},
            },
            "dedup": {
                "documents_in": kept,
                "documents_out": kept - (cluster["removed"] if cluster else 0),
                "exact_duplicates": cluster["exact_duplicates"] if cluster else 0,
                "near_duplicates": cluster["near_duplicates"] if cluster else 0,
                "clusters": cluster["clusters"] if cluster else 0,
                "seconds": round(dedup_seconds, 3),
                "docs_per_s": rate(kept, dedup_seconds),
            },
            "tokenizer": {
                "trained": tok_info["trained"],
                "sample_documents": tok_info.get("sample_documents"),
                "seconds": tok_info["seconds"],
            },
            "tokenize": {
                "documents": n_docs,
                "tokens": n_tokens,
                "eos_appended": True,
                "pii_masked": {"emails": read_stats["pii:emails"], "ipv4": read_stats["pii:ipv4"]},
                "seconds": round(tok_seconds, 3),
                "documents_parquet_seconds": round(doc_seconds, 3),
                "tokens_per_s": rate(n_tokens, tok_seconds - doc_seconds),
                "tokens_per_s_with_documents_parquet": rate(n_tokens, tok_seconds),
                "encode_tokens_per_s": rate(n_tokens, enc_seconds),
            },
        },
        "shards": [
            {
                "prefix": m["shard"],
                "documents": m["documents"],
                "tokens": m["tokens"],
                "parquet": f"{DOCS_DIR}/part-{u}.parquet",
                "inputs": [
                    plan.inputs[i].path
                    for i in range(
                        int(u) * c.shards.files_per_shard,
                        min((int(u) + 1) * c.shards.files_per_shard, len(plan.inputs)),
                    )
                ],
            }
            for u, m in tok
            if m["shard"]
        ],
    }


_RUN = {
    "extract": _extract,
    "buckets": _buckets,
    "cluster": _cluster,
    "tokenizer": _tokenizer,
    "tokenize": _tokenize,
    "finalize": _finalize,
}


def run_unit(plan: Plan, stage: str, unit: str) -> dict:
    """Run one unit unless its done marker exists; write the marker last. Returns the marker's data."""
    if plan.is_done(stage, unit):
        return plan.read_marker(stage, unit)
    data = _RUN[stage](plan, unit)
    plan.write_marker(stage, unit, data)
    return data
