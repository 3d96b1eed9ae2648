"""URL filtering (stage 2 of the pipeline): drop pages by domain, exact URL or words in the URL, before any
HTML is extracted. The list format and matching rules are in docs/data_prep.md ("URL filtering").

A bare domain blocks that host and its subdomains; an entry with a scheme blocks one URL (scheme and host
compared case-insensitively, fragment ignored). Lists are hashed into the plan by their bytes: a list
edited after planning is refused instead of silently mixing two versions.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from data_prep.config import UrlFilterConfig
from megadepth.common.errors import DataError

__all__ = ["UrlFilter", "read_blocklist"]

_TOKEN = re.compile(r"[^0-9a-z]+")


def _split(url: str) -> SplitResult | None:
    try:
        return urlsplit(url.strip())
    except ValueError:
        return None


def _normalize(parts: SplitResult) -> str:
    """Scheme and host lower-cased, fragment dropped: the form exact-URL entries are compared in."""
    netloc = parts.netloc.lower().rstrip(".")
    rest = parts.path + (f"?{parts.query}" if parts.query else "")
    return f"{parts.scheme.lower()}://{netloc}{rest or '/'}"


def read_blocklist(path: str | Path, sha256: str | None = None) -> tuple[set[str], set[str]]:
    """(domains, exact URLs) of one list file; a clear :class:`DataError` when it cannot be read, or
    when ``sha256`` is given and the file no longer has it (edited after the plan was made)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"url_filter blocklist {p}: cannot read ({e.strerror or e})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"url_filter blocklist {p} changed since the plan was made")
    domains: set[str] = set()
    urls: set[str] = set()
    for line in data.decode("utf-8", errors="replace").splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if "://" in entry:
            parts = _split(entry)
            urls.add(_normalize(parts) if parts is not None else entry)
        else:
            domains.add(entry.lower().rstrip(".").removeprefix("*."))
    return domains, urls


class UrlFilter:
    """``reason(url)``: why a URL is dropped (``"domain"``, ``"url"``, ``"word"``, ``"subword"``) or None."""

    def __init__(self, cfg: UrlFilterConfig, sha256: Mapping[str, str] | None = None) -> None:
        """``sha256``: the plan's hash of each blocklist, checked as the list is read."""
        self.domains: set[str] = {d.lower().rstrip(".") for d in cfg.domains}
        self.urls: set[str] = set()
        for path in cfg.blocklists:
            domains, urls = read_blocklist(path, (sha256 or {}).get(path))
            self.domains |= domains
            self.urls |= urls
        self.words = frozenset(w.lower() for w in cfg.banned_words)
        self.subwords = tuple(s.lower() for s in cfg.banned_subwords)

    def _blocked_domain(self, host: str) -> bool:
        labels = host.split(".")
        return any(".".join(labels[i:]) in self.domains for i in range(len(labels)))

    def reason(self, url: str) -> str | None:
        if not url:
            return None  # documents without a URL (some Parquet inputs) are not URL-filtered
        parts = _split(url)
        host = parts.hostname.rstrip(".") if parts is not None and parts.hostname else None  # lower-cased
        if host is not None and self.domains and self._blocked_domain(host):
            return "domain"
        if self.urls and parts is not None and _normalize(parts) in self.urls:
            return "url"
        if self.words or self.subwords:
            body = url.lower().split("://", 1)[-1]
            if self.words and not self.words.isdisjoint(t for t in _TOKEN.split(body) if t):
                return "word"
            if any(s in body for s in self.subwords):
                return "subword"
        return None
