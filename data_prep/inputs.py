"""Inputs: local WARC/WET/ARC files, Common Crawl ``*.paths.gz`` lists, globs, directories, and local
Hugging Face ``datasets`` sources (Parquet, JSONL, Arrow, ``save_to_disk`` folders).

Everything is resolved and checked before any work starts (a :class:`DataError` names what is wrong).
The result is a sorted, de-duplicated list; its order defines the work (task ``r`` of ``W`` takes
``inputs[r::W]``) and which copy of a duplicate document survives. Files seen but not read are returned
as :attr:`Resolved.unread`; URLs are held without their user:password (:mod:`data_prep.credentials`).
"""

from __future__ import annotations

import glob
import gzip
import itertools
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_prep.credentials import Credential, describe_failure, redact, remember, storage_options
from megadepth.common.errors import DataError

__all__ = ["InputFile", "RawDoc", "Resolved", "is_data_dir", "kind_of", "resolve", "resolve_inputs"]

_KINDS = (
    (".warc.wet.gz", "warc"), (".wet.gz", "warc"), (".wet", "warc"), (".warc.gz", "warc"), (".warc", "warc"),
    (".arc.gz", "arc"), (".arc", "arc"), (".parquet", "parquet"), (".jsonl.gz", "jsonl"), (".jsonl", "jsonl"),
    (".ndjson", "jsonl"), (".json.gz", "jsonl"), (".json", "jsonl"), (".arrow", "arrow"),
)
_WAT = (".wat.gz", ".wat")
_PATHS = (".paths.gz", ".paths")
_REMOTE = ("s3://", "gs://", "gcs://", "http://", "https://", "hf://", "az://", "abfs://")


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL of a store fsspec reads (schemes are case-insensitive: "HTTPS://" too)."""
    return path[:8].lower().startswith(_REMOTE)


def _lower_scheme(url: str) -> str:
    """"HTTPS://Host/x" -> "https://Host/x": fsspec knows its protocols by their lower-case names."""
    scheme, sep, rest = url.partition("://")
    return scheme.lower() + sep + rest


@dataclass(frozen=True, order=True)
class InputFile:
    """One unit of input. ``path`` is an absolute local path or a URL; ``size`` is None for URLs."""

    path: str
    kind: str
    size: int | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> InputFile:
        return cls(d["path"], d["kind"], d.get("size"))

    @property
    def remote(self) -> bool:
        return is_remote(self.path)


@dataclass(slots=True)
class RawDoc:
    """One candidate document read from an input: HTML bytes to extract (``html``), or text already
    (``text``)."""

    id: str
    url: str
    date: str
    text: str | None = None
    html: bytes | None = None
    charset: str | None = None


@dataclass
class Resolved:
    """What :func:`resolve` found: the inputs, the files it saw but does not read (absolute paths),
    and the origins whose user:password it took out of a URL."""

    files: list[InputFile]
    unread: list[str] = field(default_factory=list)
    credential_origins: list[str] = field(default_factory=list)


def kind_of(name: str) -> str | None:
    """The reader for a file name, or None when it is not an input type."""
    low = name.lower()
    if low.endswith(_WAT) or low.endswith(_PATHS):
        return None
    return next((k for suffix, k in _KINDS if low.endswith(suffix)), None)


def _local(p: Path) -> InputFile:
    kind = kind_of(p.name)
    if kind is None:
        raise DataError(f"{p}: unsupported input type (WARC/WET/ARC, Parquet, JSONL, Arrow)")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror})") from None
    if not os.access(p, os.R_OK):
        raise DataError(f"{p}: not readable (permission denied)")
    return InputFile(str(p.resolve()), kind, size)


def _datasets_dir(p: Path) -> list[InputFile] | None:
    """A ``Dataset.save_to_disk`` folder: its Arrow files in the order ``state.json`` lists them."""
    state = p / "state.json"
    if not state.is_file():
        return None
    try:
        files = [f["filename"] for f in json.loads(state.read_bytes())["_data_files"]]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise DataError(f"{state}: not a datasets state.json (no _data_files)") from None
    return [_local(p / f) for f in files]


_DATA_DIR_MARKERS = (("plan.json", "megadepth-prep-plan"), ("manifest.json", "megadepth-shards"))


def is_data_dir(p: Path) -> bool:
    """Whether ``p`` is a megadepth data directory (a prep output, finished or not): its plan.json or
    manifest.json says so. Its files are outputs, never inputs: an earlier run's Parquet parts, work
    files and JSON markers next to the crawl would otherwise be read back as documents."""
    for name, fmt in _DATA_DIR_MARKERS:
        f = p / name
        if f.is_file():
            try:
                doc = json.loads(f.read_bytes())
            except (OSError, ValueError, RecursionError):
                continue
            if isinstance(doc, dict) and doc.get("format") == fmt:
                return True
    return False


def _expand_dir(p: Path, unread: list[str]) -> list[InputFile]:
    if is_data_dir(p):
        docs = p / "documents"
        hint = f"; its kept documents are in {docs}" if docs.is_dir() else ""
        raise DataError(f"{p} is a megadepth data directory (an output, not an input){hint}")
    saved = _datasets_dir(p)
    if saved is not None:
        return saved
    found: list[InputFile] = []
    visited: set[str] = set()
    for root, dirs, names in os.walk(p, followlinks=True):
        here = Path(root)
        real = os.path.realpath(root)
        if real in visited:  # a symlink loop
            dirs[:] = []
            continue
        visited.add(real)
        # hidden folders, earlier prep outputs, and save_to_disk folders (read through their state.json)
        keep = []
        for d in sorted(dirs):
            sub = here / d
            if d.startswith(".") or is_data_dir(sub):
                continue
            saved = _datasets_dir(sub)
            if saved is not None:
                found.extend(saved)
                continue
            keep.append(d)
        dirs[:] = keep
        for name in names:
            if name.startswith(".") or not (here / name).is_file():
                continue
            if kind_of(name) is not None:
                found.append(_local(here / name))
            else:  # a README, a PDF, a paths list, a WAT file: not read, and said so
                unread.append(str((here / name).resolve()))
    if not found:
        raise DataError(f"{p}: no WARC/WET/ARC, Parquet, JSONL or Arrow files in this directory")
    return found


def _in_data_dir(f: Path, base: Path, known: dict[Path, bool]) -> bool:
    """Whether ``f`` lies in a megadepth data directory at or below ``base`` (the fixed part of a glob);
    ``known`` caches the answer per directory (a crawl glob matches ~90,000 files in a few folders)."""
    for parent in f.parents:
        if parent not in known:
            known[parent] = is_data_dir(parent)
        if known[parent]:
            return True
        if parent == base or parent == parent.parent:
            return False
    return False


def _glob_base(pattern: str) -> Path:
    fixed = list(itertools.takewhile(lambda part: not any(ch in part for ch in "*?["), Path(pattern).parts))
    return Path(*fixed) if fixed else Path(".")


def _read_paths_file(p: Path, prefix: str | None) -> list[InputFile]:
    """A Common Crawl ``warc.paths.gz`` / ``wet.paths.gz``: one relative key per line, joined to ``prefix``
    (already free of credentials: :func:`resolve` takes them out)."""
    try:
        raw = gzip.decompress(p.read_bytes()) if p.name.lower().endswith(".gz") else p.read_bytes()
        lines = (line.strip() for line in raw.decode("utf-8").splitlines())
        keys = [k for k in lines if k and not k.startswith("#")]
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: not a readable paths file ({e})") from None
    if not keys:
        raise DataError(f"{p}: empty paths file")
    if prefix is None:
        raise DataError(
            f"{p}: a paths file needs a prefix to resolve its keys against (--prefix DIR, or "
            "e.g. --prefix https://data.commoncrawl.org/ or s3://commoncrawl/)"
        )
    out: list[InputFile] = []
    if is_remote(prefix):
        prefix = _lower_scheme(prefix)
        base = prefix if prefix.endswith("/") else prefix + "/"
        for k in keys:
            kind = kind_of(k)
            if kind is None:
                raise DataError(f"{p}: key {k!r} is not a WARC/WET/ARC file (WAT files hold no text)")
            if kind not in ("warc", "arc"):
                raise DataError(f"{p}: remote inputs must be WARC/WET/ARC, got {k!r}")
            out.append(InputFile(base + k, kind, None))
        return out
    root = Path(prefix)
    if not root.is_dir():
        raise DataError(f"--prefix {prefix}: no such directory")
    missing = [k for k in keys if not (root / k).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(f"{p}: {root / missing[0]} does not exist{more} (of {len(keys)} listed)")
    return [_local(root / k) for k in keys]


def _one(raw: str, prefix: str | None, unread: list[str], seen: dict[str, Credential]) -> list[InputFile]:
    """The inputs behind one ``--input``; files seen but not read go to ``unread``, the credentials taken
    out of URLs to ``seen`` (by origin)."""
    if is_remote(raw):
        url, _ = remember(_lower_scheme(raw), seen)
        kind = kind_of(url)
        if kind not in ("warc", "arc"):
            raise DataError(f"{url}: remote inputs must be WARC/WET/ARC files")
        return [InputFile(url, kind, None)]
    p = Path(raw).expanduser()
    if p.is_dir():
        return _expand_dir(p, unread)
    if p.is_file():
        low = p.name.lower()
        if low.endswith(_PATHS):
            return _read_paths_file(p, prefix)
        if low.endswith(_WAT):
            raise DataError(f"{p}: a WAT file holds metadata only; give the WARC or WET files")
        return [_local(p)]
    if any(ch in raw for ch in "*?["):
        matches = sorted(glob.glob(os.path.expanduser(raw), recursive=True))
        if not matches:
            raise DataError(f"{redact(raw)}: no files match this pattern")
        out: list[InputFile] = []
        base = _glob_base(os.path.expanduser(raw))
        outputs = 0
        known: dict[Path, bool] = {}
        for m in matches:
            mp = Path(m)
            if mp.is_dir():
                continue
            if _in_data_dir(mp, base, known):
                outputs += 1
                continue
            if kind_of(mp.name) is None and not mp.name.lower().endswith(_PATHS):
                unread.append(str(mp.resolve()))
                continue
            out.extend(_one(m, prefix, unread, seen))
        if not out:
            why = " (they lie in megadepth data directories: outputs, not inputs)" if outputs else ""
            raise DataError(f"{redact(raw)}: the matching files are not WARC/WET/ARC, Parquet, JSONL or Arrow{why}")
        return out
    raise DataError(f"{redact(raw)}: no such file or directory")


def check_remote(files: Sequence[InputFile]) -> None:
    """Before any work: each remote protocol has its fsspec backend installed, and the first remote
    input of each protocol exists (a wrong --prefix or an unreachable host fails here, once, instead of
    in every task). Only the first is checked: a crawl lists ~90,000 keys."""
    first: dict[str, InputFile] = {}
    for f in files:
        if f.remote:
            first.setdefault(f.path.split("://", 1)[0], f)
    if not first:
        return
    import fsspec

    for protocol, f in first.items():
        try:
            fs = fsspec.filesystem(protocol, **storage_options(f.path))
        except ImportError as e:
            raise DataError(redact(f"{f.path}: reading {protocol}:// needs a package that is not installed ({e})")) from None
        except ValueError as e:
            raise DataError(redact(f"{f.path}: unsupported protocol ({e}); a password with # / ? must be percent-encoded")) from None
        try:
            try:
                fs.info(f.path)
            except FileNotFoundError:
                # fsspec's HTTP info() says "not found" for an unreachable host too; a one-byte read
                # tells them apart (and downloads nothing when the file is really missing)
                fs.cat_file(f.path, start=0, end=1)
        except FileNotFoundError:
            n = sum(1 for g in files if g.path.startswith(protocol + "://"))
            raise DataError(redact(f"{f.path}: does not exist (checked the first of {n} {protocol}:// inputs)")) from None
        except Exception as e:  # network errors come in many classes (aiohttp, botocore, OSError)
            raise DataError(redact(f"{f.path}: cannot reach ({describe_failure(e, f.path)})")) from None


def resolve_inputs(
    paths: Iterable[str | os.PathLike], prefix: str | None = None, exclude: str | os.PathLike | None = None
) -> list[InputFile]:
    """The sorted, unique input files behind ``paths``; a :class:`DataError` for anything unusable. Files
    under ``exclude`` (the output directory) are left out, or the next run would read its outputs back."""
    return resolve(paths, prefix, exclude).files


def resolve(
    paths: Iterable[str | os.PathLike], prefix: str | None = None, exclude: str | os.PathLike | None = None
) -> Resolved:
    """:func:`resolve_inputs`, plus the files seen but not read and the origins whose credentials were
    taken out of a URL (an input's or ``prefix``'s)."""
    files: set[InputFile] = set()
    given = [os.fspath(p) for p in paths]
    if not given:
        raise DataError("no inputs given (--input PATH ...)")
    unread: list[str] = []
    seen: dict[str, Credential] = {}
    if prefix is not None:
        prefix, _ = remember(prefix, seen)
    skip = Path(exclude).expanduser().resolve() if exclude is not None else None

    def kept(path: str) -> bool:
        return skip is None or not Path(path).is_relative_to(skip)

    for raw in given:
        found = [f for f in _one(raw, prefix, unread, seen) if f.remote or kept(f.path)]
        if not found:
            raise DataError(f"{redact(raw)}: holds only the output directory's own files (--out {exclude})")
        files.update(found)
    return Resolved(sorted(files, key=lambda f: f.path), sorted({u for u in unread if kept(u)}), sorted(seen))
