"""Writing files that other processes trust (a unique temporary file, fsynced, renamed over the final name),
and hashing them. Temporary files are created with ``os.open(..., 0o666)``, not ``tempfile.mkstemp`` (mode
0600, which the rename would keep), so the umask applies and teammates can read a run's files.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write_array", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "json_safe",
           "save_figure", "sha256_file", "temporary_path"]


def temporary_path(path: Path) -> Path:
    """A fresh name next to ``path`` for a file that will be renamed onto it (nothing is created)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, unique file next to ``path`` opened for writing: ``(fd, its path)``; a taken name is redrawn."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = temporary_path(path)
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``text`` as UTF-8, atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """JSON has no inf/nan: they become strings, so diverged runs stay readable by every parser."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON (inf/nan as strings) with a final newline, atomically."""
    return atomic_write_text(path, json.dumps(json_safe(data), indent=2) + "\n")


def atomic_write_array(path: str | Path, array: np.ndarray) -> Path:
    """``array`` in NumPy's ``.npy`` format (``np.save``'s bytes), atomically."""
    buf = io.BytesIO()
    np.save(buf, array)
    return atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes as hex, read in 1 MiB blocks (shards and checkpoints are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_figure(fig: Any, out: str | Path) -> Path:
    """A matplotlib figure as PNG, atomically (a reader never sees a half-written image), then closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return atomic_write_bytes(out, buf.getvalue())
