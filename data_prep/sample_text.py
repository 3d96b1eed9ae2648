"""An embedded sample corpus that needs no network: the documentation text shipped inside CPython.

``pydoc_data.topics`` is the text behind ``help("if")`` etc.: 79 topics, about 465 kB of real English
prose and code with an open licence (PSF), present in every CPython install. It is small enough to
tokenize in seconds and real enough that a small model's loss drops visibly on it -- which is what a
first run needs. Its exact content follows the Python version, so the manifest records hashes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from megadepth.common.io import atomic_write_bytes

__all__ = ["DOC_TARGET_CHARS", "python_docs_documents", "sample_corpus_jsonl", "write_sample_corpus"]

#: Paragraphs of one topic are grouped into documents of about this many characters. Topics range from
#: a few hundred bytes to ~40 kB; a few-kB document keeps the count of documents (about 170) large
#: enough for a validation split while keeping each one coherent.
DOC_TARGET_CHARS = 4000

_BLANK_RUN = re.compile(r"\n(?:[ \t]*\n)+")


def python_docs_documents(target_chars: int = DOC_TARGET_CHARS) -> list[str]:
    """The pydoc topics as documents, deterministic: sorted topic keys, paragraphs grouped in order.

    A paragraph is never split, so a document may exceed ``target_chars`` when one paragraph does.
    """
    from pydoc_data.topics import topics

    docs: list[str] = []
    for key in sorted(topics):
        paragraphs = [p.rstrip() for p in _BLANK_RUN.split(topics[key].strip("\n"))]
        group: list[str] = []
        size = 0
        for para in paragraphs:
            if not para.strip():
                continue
            if group and size + len(para) > target_chars:
                docs.append("\n\n".join(group))
                group, size = [], 0
            group.append(para)
            size += len(para) + 2
        if group:
            docs.append("\n\n".join(group))
    return docs


def sample_corpus_jsonl() -> bytes:
    """The corpus as JSONL bytes: one ``{"text": ...}`` object per line, UTF-8."""
    lines = (json.dumps({"text": doc}, ensure_ascii=False) + "\n" for doc in python_docs_documents())
    return "".join(lines).encode("utf-8")


def write_sample_corpus(out_file: str | Path) -> Path:
    """Write :func:`sample_corpus_jsonl` to ``out_file`` atomically; returns the path."""
    return atomic_write_bytes(out_file, sample_corpus_jsonl())
