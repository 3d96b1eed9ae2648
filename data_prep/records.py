"""Reading documents out of input files, robustly: damage is skipped and counted, never fatal.

WARC, WET and ARC files are read by :mod:`data_prep.warc`; Parquet, JSONL and Arrow files (Hugging Face
``datasets`` sources) give one document per row. Every reader yields :class:`RawDoc` and counts what it
skipped under ``read:*`` / ``skip:*`` / ``corrupt:*`` keys, which end up in the manifest's drop reasons.
"""

from __future__ import annotations

import itertools
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator

from data_prep.config import ReadConfig
from data_prep.credentials import describe_failure
from data_prep.hygiene import too_large
from data_prep.inputs import InputFile, RawDoc
from data_prep.text_inputs import lines_until_damage, open_maybe_gzip
from data_prep.warc import read_arc, read_warc
from megadepth.common.errors import DataError

__all__ = ["InputUnavailable", "RawDoc", "check_input_columns", "read_documents"]


def _short_name(path: str) -> str:
    """``folder/file`` of a path or URL: enough to tell a dataset's splits apart, and the same wherever
    the dataset is moved to."""
    parts = path.rstrip("/").replace("\\", "/").split("/")
    return "/".join(p for p in parts[-2:] if p)


def _row_doc(row: dict, i: int, inp: InputFile, cfg: ReadConfig, stats: Counter) -> RawDoc | None:
    text = row.get(cfg.text_column)
    if not isinstance(text, str):
        stats["skip:no_text"] += 1
        return None
    if too_large(text, cfg.max_payload_bytes):  # bytes, as for WARC payloads
        stats["skip:too_large"] += 1
        return None
    if not text.strip():
        stats["skip:empty"] += 1
        return None
    rid, url = row.get(cfg.id_column), row.get(cfg.url_column)
    # without an id column: folder/file:row (two inputs train/part-0 and valid/part-0 stay apart)
    rid = str(rid) if rid is not None else f"{_short_name(inp.path)}:{i}"
    return RawDoc(id=rid, url=str(url) if url is not None else "", date="", text=text)


def _rows_docs(rows: Iterable, inp: InputFile, cfg: ReadConfig, stats: Counter) -> Iterator[RawDoc]:
    for i, row in enumerate(rows):
        stats["read:records"] += 1
        doc = _row_doc(row if isinstance(row, dict) else {}, i, inp, cfg, stats)
        if doc is not None:
            yield doc


def _columns(names, cfg: ReadConfig) -> list[str]:
    return [c for c in (cfg.text_column, cfg.id_column, cfg.url_column) if c in names]


def _open_arrow(path: str):
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(pa.memory_map(path))
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(path))


def _read_table(inp: InputFile, cfg: ReadConfig, stats: Counter) -> Iterator[RawDoc]:
    """Parquet and Arrow files, read in batches of the needed columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    damage = (OSError, pa.ArrowInvalid) if inp.kind == "arrow" else OSError
    try:
        if inp.kind == "parquet":
            pf = pq.ParquetFile(inp.path)
            batches = pf.iter_batches(batch_size=1024, columns=_columns(pf.schema_arrow.names, cfg))
        else:
            reader = _open_arrow(inp.path)
            cols = _columns(reader.schema.names, cfg)
            if isinstance(reader, pa.ipc.RecordBatchFileReader):
                batches = (reader.get_batch(i).select(cols) for i in range(reader.num_record_batches))
            else:
                batches = (b.select(cols) for b in reader)
        yield from _rows_docs(itertools.chain.from_iterable(b.to_pylist() for b in batches), inp, cfg, stats)
    except damage as e:
        if _unavailable(e, inp.remote):
            raise
        stats["corrupt:file"] += 1


def _first_byte(f) -> bytes:
    """The first non-blank byte of a file (then back to the start)."""
    try:
        while True:
            chunk = f.read(4096)
            if not chunk or chunk.strip():
                return chunk.strip()[:1]
    finally:
        f.seek(0)


def _read_jsonl(inp: InputFile, cfg: ReadConfig, stats: Counter) -> Iterator[RawDoc]:
    with open_maybe_gzip(inp.path) as f:
        try:
            array = _first_byte(f) == b"["
        except (EOFError, OSError, zlib.error):
            stats["corrupt:truncated"] += 1
            return
        if array:
            # one JSON array of objects (which Hugging Face's json loader also reads): parsed whole, as it does
            try:
                rows = json.load(f)
            except (EOFError, OSError, zlib.error, UnicodeDecodeError, ValueError):
                stats["corrupt:file"] += 1
                return
            yield from _rows_docs(rows if isinstance(rows, list) else [], inp, cfg, stats)
            return
        for i, line in enumerate(ln for ln in lines_until_damage(f, stats, "corrupt:truncated") if ln.strip()):
            stats["read:records"] += 1
            try:
                row = json.loads(line)
            except (UnicodeDecodeError, ValueError):
                stats["corrupt:record"] += 1
                continue
            doc = _row_doc(row if isinstance(row, dict) else {}, i, inp, cfg, stats)
            if doc is not None:
                yield doc


_READERS = {
    "warc": read_warc,
    "arc": read_arc,
    "parquet": _read_table,
    "arrow": _read_table,
    "jsonl": _read_jsonl,
}


class InputUnavailable(DataError):
    """An input could not be read for a reason outside its bytes (gone, no permission, network error).
    Unlike damage, this fails the unit (no done marker), so running the command again retries the file."""


def _unavailable(e: BaseException, remote: bool) -> bool:
    """True for failures of the file system or network (errors with an errno, or their own classes),
    False for damaged content (``zlib.error``, ``EOFError``, an ``OSError`` without errno: BadGzipFile)."""
    if isinstance(e, (FileNotFoundError, PermissionError, ConnectionError, TimeoutError)):
        return True
    if isinstance(e, OSError) and e.errno is not None:
        return True
    return remote and not isinstance(e, (zlib.error, EOFError, OSError, ValueError))


def read_documents(inp: InputFile, cfg: ReadConfig, stats: Counter) -> Iterator[RawDoc]:
    """Documents of one input file; damaged parts are counted in ``stats`` and skipped. A file whose bytes
    cannot be had at all (deleted, unreadable, a network failure) raises :class:`InputUnavailable`."""
    if not inp.remote and inp.size is not None:
        try:
            size = os.stat(inp.path).st_size
        except OSError as e:
            raise InputUnavailable(f"{inp.path}: cannot be read ({e.strerror})") from None
        if size != inp.size:
            raise DataError(
                f"{inp.path}: changed since the plan was made ({inp.size} bytes then, {size} now); "
                "restore it, or prepare into a new --out"
            )
    if inp.size == 0:
        stats["skip:empty_file"] += 1
        return
    try:
        yield from _READERS[inp.kind](inp, cfg, stats)
    except Exception as e:
        if _unavailable(e, inp.remote):
            raise InputUnavailable(f"{inp.path}: cannot be read ({describe_failure(e, inp.path)})") from None
        if not isinstance(e, (OSError, EOFError, zlib.error)):
            raise
        stats["corrupt:file"] += 1  # e.g. not gzip at all: the whole file is unusable


def check_input_columns(inputs: list[InputFile], cfg: ReadConfig) -> None:
    """Parquet/Arrow inputs must have the text column: checked from the schema before any work."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for inp in (i for i in inputs if i.kind in ("parquet", "arrow")):
        try:
            names = pq.read_schema(inp.path).names if inp.kind == "parquet" else _open_arrow(inp.path).schema.names
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"{inp.path}: not a readable {inp.kind} file ({e})") from None
        if cfg.text_column not in names:
            raise DataError(
                f"{inp.path}: no column {cfg.text_column!r} (columns: {', '.join(names)}); "
                "set read.text_column"
            )
