"""Scoring an extraction against a page's reference text: which reference lines it holds, which of its lines
belong to the reference.

The rule, in words (docs/data_prep.md, "Extraction quality benchmark"):

* Text is compared as word tokens: NFKC-normalised, case-folded runs of letters and digits (``\\w+``).
  Punctuation, markup and spacing do not count, so "**Hello**, world" matches "Hello world", but two
  words an extractor glued together ("1979–1983" printed as "19791983") are one different token.
* A reference line is *found* in an extraction when at least :data:`MATCH` (90 %) of its word 3-grams
  occur among the extraction's 3-grams. The extraction's tokens are taken as one stream across its
  line breaks (extractors break paragraphs differently), so only what is inside a line matters: a lost
  separator breaks the 3-grams around it (a 20-word line with one glued pair loses 3 of its 18 3-grams
  and is missed), a lost sentence or a changed word does too. Lines shorter than 3 words must occur as
  a contiguous run of tokens. Lines without a word ("¶", "—") are ignored.
* Recall is the fraction of reference lines found. Precision is the fraction of the extraction's lines
  (with a word) found, by the same rule, in the reference, for pages whose reference is their whole
  main text.
* Pages whose reference is a few snippets (texts that must / must not be in a correct extraction) get
  the snippet recall, and as a precision proxy the fraction of must-not snippets that are absent.

Why 3-grams at 90 % rather than exact lines: extractors differ legitimately in where they break lines
and in inline spacing; a bag-of-words test would instead forgive lost sentences on long pages.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["MATCH", "NGRAM", "Grams", "found", "score_full", "score_snippets", "tokens"]

#: Fraction of a line's word n-grams that must occur in the other text for the line to count as there.
MATCH = 0.9
#: Words per n-gram.
NGRAM = 3
_WORD = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    """Word tokens: NFKC, case-folded, runs of letters/digits/underscore."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


class Grams:
    """The n-grams (n = 1 .. NGRAM) of one token stream, for containment tests against it."""

    __slots__ = ("sets",)

    def __init__(self, toks: Sequence[str]) -> None:
        self.sets: list[set[tuple[str, ...]]] = [
            {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)} for n in range(1, NGRAM + 1)
        ]

    @classmethod
    def of_lines(cls, lines: Iterable[str]) -> Grams:
        """One stream over all lines, in order (n-grams may span a line break)."""
        toks: list[str] = []
        for line in lines:
            toks += tokens(line)
        return cls(toks)


def found(line_tokens: Sequence[str], grams: Grams, match: float = MATCH) -> bool | None:
    """Whether a line (as tokens) is in the text behind ``grams``; None for a line without a word."""
    k = len(line_tokens)
    if k == 0:
        return None
    if k < NGRAM:
        return tuple(line_tokens) in grams.sets[k - 1]
    top = grams.sets[NGRAM - 1]
    hits = sum(tuple(line_tokens[i : i + NGRAM]) in top for i in range(k - NGRAM + 1))
    return hits >= match * (k - NGRAM + 1)


def _fraction(lines: Iterable[str], grams: Grams) -> tuple[int, int]:
    """(lines found, lines with a word)."""
    hit = total = 0
    for line in lines:
        f = found(tokens(line), grams)
        if f is None:
            continue
        total += 1
        hit += f
    return hit, total


@dataclass(frozen=True)
class FullScore:
    recall: float | None  # reference lines found in the extraction
    precision: float | None  # extraction lines found in the reference (None: nothing extracted)
    ref_lines: int
    out_lines: int


def score_full(reference: Sequence[str], text: str | None) -> FullScore:
    """Recall and precision of an extraction against a whole-main-text reference (lines)."""
    out_lines = (text or "").splitlines()
    hit, total = _fraction(reference, Grams.of_lines(out_lines))
    p_hit, p_total = _fraction(out_lines, Grams.of_lines(reference))
    return FullScore(
        recall=hit / total if total else None,
        precision=p_hit / p_total if p_total else None,
        ref_lines=total,
        out_lines=p_total,
    )


@dataclass(frozen=True)
class SnippetScore:
    recall: float | None  # must-have snippets found
    clean: float | None  # must-not snippets absent (a precision proxy)
    leaked: tuple[str, ...]  # the must-not snippets that were found


def score_snippets(with_: Sequence[str], without: Sequence[str], text: str | None) -> SnippetScore:
    """Snippet recall and the must-not proxy for precision (see the module doc)."""
    grams = Grams.of_lines((text or "").splitlines())
    hit, total = _fraction(with_, grams)
    leaked = tuple(s for s in without if found(tokens(s), grams))
    n_without = sum(1 for s in without if tokens(s))
    return SnippetScore(
        recall=hit / total if total else None,
        clean=(n_without - len(leaked)) / n_without if n_without else None,
        leaked=leaked,
    )
