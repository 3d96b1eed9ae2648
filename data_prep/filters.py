"""Quality rules: Gopher repetition, Gopher quality, C4 lines, FineWeb — datatrove's definitions.

The rules and thresholds follow datatrove (FineWeb's code) so that a page kept or dropped there is kept
or dropped here. What differs is speed: words come from a regular expression instead of spaCy (20-50x
faster; a word is a run of letters/digits, possibly joined by inner apostrophes or periods as in
"don't", "U.S.", "3.14"; an ellipsis and every other non-space character is a token of its own, which
is how spaCy splits English punctuation), and the n-gram statistics work on integer word ids and
rolling hashes in numpy instead of joined strings. The results are those of datatrove's algorithms,
including the greedy skip in "duplicated n-gram characters".

Each filter is ``fn(text, cfg) -> (text or None, reason or None)``: ``(None, reason)`` drops the page,
``(text, None)`` keeps it, possibly changed (C4 removes lines).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from data_prep.config import C4Config, FineWebConfig, GopherQualityConfig, GopherRepetitionConfig, PrepConfig

__all__ = [
    "TERMINAL_PUNCTUATION",
    "build_filters",
    "c4_filter",
    "fineweb_filter",
    "gopher_quality",
    "gopher_repetition",
    "split_words",
]

_TOKEN = re.compile(r"\w+(?:['’.]\w+)*|\.\.\.|[^\w\s]")
_WORD = re.compile(r"\w+(?:['’.]\w+)*")
_LETTER = re.compile(r"[^\W\d_]")
_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_SENTENCE_END = re.compile(r"[.!?。！？]+(?:[\"'’”)\]]+)?(?=\s|$)")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_END_PUNCT = (".", "?", "!", '"', "'")
#: Lines "ending in punctuation" for FineWeb's rule: datatrove's TERMINAL_PUNCTUATION, the common part.
TERMINAL_PUNCTUATION = (
    ".", "!", "?", "…", "。", "！", "？", "؟", "۔", "।", "॥", "።", "፧", "᠃", "᠉", "߹", "܀", "܁", "܂",
    "‼", "‽", "⁇", "⁈", "⁉", "︒", "﹒", "﹖", "﹗", "｡", "៕", "៖", "჻", "፨", "꓿", "꘎", "꘏", "꛳", "꛷",
    '"', "'", "”", "’", "»", "«", ")", "]",
)  # fmt: skip
_P = np.uint64(0x9E3779B97F4A7C15)


_LAST: list = [None, None]  # the last text split, and its tokens: the rules run on the same text


def split_words(text: str) -> list[str]:
    """Word tokens: runs of letters/digits, and each other non-space character on its own."""
    if _LAST[0] is not text:
        _LAST[0], _LAST[1] = text, _TOKEN.findall(text)
    return _LAST[1]


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
    """datatrove's find_all_duplicate on the n-grams that occur more than once (``pos`` ascending):
    scan left to right; an n-gram seen before counts its characters and the scan jumps past it. The
    n-grams that occur once are never repeats and never matter to the others, so they are skipped."""
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
    """For each element, how often its value occurs in ``h`` (np.unique without its overhead)."""
    if len(h) < 2:
        return np.ones(len(h), dtype=np.int64)
    order = np.argsort(h, kind="stable")
    hs = h[order]
    start = np.empty(len(hs), dtype=bool)
    start[0] = True
    np.not_equal(hs[1:], hs[:-1], out=start[1:])
    bounds = np.flatnonzero(start)
    sizes = np.diff(np.append(bounds, len(hs)))
    out = np.empty(len(hs), dtype=np.int64)
    out[order] = np.repeat(sizes, sizes)
    return out


def _ngram_stats(words: list[str], cfg: GopherRepetitionConfig, n_chars: int) -> str | None:
    """The n-gram rules; the reason of the first that fails, or None.

    n-grams grow one word at a time, only at positions where the shorter n-gram occurs more than once
    (an n-gram can only repeat where its prefix repeats), so the work shrinks quickly with n. Each
    n-gram has a 64-bit rolling hash of its word ids.
    """
    n_words = len(words)
    ids = np.array(list(map({}.setdefault, words, range(n_words))), dtype=np.uint64)
    csum = np.zeros(n_words + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, words), dtype=np.int64, count=n_words), out=csum[1:])
    top = dict(cfg.top_n_grams)
    dup = dict(cfg.dup_n_grams)
    max_n = max([*top, *dup], default=0)
    top_frac: dict[int, float] = {}
    dup_frac: dict[int, float] = {}
    pos = np.arange(n_words)
    h = ids.copy()
    for n in range(1, max_n + 1):
        if n > n_words:
            break
        if n > 1:
            keep = pos <= n_words - n
            pos, h = pos[keep], h[keep] * _P + ids[pos[keep] + (n - 1)]
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
        if n in dup:
            chars_n = csum[pos + n] - csum[pos]  # "".join of the n words
            dup_frac[n] = _greedy_dup_chars(pos, h, chars_n, n) / n_chars if len(pos) else 0.0
        if not len(pos) and n >= max(top, default=0):
            break  # nothing repeats any more: every later duplicated-n-gram fraction is 0
    # the rules in datatrove's order: top n-grams as configured, then duplicated n-grams
    for n, frac in cfg.top_n_grams:
        if top_frac.get(n, 0.0) > frac:
            return f"top_{n}_gram"
    for n, frac in cfg.dup_n_grams:
        if dup_frac.get(n, 0.0) > frac:
            return f"duplicated_{n}_n_grams"
    return None


def gopher_repetition(text: str, cfg: GopherRepetitionConfig) -> tuple[str | None, str | None]:
    n_chars = len(text)
    if n_chars == 0:
        return None, "empty"
    paragraphs = _PARAGRAPHS.split(text.strip())
    dup, chars = _find_duplicates(paragraphs)
    if cfg.dup_para_frac is not None and dup / len(paragraphs) > cfg.dup_para_frac:
        return None, "dup_para_frac"
    if cfg.dup_para_char_frac is not None and chars / n_chars > cfg.dup_para_char_frac:
        return None, "dup_para_char_frac"
    lines = _LINES.split(text)
    dup, chars = _find_duplicates(lines)
    if cfg.dup_line_frac is not None and dup / len(lines) > cfg.dup_line_frac:
        return None, "dup_line_frac"
    if cfg.dup_line_char_frac is not None and chars / n_chars > cfg.dup_line_char_frac:
        return None, "dup_line_char_frac"
    words = split_words(text)
    if words:
        reason = _ngram_stats(words, cfg, n_chars)
        if reason is not None:
            return None, reason
    return text, None


def gopher_quality(text: str, cfg: GopherQualityConfig) -> tuple[str | None, str | None]:
    tokens = split_words(text)
    n_tokens = len(tokens)
    words = _WORD.findall(text)  # the tokens that are not punctuation
    n_words = len(words)
    if cfg.min_doc_words is not None and n_words < cfg.min_doc_words:
        return None, "short_doc"
    if n_words == 0:
        return None, "short_doc"
    if cfg.max_doc_words is not None and n_words > cfg.max_doc_words:
        return None, "long_doc"
    avg = sum(map(len, words)) / n_words
    if cfg.min_avg_word_length is not None and avg < cfg.min_avg_word_length:
        return None, "below_avg_word_length"
    if cfg.max_avg_word_length is not None and avg > cfg.max_avg_word_length:
        return None, "above_avg_word_length"
    if cfg.max_symbol_word_ratio is not None:
        if text.count("#") / n_tokens > cfg.max_symbol_word_ratio:
            return None, "too_many_hashes"
        if (text.count("...") + text.count("…")) / n_tokens > cfg.max_symbol_word_ratio:
            return None, "too_many_ellipsis"
    lines = text.splitlines() or [text]
    if cfg.max_bullet_lines_ratio is not None:
        bullets = sum(1 for s in lines if s.lstrip().startswith(("•", "-")))
        if bullets / len(lines) > cfg.max_bullet_lines_ratio:
            return None, "too_many_bullets"
    if cfg.max_ellipsis_lines_ratio is not None:
        ell = sum(1 for s in lines if s.rstrip().endswith(("...", "…")))
        if ell / len(lines) > cfg.max_ellipsis_lines_ratio:
            return None, "too_many_end_ellipsis"
    if cfg.min_alpha_words_ratio is not None:
        # word tokens with a letter, over all tokens (punctuation tokens count, as in datatrove)
        alpha = sum(1 for w in words if w.isalpha() or _LETTER.search(w))
        if alpha / n_tokens < cfg.min_alpha_words_ratio:
            return None, "below_alpha_threshold"
    if cfg.min_stop_words is not None:
        stops = frozenset(cfg.stop_words)
        if sum(1 for w in words if w in stops) < cfg.min_stop_words:
            return None, "not_enough_stop_words"
    return text, None


def _count_sentences(line: str) -> int:
    """Sentences in a line: terminal punctuation followed by space/end, plus an unterminated tail."""
    ends = list(_SENTENCE_END.finditer(line))
    if not ends:
        return 1 if line.strip() else 0
    tail = line[ends[-1].end() :].strip()
    return len(ends) + (1 if tail else 0)


def c4_filter(text: str, cfg: C4Config) -> tuple[str | None, str | None]:
    kept: list[str] = []
    sentences = 0
    for raw in text.splitlines():
        line = raw.strip()
        words = line.split()
        if cfg.max_word_length is not None and any(len(w) > cfg.max_word_length for w in words):
            continue
        if cfg.remove_citations:
            line = _CITATION.sub("", line)
        if cfg.filter_no_terminal_punct and (not line.endswith(_END_PUNCT) or line.endswith("...")):
            continue
        if cfg.min_words_per_line is not None and len(words) < cfg.min_words_per_line:
            continue
        low = line.lower()
        if cfg.filter_lorem_ipsum and "lorem ipsum" in low:
            return None, "lorem_ipsum"
        if cfg.filter_javascript and "javascript" in low:
            continue
        if cfg.filter_curly_bracket and "{" in line:
            return None, "curly_bracket"
        if cfg.filter_policy and any(p in low for p in _POLICY):
            continue
        if cfg.min_num_sentences is not None:
            sentences += _count_sentences(line)
        kept.append(line)
    if cfg.min_num_sentences is not None and sentences < cfg.min_num_sentences:
        return None, "too_few_sentences"
    out = "\n".join(kept).strip()
    if not out:
        return None, "empty"
    return out, None


def fineweb_filter(text: str, cfg: FineWebConfig) -> tuple[str | None, str | None]:
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return None, "empty"
    if cfg.line_punct_thr is not None:
        ratio = sum(1 for line in lines if line.endswith(TERMINAL_PUNCTUATION)) / len(lines)
        if ratio < cfg.line_punct_thr and not (ratio == 0 and cfg.line_punct_exclude_zero):
            return None, "line_punct_ratio"
    if cfg.short_line_thr is not None:
        ratio = sum(1 for line in lines if len(line) <= cfg.short_line_length) / len(lines)
        if ratio > cfg.short_line_thr:
            return None, "short_line_ratio"
    if cfg.char_duplicates_ratio is not None:
        denom = len(text) - text.count("\n")
        if denom and _find_duplicates(lines)[1] / denom > cfg.char_duplicates_ratio:
            return None, "char_dup_ratio"
    if cfg.new_line_ratio is not None:
        n_words = len(split_words(text))
        if n_words == 0 or text.count("\n") / n_words > cfg.new_line_ratio:
            return None, "list_ratio"
    return text, None


Filter = Callable[[str], tuple[str | None, str | None]]


def build_filters(cfg: PrepConfig) -> list[tuple[str, Filter]]:
    """The enabled rules, in FineWeb's order: Gopher repetition, Gopher quality, C4, FineWeb."""
    out: list[tuple[str, Filter]] = []
    if cfg.gopher_repetition.enabled:
        out.append(("gopher_rep", lambda t, c=cfg.gopher_repetition: gopher_repetition(t, c)))
    if cfg.gopher_quality.enabled:
        out.append(("gopher_qual", lambda t, c=cfg.gopher_quality: gopher_quality(t, c)))
    if cfg.c4.enabled:
        out.append(("c4", lambda t, c=cfg.c4: c4_filter(t, c)))
    if cfg.fineweb.enabled:
        out.append(("fineweb", lambda t, c=cfg.fineweb: fineweb_filter(t, c)))
    return out
