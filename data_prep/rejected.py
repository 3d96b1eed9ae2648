"""Every dropped document accounted for: ``OUT/rejected/*.parquet``, one row per document the pipeline
dropped, with the first rule that dropped it and by how much.

Two kinds of part, one schema (so ``pandas.read_parquet("OUT/rejected")`` reads the folder):

``extract-NNNNNN.parquet``  one per input file, written by its extract unit: pages dropped by the URL
                            filter, the extractor, language id or a quality rule.
``dedup-GGGGG.parquet``     one per shard group, written by its tokenize unit: the duplicates removed,
                            with where the copy that was kept is.

Each part is renamed into place before its unit's done marker; finalize links the parts into
``OUT/rejected/``. Records that are not documents and the responses the reader skips before a document
exists (non-HTML, HTTP errors, oversized payloads: ``stages.read.skipped`` in the manifest) have no row.
The text is written only with ``rejected.keep_text``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from megadepth.common.errors import DataError
from megadepth.common.io import atomic_write_array, temporary_path

__all__ = ["REJECTED_DIR", "ExtractDrops", "RejectedWriter", "check_rejected", "collect_rejected",
           "dedup_rows", "load_duplicates", "nothing_survived_error", "rejected_schema", "save_duplicates",
           "summarize"]

REJECTED_DIR = "rejected"
#: Rows per Parquet row group without the text: ~100 bytes a row, so a few MB of memory at most.
_ROWS_NO_TEXT = 32_768
#: At most this many documents are named one by one when nothing survives.
_NAMED = 10
_DUPLICATES = "duplicates.npy"
#: What the cluster stage's ``duplicates.npy`` holds in its first column.
_KIND = {1: "dedup:exact", 2: "dedup:minhash"}


def rejected_schema(keep_text: bool):
    """The columns of every rejected part: ``value``/``threshold`` are null for a rule without a number,
    ``language``/``language_score`` where language id had not run, ``duplicate_of_*`` but on duplicates."""
    import pyarrow as pa

    names = ["id", "url", "source", "rule", "value", "threshold", "language", "language_score",
             "duplicate_of_source", "duplicate_of_row", *(["text"] if keep_text else [])]
    types = {"value": pa.float64(), "threshold": pa.float64(), "language_score": pa.float32(),
             "duplicate_of_row": pa.int64(), "text": pa.large_string()}
    return pa.schema([(name, types.get(name, pa.string())) for name in names])


class RejectedWriter:
    """The rejected rows of one unit, written to ``path`` through a temporary file.

    ``add`` takes one row (the extract stage, page by page), ``add_table`` a block of rows built with
    pyarrow (the tokenize stage's duplicates). ``commit`` renames the file into place, ``abort`` removes
    it. Counts and the first example of each rule (input order) go into the unit's marker for the report.
    """

    def __init__(self, path: Path, keep_text: bool, row_group_docs: int) -> None:
        self.path = path
        self.tmp = temporary_path(path)
        self.keep_text = keep_text
        self.schema = rejected_schema(keep_text)
        self.flush_rows = row_group_docs if keep_text else max(row_group_docs, _ROWS_NO_TEXT)
        self.cols: dict[str, list] = {f.name: [] for f in self.schema}
        self.pieces: list[Any] = []
        self.pending = 0
        self.rows = 0
        self.counts: Counter = Counter()
        self.examples: dict[str, str] = {}
        self._writer = None

    def add(
        self,
        id: str,
        url: str | None,
        source: str,
        rule: str,
        value: float | None = None,
        threshold: float | None = None,
        language: str | None = None,
        language_score: float | None = None,
        text: str | None = None,
    ) -> None:
        row = (id, url, source, rule, value, threshold, language, language_score, None, None, text)
        for col, v in zip(self.cols.values(), row, strict=False):  # "text" last, a column only with keep_text
            col.append(v)
        self.counts[rule] += 1
        if rule not in self.examples:
            self.examples[rule] = url or id
        self.pending += 1
        if self.pending >= self.flush_rows:
            self.flush()

    def add_table(self, table) -> None:
        """Rows already in this schema's columns (in any order of columns)."""
        if table.num_rows == 0:
            return
        table = table.select(self.schema.names).cast(self.schema)
        rules = table.column("rule").to_pylist()
        self.counts.update(rules)
        for rule, url, id_ in zip(rules, table.column("url").to_pylist(), table.column("id").to_pylist(),
                                  strict=True):
            if rule not in self.examples:
                self.examples[rule] = url or id_
        self.pieces.append(table)
        self.pending += table.num_rows
        if self.pending >= self.flush_rows:
            self.flush()

    def _open(self):
        """The Parquet writer, made on first use."""
        import pyarrow.parquet as pq

        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        return self._writer

    def flush(self) -> None:
        import pyarrow as pa

        if self.cols["id"]:
            self.pieces.append(pa.table(self.cols, schema=self.schema))
            for v in self.cols.values():
                v.clear()
        if not self.pieces:
            return
        table = pa.concat_tables(self.pieces) if len(self.pieces) > 1 else self.pieces[0]
        self.pieces.clear()
        self.pending = 0
        self._open().write_table(table)
        self.rows += table.num_rows

    def commit(self) -> dict:
        """Write the rest, rename into place; returns what the unit's marker records."""
        self.flush()
        self._open().close()  # nothing dropped: an empty part still, so OUT/rejected/ always opens as a dataset
        os.replace(self.tmp, self.path)
        return {"rows": self.rows, "text": self.keep_text, "counts": dict(sorted(self.counts.items())),
                "examples": dict(sorted(self.examples.items()))}

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.tmp.unlink(missing_ok=True)


class ExtractDrops:
    """Which ``drop:extract_*`` counter in the shared ``stats`` the extractor just raised, for a page it
    returned None for: the one that moved since the last call."""

    KEYS = ("drop:extract_empty", "drop:extract_timeout", "drop:extract_error")

    def __init__(self) -> None:
        self.seen = dict.fromkeys(self.KEYS, 0)

    def rule(self, stats: Mapping[str, int]) -> str:
        for k in self.KEYS:
            n = stats.get(k, 0)
            if n != self.seen[k]:
                self.seen[k] = n
                return k[len("drop:"):]
        return "extract_empty"


def save_duplicates(folder: Path, nodes: np.ndarray, own: np.ndarray, roots_exact: np.ndarray,
                    roots: np.ndarray) -> None:
    """Next to the cluster stage's ``removed.npy``: per removed document (same order), its kind (1 exact:
    an earlier exact copy exists; 2 MinHash) and the global id of the copy that was kept (its cluster's
    smallest id). ``nodes`` is sorted, so the rows follow ``removed.npy``'s sorted ids."""
    gone = roots != own
    kind = np.where(roots_exact[gone] != own[gone], 1, 2).astype(np.int64)
    out = np.stack([kind, nodes[roots[gone]].astype(np.int64)], axis=1) if gone.any() \
        else np.zeros((0, 2), dtype=np.int64)
    atomic_write_array(folder / _DUPLICATES, out)


def load_duplicates(folder: Path) -> np.ndarray | None:
    """``duplicates.npy`` of a cluster stage; None for one written before it existed."""
    p = folder / _DUPLICATES
    return np.load(p, mmap_mode="r") if p.is_file() else None


def dedup_rows(batch, gids: np.ndarray, removed: np.ndarray, details: np.ndarray | None, offsets: np.ndarray,
               sources: list[str], keep_text: bool):
    """The rejected rows of the removed documents in ``batch`` (extract docs cut to the removed rows),
    whose global ids are ``gids``. ``duplicate_of_source`` is the input file of the kept copy and
    ``duplicate_of_row`` its row among that file's documents in ``documents/*.parquet``: found from the
    global ids alone, no other file is read."""
    import pyarrow as pa

    n = len(gids)
    if details is None:  # a cluster stage from before duplicates.npy: kind and kept copy unknown
        rule = pa.array(["dedup"] * n, pa.string())
        dup_source = pa.nulls(n, pa.string())
        dup_row = pa.nulls(n, pa.int64())
    else:
        at = np.searchsorted(removed, gids)
        kind, kept = details[at, 0], details[at, 1]
        rule = pa.array([_KIND[int(k)] for k in kind], pa.string())
        file = np.searchsorted(offsets, kept, side="right") - 1
        # the kept copy's row among its file's extract rows, less the removed rows before it there
        before = np.searchsorted(removed, kept) - np.searchsorted(removed, offsets[file])
        dup_row = pa.array(kept - offsets[file] - before, pa.int64())
        dup_source = pa.array([sources[int(f)] for f in file], pa.string())
    language = batch.column("language").to_pylist()
    cols = {
        "id": batch.column("id"),
        "url": batch.column("url"),
        "source": batch.column("source"),
        "rule": rule,
        "value": pa.nulls(n, pa.float64()),
        "threshold": pa.nulls(n, pa.float64()),
        # language id switched off leaves "" / 0.0 in the documents; here that is "did not run"
        "language": pa.array([x or None for x in language], pa.string()),
        "language_score": pa.array([s if x else None for x, s in zip(language, batch.column("language_score")
                                                                      .to_pylist(), strict=True)], pa.float32()),
        "duplicate_of_source": dup_source,
        "duplicate_of_row": dup_row,
    }
    if keep_text:
        cols["text"] = batch.column("text")
    return pa.table(cols)


def _parts(plan) -> list[tuple[Path, str]]:
    """(file under work/, its name in OUT/rejected/) of every finished unit's part, in input order."""
    out = []
    for stage, name in (("extract", "extract"), ("tokenize", "dedup")):
        folder = plan.stage_dir(stage) / REJECTED_DIR
        for u in plan.units(stage):
            if plan.is_done(stage, u) and (folder / f"{u}.parquet").is_file():
                out.append((folder / f"{u}.parquet", f"{name}-{u}.parquet"))
    return out


def check_rejected(plan) -> None:
    """Before finalize links them: every extract and tokenize unit wrote its rejected part as this
    configuration asks (with or without text), so that no rows or text are silently missing."""
    want = plan.config.rejected.keep_text
    for stage in ("extract", "tokenize"):
        for u in plan.units(stage):
            r = plan.read_marker(stage, u).get("rejected")
            if r is None or r["text"] != want:
                what = "no rejected documents" if r is None else f"rejected.keep_text={str(r['text']).lower()}"
                raise DataError(
                    f"{plan.marker(stage, u)}: this unit was done with {what}, the run asks for "
                    f"rejected.keep_text={str(want).lower()}; prepare into a new --out (or delete "
                    f"{plan.out / 'work'}) to redo it"
                )


def collect_rejected(plan, link) -> list[str]:
    """Link every finished unit's part into ``OUT/rejected/`` (parts of other configurations removed);
    returns the names. ``link(src, dst)`` is finalize's atomic hard-link-or-copy."""
    folder = plan.out / REJECTED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    parts = _parts(plan)
    wanted = {name for _, name in parts}
    for f in folder.glob("*.parquet"):
        if f.name not in wanted:
            f.unlink()
    for src, name in parts:
        link(src, folder / name)
    return sorted(wanted)


def summarize(keep_text: bool, markers: list[dict]) -> dict:
    """The manifest's ``rejected`` section from the extract then tokenize markers (in unit order): rows,
    whether text is kept, and per rule its count and its first example URL in input order."""
    rows = 0
    counts: Counter = Counter()
    examples: dict[str, str] = {}
    for m in markers:
        r = m.get("rejected")
        if r is None:
            continue
        rows += r["rows"]
        counts.update(r["counts"])
        for rule, url in r["examples"].items():
            examples.setdefault(rule, url)
    return {
        "parquet": f"{REJECTED_DIR}/*.parquet",
        "documents": rows,
        "text": keep_text,
        "by_rule": {k: {"count": counts[k], "example": examples.get(k)} for k in sorted(counts)},
    }


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.3g}"


def _describe(row: dict) -> str:
    lang = row["language"]
    who = f"{row['url'] or row['id']} ({Path(row['source']).name})"
    said = f"language {lang} ({row['language_score']:.2f})" if lang else "language not identified"
    why = row["rule"]
    if row["value"] is not None or row["threshold"] is not None:
        why += f" = {_fmt(row['value'])} (threshold {_fmt(row['threshold'])})"
    elif why == "language" and lang:
        why += f" ({lang} is not a language kept: language.languages)"
    return f"{who}: {said}, first failing rule {why}"


def nothing_survived_error(plan, link) -> DataError:
    """The error when every document was dropped: the counts per reason, then each dropped document (up to
    ``_NAMED``) with its language, score and first failing rule; the whole list is linked into ``OUT/rejected/``."""
    import pyarrow.parquet as pq

    stats: Counter = Counter()
    for u in plan.units("extract"):
        stats.update(plan.read_marker("extract", u)["stats"])
    lost = [(v, k) for k, v in stats.items()
            if v and k.startswith(("drop:", "skip:", "corrupt:")) and not k.startswith("skip:record_")]
    drops = sorted(lost, reverse=True)  # (warcinfo, request and metadata records are never documents)
    top = ", ".join(f"{k} {v}" for v, k in drops[:4]) or "no documents were read"
    collect_rejected(plan, link)
    named: list[str] = []
    total = 0
    cols = ["id", "url", "source", "rule", "value", "threshold", "language", "language_score"]
    for src, _ in _parts(plan):
        pf = pq.ParquetFile(src)
        total += pf.metadata.num_rows
        if len(named) < _NAMED and pf.metadata.num_rows:
            named += map(_describe, pf.read(columns=cols).to_pylist()[: _NAMED - len(named)])
    lines = "".join(f"\n  {d}" for d in named)
    more = f"\n  ... and {total - len(named)} more" if total > len(named) else ""
    return DataError(f"no document survived the pipeline ({stats['docs_in']} read; {top}): nothing to write.{lines}"
                     f"{more}\nEvery dropped document is in {plan.out / REJECTED_DIR}/. Loosen the filters "
                     "(docs/data_prep.md lists them; --preset smoke relaxes them for a check of the install) or check the inputs")
