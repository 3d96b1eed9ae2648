"""The state of a sweep, read from its run directories (the only source of truth).

Each grid point owns ``DIR/runs/<id>/``: the trainer's run directory (config.yaml, metrics.jsonl,
summary.json written last), plus what the sweep adds:

- ``sweep_config.yaml``  the resolved config the trainer was started with,
- ``sweep_run.json``     the point and one record per attempt (start, end, exit code, outcome, error),
- ``train.log``          the trainer's stdout and stderr, appended per attempt,
- ``.lock``              held (flock) by whoever runs the point, so two executors never run it twice.

A point is ``completed`` or ``diverged`` when its summary says so (final: skipped by later invocations),
``failed`` when its last attempt ended without one of those, and ``pending`` otherwise (never started,
interrupted, or ``stopped`` by ``train.stop_after_steps``, which resumes from its checkpoint).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megadepth.common.io import atomic_write_json
from megadepth.train.rundir import probe_lock

FINAL = ("completed", "diverged")
STATUSES = ("completed", "diverged", "failed", "running", "pending")
RUN_FILE = "sweep_run.json"
CONFIG_FILE = "sweep_config.yaml"
LOG_FILE = "train.log"
LOCK_FILE = ".lock"


def _now() -> str:
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
        self.data: dict[str, Any] = {"id": point_id, "point": values if values is not None else data.get("point", {}),
                                     "attempts": data.get("attempts", [])}

    @property
    def attempts(self) -> list[dict[str, Any]]:
        return self.data["attempts"]

    def failed_attempts(self) -> int:
        return sum(1 for a in self.attempts if a.get("outcome") == "failed")

    def start(self, command: list[str], log: Path) -> dict[str, Any]:
        attempt = {"n": len(self.attempts) + 1, "started": _now(), "host": socket.gethostname(),
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
        attempt.update({"ended": _now(), "exit_code": exit_code, "outcome": outcome, "wall_s": round(wall_s, 3)})
        if error:
            attempt["error"] = error
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


class PointLock:
    """An exclusive, non-blocking flock on ``runs/<id>/.lock``; its fd can be passed to the child process,
    so the lock lasts as long as the run does even if the executor itself dies."""

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
    """True while some executor holds the point's lock (it is running now).

    Only reads: the lock file is opened read-only and probed with a shared lock, which fails while an
    executor holds its exclusive one. So `--status` and the report work on a sweep directory that is
    read-only or someone else's; a lock file that cannot be opened at all reads as not locked (the
    state then comes from the run's files alone) rather than stopping them with a traceback."""
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
    if not lines:
        return None
    for line in reversed(lines):
        if line.startswith("megadepth: error:") or (":" in line and line.split(":", 1)[0].endswith(("Error", "Exception"))):
            return line[:limit]
    return lines[-1][:limit]


def read_state(run_dir: Path, point_id: str, check_lock: bool = True) -> RunState:
    """The state of one point from its directory."""
    summary = read_json(run_dir / "summary.json") or {}
    record = RunRecord(run_dir, point_id)
    attempts = record.attempts
    status_in_summary = summary.get("status")
    if status_in_summary in FINAL:
        return RunState(point_id, run_dir, status_in_summary, len(attempts), summary.get("error"), summary)
    if check_lock and is_locked(run_dir):
        return RunState(point_id, run_dir, "running", len(attempts), None, summary)
    last = attempts[-1] if attempts else None
    if status_in_summary == "failed" or (last is not None and last.get("outcome") == "failed"):
        error = summary.get("error") or (last or {}).get("error")
        return RunState(point_id, run_dir, "failed", len(attempts), error, summary)
    return RunState(point_id, run_dir, "pending", len(attempts), None, summary)


def count(states: Iterable[RunState]) -> dict[str, int]:
    out = dict.fromkeys(STATUSES, 0)
    for s in states:
        out[s.status] = out.get(s.status, 0) + 1
    return {k: v for k, v in out.items() if v}


def format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items()) or "no points"
