"""Local text for ``prep text``: which files of the given paths are read, and their documents
(``.txt``, ``.jsonl``, ``.jsonl.gz``)."""

from __future__ import annotations

import codecs
import gzip
import json
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from data_prep.hygiene import DEFAULT_MAX_DOC_BYTES, too_large, unread_files
from data_prep.inputs import is_data_dir
from data_prep.sample_text import BLANK_RUN
from megadepth.common.errors import DataError

__all__ = ["SUFFIXES", "expand_inputs", "read_documents"]

SUFFIXES = (".jsonl.gz", ".jsonl", ".txt")

#: Byte order marks of the wide Unicode encodings a Windows editor may save ``.txt`` files in. UTF-32 LE
#: comes first because its mark starts with UTF-16 LE's.
_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)


def _wide_codec(data: bytes) -> str | None:
    return next((codec for bom, codec in _WIDE_BOMS if data.startswith(bom)), None)


def _suffix(p: Path) -> str | None:
    name = p.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def expand_inputs(paths: Iterable[str | Path], unread: list[Path] | None = None) -> list[Path]:
    """Files to read: each path as given, a directory expanded to its supported files (sorted).

    Missing paths and unsupported file types are a :class:`DataError` up front, not after an hour.
    ``unread`` collects the other files of those directories (not hidden, not in a data directory).
    """
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _suffix(f))
            if not found:
                raise DataError(f"{p}: no {', '.join(SUFFIXES)} files in this directory")
            files.extend(found)
            if unread is not None:
                unread.extend(f.resolve() for f in unread_files(p, lambda f: _suffix(f) is not None, is_data_dir))
        elif p.is_file():
            if not _suffix(p):
                raise DataError(f"{p}: unsupported file type (expected {', '.join(SUFFIXES)})")
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    if not files:
        raise DataError("no input files given")
    return files


def _decode_lines(data: bytes, stats: Counter) -> str:
    """UTF-8 text, dropping (and counting) only the lines that do not decode or hold a NUL byte (valid
    UTF-8, but the mark of a binary file or of UTF-16/32 without a byte order mark, never of real text)."""
    if b"\x00" not in data:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    kept = []
    for line in data.splitlines(keepends=True):
        if b"\x00" in line:
            stats["nul_byte_line"] += 1
            continue
        try:
            kept.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            stats["bad_utf8_line"] += 1
    return "".join(kept)


def _decode_txt(path: Path, data: bytes, stats: Counter) -> str:
    """A ``.txt`` file's text: UTF-8 (a leading BOM dropped), or UTF-16/32 when it starts with their BOM
    (refused when it then does not decode: there are no lines to skip in it). Line ends become ``\\n``,
    as in Python's text mode, so paragraphs split alike and no ``\\r`` pieces are spent on Windows files."""
    wide = _wide_codec(data)
    if wide is not None:
        try:
            data = data.decode(wide).encode("utf-8")  # the codec consumes the BOM
        except UnicodeDecodeError as e:
            w = wide.upper()
            raise DataError(f"{path}: starts with a {w} byte order mark but is not valid {w} (byte {e.start})") from None
    else:
        data = data.removeprefix(codecs.BOM_UTF8)
    return _decode_lines(data, stats).replace("\r\n", "\n").replace("\r", "\n")


def _read_txt(path: Path, split_paragraphs: bool, stats: Counter) -> Iterator[str]:
    text = _decode_txt(path, path.read_bytes(), stats)
    parts = BLANK_RUN.split(text) if split_paragraphs else [text]
    for part in parts:
        if part.strip():
            yield part
        else:
            stats["empty"] += 1


def _check_jsonl_encoding(path: Path, first_line: bytes) -> None:
    """JSON Lines is UTF-8 by definition; a UTF-16/32 file (BOM first) is refused as a whole, since cut
    at ``\\n`` bytes every one of its lines would be skipped as bad JSON and the file silently lost."""
    wide = _wide_codec(first_line)
    if wide is not None:
        raise DataError(
            f"{path}: JSON Lines must be UTF-8, this file starts with a {wide.upper()} byte order mark "
            f"(convert it, e.g. iconv -f {wide.upper()} -t UTF-8)"
        )


def open_maybe_gzip(path: str | Path):
    """``path`` opened for reading bytes, gunzipped when its name ends in ``.gz``."""
    return (gzip.open if str(path).lower().endswith(".gz") else open)(path, "rb")


def lines_until_damage(f, stats: Counter, key: str) -> Iterator[bytes]:
    """The lines of ``f``; a truncated or damaged gzip stream ends them, counted as ``stats[key]``."""
    while True:
        try:
            line = f.readline()
        except (EOFError, OSError, zlib.error):
            stats[key] += 1
            return
        if not line:
            return
        yield line


def _read_jsonl(path: Path, stats: Counter) -> Iterator[str]:
    with open_maybe_gzip(path) as f:
        for n, raw in enumerate(lines_until_damage(f, stats, "corrupt_file")):
            if n == 0:
                _check_jsonl_encoding(path, raw)
                raw = raw.removeprefix(codecs.BOM_UTF8)  # would otherwise make the first record bad JSON
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                stats["bad_utf8_line"] += 1
                continue
            except json.JSONDecodeError:
                stats["bad_json_line"] += 1
                continue
            text = obj.get("text") if isinstance(obj, dict) else None
            if not isinstance(text, str):
                stats["no_text_field"] += 1
            elif not text.strip():
                stats["empty"] += 1
            else:
                yield text


def read_documents(
    paths: Iterable[str | Path],
    *,
    split_paragraphs: bool = False,
    stats: Counter | None = None,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
) -> Iterator[str]:
    """Documents from ``.txt`` / ``.jsonl`` / ``.jsonl.gz`` files (directories are expanded).

    A ``.txt`` file is one document, or one per blank-line-separated paragraph with ``split_paragraphs``;
    a JSONL line gives its ``text`` field. Bad lines are skipped and counted in ``stats`` by reason (one
    bad record must not cost a day-long job); a damaged gzip stream ends that file (``corrupt_file``). A
    document over ``max_doc_bytes`` in UTF-8 is skipped whole (``too_large``), not cut: a cut one would end
    mid-sentence with an EOS after it, and ``prep run`` skips such documents too.
    """
    stats = stats if stats is not None else Counter()
    for path in expand_inputs(paths):
        docs = _read_txt(path, split_paragraphs, stats) if _suffix(path) == ".txt" else _read_jsonl(path, stats)
        for doc in docs:
            if too_large(doc, max_doc_bytes):
                stats["too_large"] += 1
            else:
                yield doc
