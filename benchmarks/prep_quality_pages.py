"""The pages of the extraction quality benchmark and their reference text, from pinned public archives.

Three collections of real web pages that ship with the text a correct extraction holds:

* ``trafilatura``: the test pages of trafilatura 1.1.0's source distribution on PyPI (``tests/cache``,
  one page per site, mostly German, about a quarter English) and, as reference, the snippets its tests
  assert must / must not be in the extracted text (``tests/realworld_tests.py``, read with ``ast``; code
  that is commented out there is not read). Collection: GPL-3.0-or-later; each page belongs to its site.
* ``newspaper``: the article pages of newspaper4k 0.9.6's source distribution on PyPI (``tests/data/html``)
  with the whole article text newspaper's tests expect (``tests/data/txt``), English news sites and a few
  other languages. Collection: MIT; each page belongs to its site.
* ``pydocs``: pages of the Python 3.11 documentation as Debian ships them (``python3.11-doc``, Sphinx HTML):
  the tutorial, HOWTOs, FAQ and some library chapters. The main text is known exactly: Sphinx writes it
  into ``<div class="body" role="main">``; every innermost block element there (paragraph, list item,
  heading, definition, table cell, each line of a code block) is one reference line. Licence: PSF-2.0.

Each archive is downloaded once, with the registry's ordinary client (pip for PyPI, apt-get for Debian),
into a cache folder and checked against its pinned sha256; nothing is fetched from the sites themselves.
The pages are read straight out of the archives. The small licence-compatible subset shipped in
``tests/fixtures/prep_quality`` (PSF and Creative Commons pages) is read by :func:`load_fixture`.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import json
import lzma
import shutil
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import urlsplit

from data_prep.large_corpus import Source, default_cache_dir, fetch_sources
from data_prep.plan import sha256_file
from megadepth.common.errors import DataError

__all__ = [
    "ARCHIVES",
    "Archive",
    "Page",
    "default_pages_cache",
    "fetch_archive",
    "load_fixture",
    "load_pages",
    "sphinx_reference",
]


@dataclass(frozen=True)
class Archive:
    """One pinned archive holding benchmark pages."""

    key: str  # the collection's name in --sources
    registry: Literal["pypi", "debian"]
    name: str
    version: str
    filename: str
    sha256: str
    licence: str  # of the collection as distributed (each page also belongs to its site)


ARCHIVES: tuple[Archive, ...] = (
    Archive("trafilatura", "pypi", "trafilatura", "1.1.0", "trafilatura-1.1.0.tar.gz",
            "650678fe3b3219795ccc72d8d37d2a9dc8c3070529598fddc2809ccd27c55bc4",
            "GPL-3.0-or-later (trafilatura's test collection; the pages belong to their sites)"),
    Archive("newspaper", "pypi", "newspaper4k", "0.9.6", "newspaper4k-0.9.6.tar.gz",
            "a3f2f0e017dddb6f1019ee77aaa8980e13e6ecea0b949abc7167aae4770d2d0e",
            "MIT (newspaper4k's test collection; the pages belong to their sites)"),
    Archive("pydocs", "debian", "python3.11-doc", "3.11.2-6+deb12u9", "python3.11-doc_3.11.2-6+deb12u9_all.deb",
            "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
            "PSF-2.0 (Python documentation, Debian package)"),
)  # fmt: skip

#: Library chapters taken from the Python documentation besides the tutorial, HOWTOs and FAQ: everyday
#: modules whose pages mix prose, API entries and examples.
PYDOCS_LIBRARY = (
    "argparse", "collections", "csv", "datetime", "functools", "itertools", "json", "logging", "os.path",
    "pathlib", "random", "re", "shutil", "sqlite3", "statistics", "string", "subprocess", "tempfile",
    "textwrap", "unittest",
)  # fmt: skip


@dataclass
class Page:
    """One page: its HTML bytes and what a correct extraction of it holds.

    ``reference`` is the whole main text as lines (``kind == "full"``); otherwise ``with_`` / ``without``
    are snippets that must / must not be in it (``kind == "snippets"``). ``language`` is filled in by the
    benchmark (fastText on the page's whole visible text, independent of the extractor under test).
    """

    id: str
    collection: str
    site: str
    url: str
    html: bytes
    licence: str
    kind: Literal["full", "snippets"]
    reference: tuple[str, ...] = ()
    with_: tuple[str, ...] = ()
    without: tuple[str, ...] = ()
    genre: Literal["web", "docs"] = "web"
    language: str = ""


def default_pages_cache() -> Path:
    """Next to the large sample corpus's sdists: ``~/.cache/megadepth/prep_quality`` (``$MEGADEPTH_CACHE``)."""
    return default_cache_dir().parent / "prep_quality"


def _site(url: str) -> str:
    host = urlsplit(url).hostname or ""
    return host.removeprefix("www.")


# ------------------------------------------------------------------------------------------ fetching


def fetch_archive(archive: Archive, cache: Path, *, index_url: str | None = None, log=None) -> Path:
    """The archive's file in ``cache``, downloaded with the registry's client when missing or changed."""
    cache.mkdir(parents=True, exist_ok=True)
    if archive.registry == "pypi":
        src = Source(archive.name, archive.version, archive.filename, archive.sha256, archive.licence, ())
        return fetch_sources(cache, [src], index_url=index_url, log=log)[0]
    path = cache / archive.filename
    if path.is_file() and sha256_file(path) == archive.sha256:
        return path
    if shutil.which("apt-get") is None:
        raise DataError(
            f"{archive.name} {archive.version} comes from Debian and apt-get is not here; put {archive.filename} "
            f"(sha256 {archive.sha256}) into {cache}, or leave the collection out (--sources)"
        )
    if log is not None:
        print(f"downloading {archive.name}={archive.version} (Debian) into {cache}", file=log)
    proc = subprocess.run(["apt-get", "download", f"{archive.name}={archive.version}"], cwd=cache,
                          capture_output=True, text=True, timeout=30 * 60)
    if proc.returncode != 0 or not path.is_file():
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("W:")]
        raise DataError(
            f"could not download {archive.name}={archive.version} with apt-get ({(lines or ['no message'])[-1]}); "
            f"run apt-get update, or put {archive.filename} into {cache}, or leave the collection out (--sources)"
        )
    got = sha256_file(path)
    if got != archive.sha256:
        raise DataError(f"{path}: sha256 {got} is not the pinned {archive.sha256}")
    return path


# ------------------------------------------------------------------------------------------ reading


def _tar_files(path: Path, want) -> dict[str, bytes]:
    """Members of a tarball (path below the top folder -> bytes) for which ``want(path)`` is true."""
    out: dict[str, bytes] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            if not m.isfile():
                continue
            rel = PurePosixPath(*PurePosixPath(m.name).parts[1:]).as_posix()
            if want(rel):
                f = tar.extractfile(m)
                if f is not None:
                    out[rel] = f.read()
    return out


def _deb_data(path: Path) -> tarfile.TarFile:
    """The data.tar.* member of a .deb (an ``ar`` archive), opened, without dpkg."""
    raw = path.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise DataError(f"{path}: not a Debian package")
    pos = 8
    while pos + 60 <= len(raw):
        name = raw[pos : pos + 16].decode().strip().rstrip("/")
        size = int(raw[pos + 48 : pos + 58].decode().strip())
        body = raw[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".xz"):
                body = lzma.decompress(body)
            elif name.endswith(".gz"):
                body = gzip.decompress(body)
            elif not name.endswith(".tar"):
                raise DataError(f"{path}: {name} is compressed in a way this reader does not know")
            return tarfile.open(fileobj=io.BytesIO(body))
        pos += 60 + size + (size & 1)
    raise DataError(f"{path}: no data.tar member")


def _realworld_snippets(source: str) -> tuple[dict[str, str], dict[str, tuple[list[str], list[str]]]]:
    """trafilatura's ``realworld_tests.py``: MOCK_PAGES (url -> file) and, per url, the strings asserted
    ``in result`` / ``not in result`` after ``result = load_mock_page(url, ...)``."""
    tree = ast.parse(source)
    mock: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "MOCK_PAGES" for t in node.targets):
            mock = ast.literal_eval(node.value)
    snippets: dict[str, tuple[list[str], list[str]]] = {}
    current: list[str | None] = [None]

    def visit(stmts: list[ast.stmt]) -> None:
        for st in stmts:
            if (isinstance(st, ast.Assign) and isinstance(st.value, ast.Call)
                    and getattr(st.value.func, "id", "") == "load_mock_page"):
                arg = st.value.args[0] if st.value.args else None
                current[0] = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
            elif isinstance(st, ast.Assert) and current[0] is not None:
                for node in ast.walk(st.test):
                    if not (isinstance(node, ast.Compare) and len(node.ops) == 1
                            and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)
                            and isinstance(node.comparators[0], ast.Name) and node.comparators[0].id == "result"):
                        continue
                    with_, without = snippets.setdefault(current[0], ([], []))
                    if isinstance(node.ops[0], ast.In):
                        with_.append(node.left.value)
                    elif isinstance(node.ops[0], ast.NotIn):
                        without.append(node.left.value)
            elif isinstance(st, (ast.If, ast.For, ast.While, ast.With, ast.Try)):
                for part in ("body", "orelse", "finalbody"):
                    visit(getattr(st, part, []) or [])

    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            current[0] = None
            visit(node.body)
    return mock, snippets


def _trafilatura_pages(path: Path, archive: Archive) -> list[Page]:
    files = _tar_files(path, lambda p: p == "tests/realworld_tests.py" or p.startswith("tests/cache/"))
    mock, snippets = _realworld_snippets(files["tests/realworld_tests.py"].decode("utf-8"))
    pages = []
    for url, (with_, without) in sorted(snippets.items()):
        name = mock.get(url)
        html = files.get(f"tests/cache/{name}") if name else None
        if html is None or not _site(url):  # e.g. "http://exotic_tags": a made-up page, no site
            continue
        pages.append(Page(id=f"trafilatura/{name.removesuffix('.html')}", collection=archive.key, site=_site(url),
                          url=url, html=html, licence=archive.licence, kind="snippets", with_=tuple(with_),
                          without=tuple(without)))
    return pages


def _newspaper_pages(path: Path, archive: Archive) -> list[Page]:
    files = _tar_files(path, lambda p: p.startswith("tests/data/") and p.count("/") == 3)
    seen: set[str] = set()
    pages = []
    for rel in sorted(files):
        if not (rel.startswith("tests/data/html/") and rel.endswith(".html")):
            continue
        stem = rel[len("tests/data/html/") : -len(".html")]
        txt = files.get(f"tests/data/txt/{stem}.txt")
        if txt is None:
            continue
        digest = hashlib.sha256(files[rel]).hexdigest()
        if digest in seen:  # the same page filed twice under two names: the first name's text counts
            continue
        seen.add(digest)
        meta = files.get(f"tests/data/metadata/{stem}.json")
        url = ""
        if meta is not None:
            got = json.loads(meta).get("url") or ""
            url = got if isinstance(got, str) and got.startswith("http") else ""
        lines = tuple(ln.strip() for ln in txt.decode("utf-8").splitlines() if ln.strip())
        pages.append(Page(id=f"newspaper/{stem}", collection=archive.key, site=_site(url) or f"newspaper:{stem}",
                          url=url, html=files[rel], licence=archive.licence, kind="full", reference=lines))
    return pages


#: Block elements whose innermost occurrences are the reference lines of a Sphinx page.
_BLOCKS = frozenset("p li dt dd h1 h2 h3 h4 h5 h6 pre td th caption figcaption blockquote".split())


def sphinx_reference(html: bytes | str) -> tuple[str, ...]:
    """The main text of a Sphinx page as lines: in ``div.body[role=main]``, the text of every block
    element that holds no other block element (whitespace collapsed; a code block line by line), with
    Sphinx's "¶" anchors removed. Empty when the page has no such body."""
    import lxml.html

    root = lxml.html.fromstring(html)
    bodies = root.xpath('//div[@role="main"]')
    if not bodies:
        return ()
    body = bodies[0]
    for a in body.xpath('.//a[contains(concat(" ", normalize-space(@class), " "), " headerlink ")]'):
        a.drop_tree()
    lines: list[str] = []
    for el in body.iter():
        if not isinstance(el.tag, str) or el.tag not in _BLOCKS:
            continue
        if any(isinstance(d.tag, str) and d.tag in _BLOCKS for d in el.iterdescendants()):
            continue
        text = el.text_content()
        if el.tag == "pre":
            lines += [ln.strip() for ln in text.splitlines() if ln.strip()]
        else:
            one = " ".join(text.split())
            if one:
                lines.append(one)
    return tuple(lines)


def _pydocs_pages(path: Path, archive: Archive) -> list[Page]:
    prefix = "usr/share/doc/python3.11/html/"
    chapters = {f"library/{m}.html" for m in PYDOCS_LIBRARY}
    pages = []
    with _deb_data(path) as tar:
        for m in tar:
            name = m.name.removeprefix("./")
            if not (m.isfile() and name.startswith(prefix)):
                continue
            rel = name[len(prefix) :]
            folder, _, leaf = rel.rpartition("/")
            if not (rel in chapters or (folder in ("tutorial", "howto", "faq") and leaf != "index.html")):
                continue
            f = tar.extractfile(m)
            if f is None:
                continue
            html = f.read()
            ref = sphinx_reference(html)
            if ref:
                pages.append(Page(id=f"pydocs/{rel.removesuffix('.html')}", collection=archive.key,
                                  site="docs.python.org", url=f"https://docs.python.org/3.11/{rel}", html=html,
                                  licence=archive.licence, kind="full", reference=ref, genre="docs"))
    return sorted(pages, key=lambda p: p.id)


_READERS = {"trafilatura": _trafilatura_pages, "newspaper": _newspaper_pages, "pydocs": _pydocs_pages}


def load_pages(cache: Path, sources: Sequence[str], *, index_url: str | None = None, log=None) -> list[Page]:
    """The pages of the chosen collections (downloading what the cache lacks), in a fixed order."""
    unknown = set(sources) - set(_READERS)
    if unknown:
        raise DataError(f"unknown page collection(s) {sorted(unknown)}; known: {sorted(_READERS)}")
    pages: list[Page] = []
    for archive in ARCHIVES:
        if archive.key in sources:
            path = fetch_archive(archive, cache, index_url=index_url, log=log)
            pages += _READERS[archive.key](path, archive)
    return pages


# ------------------------------------------------------------------------------------------ fixture


def load_fixture(folder: Path) -> list[Page]:
    """The shipped subset: ``pages.json`` lists each page (file, site, url, licence and, for snippet
    pages, the snippets); the HTML files are gzipped; Sphinx pages get their reference from the HTML."""
    manifest = json.loads((folder / "pages.json").read_text(encoding="utf-8"))
    pages = []
    for entry in manifest["pages"]:
        html = gzip.decompress((folder / entry["file"]).read_bytes())
        kind = entry["kind"]
        pages.append(Page(id=entry["id"], collection=entry["collection"], site=entry["site"], url=entry["url"],
                          html=html, licence=entry["licence"], kind=kind, genre=entry.get("genre", "web"),
                          reference=sphinx_reference(html) if kind == "full" else (),
                          with_=tuple(entry.get("with", ())), without=tuple(entry.get("without", ()))))
    return pages


def iter_fixture_entries(pages: Sequence[Page]) -> Iterator[dict]:
    """Manifest entries for pages (used once to write the fixture's pages.json)."""
    for p in pages:
        entry = {"id": p.id, "collection": p.collection, "site": p.site, "url": p.url, "licence": p.licence,
                 "kind": p.kind, "genre": p.genre, "file": p.id.replace("/", "__") + ".html.gz"}
        if p.kind == "snippets":
            entry["with"] = list(p.with_)
            entry["without"] = list(p.without)
        yield entry
