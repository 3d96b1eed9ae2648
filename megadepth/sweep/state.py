"""The state of a sweep, read from its run directories (the only source of truth).

Each point's ``DIR/runs/<id>/`` is the trainer's run directory plus ``sweep_config.yaml`` (the config it
was started with), ``sweep_run.json`` (one record per attempt), ``train.log`` and ``.lock`` (flock held
by whoever runs it). A point is ``completed`` or ``diverged`` when its summary says so (final),
``failed`` when its last attempt failed, ``running`` while locked, and ``pending`` otherwise.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megadepth.common.io import atomic_write_json
from megadepth.train.rundir import probe_lock

FINAL = ("completed", "diverged")
STATUSES = ("completed", "diverged", "failed", "running", "pending")
RUN_FILE, CONFIG_FILE, LOG_FILE, LOCK_FILE = "sweep_run.json", "sweep_config.yaml", "train.log", ".lock"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def as_float(value: Any) -> float:
    """A loss from a summary: numbers, and the strings 'inf'/'nan' JSON cannot hold; else nan."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return math.nan
    try:
        return float(value)
    except ValueError:
        return math.nan


@dataclass
class RunState:
    """What a point's run directory says about it."""

    id: str
    dir: Path
    status: str
    attempts: int = 0
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


class RunRecord:
    """``sweep_run.json`` of one point: its values and its attempts."""

    def __init__(self, run_dir: Path, point_id: str, values: dict[str, Any] | None = None) -> None:
        self.path = run_dir / RUN_FILE
        data = read_json(self.path) or {}
        point = data.get("point", {}) if values is None else values
        self.data: dict[str, Any] = {"id": point_id, "point": point, "attempts": data.get("attempts", [])}

    @property
    def attempts(self) -> list[dict[str, Any]]:
        return self.data["attempts"]

    def failed_attempts(self) -> int:
        return sum(1 for a in self.attempts if a.get("outcome") == "failed")

    def start(self, command: list[str], log: Path) -> dict[str, Any]:
        attempt = {"n": len(self.attempts) + 1, "started": now(), "host": socket.gethostname(),
                   "pid": os.getpid(), "command": command, "log": log.name}
        slurm = {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")
                 if k in os.environ}
        if slurm:
            attempt["slurm"] = slurm
        self.attempts.append(attempt)
        self.save()
        return attempt

    def end(self, attempt: dict[str, Any], exit_code: int | None, outcome: str, error: str | None,
            wall_s: float) -> None:
        attempt.update(ended=now(), exit_code=exit_code, outcome=outcome, wall_s=round(wall_s, 3))
        if error:
            attempt["error"] = error
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


class PointLock:
    """An exclusive, non-blocking flock on ``runs/<id>/.lock``; its fd is passed to the child process,
    so the lock lasts as long as the run does even if the executor dies."""

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = -1

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def is_locked(run_dir: Path) -> bool:
    """True while some executor holds the point's lock; only reads, so it works on a read-only sweep."""
    return probe_lock(run_dir / LOCK_FILE) is not None


def last_log_line(log: Path, limit: int = 300) -> str | None:
    """The last informative line of a log: a traceback's final line, else the last non-empty one."""
    try:
        with log.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 20000))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    lines = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("== megadepth sweep")]
    errors = [ln for ln in lines if ln.startswith("megadepth: error:")
              or (":" in ln and ln.split(":", 1)[0].endswith(("Error", "Exception")))]
    found = (errors or lines or [None])[-1]
    return found[:limit] if found else None


def read_state(run_dir: Path, point_id: str, check_lock: bool = True) -> RunState:
    """The state of one point from its directory."""
    summary = read_json(run_dir / "summary.json") or {}
    attempts = RunRecord(run_dir, point_id).attempts
    status, last = summary.get("status"), attempts[-1] if attempts else {}
    if status in FINAL:
        error = summary.get("error")
    elif check_lock and is_locked(run_dir):
        status, error = "running", None
    elif status == "failed" or last.get("outcome") == "failed":
        status, error = "failed", summary.get("error") or last.get("error")
    else:
        status, error = "pending", None
    return RunState(point_id, run_dir, status, len(attempts), error, summary)


def count(states: Iterable[RunState]) -> dict[str, int]:
    found = Counter(s.status for s in states)
    return {k: found[k] for k in dict.fromkeys([*STATUSES, *found]) if found[k]}


def format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items()) or "no points"
