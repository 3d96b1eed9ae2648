"""Reading inputs: the real Common Crawl fixtures, every kind of damage (skipped and counted, never
fatal), input resolution (paths files, globs, datasets sources) and the errors given before any work."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from data_prep.config import ReadConfig
from data_prep.corpus import article_html, prose_pages, warc_record, warc_response, warcinfo, write_warc
from data_prep.inputs import InputFile, resolve_inputs
from data_prep.records import InputUnavailable, check_input_columns, read_documents
from megadepth.common.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "commoncrawl"


def _read(path: Path, kind: str = "warc", **cfg) -> tuple[list, Counter]:
    stats: Counter = Counter()
    docs = list(read_documents(InputFile(str(path), kind), ReadConfig(**cfg), stats))
    return docs, stats


def test_real_common_crawl_warc_and_wet() -> None:
    docs, stats = _read(FIXTURES / "whirlwind.warc.gz")
    assert [d.url for d in docs] == ["https://an.wikipedia.org/wiki/Escopete"]
    assert docs[0].html.startswith(b"<!DOCTYPE html>") and docs[0].charset in ("UTF-8", "utf-8")
    assert docs[0].id == "urn:uuid:2aabeff2-67f5-4608-8466-e87c6296e2b6"
    assert stats == Counter({"read:records": 4, "skip:record_warcinfo": 1, "skip:record_request": 1,
                             "skip:record_metadata": 1})  # fmt: skip
    wet, stats = _read(FIXTURES / "whirlwind.warc.wet.gz")
    assert len(wet) == 1 and wet[0].text.startswith("Escopete - Biquipedia")
    assert wet[0].url == docs[0].url and stats["skip:record_warcinfo"] == 1


def _pages(n: int = 6) -> list[list[bytes]]:
    return [warc_response(f"https://ex.example/{i}", article_html(t, ps).encode()) for i, (t, ps) in enumerate(prose_pages()[:n])]


def _urls(docs) -> list[str]:
    return [d.url for d in docs]


def test_damage_is_skipped_and_counted(tmp_path: Path) -> None:
    pages = _pages()
    flat = [r for p in pages for r in p]
    urls = [f"https://ex.example/{i}" for i in range(6)]
    good, _ = _read(write_warc(tmp_path / "ok.warc.gz", [warcinfo(), *flat]))
    assert _urls(good) == urls
    # the same records as one gzip stream, and uncompressed
    assert _urls(_read(write_warc(tmp_path / "one.warc.gz", flat, "stream"))[0]) == urls
    assert _urls(_read(write_warc(tmp_path / "plain.warc", flat, "none"))[0]) == urls

    # truncated gzip member: what precedes it survives, the cut is counted
    full = (tmp_path / "ok.warc.gz").read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(full[: len(full) - 700])
    docs, stats = _read(cut)
    assert _urls(docs) == urls[:-1] and stats["corrupt:truncated"] == 1

    # junk between gzip members, then more records: resynchronised on the next member
    members = [gzip.compress(r, mtime=0) for r in flat]
    junk = tmp_path / "junk.warc.gz"
    junk.write_bytes(b"".join(members[:6]) + os.urandom(4000) + b"".join(members[6:]))
    docs, stats = _read(junk)
    assert _urls(docs) == urls and stats["corrupt:gzip"] == 1 and stats["read:fallback_files"] == 1

    # wrong Content-Length (too short and too long) and a malformed header: that record only is lost
    resp = pages[2][1]
    short = resp.replace(b"Content-Length: ", b"Content-Length: 1", 1)  # 10x too long a length
    body_len = int(resp.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    too_short = resp.replace(f"Content-Length: {body_len}".encode(), f"Content-Length: {body_len - 40}".encode())
    broken = resp.replace(b"WARC-Type: response\r\n", b"WARC-Type response broken\r\n")
    for name, bad in (("long", short), ("short", too_short), ("header", broken)):
        recs = [r for p in pages[:2] for r in p] + [bad] + [r for p in pages[3:] for r in p]
        docs, stats = _read(write_warc(tmp_path / f"{name}.warc.gz", recs))
        assert _urls(docs) == urls[:2] + urls[3:], name
        assert stats["corrupt:record"] >= 1, (name, stats)

    # revisit / request / metadata / resource records, non-HTML payloads, HTTP errors, empty pages,
    # a 50 MB single-line page, binary junk, invalid UTF-8
    big = b"<html><body><p>" + b"word " * (10_000_000) + b"</p></body></html>"
    recs = [
        warc_record("revisit", b"HTTP/1.1 304 Not Modified\r\n\r\n", {"WARC-Target-URI": "https://r.example/"}),
        *warc_response("https://img.example/a.png", b"\x89PNG\r\n\x1a\n" + os.urandom(500),
                       content_type="image/png", payload_type="image/png"),
        *warc_response("https://pdf.example/a.pdf", b"%PDF-1.4 ...", content_type="application/pdf", payload_type=None),
        *warc_response("https://err.example/", b"<html><body>Not found</body></html>", status=404),
        *warc_response("https://empty.example/", b""),
        *warc_response("https://big.example/", big, with_request=False),
        *warc_response("https://bin.example/", os.urandom(3000).replace(b"\x00", b"\x01") + b"\x00\x00" + os.urandom(100)),
        *warc_response("https://latin.example/", "<html><body><p>Caf\u00e9 cr\u00e8me</p></body></html>".encode("latin-1"),
                       content_type="text/html"),
        *pages[0],
    ]
    docs, stats = _read(write_warc(tmp_path / "mixed.warc.gz", recs))
    assert _urls(docs) == ["https://bin.example/", "https://latin.example/", urls[0]] or _urls(docs) == [
        "https://latin.example/", urls[0]]  # random bytes may hold a NUL in the first kilobyte or not
    assert stats["skip:record_revisit"] == 1 and stats["skip:record_request"] == 7
    assert stats["skip:mime"] == 2 and stats["skip:http_status"] == 1 and stats["skip:empty"] == 1
    assert stats["skip:too_large"] == 1
    # binary junk as a whole file, an empty file, and a file that is not there any more
    (tmp_path / "noise.warc.gz").write_bytes(os.urandom(20000))
    docs, stats = _read(tmp_path / "noise.warc.gz")
    assert docs == [] and stats["corrupt:file"] == 1, stats  # random bytes: not an archive at all
    (tmp_path / "text.warc.gz").write_bytes(gzip.compress(b"just some text\n" * 100))
    docs, stats = _read(tmp_path / "text.warc.gz")
    assert docs == [] and stats["corrupt:file"] == 1, stats
    (tmp_path / "empty.warc").write_bytes(b"")
    assert _read(tmp_path / "empty.warc")[0] == []
    # a file that is not there is not damage: the unit fails (no done marker) and a rerun retries it
    with pytest.raises(InputUnavailable, match="vanished.warc.gz: cannot be read"):
        _read(tmp_path / "vanished.warc.gz")


def test_damaged_file_without_record_ids_delivers_each_record_once(tmp_path: Path) -> None:
    """Records without WARC-Record-ID (other crawlers' WARCs): after damage the lenient parser re-reads the
    file and must recognise what FastWARC already delivered, whether the file is compressed or not."""
    import re

    pages = _pages(8)
    urls = [f"https://ex.example/{i}" for i in range(8)]
    recs = [re.sub(rb"WARC-Record-ID: [^\r]*\r\n", b"", r, count=1) for p in pages for r in p]
    assert not any(b"WARC-Record-ID" in r for r in recs)
    resp = pages[5][1]
    n = int(resp.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    k = 5 * len(pages[0]) + 1  # page 5's response: a Content-Length 50 bytes too long
    recs[k] = recs[k].replace(f"Content-Length: {n}\r\n".encode(), f"Content-Length: {n + 50}\r\n".encode(), 1)
    for compression in ("members", "none"):
        docs, stats = _read(write_warc(tmp_path / f"noid-{compression}.warc.gz", recs, compression))
        assert _urls(docs) == urls[:5] + urls[6:], compression
        assert stats["read:fallback_files"] == 1 and stats["corrupt:record"] >= 1, (compression, stats)
        assert stats["skip:record_request"] == 8, (compression, stats)  # each request counted once


def test_wet_text_in_another_encoding_is_decoded_and_counted(tmp_path: Path) -> None:
    text = "Caf\u00e9 na\u00efve cr\u00e8me br\u00fbl\u00e9e, " * 20
    recs = [
        warc_record("conversion", text.encode("utf-8"), {"WARC-Target-URI": "https://u8.example/",
                                                         "Content-Type": "text/plain"}),
        warc_record("conversion", text.encode("latin-1"), {"WARC-Target-URI": "https://l1.example/",
                                                           "Content-Type": "text/plain"}),
    ]
    docs, stats = _read(write_warc(tmp_path / "enc.warc.wet.gz", recs))
    assert [d.text for d in docs] == [text, text]
    assert stats["read:non_utf8"] == 1, stats


def test_binary_payload_is_skipped(tmp_path: Path) -> None:
    recs = warc_response("https://bin.example/", b"\x00\x01\x02" * 400)
    docs, stats = _read(write_warc(tmp_path / "b.warc.gz", recs))
    assert docs == [] and stats["skip:binary"] == 1


def test_arc_and_chunked_through_fallbacks(tmp_path: Path) -> None:
    body = b"<html><body><p>Chunked body text here</p></body></html>"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    recs = warc_response("https://c.example/", chunked, extra_http={"Transfer-Encoding": "chunked"})
    recs += warc_response("https://g.example/", gzip.compress(body), extra_http={"Content-Encoding": "gzip"})
    recs += warc_response("https://bad.example/", b"not gzip", extra_http={"Content-Encoding": "gzip"})
    docs, stats = _read(write_warc(tmp_path / "enc.warc.gz", recs))
    assert [d.html for d in docs] == [body, body] and stats["corrupt:content_encoding"] == 1
    # an ARC file (warcio reads it)
    arc_body = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n" + body
    head = b"filedesc://test.arc 0.0.0.0 20240101000000 text/plain 76\n1 0 megadepth\nURL IP-address Archive-date Content-type Archive-length\n\n"
    rec = b"https://arc.example/ 1.2.3.4 20240101000000 text/html %d\n" % len(arc_body) + arc_body + b"\n"
    (tmp_path / "x.arc.gz").write_bytes(gzip.compress(head) + gzip.compress(rec))
    docs, stats = _read(tmp_path / "x.arc.gz", "arc")
    assert [d.url for d in docs] == ["https://arc.example/"] and docs[0].html == body


def test_resolve_inputs(tmp_path: Path) -> None:
    d = tmp_path / "crawl" / "segments" / "s1" / "warc"
    write_warc(d / "b.warc.gz", _pages(1)[0])
    write_warc(d / "a.warc.gz", _pages(2)[1])
    (d / "a.warc.wat.gz").write_bytes(b"")  # WAT files are metadata: never inputs
    paths = tmp_path / "warc.paths.gz"
    paths.write_bytes(gzip.compress(b"segments/s1/warc/b.warc.gz\nsegments/s1/warc/a.warc.gz\n"))
    got = resolve_inputs([paths], prefix=str(tmp_path / "crawl"))
    assert [Path(f.path).name for f in got] == ["a.warc.gz", "b.warc.gz"]  # sorted: defines the work
    assert resolve_inputs([str(d / "*.warc.gz")]) == got == resolve_inputs([tmp_path / "crawl"])
    remote = resolve_inputs([paths], prefix="https://data.commoncrawl.org/")
    assert remote[0].path == "https://data.commoncrawl.org/segments/s1/warc/a.warc.gz" and remote[0].size is None
    with pytest.raises(DataError, match="prefix"):
        resolve_inputs([paths])
    (tmp_path / "bad.paths").write_text("segments/s1/warc/missing.warc.gz\n")
    with pytest.raises(DataError, match="missing.warc.gz does not exist"):
        resolve_inputs([tmp_path / "bad.paths"], prefix=str(tmp_path / "crawl"))
    with pytest.raises(DataError, match="no such file"):
        resolve_inputs([tmp_path / "nope.warc.gz"])
    with pytest.raises(DataError, match="no files match"):
        resolve_inputs([str(tmp_path / "*.parquet")])
    with pytest.raises(DataError, match="WAT"):
        resolve_inputs([FIXTURES / "whirlwind.warc.wat.gz"])


def test_datasets_sources(tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["\n\n".join(ps) for _, ps in prose_pages()[:4]]
    pq.write_table(pa.table({"text": texts, "url": [f"u{i}" for i in range(4)]}), tmp_path / "d.parquet")
    rows = [{"text": t, "id": f"j{i}"} for i, t in enumerate(texts)] + [{"body": "no text"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "saved"))
    files = resolve_inputs([tmp_path / "d.parquet", tmp_path / "d.jsonl", tmp_path / "saved"])
    assert [f.kind for f in files] == ["jsonl", "parquet", "arrow"]
    check_input_columns(files, ReadConfig())
    got: dict[str, list] = {}
    for f in files:
        stats: Counter = Counter()
        got[f.kind] = list(read_documents(f, ReadConfig(), stats))
        if f.kind == "jsonl":
            assert stats["skip:no_text"] == 1 and stats["corrupt:record"] == 1
    for kind in got:
        assert [d.text for d in got[kind]] == texts
    assert [d.id for d in got["jsonl"]] == ["j0", "j1", "j2", "j3"] and got["parquet"][1].url == "u1"
    assert got["arrow"][0].id.endswith(":0")
    # a .json file holding one JSON array (Hugging Face's json loader reads those too); ids without an id
    # column name the folder as well, so two splits' part-0 files do not share ids
    for split in ("train", "valid"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "part-0.json").write_text(json.dumps([{"text": t} for t in texts]))
    ids = []
    for split in ("train", "valid"):
        stats = Counter()
        docs = list(read_documents(InputFile(str(tmp_path / split / "part-0.json"), "jsonl"), ReadConfig(), stats))
        assert [d.text for d in docs] == texts and stats["read:records"] == 4 and not stats["corrupt:record"]
        ids += [d.id for d in docs]
    assert len(set(ids)) == 8 and ids[0] == "train/part-0.json:0"
    with pytest.raises(DataError, match="no column 'content'"):
        check_input_columns(files, ReadConfig(text_column="content"))
