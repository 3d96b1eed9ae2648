"""The extract stage's unit (what it writes: :mod:`data_prep.stages`): one input file through the steps
read -> url_filter -> html -> language -> filters -> dedup_keys, each timed under its name (CPU seconds,
the marker's ``timing``). Pages go in batches, so that each step's tables (fastText's model above all)
stay in the CPU caches across a batch. Same pages, same order.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_prep import rejected as rj
from data_prep import stages
from data_prep.inputs import RawDoc
from data_prep.plan import Plan
from megadepth.common.errors import DataError
from megadepth.common.io import atomic_write_array, sha256_file, temporary_path

__all__ = ["StepClock", "run_extract"]

#: Pages per batch (and the most text a batch holds, in characters).
_BATCH_DOCS = 256
_BATCH_CHARS = 8 << 20


class StepClock:
    """CPU seconds per named step: ``lap(step)`` charges the time since the previous lap to ``step``."""

    __slots__ = ("_t", "seconds")

    def __init__(self) -> None:
        self.seconds: Counter = Counter()
        self._t = time.process_time()

    def lap(self, step: str) -> None:
        now = time.process_time()
        self.seconds[step] += now - self._t
        self._t = now


class _Tools:
    """What the extract stage needs that is costly to build, built once per process and plan."""

    def __init__(self, plan: Plan) -> None:
        from data_prep.extract import Extractor
        from data_prep.filters import build_filters
        from data_prep.langid import LanguageIdentifier
        from data_prep.minhash import MinHasher
        from data_prep.urls import UrlFilter

        c = plan.config
        self.urls = UrlFilter(c.url_filter, plan.url_lists_sha256) if c.url_filter.enabled else None
        self.html = Extractor(c.extract)
        model = Path(c.language.model) if c.language.enabled and plan.language_model_sha256 else None
        if model is not None and model.is_file() and sha256_file(model) != plan.language_model_sha256:
            raise DataError(f"language.model {model} changed since the plan was made")
        self.lid = LanguageIdentifier(c.language) if c.language.enabled else None
        self.filters = build_filters(c)
        d = c.dedup
        self.minhash = MinHasher(d.ngram, d.bands, d.rows, d.seed) if d.minhash else None


class _ExtractUnit:
    """One input file through the steps; :meth:`commit` writes what it kept, :meth:`abort` removes it."""

    def __init__(self, plan: Plan, unit: str) -> None:
        import pyarrow.parquet as pq

        self.unit = unit
        self.inp = plan.inputs[int(unit)]
        self.c = c = plan.config
        self.tools = stages.cached(plan, "extract", lambda: _Tools(plan))
        self.stats: Counter = Counter()
        self.sd = sd = plan.stage_dir("extract")
        self.out = sd / "docs" / f"{unit}.parquet"
        self.out.parent.mkdir(parents=True, exist_ok=True)
        (sd / "sig").mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_path(self.out)
        self.schema = stages.doc_schema()
        self.cols: dict[str, list] = {k: [] for k in stages.DOC_COLUMNS}
        self.keys: list[np.ndarray] = []
        self.kept = self.kept_chars = 0
        self.t_start = time.perf_counter()
        self.cpu_start = time.process_time()
        self.clock = StepClock()
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self.rejected = rj.RejectedWriter(sd / rj.REJECTED_DIR / f"{unit}.parquet", c.rejected.keep_text,
                                          c.shards.row_group_docs)
        self.extract_drops = rj.ExtractDrops()

    def batches(self) -> Iterator[list[tuple[RawDoc, str]]]:
        """read, url_filter, html: the pages with text, in batches (the last one possibly empty)."""
        from data_prep.records import read_documents

        batch: list[tuple[RawDoc, str]] = []
        chars = 0
        for raw in read_documents(self.inp, self.c.read, self.stats):
            self.clock.lap("read")
            self.stats["docs_in"] += 1
            text = self.page_text(raw)
            if text is None:
                continue
            batch.append((raw, text))
            chars += len(text)
            if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
                yield batch
                batch, chars = [], 0
        yield batch

    def page_text(self, raw: RawDoc) -> str | None:
        """url_filter and html: the text of one page, or None when it is dropped (and recorded)."""
        from data_prep.extract import decode_html

        tools, stats = self.tools, self.stats
        if tools.urls is not None:
            why = tools.urls.reason(raw.url)
            if why is not None:
                stats[f"drop:url:{why}"] += 1
                self.rejected.add(raw.id, raw.url, self.inp.path, f"url:{why}")
            self.clock.lap("url_filter")
            if why is not None:
                return None
        if raw.html is None:
            text = raw.text.strip()
            raw.text = None
            return text
        text = tools.html(decode_html(raw.html, raw.charset, stats), stats)
        raw.html = None  # the batch keeps the text, not the page
        if text is None:
            self.rejected.add(raw.id, raw.url, self.inp.path, self.extract_drops.rule(stats))
        self.clock.lap("html")
        return text

    def run_batch(self, batch: list[tuple[RawDoc, str]]) -> None:
        """Language id of the whole batch, then the rest of the steps page by page, in input order."""
        lid = self.tools.lid
        if lid is None:
            for raw, text in batch:
                self.filters(raw, text, "", 0.0)
            return
        langs = [lid.identify(text) for _, text in batch]
        self.clock.lap("language")
        for (raw, text), (lang, score) in zip(batch, langs, strict=True):
            if lid.keep(lang, score):
                self.filters(raw, text, lang, score)
            else:
                self.reject_language(raw, text, lang, score)

    def reject_language(self, raw: RawDoc, text: str, lang: str, score: float) -> None:
        lid = self.tools.lid
        self.stats["drop:language"] += 1
        # a value only when an allowed language scored too low; another language says so itself
        low = lid.languages is None or lang in lid.languages
        self.rejected.add(raw.id, raw.url, self.inp.path, "language", score if low else None,
                          lid.threshold if low else None, lang, score, text)
        self.clock.lap("language")

    def filters(self, raw: RawDoc, text: str, lang: str, score: float) -> None:
        """The quality rules of one page that passed language id; the page goes on to its keys or is
        rejected with the first rule it fails."""
        for name, rule in self.tools.filters:
            new, why = rule(text)
            if new is None:
                self.stats[f"drop:{name}:{why}"] += 1
                self.rejected.add(raw.id, raw.url, self.inp.path, f"{name}:{why}", getattr(why, "value", None),
                                  getattr(why, "threshold", None), lang or None, score if lang else None, text)
                self.clock.lap("filters")
                return
            text = new
        self.clock.lap("filters")
        self.dedup_keys(raw, text, lang, score)
        self.clock.lap("dedup_keys")

    def dedup_keys(self, raw: RawDoc, text: str, lang: str, score: float) -> None:
        """PII masking, the page's dedup keys (MinHash bands and the exact key) and its row."""
        from data_prep.minhash import exact_key, normalize_words
        from data_prep.pii import mask_pii

        c, d = self.c, self.c.dedup
        if c.pii.enabled:
            text, n_email, n_ip = mask_pii(text, c.pii.emails, c.pii.ips)
            self.stats["pii:emails"] += n_email
            self.stats["pii:ipv4"] += n_ip
        words = normalize_words(text)
        row = np.zeros(d.bands + 1, dtype=np.uint64)
        if self.tools.minhash is not None:
            row[: d.bands] = self.tools.minhash.keys(words)
        row[d.bands] = exact_key(words)
        self.keys.append(row)
        for name, value in zip(stages.DOC_COLUMNS, (raw.id, raw.url, raw.date, text, lang, score, self.inp.path),
                               strict=True):
            self.cols[name].append(value)
        self.kept += 1
        self.kept_chars += len(text)
        if len(self.cols["id"]) >= c.shards.row_group_docs:
            self.flush()
            stages._maybe_die("extract", self.unit)

    def flush(self) -> None:
        import pyarrow as pa

        if self.cols["id"]:
            self.writer.write_table(pa.table(self.cols, schema=self.schema), row_group_size=self.c.shards.row_group_docs)
            for v in self.cols.values():
                v.clear()

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)
        self.rejected.abort()

    def commit(self) -> dict:
        """The key matrix sorted per row (``sig/``), the rejected pages, the documents; the marker's data."""
        mat = np.stack(self.keys, axis=1) if self.keys else np.zeros((self.c.dedup.bands + 1, 0), dtype=np.uint64)
        order = np.argsort(mat, axis=1, kind="stable").astype(np.uint32)
        sorted_keys = np.take_along_axis(mat, order.astype(np.int64), axis=1)
        for name, arr in (("keys", sorted_keys), ("docs", order)):
            atomic_write_array(self.sd / "sig" / f"{self.unit}.{name}.npy", arr)
        rejected_info = self.rejected.commit()
        os.replace(self.tmp, self.out)
        stats = self.stats
        stats["kept"] = self.kept
        return {"input": self.inp.path, "rejected": rejected_info,
                "damaged": any(k.startswith("corrupt:") and v for k, v in stats.items()),
                "kept": self.kept, "kept_chars": self.kept_chars, "stats": dict(sorted(stats.items())),
                "seconds": round(time.perf_counter() - self.t_start, 4),
                "cpu_seconds": round(time.process_time() - self.cpu_start, 4),
                "timing": {k: round(v, 4) for k, v in sorted(self.clock.seconds.items())}}


def run_extract(plan: Plan, unit: str) -> dict:
    """One unit of the extract stage (one input file); returns its marker's data."""
    work = _ExtractUnit(plan, unit)
    try:
        for batch in work.batches():
            work.run_batch(batch)
        work.flush()
        work.writer.close()
    except BaseException:
        work.abort()
        raise
    return work.commit()
