"""What the prep commands leave out, said out loud: files they do not read, documents over the size cap.

Files in an input folder that the pipeline does not read (a README, PDFs, a ``warc.paths.gz`` list) are
counted by extension and listed (the first :data:`UNREAD_LISTED`) in ``plan.json`` / the manifest, and
named in a warning line before any work. Standard library only: every ``megadepth`` command imports this
(through ``data_prep.text_shards``) when it builds its command line.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["DEFAULT_MAX_DOC_BYTES", "UNREAD_LISTED", "extension", "too_large", "unread_files",
           "unread_summary", "unread_warning"]

#: The per-document cap of ``prep text``: the default of ``prep run``'s ``read.max_payload_bytes``
#: (tests/test_prep_hygiene.py checks that they agree).
DEFAULT_MAX_DOC_BYTES = 5_000_000
#: At most this many unread paths are listed (all are counted): ``plan.json`` is read by every task.
UNREAD_LISTED = 1000
_COMPRESSED = {".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip"}


def too_large(text: str, max_bytes: int) -> bool:
    """Whether ``text`` is over ``max_bytes`` in UTF-8, encoding only when the character count (a
    character is 1 to 4 bytes) cannot decide."""
    n = len(text)
    if n > max_bytes:
        return True
    if n * 4 <= max_bytes:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > max_bytes


def extension(name: str) -> str:
    """The extension a reader would go by: ``.pdf``, ``.txt.gz`` (with a compression suffix), or ``(none)``."""
    suffixes = [s.lower() for s in Path(name).suffixes]
    if not suffixes:
        return "(none)"
    if suffixes[-1] in _COMPRESSED and len(suffixes) > 1:
        return "".join(suffixes[-2:])
    return suffixes[-1]


def unread_files(root: Path, reads: Callable[[Path], bool], skip_dir: Callable[[Path], bool]) -> list[Path]:
    """Files under ``root`` that ``reads`` says no to, in sorted order; hidden files and folders and the
    folders ``skip_dir`` names (prep outputs) are not looked into."""
    out: list[Path] = []
    visited: set[str] = set()
    for here, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(here)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not skip_dir(Path(here) / d))
        for name in sorted(names):
            f = Path(here) / name
            if not name.startswith(".") and f.is_file() and not reads(f):
                out.append(f)
    return out


def unread_summary(paths: Iterable[str | Path]) -> dict:
    """``{"count", "by_extension", "paths"}``: every file counted, the first :data:`UNREAD_LISTED` listed."""
    unique = sorted({str(p) for p in paths})
    by_ext = Counter(extension(os.path.basename(p)) for p in unique)
    return {
        "count": len(unique),
        "by_extension": dict(sorted(by_ext.items(), key=lambda kv: (-kv[1], kv[0]))),
        "paths": unique[:UNREAD_LISTED],
    }


def unread_warning(summary: dict, readable: str, where: str) -> str | None:
    """One line naming the files not read (None when there are none), with where the full list is."""
    n = summary.get("count", 0)
    if not n:
        return None
    kinds = ", ".join(f"{k} {ext}" for ext, k in list(summary["by_extension"].items())[:5])
    more = ", ..." if len(summary["by_extension"]) > 5 else ""
    listed = "listed" if n <= len(summary["paths"]) else f"the first {len(summary['paths'])} listed"
    return (
        f"{n} file(s) in the input folders are not read (not {readable}): {kinds}{more}; e.g. "
        f"{summary['paths'][0]} ({listed} in {where})"
    )
