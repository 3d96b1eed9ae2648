"""An embedded sample corpus that needs no network: the documentation text shipped inside CPython.

``pydoc_data.topics`` (the text behind ``help("if")``): ~465 kB of real English prose and code under the
PSF licence in every CPython install, tokenized in seconds, real enough that a small model's loss drops
visibly. Its content follows the Python version, so the manifest records hashes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from megadepth.common.io import atomic_write_bytes

__all__ = [
    "BLANK_RUN", "DOC_TARGET_CHARS", "group_paragraphs", "python_docs_documents", "sample_corpus_jsonl",
    "write_sample_corpus",
]

#: Paragraphs are grouped into documents of about this many characters: topics range from a few hundred
#: bytes to ~40 kB, and a few-kB document keeps enough documents (about 170) for a validation split.
DOC_TARGET_CHARS = 4000

BLANK_RUN = re.compile(r"\n(?:[ \t]*\n)+")


def group_paragraphs(paragraphs: Iterable[str], target_chars: int = DOC_TARGET_CHARS) -> Iterator[str]:
    """Paragraphs joined by blank lines into documents of about ``target_chars``, in order; a paragraph is
    never split, so a document may exceed ``target_chars`` when one paragraph does."""
    group: list[str] = []
    size = 0
    for para in paragraphs:
        if group and size + len(para) > target_chars:
            yield "\n\n".join(group)
            group, size = [], 0
        group.append(para)
        size += len(para) + 2
    if group:
        yield "\n\n".join(group)


def python_docs_documents(target_chars: int = DOC_TARGET_CHARS) -> list[str]:
    """The pydoc topics as documents, deterministic: sorted topic keys, paragraphs grouped in order."""
    from pydoc_data.topics import topics

    docs: list[str] = []
    for key in sorted(topics):
        paragraphs = [p.rstrip() for p in BLANK_RUN.split(topics[key].strip("\n"))]
        docs.extend(group_paragraphs((p for p in paragraphs if p.strip()), target_chars))
    return docs


def sample_corpus_jsonl() -> bytes:
    """The corpus as JSONL bytes: one ``{"text": ...}`` object per line, UTF-8."""
    lines = (json.dumps({"text": doc}, ensure_ascii=False) + "\n" for doc in python_docs_documents())
    return "".join(lines).encode("utf-8")


def write_sample_corpus(out_file: str | Path) -> Path:
    """Write :func:`sample_corpus_jsonl` to ``out_file`` atomically; returns the path."""
    return atomic_write_bytes(out_file, sample_corpus_jsonl())
