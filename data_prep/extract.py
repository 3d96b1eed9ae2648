"""Decoding HTML bytes and turning HTML into text, each page under a time limit.

Decoding: a byte-order mark, else strict UTF-8, else the HTTP charset, else the page's ``<meta charset>``,
else resiliparse's detector (undecodable bytes become U+FFFD). Extraction: resiliparse main content
(default) or trafilatura with FineWeb's settings, then ``tidy_text``. Both extractors are checked on a
known page when created: one failing on every page would otherwise make a silently empty crawl.
"""

from __future__ import annotations

import codecs
import re
import signal
import threading
from collections import Counter
from contextlib import contextmanager

from data_prep.config import ExtractConfig
from megadepth.common.errors import DataError

__all__ = ["Extractor", "decode_html", "resiliparse_options", "tidy_text"]

_META = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().lower()).name
    except LookupError:
        return None


def decode_html(payload: bytes, http_charset: str | None, stats: Counter | None = None) -> str:
    """HTML bytes -> str, trying the declared encodings before guessing (see the module doc)."""
    for bom, enc in _BOMS:
        if payload.startswith(bom):
            return payload.decode(enc, errors="replace")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if stats is not None:
        stats["read:non_utf8"] += 1
    m = _META.search(payload[:4096])
    for enc in (_codec(http_charset), _codec(m.group(1).decode("ascii", "ignore")) if m else None):
        if enc and enc not in ("utf-8", "utf_8"):
            try:
                return payload.decode(enc)
            except (UnicodeDecodeError, LookupError):
                continue
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    return bytes_to_str(payload, detect_encoding(payload))


#: a Unicode noncharacter: appended to a lone separator so that resiliparse keeps it, then removed
_MARK = "\ufdd0"
#: a text node between two tags holding one character of three or more UTF-8 bytes (literal or a reference)
_LONE_SEPARATOR = re.compile(r">(\s*+(?:[\u0800-\U0010ffff]|&#?\w{1,31};))(?=\s*+<)")
#: a line of white space (``\s`` covers U+00A0 and U+2000-200A) and zero-width spaces only
_BLANK_LINE = re.compile(r"^(?:[^\S\n]|[\u200b\u2060\ufeff])++$", re.M)
_BLANK_RUNS = re.compile(r"\n{3,}")
_INNER_SPACE = re.compile(r"(?<=\S)[^\S\n]++(?=\S)")


def mark_separators(html: str) -> str:
    """Protect lone separators between inline elements from resiliparse (see ``extract.inline_separators``)."""
    return _LONE_SEPARATOR.sub(lambda m: ">" + m.group(1) + _MARK, html)


def tidy_text(text: str, cfg: ExtractConfig) -> str:
    """The extracted text, cleaned as ``cfg.tidy_whitespace`` asks; the separator marker is always removed."""
    text = text.replace(_MARK, "")
    if cfg.tidy_whitespace:  # inner white space with a tab in it (table cells) becomes one space
        text = _INNER_SPACE.sub(lambda m: " " if "\t" in m.group() else m.group(), _BLANK_LINE.sub("", text))
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


class _Timeout(Exception):
    pass


def _raise_timeout(signum, frame):  # pragma: no cover - called by the signal machinery
    raise _Timeout()


@contextmanager
def _time_limit(seconds: float):
    """SIGALRM-based limit; a no-op outside the main thread (signals only go there)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    old = signal.signal(signal.SIGALRM, _raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


_CHECK_HTML = (
    "<html><head><title>t</title></head><body><nav><a href='/'>Home</a> <a href='/x'>About</a></nav>"
    "<article><h1>Checking the extractor</h1><p>The quick brown fox jumps over the lazy dog, and this "
    "sentence is long enough to count as the main content of a page that an extractor must keep.</p>"
    "<p>A second paragraph says that seven wizards quietly hex jovial kings in bright harbours.</p>"
    "</article><footer>Copyright</footer></body></html>"
)


def resiliparse_options(cfg: ExtractConfig) -> dict[str, bool]:
    """The keyword arguments of resiliparse's ``extract_plain_text`` that the config holds."""
    return {k: getattr(cfg, k) for k in ("main_content", "alt_texts", "links", "form_fields", "noscript",
                                         "list_bullets", "preserve_formatting")}


class Extractor:
    """HTML -> text with the configured engine; ``None`` when a page yields nothing or times out."""

    def __init__(self, cfg: ExtractConfig) -> None:
        self.cfg = cfg
        if cfg.engine == "resiliparse":
            from resiliparse.extract.html2text import extract_plain_text

            opts = resiliparse_options(cfg)
            self._fn = lambda html: extract_plain_text(html, **opts)
        else:
            try:
                import trafilatura
            except ImportError as e:
                raise DataError(f"extract.engine trafilatura: cannot import it ({e})") from None

            def traf(html: str) -> str | None:
                return trafilatura.extract(html, favor_precision=True, include_comments=False, deduplicate=True)

            self._fn = traf
        self._self_check()

    def _self_check(self) -> None:
        try:
            out = self._fn(_CHECK_HTML) or ""
        except Exception as e:  # noqa: BLE001 - any failure here means every page would fail
            raise DataError(f"extract.engine {self.cfg.engine} fails on a simple page ({type(e).__name__}: {e}); "
                            "for trafilatura with lxml >= 5.2 install lxml_html_clean") from None
        if "seven wizards" not in out:
            raise DataError(f"extract.engine {self.cfg.engine} returned no main text for a simple page; "
                            "check the installation (trafilatura needs lxml_html_clean with lxml >= 5.2)")

    def __call__(self, html: str, stats: Counter) -> str | None:
        try:
            with _time_limit(self.cfg.time_limit_s):
                if self.cfg.engine == "resiliparse" and self.cfg.inline_separators:
                    html = mark_separators(html)
                text = self._fn(html)
                text = tidy_text(text, self.cfg) if text else ""
        except _Timeout:
            stats["drop:extract_timeout"] += 1
            return None
        except Exception:  # noqa: BLE001 - a parser error on one page is that page's problem
            stats["drop:extract_error"] += 1
            return None
        if not text:
            stats["drop:extract_empty"] += 1
            return None
        return text
