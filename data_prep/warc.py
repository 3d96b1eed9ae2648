"""WARC, WET and ARC files to :class:`~data_prep.inputs.RawDoc`, robustly: damage is skipped and counted.

WARC and WET files are read with FastWARC. When FastWARC stops on damage (a malformed header, a bad
Content-Length, junk between gzip members, a truncated member, found from the gzip framing), the rest
is read by a lenient parser of our own that inflates member by member and resynchronises on the next
``WARC/1.x`` line, without repeating delivered records. ARC files go through warcio, which converts them.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import shutil
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator

from data_prep.config import ReadConfig
from data_prep.credentials import storage_options
from data_prep.extract import decode_html
from data_prep.inputs import InputFile, RawDoc, is_remote

__all__ = ["read_arc", "read_warc"]


_GZ_MAGIC = b"\x1f\x8b\x08"
_MAX_HEADER = 64 << 10
_RECORD_START = re.compile(rb"(?:^|\n)WARC/\d\.\d+\r?\n")
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9._:-]+)", re.I)


def _is_binary(payload: bytes) -> bool:
    """Binary junk: NUL bytes near the start (no HTML or text page has them; UTF-16 is caught first)."""
    head = payload[:1024]
    return not head.startswith((b"\xff\xfe", b"\xfe\xff")) and b"\x00" in head


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            raise ValueError("bad chunked encoding")
        size = int(body[pos:eol].split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            return bytes(out)
        out += body[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


def _decode_transfer(body: bytes, headers: dict[str, str]) -> bytes:
    """Undo chunked transfer coding and gzip/deflate/br content coding where a WARC kept them."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        # many WARCs store the body de-chunked but keep the header
        with contextlib.suppress(ValueError, IndexError):
            body = _dechunk(body)
    enc = headers.get("content-encoding", "").strip().lower()
    if enc in ("gzip", "x-gzip"):
        body = zlib.decompress(body, 47)
    elif enc == "deflate":
        try:
            body = zlib.decompress(body)
        except zlib.error:
            body = zlib.decompress(body, -15)
    elif enc == "br":
        import brotli

        body = brotli.decompress(body)
    return body


def _select(
    rtype: str, warc: dict[str, str], status: int | None, http: dict[str, str], length: int, cfg: ReadConfig,
    stats: Counter,
) -> str | None:
    """'html' or 'text' when a record should become a document, else None (and the reason counted)."""
    kind = {"conversion": "text", "response": "html", "resource": "html"}.get(rtype)
    if kind is None:
        # no readable WARC-Type header is damage; another type (request, metadata, ...) is skipped
        stats["corrupt:record" if rtype in ("", "unknown", "no_type") else f"skip:record_{rtype}"] += 1
        return None
    if not warc.get("warc-target-uri"):
        stats["skip:no_url"] += 1
        return None
    if length > cfg.max_payload_bytes:
        stats["skip:too_large"] += 1
        return None
    if kind == "html":
        if rtype == "response" and cfg.http_ok_only and (status is None or not 200 <= status < 300):
            stats["skip:http_status"] += 1
            return None
        mime = warc.get("warc-identified-payload-type") or (http or warc).get("content-type", "")
        if mime.split(";", 1)[0].strip().lower() not in cfg.mime_types:
            stats["skip:mime"] += 1
            return None
    return kind


def _make_doc(
    kind: str, warc: dict[str, str], http: dict[str, str], payload: bytes, stats: Counter
) -> RawDoc | None:
    if kind == "html":
        try:
            payload = _decode_transfer(payload, http)
        except Exception:
            stats["corrupt:content_encoding"] += 1
            return None
    if not payload.strip():
        stats["skip:empty"] += 1
        return None
    if _is_binary(payload):
        stats["skip:binary"] += 1
        return None
    url = warc.get("warc-target-uri", "")
    doc = RawDoc(id=warc.get("warc-record-id", "").strip("<>") or url, url=url, date=warc.get("warc-date", ""))
    m = _CHARSET.search((warc if kind == "text" else http).get("content-type", ""))
    charset = m.group(1) if m else None
    if kind == "text":
        # Common Crawl's WET text is UTF-8; other converters' is not always: the same order as HTML
        # (BOM, strict UTF-8, the declared charset, then detection), counted as read:non_utf8
        doc.text = decode_html(payload, charset, stats)
    else:
        doc.html, doc.charset = payload, charset
    return doc


def _lower(pairs) -> dict[str, str]:
    return {k.lower(): v for k, v in pairs}


def _fastwarc_records(path: str, cfg: ReadConfig, stats: Counter, delivered: set[str]) -> Iterator[RawDoc]:
    """FastWARC's reader. Raises ``_Damaged`` when the rest of the file needs the lenient parser.

    One record is held back until the next one parsed: a wrong Content-Length shows up as a parse error
    of the record *after* the damaged one, so the held record is suspect when that happens and is left
    to the lenient parser.
    """
    from fastwarc.warc import ArchiveIterator

    remote = is_remote(path)
    it = ArchiveIterator(
        path, parse_http=True, auto_decode="none", fsspec_args=storage_options(path) if remote else False,
        stream_detect=True,
    )
    held: tuple[str, RawDoc | None, Counter] | None = None

    def release(rid: str, doc: RawDoc | None, counts: Counter) -> Iterator[RawDoc]:
        delivered.add(rid)
        stats.update(counts)
        if doc is not None:
            yield doc

    seen: Counter = Counter()
    last_pos = 0
    n = 0
    try:
        for r in it:
            n += 1
            last_pos = r.stream_pos
            rtype = str(r.record_type)
            warc = _lower(r.headers.items())
            http = _lower(r.http_headers.items()) if r.is_http else {}
            status = r.http_headers.status_code if r.is_http else None
            rid = _record_key(warc, seen)
            counts: Counter = Counter()  # this record's counts: merged once it is known to be sound
            kind = _select(rtype, warc, status, http, r.content_length, cfg, counts)
            doc = None
            if kind is not None:
                payload = r.reader.read()
                if len(payload) != r.content_length:
                    raise _Damaged("truncated record")
                doc = _make_doc(kind, warc, http, payload, counts)
            elif r.reader.consume() != r.content_length:
                # a skipped record must end where its Content-Length says, too: one that swallows
                # the rest of the file would otherwise hide every record after it
                raise _Damaged("truncated record")
            if held is not None:
                yield from release(*held)
            held = (rid, doc, counts)
    except OSError as e:
        raise _Damaged(str(e)) from None
    if held is not None:
        yield from release(*held)
    if not remote and path.lower().endswith(".gz") and not _gzip_tail_ok(path, last_pos):
        raise _Damaged("gzip framing")
    stats["read:records"] += n


def _record_key(warc: dict[str, str], seen: Counter) -> str:
    """What identifies a record in both FastWARC's and the lenient parser's pass over one file.

    ``WARC-Record-ID``, else the record's type, URI, date and length plus how many records with those
    headers came before it in this pass: both readers see the same headers, whereas a byte offset is the
    compressed one to FastWARC and the decompressed one to the lenient parser.
    """
    rid = warc.get("warc-record-id")
    if rid:
        return rid
    basis = "\x1f".join(warc.get(k, "") for k in ("warc-type", "warc-target-uri", "warc-date", "content-length"))
    seen[basis] += 1
    return f"@{seen[basis]}\x1f{basis}"


class _Damaged(Exception):
    pass


_CHUNK = 1 << 20


def _inflate_member(data, pos: int, sink) -> tuple[int, bool]:
    """Inflate the gzip member at ``pos`` of ``data`` (bytes or mmap) into ``sink``, a chunk at a time;
    returns (offset just after the member, complete?). Raises zlib.error."""
    d = zlib.decompressobj(31)
    cur, n = pos, len(data)
    while not d.eof:
        if d.unconsumed_tail:
            out = d.decompress(d.unconsumed_tail, _CHUNK)
        else:
            if cur >= n:
                return cur, False
            chunk = data[cur : cur + _CHUNK]
            cur += len(chunk)
            out = d.decompress(chunk, _CHUNK)
        if sink is not None and out:
            sink(out)
    return cur - len(d.unused_data), True


def _gzip_tail_ok(path: str, last_pos: int) -> bool:
    """Is the gzip member holding the last record complete, with nothing after it? (FastWARC ends
    silently on a truncated member.) Only that member is inflated (a one-stream file: all of it)."""
    size = os.path.getsize(path)
    if size == 0:
        return True
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start = last_pos if 0 <= last_pos < size and data[last_pos : last_pos + 3] == _GZ_MAGIC else 0
        if data[start : start + 3] != _GZ_MAGIC:
            return False
        try:
            end, complete = _inflate_member(data, start, None)
        except zlib.error:
            return False
        return complete and end == size


def _decompress_members(data, dst, stats: Counter) -> bool:
    """Write the content of every readable gzip member of ``data`` into ``dst``, in order; returns
    whether the file ended inside a member. Bad members and junk are skipped up to the next gzip header,
    a truncated last member gives what could be inflated; each is counted."""
    pos, n = 0, len(data)
    while pos < n:
        if data[pos : pos + 3] != _GZ_MAGIC:
            nxt = data.find(_GZ_MAGIC, pos + 1)
            if data[pos : nxt if nxt >= 0 else n].strip(b"\x00\r\n\t "):
                stats["corrupt:gzip"] += 1
            if nxt < 0:
                return False
            pos = nxt
        try:
            end, complete = _inflate_member(data, pos, dst.write)
        except zlib.error:
            stats["corrupt:gzip"] += 1
            nxt = data.find(_GZ_MAGIC, pos + 1)
            if nxt < 0:
                return False
            pos = nxt
            continue
        if not complete:
            stats["corrupt:truncated"] += 1
            return True
        pos = end
    return False


def _parse_header_block(block: bytes) -> tuple[dict[str, str], bool]:
    """Header lines -> dict (lower-case names); False when a line is not ``Name: value``."""
    headers: dict[str, str] = {}
    ok = True
    for line in block.split(b"\n")[1:]:
        line = line.rstrip(b"\r")
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip() or b" " in name.strip():
            ok = False
            continue
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("utf-8", errors="replace")
    return headers, ok


def _blank_line(buf, start: int, stop: int) -> tuple[int, int]:
    """Where the first CRLF CRLF (else LF LF) in ``buf[start:stop]`` starts (-1: none), and its length."""
    end = buf.find(b"\r\n\r\n", start, stop)
    return (end, 4) if end >= 0 else (buf.find(b"\n\n", start, stop), 2)


def _parse_http(block: bytes) -> tuple[int | None, dict[str, str], bytes]:
    end, sep = _blank_line(block, 0, len(block))
    if end < 0 or not block.startswith(b"HTTP/"):
        return None, {}, block
    head = block[:end].split(b"\n")
    try:
        status = int(head[0].split()[1])
    except (IndexError, ValueError):
        status = None
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, s, value = line.rstrip(b"\r").partition(b":")
        if s:
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return status, headers, block[end + sep :]


def _lenient_records(path: str, cfg: ReadConfig, stats: Counter, delivered: set[str]) -> Iterator[RawDoc]:
    """Our own WARC parser for damaged files (see the module doc). Compressed files are inflated into a
    temporary file; both are memory-mapped, so memory does not grow with the file."""
    with tempfile.TemporaryFile(prefix="megadepth-warc-") as raw, \
            tempfile.TemporaryFile(prefix="megadepth-warc-") as plain:
        if is_remote(path):
            with _open_any(path) as src:
                shutil.copyfileobj(src, raw, _CHUNK)
            raw.flush()
            src_f = raw
        else:
            src_f = open(path, "rb")  # noqa: SIM115 - closed below
        try:
            if os.fstat(src_f.fileno()).st_size == 0:
                return
            with mmap.mmap(src_f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if data[:3] != _GZ_MAGIC:
                    yield from _scan(data, cfg, stats, delivered)
                    return
                truncated = _decompress_members(data, plain, stats)
        finally:
            if src_f is not raw:
                src_f.close()
        plain.flush()
        if plain.tell() == 0:
            return
        with mmap.mmap(plain.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            yield from _scan(buf, cfg, stats, delivered, truncation_counted=truncated)


def _next_start(buf, pos: int) -> int:
    m = _RECORD_START.search(buf, pos)
    if m is None:
        return -1
    return m.start() + (1 if buf[m.start() : m.start() + 1] == b"\n" else 0)


def _scan(
    buf, cfg: ReadConfig, stats: Counter, delivered: set[str], truncation_counted: bool = False
) -> Iterator[RawDoc]:
    n = len(buf)
    seen: Counter = Counter()
    pos = _next_start(buf, 0)
    if pos < 0 and buf[:n].strip():
        stats["corrupt:file"] += 1  # not a WARC file at all: no record starts anywhere in it
    elif pos > 0 and buf[:pos].strip():
        stats["corrupt:record"] += 1  # junk before the first record
    while pos >= 0:
        hdr_end, sep = _blank_line(buf, pos, pos + _MAX_HEADER)
        if hdr_end < 0:
            stats["corrupt:record"] += 1
            pos = _next_start(buf, pos + 1)
            continue
        warc, ok = _parse_header_block(bytes(buf[pos:hdr_end]))
        try:
            length = int(warc.get("content-length", ""))
        except ValueError:
            length = -1
        start = hdr_end + sep
        end = start + length
        if not ok or length < 0:
            stats["corrupt:record"] += 1
            pos = _next_start(buf, start)
            continue
        if end > n:
            pos = _next_start(buf, start)
            if pos >= 0:
                stats["corrupt:record"] += 1  # a Content-Length past the end, with records after it
            elif not truncation_counted:
                stats["corrupt:truncated"] += 1
                truncation_counted = True
            continue
        tail = bytes(buf[end : end + 4])
        if not (tail.startswith((b"\r\n\r\n", b"\n\n")) or (end + len(tail) == n and not tail.strip())):
            stats["corrupt:record"] += 1  # Content-Length does not end the record
            pos = _next_start(buf, start)
            continue
        rid = _record_key(warc, seen)
        pos = _next_start(buf, end)
        if bytes(buf[end : pos if pos >= 0 else n]).strip(b"\x00\r\n\t "):
            stats["corrupt:record"] += 1  # something that is not a record before the next one
        stats["read:records"] += 1
        if rid in delivered:
            continue
        delivered.add(rid)
        rtype = warc.get("warc-type", "").lower()
        block = bytes(buf[start:end])
        status, http, payload = None, {}, block
        if rtype in ("response", "request", "revisit") and "application/http" in warc.get("content-type", ""):
            status, http, payload = _parse_http(block)
        kind = _select(rtype, warc, status, http, len(payload), cfg, stats)
        if kind is None:
            continue
        doc = _make_doc(kind, warc, http, payload, stats)
        if doc is not None:
            yield doc


def _open_any(path: str):
    if is_remote(path):
        import fsspec

        return fsspec.open(path, "rb", **storage_options(path)).open()
    return open(path, "rb")


def read_warc(inp: InputFile, cfg: ReadConfig, stats: Counter) -> Iterator[RawDoc]:
    delivered: set[str] = set()
    try:
        yield from _fastwarc_records(inp.path, cfg, stats, delivered)
        return
    except _Damaged:
        stats["read:fallback_files"] += 1
    yield from _lenient_records(inp.path, cfg, stats, delivered)


def read_arc(inp: InputFile, cfg: ReadConfig, stats: Counter) -> Iterator[RawDoc]:
    """ARC (and odd WARC) files through warcio, which converts ARC records to WARC ones."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    with _open_any(inp.path) as f:
        it = iter(ArchiveIterator(f, arc2warc=True))
        while True:
            try:
                rec = next(it)
                stats["read:records"] += 1
                warc = _lower(rec.rec_headers.headers)
                http = _lower(rec.http_headers.headers) if rec.http_headers else {}
                status = None
                with contextlib.suppress(TypeError, ValueError):
                    if rec.http_headers is not None:
                        status = int(rec.http_headers.get_statuscode())
                rtype = rec.rec_type or ""
                length = int(warc.get("content-length", "0") or 0)
                kind = _select(rtype, warc, status, http, length, cfg, stats)
                if kind is None:
                    continue
                payload = rec.raw_stream.read()
            except StopIteration:
                return
            except (ArchiveLoadFailed, OSError, EOFError, ValueError, zlib.error) as e:
                stats["corrupt:record" if "record" in str(e).lower() else "corrupt:file"] += 1
                return
            doc = _make_doc(kind, warc, http, payload, stats)
            if doc is not None:
                yield doc
