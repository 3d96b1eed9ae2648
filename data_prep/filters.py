"""Quality rules: Gopher repetition, Gopher quality, C4 lines, FineWeb — datatrove's definitions.

The rules and thresholds follow datatrove (FineWeb's code), so that a page kept or dropped there is, as
far as the word split allows, kept or dropped here; faster: words come from a regular expression instead
of spaCy (``_TOKEN``), and the n-gram statistics work on integer word ids and rolling hashes in numpy.

Each filter is ``fn(text, cfg) -> (text or None, reason or None)``: ``(None, reason)`` drops the page,
``(text, None)`` keeps it, possibly changed (C4 removes lines). A reason is a :class:`Rejection`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from itertools import filterfalse

import numpy as np

from data_prep.config import (
    C4Config,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    PrepConfig,
    RepeatedLinesConfig,
)

__all__ = ["TERMINAL_PUNCTUATION", "Rejection", "build_filters", "c4_filter", "fineweb_filter",
           "gopher_quality", "gopher_repetition", "repeated_lines", "split_words"]

#: the word split, close to spaCy's English tokenizer (which datatrove's rules use) where it moves Gopher's
#: alphabetic-word ratio: a URL is one token; "it's" / "don't" split before the apostrophe; "U.S.", "a.m."
#: and "J." keep their final period; "@name", "M&M", "1,000", "10:30", "1/2", "1979–1983" and "--" are one.
_CLITIC_TAIL = r"(?:[sSdDmMtT]|ll|LL|re|RE|ve|VE)\b"
_TOKEN = re.compile(
    r"(?:https?://|www\.)[^\s<>\"]*[^\s<>\".,;:!?)\]'’”]"  # URL, without a trailing punctuation mark
    rf"|['’]{_CLITIC_TAIL}"
    rf"|@?\w++(?:(?:[.&@]|['’](?!{_CLITIC_TAIL})|[,:/–](?=\d))\w++)*+"  # words joined inside
    r"(?:(?<=\.\w)\.|(?<=\b[A-Za-z])\.(?!\w))?"  # an abbreviation's final period
    r"|-{2,}|\.\.\.|[^\w\s]"
)
_LETTER = re.compile(r"[^\W\d_]")
_PARAGRAPHS = re.compile(r"\n{2,}")
_BLANK_RUNS = re.compile(r"\n{3,}")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_SENTENCE_END = re.compile(r"(?<![.!?。！？])[.!?。！？]++(?:[\"'’”)\]]++)?(?=\s|$)")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_END_PUNCT = (".", "?", "!", '"', "'")
#: Lines "ending in punctuation" for FineWeb's rule: datatrove's TERMINAL_PUNCTUATION, the common part.
TERMINAL_PUNCTUATION = (
    ".", "!", "?", "…", "。", "！", "？", "؟", "۔", "।", "॥", "።", "፧", "᠃", "᠉", "߹", "܀", "܁", "܂",
    "‼", "‽", "⁇", "⁈", "⁉", "︒", "﹒", "﹖", "﹗", "｡", "៕", "៖", "჻", "፨", "꓿", "꘎", "꘏", "꛳", "꛷",
    '"', "'", "”", "’", "»", "«", ")", "]",
)  # fmt: skip
_P = np.uint64(0x9E3779B97F4A7C15)


class Rejection(str):
    """Why a rule dropped a page: equal to the rule's name (``"short_doc"``), plus the measured ``value``
    and the ``threshold`` it failed (None where a rule has no number, as for "lorem_ipsum")."""

    value: float | None
    threshold: float | None

    def __new__(cls, name: str, value: float | None = None, threshold: float | None = None) -> Rejection:
        self = super().__new__(cls, name)
        self.value = None if value is None else float(value)
        self.threshold = None if threshold is None else float(threshold)
        return self


class _Doc:
    """What the rules compute from one text, computed once and shared by the rules run on it
    (:func:`build_filters`). Tokens are split per line (no token crosses a newline) and kept by stripped line,
    so that FineWeb's word count on C4's output (lines stripped, mostly unchanged) costs look-ups."""

    __slots__ = ("line_tokens", "parts", "text", "_tokens")

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts = text.split("\n")
        self.line_tokens: dict[str, list[str]] = {}
        self._tokens: list[str] | None = None

    @property
    def tokens(self) -> list[str]:
        if self._tokens is None:
            out: list[str] = []
            for part in self.parts:
                key = part.strip()  # no token holds white space: a line and its stripped form split alike
                toks = self.line_tokens.get(key)
                if toks is None:
                    toks = self.line_tokens[key] = _TOKEN.findall(key)
                out += toks
            self._tokens = out
        return self._tokens


def split_words(text: str) -> list[str]:
    """Word tokens: runs of letters/digits, and each other non-space character on its own."""
    return _Doc(text).tokens


def _find_duplicates(items: list[str]) -> tuple[int, int]:
    """(elements equal to an earlier one, their characters) — datatrove's find_duplicates."""
    seen: set[str] = set()
    dup = chars = 0
    for x in items:
        if x in seen:
            dup += 1
            chars += len(x)
        else:
            seen.add(x)
    return dup, chars


def _greedy_dup_chars(pos: np.ndarray, h: np.ndarray, chars: np.ndarray, n: int) -> int:
    """datatrove's find_all_duplicate on the n-grams that occur more than once (``pos`` ascending): an
    n-gram seen before counts its characters and the scan jumps past it."""
    seen: set[int] = set()
    repeated = 0
    nxt = 0
    for p, key, c in zip(pos.tolist(), h.tolist(), chars.tolist(), strict=True):
        if p < nxt:
            continue
        if key in seen:
            repeated += c
            nxt = p + n
        else:
            seen.add(key)
    return repeated


def _counts(h: np.ndarray) -> np.ndarray:
    """For each element, how often its value occurs in ``h`` (np.unique without its overhead; any sort
    will do, as equal values get the same count whatever their order)."""
    n = len(h)
    if n < 2:
        return np.ones(n, dtype=np.int64)
    order = np.argsort(h)
    hs = h[order]
    edge = np.empty(n + 1, dtype=bool)
    edge[0] = edge[n] = True
    np.not_equal(hs[1:], hs[:-1], out=edge[1:n])
    bounds = np.flatnonzero(edge)
    sizes = bounds[1:] - bounds[:-1]
    out = np.empty(n, dtype=np.int64)
    out[order] = np.repeat(sizes, sizes)
    return out


@lru_cache(maxsize=16)
def _ngram_plan(top_n_grams: tuple[tuple[int, float], ...], dup_n_grams: tuple[tuple[int, float], ...]
                ) -> tuple[dict[int, float], dict[int, float], int, int, dict[int, float | None]]:
    """The top and duplicated rules by n, the largest n of all and of the top rules, and for each n the
    smallest threshold of the duplicated-n-gram rules for n or more words (None: no such rule)."""
    top, dup = dict(top_n_grams), dict(dup_n_grams)
    max_n = max([*top, *dup], default=0)
    rest = {n: min((f for m, f in dup_n_grams if m >= n), default=None) for n in range(1, max_n + 1)}
    return top, dup, max_n, max(top, default=0), rest


def _covered_chars(pos: np.ndarray, csum: np.ndarray, max_n: int, n_words: int) -> int:
    """Characters (as in "".join) of the words in the union of ``[p, p + max_n)`` over ``pos``, the
    positions whose n-gram repeats (ascending): an upper bound on the duplicated characters of every
    n-gram rule for m >= n words, as the greedy scan counts disjoint m-grams starting at a subset of
    ``pos``. When this over ``n_chars`` is at most a rule's threshold, that rule cannot fail."""
    if not len(pos):
        return 0
    ends = np.minimum(pos + max_n, n_words)
    ends[:-1] = np.minimum(ends[:-1], pos[1:])  # sorted starts, ordered ends: cut each at the next start
    return int((csum[ends] - csum[pos]).sum())


def _ngram_stats(words: list[str], cfg: GopherRepetitionConfig, n_chars: int) -> Rejection | None:
    """The n-gram rules; the reason of the first that fails, or None.

    n-grams grow one word at a time, only at positions where the shorter n-gram repeats, each with a
    64-bit rolling hash of its word ids (a word's id: the position of its first occurrence). Once the top
    n-grams are done, the loop stops as soon as :func:`_covered_chars` shows that no rule left can fail.
    """
    n_words = len(words)
    first = np.fromiter(map({}.setdefault, words, range(n_words)), dtype=np.int64, count=n_words)
    ids = first.view(np.uint64)  # the same non-negative values, for the wrapping hash arithmetic
    csum = np.zeros(n_words + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, words), dtype=np.int64, count=n_words), out=csum[1:])
    top, dup, max_n, max_top, rest_thr = _ngram_plan(tuple(cfg.top_n_grams), tuple(cfg.dup_n_grams))
    top_frac: dict[int, float] = {}
    dup_frac: dict[int, float] = {}
    pos = np.arange(n_words)
    h = ids.copy()
    for n in range(1, max_n + 1):
        if n > n_words:
            break
        if n == 1:
            counts = np.bincount(first)[first]
        else:
            # positions where an n-gram still fits: a prefix, as ``pos`` is ascending
            cut = int(np.searchsorted(pos, n_words - n, side="right"))
            pos = pos[:cut]
            h = h[:cut] * _P + ids[pos + (n - 1)]
            counts = _counts(h)
        repeated = counts > 1
        if n in top:
            # Counter.most_common(1): the highest count, ties to the n-gram seen first (the earliest
            # position holding the highest count is that n-gram's first occurrence); with no repeats
            # at all every count is 1 and that is the first n-gram of the text
            best = int(counts.max()) if len(counts) else 1
            p = int(pos[int(np.argmax(counts))]) if best > 1 else 0
            chars = int(csum[p + n] - csum[p]) + (n - 1)  # " ".join of the n words
            top_frac[n] = chars * best / n_chars
        pos, h = pos[repeated], h[repeated]
        if n >= max_top:
            thr = rest_thr[n]
            if thr is None or _covered_chars(pos, csum, max_n, n_words) / n_chars <= thr:
                break  # every rule left passes: its fraction is at most this bound
        if n in dup:
            chars_n = csum[pos + n] - csum[pos]  # "".join of the n words
            dup_frac[n] = _greedy_dup_chars(pos, h, chars_n, n) / n_chars if len(pos) else 0.0
        if not len(pos) and n >= max(top, default=0):
            break  # nothing repeats any more: every later duplicated-n-gram fraction is 0
    # the rules in datatrove's order: top n-grams as configured, then duplicated n-grams
    for n, frac in cfg.top_n_grams:
        if top_frac.get(n, 0.0) > frac:
            return Rejection(f"top_{n}_gram", top_frac[n], frac)
    for n, frac in cfg.dup_n_grams:
        if dup_frac.get(n, 0.0) > frac:
            return Rejection(f"duplicated_{n}_n_grams", dup_frac[n], frac)
    return None


def _paragraphs(stripped: str) -> list[str]:
    """``re.split(r"\n{2,}", stripped)`` for a stripped text, as a plain ``split`` where no run of newlines
    is longer than two."""
    if "\n\n\n" in stripped:
        return _PARAGRAPHS.split(stripped)
    return stripped.split("\n\n")


def _lines(text: str, parts: list[str]) -> list[str]:
    """``re.split(r"\n+", text)`` from ``parts = text.split("\n")``: the non-empty parts, with the
    empty piece the regular expression leaves before a leading and after a trailing newline."""
    if not text:
        return [""]
    lines = list(filter(None, parts))
    if text[0] == "\n":
        lines.insert(0, "")
    if text[-1] == "\n":
        lines.append("")
    return lines


def gopher_repetition(text: str, cfg: GopherRepetitionConfig,
                      doc: _Doc | None = None) -> tuple[str | None, Rejection | None]:
    """``doc``: ``text`` analysed already (by an earlier rule of the chain), if it was."""
    if not text:
        return None, Rejection("empty")
    if doc is None:
        doc = _Doc(text)
    reason = _duplicated_lines(text, doc.parts, cfg)
    if reason is None and doc.tokens:
        reason = _ngram_stats(doc.tokens, cfg, len(text))
    return (text, None) if reason is None else (None, reason)


def _duplicated_lines(text: str, parts: list[str], cfg: GopherRepetitionConfig) -> Rejection | None:
    """Gopher repetition's duplicated paragraph and line rules on a non-empty text, in datatrove's order;
    ``parts``: ``text.split("\n")``."""
    paragraphs = _paragraphs(text.strip())
    lines = _lines(text, parts)
    pdup, pchars = _find_duplicates(paragraphs)
    ldup, lchars = _find_duplicates(lines)
    for name, value, limit in (("dup_para_frac", pdup / len(paragraphs), cfg.dup_para_frac),
                               ("dup_para_char_frac", pchars / len(text), cfg.dup_para_char_frac),
                               ("dup_line_frac", ldup / len(lines), cfg.dup_line_frac),
                               ("dup_line_char_frac", lchars / len(text), cfg.dup_line_char_frac)):
        if limit is not None and value > limit:
            return Rejection(name, value, limit)
    return None


def _fails_duplicated_lines(text: str, rep: GopherRepetitionConfig | None, fw: FineWebConfig | None) -> bool:
    """Whether ``text`` fails Gopher repetition's duplicated-line rules or FineWeb's duplicated characters."""
    if not text:
        return False
    if rep is not None and _duplicated_lines(text, text.split("\n"), rep) is not None:
        return True
    if fw is not None and fw.char_duplicates_ratio is not None:
        denom = len(text) - text.count("\n")
        lines = [line for line in text.split("\n") if line.strip()]
        if denom and _find_duplicates(lines)[1] / denom > fw.char_duplicates_ratio:
            return True
    return False


_CODE_CHARS = frozenset("=(){}[];<>")


def _collapsible(line: str, key: str, max_chars: int) -> bool:
    """A short line of words (a caption, a credit, a button's text): not indented, with a letter, without
    what marks code (operators, brackets, a block-opening ":" at its end, a prompt), so that a page's
    code keeps its repeated lines."""
    return (0 < len(key) <= max_chars and line[0] not in " \t" and not key.endswith(":")
            and not key.startswith((">>>", "...", "#", "//")) and _CODE_CHARS.isdisjoint(key)
            and any(c.isalpha() for c in key))


def repeated_lines(text: str, cfg: RepeatedLinesConfig, rep: GopherRepetitionConfig | None,
                   fw: FineWebConfig | None) -> tuple[str, None]:
    """A page failing a duplicated-line rule keeps each of its short lines of words once (the config's
    ``repeated_lines`` says why); any other page, and every code-like line, is left as it is."""
    if not _fails_duplicated_lines(text, rep, fw):
        return text, None
    seen: set[str] = set()
    kept: list[str] = []
    for line in text.split("\n"):
        key = line.strip()
        if _collapsible(line, key, cfg.max_chars):
            if key in seen:
                continue
            seen.add(key)
        kept.append(line)
    if len(kept) == text.count("\n") + 1:
        return text, None
    return _BLANK_RUNS.sub("\n\n", "\n".join(kept)).strip(), None


def _is_word(token: str) -> bool:
    """A token is a word unless it is punctuation ("--", "..." or one non-word character): a word token
    holds a word character (``isalnum`` or "_") first or, as in "'s" and "@name", second."""
    return any(c.isalnum() or c == "_" for c in token[:2])


@lru_cache(maxsize=16)
def _stop_set(stop_words: tuple[str, ...]) -> frozenset[str]:
    return frozenset(stop_words)


def gopher_quality(text: str, cfg: GopherQualityConfig,
                   doc: _Doc | None = None) -> tuple[str | None, Rejection | None]:
    """``doc``: ``text`` analysed already (by an earlier rule of the chain), if it was."""
    tokens = (_Doc(text) if doc is None else doc).tokens
    n_tokens = len(tokens)
    # the tokens that are not punctuation: only the few distinct tokens not all letters/digits are looked at
    punct = {t for t in set(filterfalse(str.isalnum, tokens)) if not _is_word(t)}
    words = list(filterfalse(punct.__contains__, tokens)) if punct else tokens
    n_words = len(words)
    if cfg.min_doc_words is not None and n_words < cfg.min_doc_words:
        return None, Rejection("short_doc", n_words, cfg.min_doc_words)
    if n_words == 0:
        return None, Rejection("short_doc", 0, cfg.min_doc_words)
    if cfg.max_doc_words is not None and n_words > cfg.max_doc_words:
        return None, Rejection("long_doc", n_words, cfg.max_doc_words)
    avg = sum(map(len, words)) / n_words
    if cfg.min_avg_word_length is not None and avg < cfg.min_avg_word_length:
        return None, Rejection("below_avg_word_length", avg, cfg.min_avg_word_length)
    if cfg.max_avg_word_length is not None and avg > cfg.max_avg_word_length:
        return None, Rejection("above_avg_word_length", avg, cfg.max_avg_word_length)
    if cfg.max_symbol_word_ratio is not None:
        if text.count("#") / n_tokens > cfg.max_symbol_word_ratio:
            return None, Rejection("too_many_hashes", text.count("#") / n_tokens, cfg.max_symbol_word_ratio)
        ellipses = text.count("...") + text.count("…")
        if ellipses / n_tokens > cfg.max_symbol_word_ratio:
            return None, Rejection("too_many_ellipsis", ellipses / n_tokens, cfg.max_symbol_word_ratio)
    lines = text.splitlines() or [text]
    if cfg.max_bullet_lines_ratio is not None:
        bullets = sum(1 for s in lines if s.lstrip().startswith(("•", "-")))
        if bullets / len(lines) > cfg.max_bullet_lines_ratio:
            return None, Rejection("too_many_bullets", bullets / len(lines), cfg.max_bullet_lines_ratio)
    if cfg.max_ellipsis_lines_ratio is not None:
        ell = sum(1 for s in lines if s.rstrip().endswith(("...", "…")))
        if ell / len(lines) > cfg.max_ellipsis_lines_ratio:
            return None, Rejection("too_many_end_ellipsis", ell / len(lines), cfg.max_ellipsis_lines_ratio)
    if cfg.min_alpha_words_ratio is not None:
        # word tokens with a letter, over all tokens (punctuation tokens count, as in datatrove); the
        # all-letter words are skipped in C, only the rest (digits, "U.S", "don't") are searched
        no_letter = sum(1 for w in filterfalse(str.isalpha, words) if not _LETTER.search(w))
        alpha = (n_words - no_letter) / n_tokens
        if alpha < cfg.min_alpha_words_ratio:
            return None, Rejection("below_alpha_threshold", alpha, cfg.min_alpha_words_ratio)
    if cfg.min_stop_words is not None:
        stops = _stop_set(tuple(cfg.stop_words))
        n_stops = sum(map(stops.__contains__, words))
        if n_stops < cfg.min_stop_words:
            return None, Rejection("not_enough_stop_words", n_stops, cfg.min_stop_words)
    return text, None


def _count_sentences(line: str) -> int:
    """Sentences in a line: terminal punctuation followed by space/end, plus an unterminated tail."""
    ends = list(_SENTENCE_END.finditer(line))
    if not ends:
        return 1 if line.strip() else 0
    tail = line[ends[-1].end() :].strip()
    return len(ends) + (1 if tail else 0)


def c4_filter(text: str, cfg: C4Config) -> tuple[str | None, Rejection | None]:
    kept: list[str] = []
    sentences = 0
    # Per line, only what decides: a word longer than max_word_length needs a line that long; "fewer than k
    # words" needs k + 1 pieces; every policy phrase holds "cookie", "terms of use" or "privacy policy";
    # sentences are counted until there are enough.
    max_len, min_words, min_sent = cfg.max_word_length, cfg.min_words_per_line, cfg.min_num_sentences
    for raw in text.splitlines():
        line = raw.strip()
        if max_len is not None and line and len(line) > max_len and max(map(len, line.split())) > max_len:
            continue
        n_words = len(line.split(None, min_words)) if min_words is not None and min_words >= 0 else 0
        if cfg.remove_citations and "[" in line:
            line = _CITATION.sub("", line)
        if cfg.filter_no_terminal_punct and (not line.endswith(_END_PUNCT) or line.endswith("...")):
            continue
        if min_words is not None and n_words < min_words:
            continue
        low = line.lower()
        if cfg.filter_lorem_ipsum and "lorem ipsum" in low:
            return None, Rejection("lorem_ipsum")
        if cfg.filter_javascript and "javascript" in low:
            continue
        if cfg.filter_curly_bracket and "{" in line:
            return None, Rejection("curly_bracket")
        if (cfg.filter_policy and ("cookie" in low or "terms of use" in low or "privacy policy" in low)
                and any(p in low for p in _POLICY)):
            continue
        if min_sent is not None and sentences < min_sent:
            sentences += _count_sentences(line)
        kept.append(line)
    if min_sent is not None and sentences < min_sent:
        # counting stops only once there are enough, so a page that fails has its exact count
        return None, Rejection("too_few_sentences", sentences, min_sent)
    out = "\n".join(kept).strip()
    if not out:
        return None, Rejection("empty")
    return out, None


def fineweb_filter(text: str, cfg: FineWebConfig,
                   line_tokens: dict[str, list[str]] | None = None) -> tuple[str | None, Rejection | None]:
    """``line_tokens``: the tokens of stripped lines an earlier rule of the chain split already, if any
    (looked up, never added to)."""
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return None, Rejection("empty")
    if cfg.line_punct_thr is not None:
        ratio = sum(1 for line in lines if line.endswith(TERMINAL_PUNCTUATION)) / len(lines)
        if ratio < cfg.line_punct_thr and not (ratio == 0 and cfg.line_punct_exclude_zero):
            return None, Rejection("line_punct_ratio", ratio, cfg.line_punct_thr)
    if cfg.short_line_thr is not None:
        ratio = sum(1 for line in lines if len(line) <= cfg.short_line_length) / len(lines)
        if ratio > cfg.short_line_thr:
            return None, Rejection("short_line_ratio", ratio, cfg.short_line_thr)
    if cfg.char_duplicates_ratio is not None:
        denom = len(text) - text.count("\n")
        if denom:
            ratio = _find_duplicates(lines)[1] / denom
            if ratio > cfg.char_duplicates_ratio:
                return None, Rejection("char_dup_ratio", ratio, cfg.char_duplicates_ratio)
    if cfg.new_line_ratio is not None:
        # len(split_words(text)), line by line: the lines C4 kept as they were are split already (looked
        # up, never added: FineWeb alone must not grow the cache document after document)
        cache = {} if line_tokens is None else line_tokens
        n_words = 0
        for line in lines:
            toks = cache.get(line.strip())
            n_words += len(_TOKEN.findall(line) if toks is None else toks)
        if n_words == 0:
            return None, Rejection("list_ratio", None, cfg.new_line_ratio)  # newlines per word: infinite
        ratio = text.count("\n") / n_words
        if ratio > cfg.new_line_ratio:
            return None, Rejection("list_ratio", ratio, cfg.new_line_ratio)
    return text, None


Filter = Callable[[str], tuple[str | None, Rejection | None]]


def build_filters(cfg: PrepConfig) -> list[tuple[str, Filter]]:
    """The enabled rules, in FineWeb's order: Gopher repetition, Gopher quality, C4, FineWeb; before them,
    the repeated short lines of a page that would fail a duplicated-line rule are dropped."""
    out: list[tuple[str, Filter]] = []
    last = [_Doc("")]  # the last text the chain analysed, shared by the rules that run on it

    def doc(text: str) -> _Doc:  # the same ``str`` object gets the same analysis
        if last[0].text is not text:
            last[0] = _Doc(text)
        return last[0]

    rep = cfg.gopher_repetition if cfg.gopher_repetition.enabled else None
    fw = cfg.fineweb if cfg.fineweb.enabled else None
    if cfg.repeated_lines.enabled and (rep is not None or fw is not None):
        out.append(("repeated_lines", lambda t, c=cfg.repeated_lines: repeated_lines(t, c, rep, fw)))
    if cfg.gopher_repetition.enabled:
        out.append(("gopher_rep", lambda t, c=cfg.gopher_repetition: gopher_repetition(t, c, doc(t))))
    if cfg.gopher_quality.enabled:
        out.append(("gopher_qual", lambda t, c=cfg.gopher_quality: gopher_quality(t, c, doc(t))))
    if cfg.c4.enabled:
        out.append(("c4", lambda t, c=cfg.c4: c4_filter(t, c)))
    if cfg.fineweb.enabled:
        out.append(("fineweb", lambda t, c=cfg.fineweb: fineweb_filter(t, c, last[0].line_tokens)))
    return out
