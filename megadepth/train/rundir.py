"""The run directory contract (docs/architecture.md): config.yaml, metrics.jsonl, summary.json, checkpoints/."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from megadepth.common.io import atomic_write_text, json_safe


class RunDir:
    """Paths of one run directory (``wandb_id``: every job of a resumed run logs into one W&B run)."""

    def __init__(self, root: str | Path) -> None:
        self.root = root = Path(root)
        self.config = root / "config.yaml"
        self.metrics = root / "metrics.jsonl"
        self.summary = root / "summary.json"
        self.checkpoints = root / "checkpoints"
        self.loss_plot = root / "loss.png"
        self.parametrization = root / "parametrization.txt"
        self.wandb_id = root / "wandb-run-id"


def probe_lock(path: Path) -> str | None:
    """The text of a lock file while some process holds an exclusive flock on it, else None. Only reads
    (a shared-lock probe), so a read-only or someone else's directory works; unopenable or no flock: None."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)  # also drops the probe's shared lock
    return None


_HELD_LOCK_FDS: set[int] = set()
"""Run-lock descriptors this process holds. A forked child (a data-loader worker) shares the flock, so an
orphaned worker kept the run locked: each child closes its copies at once."""


def _drop_inherited_locks() -> None:
    for fd in _HELD_LOCK_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


class RunLock:
    """An exclusive flock on ``RUN/.train.lock``, held by rank 0 of the job that trains the run, so two
    jobs (a requeue while the old job runs) never rewrite each other's files. The kernel drops it when the
    holder dies; the file holds ``host pid`` of the holder. (Not ``.lock``: a sweep holds that one.)"""

    NAME = ".train.lock"

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / self.NAME
        self._fd = -1

    def acquire(self) -> str | None:
        """Take the lock; None on success (or where no lock can be had: the run goes unprotected), else
        the holder. Never raises: every rank waits for rank 0's answer in a collective."""
        import fcntl
        import socket

        cloexec = getattr(os, "O_CLOEXEC", 0)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | cloexec, 0o666)
            writable = True
        except OSError:  # a teammate's lock file (mode 0644), a read-only copy: flock needs no write access
            try:
                fd = os.open(self.path, os.O_RDONLY | cloexec)
                writable = False
            except OSError as e:
                print(f"megadepth: warning: cannot lock {self.path} ({e.strerror or e}); nothing keeps a second "
                      "job out of this run directory", file=sys.stderr)
                return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            return holder
        except OSError:  # a file system without flock
            os.close(fd)
            return None
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}".encode(), 0)
        self._fd = fd
        _HELD_LOCK_FDS.add(fd)
        return None

    def release(self) -> None:
        if self._fd >= 0:
            _HELD_LOCK_FDS.discard(self._fd)
            os.close(self._fd)  # closing drops the flock
            self._fd = -1

    @classmethod
    def holder(cls, root: Path) -> str | None:
        """Who holds the lock now (None: nobody), without creating anything."""
        found = probe_lock(Path(root) / cls.NAME)
        return None if found is None else (found or "another process")


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl (rank 0 only), flushed per record. On resume the
    records past the checkpoint's step are dropped first, so the file describes exactly one history."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            kept = [] if resume_step is None else [
                line for line, rec in _parsed_lines(path) if int(rec.get("step", 0)) <= resume_step]
            atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        self._file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(json_safe(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl (torn lines skipped)."""
    return [rec for _, rec in _parsed_lines(path)]


def _parsed_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """(line, record) for each line of a metrics.jsonl that parses: a killed run may leave a torn last line."""
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            yield line, record
