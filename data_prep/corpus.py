"""Real text and WARC files built from it, offline: for tests, benchmarks and trying the pipeline.

The English prose is CPython's own documentation (``pydoc_data.topics``); the HTML pages are pydoc's
rendering of standard-library modules and article pages wrapping the prose in a website's navigation,
sidebar, scripts and footer; other languages come from ``justext``'s word lists (from Wikipedia). The
WARC writer writes Common Crawl's layout and the damaged variants the pipeline must survive.
"""

from __future__ import annotations

import gzip
import random
import re
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "article_html", "language_text", "module_doc_pages", "prose_pages", "prose_paragraphs", "warc_record",
    "warc_response", "warcinfo", "wet_conversion", "write_warc",
]

_BLANK = re.compile(r"\n\s*\n")
#: the word split that chooses the sample corpus's paragraphs, fixed here so that the corpus (and every loss
#: measured on it) stays the same when the quality rules' split (data_prep.filters) follows spaCy more closely
_PROSE_TOKEN = re.compile(r"\w+(?:['’.]\w+)*|\.\.\.|[^\w\s]")
_PROSE_WORD = re.compile(r"\w+(?:['’.]\w+)*")


def prose_paragraphs(min_words: int = 25) -> list[str]:
    """Prose paragraphs of the CPython documentation topics (no code, no tables), in a fixed order."""
    from pydoc_data.topics import topics

    from data_prep.filters import _LETTER

    out: list[str] = []
    for key in sorted(topics):
        for para in _BLANK.split(topics[key]):
            if not para.strip() or para.startswith((" ", "\t")) or not para.rstrip().endswith("."):
                continue
            one = " ".join(para.split())
            tokens, words = _PROSE_TOKEN.findall(one), _PROSE_WORD.findall(one)
            if len(words) < min_words or "{" in one:
                continue
            if sum(1 for w in words if _LETTER.search(w)) / len(tokens) < 0.82:
                continue
            out.append(one)
    return out


def prose_pages(per_page: int = 5) -> list[tuple[str, list[str]]]:
    """(title, paragraphs) articles of ``per_page`` consecutive prose paragraphs."""
    paras = prose_paragraphs()
    groups = (paras[i : i + per_page] for i in range(0, len(paras) - per_page + 1, per_page))
    return [(" ".join(group[0].split()[:6]).rstrip(".,;:"), group) for group in groups]


def article_html(title: str, paragraphs: Sequence[str], *, site: str = "Example Docs", lang: str = "en") -> str:
    """A web page around an article: head, scripts, navigation, sidebar, footer, cookie banner."""
    import html

    nav = "".join(f'<li><a href="/{w.lower()}">{w}</a></li>' for w in ("Home", "News", "Docs", "About", "Contact"))
    body = "\n".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    return f"""<!DOCTYPE html>
<html lang="{lang}"><head><meta charset="utf-8"><title>{html.escape(title)} - {site}</title>
<style>body{{font-family:sans-serif}} .nav li{{display:inline}}</style>
<script>window.dataLayer=window.dataLayer||[];function gtag(){{dataLayer.push(arguments)}}</script>
</head><body>
<header><div class="logo">{site}</div><nav class="nav"><ul>{nav}</ul></nav>
<form class="search"><input name="q" placeholder="Search"></form></header>
<div class="container"><aside class="sidebar"><h3>Related</h3><ul>
<li><a href="/a">Previous article</a></li><li><a href="/b">Next article</a></li></ul></aside>
<main><article><h1>{html.escape(title)}</h1>
{body}
</article></main></div>
<div class="cookie-banner">This site uses cookies. <a href="/privacy">Privacy policy</a></div>
<footer><p>Copyright 2024 {site}. All rights reserved.</p><p><a href="/terms">Terms of use</a></p></footer>
</body></html>
"""


_ADDRESS = re.compile(r"(?:\s|&nbsp;)+at(?:\s|&nbsp;)+0x[0-9a-f]+")


def module_doc_pages(limit: int | None = None) -> list[tuple[str, str]]:
    """(name, HTML) pages that pydoc renders for standard-library modules, sorted by name."""
    import importlib
    import pydoc
    import sys
    import warnings

    skip = {"antigravity", "this", "idlelib", "turtledemo", "tkinter", "turtle", "__main__", "pydoc"}
    pages = []
    doc = pydoc.HTMLDoc()
    for name in sorted(sys.stdlib_module_names):
        if name in skip or name.startswith("_"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
            html = doc.page(pydoc.describe(mod), doc.document(mod, name))
            # default values print as "<object object at 0x7f...>": the address differs per process
            pages.append((name, _ADDRESS.sub("", html)))
        except Exception:  # noqa: BLE001 - a module that cannot be imported or rendered here is skipped
            continue
        if limit is not None and len(pages) >= limit:
            break
    return pages


def language_text(language: str, n_words: int = 120, seed: int = 0) -> str:
    """Sentences of common words of ``language`` (a justext stoplist name, e.g. 'French')."""
    import justext

    words = sorted(justext.get_stoplist(language))
    rng = random.Random(f"{language}:{seed}")
    out, sentence = [], []
    for _ in range(n_words):
        sentence.append(rng.choice(words))
        if len(sentence) >= rng.randint(8, 14):
            s = " ".join(sentence)
            out.append(s[0].upper() + s[1:] + ".")
            sentence = []
    if sentence:
        out.append(" ".join(sentence) + ".")
    return " ".join(out)


# ------------------------------------------------------------------------------------- WARC writing


def _rid(*parts: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, '|'.join(parts))}>"


def warc_record(rtype: str, block: bytes, headers: dict[str, str] | None = None, *, content_length: int | None = None) -> bytes:
    """One WARC/1.0 record: version line, headers, blank line, block, CRLF CRLF."""
    h = {"WARC-Type": rtype, "WARC-Date": "2024-05-18T01:58:10Z"}
    h.update(headers or {})
    h.setdefault("WARC-Record-ID", _rid(rtype, h.get("WARC-Target-URI", ""), str(len(block))))
    h["Content-Length"] = str(len(block) if content_length is None else content_length)
    head = "WARC/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    return head.encode("utf-8") + b"\r\n" + block + b"\r\n\r\n"


def warcinfo(filename: str = "test.warc.gz") -> bytes:
    return warc_record("warcinfo", b"isPartOf: TEST-CRAWL\r\nsoftware: megadepth data_prep.corpus\r\n",
                       {"Content-Type": "application/warc-fields", "WARC-Filename": filename})


def warc_response(
    url: str, body: bytes, *, content_type: str = "text/html; charset=utf-8", status: int = 200,
    payload_type: str | None = "text/html", extra_http: dict[str, str] | None = None, with_request: bool = True,
) -> list[bytes]:
    """Common Crawl's records for one URL: request, response (HTTP + body), metadata."""
    rid = _rid("response", url)
    http = f"HTTP/1.1 {status} {'OK' if status == 200 else 'Status'}\r\nContent-Type: {content_type}\r\n"
    http += "".join(f"{k}: {v}\r\n" for k, v in (extra_http or {}).items())
    block = http.encode("latin-1") + b"\r\n" + body
    headers = {"WARC-Target-URI": url, "WARC-Record-ID": rid,
               "Content-Type": "application/http; msgtype=response"}
    if payload_type:
        headers["WARC-Identified-Payload-Type"] = payload_type
    response = warc_record("response", block, headers)
    if not with_request:
        return [response]
    req = f"GET {url} HTTP/1.1\r\nHost: example\r\n\r\n".encode()
    return [
        warc_record("request", req, {"WARC-Target-URI": url, "WARC-Record-ID": _rid("request", url),
                                     "Content-Type": "application/http; msgtype=request"}),
        response,
        warc_record("metadata", b"fetchTimeMs: 100\r\n", {
            "WARC-Target-URI": url, "WARC-Record-ID": _rid("metadata", url),
            "Content-Type": "application/warc-fields", "WARC-Concurrent-To": rid}),
    ]


def wet_conversion(url: str, text: str) -> bytes:
    """A WET ``conversion`` record (Common Crawl's own text extraction)."""
    return warc_record("conversion", text.encode("utf-8"), {
        "WARC-Target-URI": url, "WARC-Record-ID": _rid("conversion", url), "Content-Type": "text/plain",
        "WARC-Refers-To": _rid("response", url)})


def write_warc(path: str | Path, records: Iterable[bytes], compress: str = "members") -> Path:
    """Write records: ``members`` (one gzip member each, like Common Crawl), ``stream`` (the whole file as
    one gzip stream) or ``none``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recs = list(records)
    if compress == "members":
        data = b"".join(gzip.compress(r, mtime=0) for r in recs)
    elif compress == "stream":
        data = gzip.compress(b"".join(recs), mtime=0)
    elif compress == "none":
        data = b"".join(recs)
    else:
        raise ValueError(f"compress must be members, stream or none, got {compress!r}")
    path.write_bytes(data)
    return path
