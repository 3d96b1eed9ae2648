"""Running a sweep: the sweep directory, choosing what to run, and the local executor.

Every grid point is one ``megadepth train`` process with its own ``DIR/runs/<id>/``. Only the run
directories are trusted, so executors can be killed and restarted, and share one (a per-point lock)."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from megadepth.common.errors import ConfigError
from megadepth.common.host import usable_cpus
from megadepth.common.io import atomic_write_json, atomic_write_text
from megadepth.common.typed_yaml import lookup
from megadepth.config.load import to_yaml, validate
from megadepth.sweep.spec import Point, SweepSpec, diff_configs, expand, load_spec, spec_differences
from megadepth.sweep.state import (
    CONFIG_FILE,
    FINAL,
    LOG_FILE,
    PointLock,
    RunRecord,
    RunState,
    count,
    last_log_line,
    now,
    read_json,
    read_state,
)

TRAIN_COMMAND: list[str] = [sys.executable, "-m", "megadepth", "train"]
"""How one point is run (its config file is appended). Tests substitute a stand-in trainer."""

DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
"""Launcher variables a sweep may have inherited: each run is a single process of its own."""

INTERRUPT_CODES = (-signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP)
"""Exit codes of a run killed by a stop request rather than by its own failure."""

SPEC_FILE, INDEX_FILE = "sweep.yaml", "sweep.json"


class SweepDir:
    """``DIR/``: sweep.yaml (the frozen spec), sweep.json (an index), runs/<id>/, slurm/, report/."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.spec, self.index, self.runs = self.root / SPEC_FILE, self.root / INDEX_FILE, self.root / "runs"

    def run_dir(self, point: Point | str) -> Path:
        return self.runs / (point if isinstance(point, str) else point.id)


def group_name(spec: SweepSpec) -> str:
    """The W&B group all runs share: the base config's wandb.group if set, else the sweep's name."""
    return str((spec.config.get("wandb") or {}).get("group") or spec.name)


def point_config(spec: SweepSpec, point: Point, sweep: SweepDir) -> dict[str, Any]:
    """The config a point is trained with: its grid config plus its run directory and W&B group."""
    data = point.config.model_dump(mode="json")
    data["train"]["out_dir"] = str(sweep.run_dir(point))
    data["train"]["progress"] = False
    data["wandb"]["group"] = group_name(spec)
    data["wandb"]["name"] = point.id
    return data


def prepare(spec: SweepSpec, out: str | Path, *, write: bool = True, check_data: bool = True
            ) -> tuple[SweepDir, list[Point]]:
    """Expand and check the grid, refuse a directory that holds a different sweep, write the frozen spec."""
    sweep = SweepDir(out)
    if sweep.root.exists() and not sweep.root.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    points = expand(spec)
    check_same_sweep(spec, sweep)
    _preflight(spec, points, sweep, check_data=check_data)
    for point in points:
        saved = _saved_config(sweep.run_dir(point) / "config.yaml")
        if saved is None:
            continue
        changed = diff_configs(saved, point_config(spec, point, sweep))
        if changed:
            key = changed[0]
            old, new = lookup(saved, key), lookup(point.config.model_dump(mode="json"), key)
            more = f", and {len(changed) - 1} more key(s)" if len(changed) > 1 else ""
            raise ConfigError(f"{sweep.run_dir(point)} was run with a different config ({key}: {old!r} "
                              f"there, {new!r} now{more}); use a new --out directory for a changed sweep")
    if write:
        sweep.runs.mkdir(parents=True, exist_ok=True)
        header = (f"# The frozen spec of this sweep (base config files inlined); written by megadepth sweep.\n"
                  f"# Source: {spec.source}\n")
        atomic_write_text(sweep.spec, header + spec.frozen_yaml())
        write_index(spec, sweep, points)
    return sweep, points


def _saved_config(path: Path) -> dict[str, Any] | None:
    """A run's config.yaml, or None when there is none or it cannot be read (with a warning)."""
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"megadepth sweep: warning: cannot read {path} ({why}); not compared with the grid",
              file=sys.stderr)
        return None
    if not isinstance(saved, dict):
        print(f"megadepth sweep: warning: {path} is not a mapping; not compared with the grid", file=sys.stderr)
        return None
    return saved


def check_same_sweep(spec: SweepSpec, sweep: SweepDir) -> None:
    """Refuse ``spec`` if DIR/sweep.yaml holds another sweep: anything but added or dropped values."""
    if not sweep.spec.is_file():
        return
    try:
        frozen = load_spec(sweep.spec, frozen=True)
    except ConfigError as exc:
        raise ConfigError(f"--out {sweep.root} holds a sweep.yaml this version cannot read ({exc}); "
                          "use a new --out directory") from None
    diffs = spec_differences(frozen, spec)
    if diffs:
        also = f"; also {', '.join(d.split(':', 1)[0] for d in diffs[1:])}" if len(diffs) > 1 else ""
        raise ConfigError(f"--out {sweep.root} holds a different sweep ({diffs[0]}{also}); use a new --out "
                          "directory for a changed sweep (a sweep can only gain or drop axis values)")


def orphaned(sweep: SweepDir, points: Sequence[Point]) -> list[str]:
    """Run directories under DIR/runs/ that are not points of this grid (values dropped from an axis)."""
    if not sweep.runs.is_dir():
        return []
    ids = {p.id for p in points}
    return sorted(d.name for d in sweep.runs.iterdir() if d.is_dir() and d.name not in ids)


def _preflight(spec: SweepSpec, points: Sequence[Point], sweep: SweepDir, *, check_data: bool = True) -> None:
    """The trainer's start-up checks for every point, so a point that cannot start fails the sweep now."""
    from megadepth.data import DataError
    from megadepth.train.preflight import preflight

    if check_data:  # --status only reads: a sweep made before this check must stay readable
        _check_base_shape(points)
    done: set[str] = set()
    for point in points:
        cfg = point.config
        key = repr((cfg.model.model_dump(), cfg.parametrization.model_dump(), cfg.parallel.model_dump(),
                    cfg.train.micro_batch, cfg.train.grad_accum, cfg.train.global_batch, cfg.data.model_dump(),
                    cfg.optimizer.name))
        if key in done:
            continue
        done.add(key)
        try:
            preflight(validate(point_config(spec, point, sweep)), 1)
        except (ConfigError, DataError) as exc:
            if check_data or not isinstance(exc, DataError):
                raise ConfigError(f"grid point {point.label}: {exc}") from None


def _check_base_shape(points: Sequence[Point]) -> None:
    """A grid over depth (width) needs a fixed base depth (width), else every preset trains SP."""
    from megadepth.parametrize.rules import scales_depth, scales_width

    for dim, base, scales in (("depth", "base_depth", scales_depth), ("width", "base_width", scales_width)):
        values = sorted({getattr(p.config.model, dim) for p in points})
        if len(values) < 2:
            continue
        unset = [p for p in points
                 if getattr(p.config.model, base) is None and scales(p.config.parametrization.name)]
        if unset:
            raise ConfigError(
                f"the grid varies model.{dim} ({', '.join(map(str, values))}) but model.{base} is not set "
                f"(grid point {unset[0].label}): each point would be its own base shape, so "
                f"{unset[0].config.parametrization.name} would not scale with {dim}; set model.{base} to the "
                f"{dim} the learning rate is tuned at (e.g. {values[0]})"
            )


def states(sweep: SweepDir, points: Sequence[Point]) -> list[RunState]:
    return [read_state(sweep.run_dir(p), p.id) for p in points]


def write_index(spec: SweepSpec, sweep: SweepDir, points: Sequence[Point],
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """DIR/sweep.json: the spec's identity, the axes, and every point's state (Slurm submissions kept)."""
    old = read_json(sweep.index) or {}
    current = states(sweep, points)
    runs = [{"id": point.id, "label": point.label, "point": point.values, "status": st.status,
             "attempts": st.attempts, "dir": f"runs/{point.id}",
             **{k: st.summary[k] for k in ("final_loss", "final_eval_loss", "steps", "tokens", "wall_s")
                if k in st.summary}, **({"error": st.error} if st.error else {})}
            for point, st in zip(points, current, strict=True)]
    index = {"name": spec.name, "spec": SPEC_FILE, "spec_sha256": spec.sha256(), "source": spec.source,
             "wandb_group": group_name(spec), "metric": spec.metric, "axes": spec.axis_keys,
             "report": spec.report, "budget": spec.budget, "updated": now(), "counts": count(current),
             "slurm": old.get("slurm", []), "runs": runs}
    if extra:
        for key, value in extra.items():
            index[key] = (index.get(key) or []) + value if isinstance(value, list) else value
    atomic_write_json(sweep.index, index)
    return index


def select(sweep: SweepDir, points: Sequence[Point], max_attempts: int, retry_failed: bool
           ) -> tuple[list[Point], dict[str, int]]:
    """Points to run now: pending ones, and failed ones with attempts left (all with ``retry_failed``)."""
    todo, skipped = [], {"completed": 0, "diverged": 0, "running": 0, "failed": 0}
    for point in points:
        st = read_state(sweep.run_dir(point), point.id)
        if st.status in ("completed", "diverged", "running"):
            skipped[st.status] += 1
        elif st.status == "failed" and not retry_failed and RunRecord(st.dir, point.id).failed_attempts() >= max_attempts:
            skipped["failed"] += 1
        else:
            todo.append(point)
    return todo, skipped


def resolve_devices(arg: str) -> list[str]:
    """GPUs to spread runs over: 'auto', 'cpu', or '0,1,2' (each must exist, or a run trains on CPU)."""
    if arg == "cpu":
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible_list = [d.strip() for d in (visible or "").split(",") if d.strip() and d.strip() != "-1"]
    if arg != "auto":
        devices = [d.strip() for d in arg.split(",") if d.strip()]
        if not devices:
            raise ConfigError(f"--devices '{arg}': expected auto, cpu or a list like 0,1,2,3")
        if visible is not None:
            missing = [d for d in devices if d not in visible_list]
            if missing:
                have = f"only {','.join(visible_list)}" if visible_list else "no GPU"
                raise ConfigError(f"--devices {arg}: CUDA_VISIBLE_DEVICES makes {have} visible"
                                  + ("" if visible_list else "; use --devices cpu or omit --devices"))
            return devices
        import torch

        n = torch.cuda.device_count()
        bad = [d for d in devices if not (d.isdigit() and int(d) < n)]
        if bad:
            if n == 0:
                raise ConfigError(f"--devices {arg}: this machine has no GPU; use --devices cpu or omit --devices")
            raise ConfigError(f"--devices {arg}: this machine has {n} GPU(s) (0 to {n - 1})")
        return devices
    if visible is not None:
        return visible_list
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def child_env(device: str | None, threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env["CUDA_VISIBLE_DEVICES"] = "" if device is None else device
    if device is None and "OMP_NUM_THREADS" not in os.environ:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("WANDB_SILENT", "true")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Outcome:
    point: Point
    outcome: str  # completed, diverged, failed, stopped, skipped (locked elsewhere), interrupted
    attempt: int = 0
    error: str | None = None
    wall_s: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    retry: bool = True  # False: a failure of the sweep's own bookkeeping, which a retry now would repeat


class LocalExecutor:
    """Runs points as ``megadepth train`` processes, ``jobs`` at a time, retrying failed ones up to
    ``max_attempts`` (over invocations). Worker threads run them, so Ctrl-C or SIGTERM reaches the main
    thread, which stops every run and raises it again once the workers have recorded them."""

    def __init__(self, spec: SweepSpec, sweep: SweepDir, points: Sequence[Point], *, jobs: int,
                 devices: Sequence[str], max_attempts: int = 2, command: Sequence[str] | None = None,
                 index_points: Sequence[Point] | None = None, echo: Callable[[str], None] = print) -> None:
        if jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {jobs}")
        self.spec, self.sweep, self.points = spec, sweep, list(points)
        self.jobs, self.devices, self.max_attempts = jobs, list(devices), max_attempts
        self.command, self.echo = list(command or TRAIN_COMMAND), echo
        # what sweep.json lists, rewritten after every run (None: leave the index alone, as array tasks do)
        self.index_points = list(index_points) if index_points is not None else None
        self.threads = max(1, usable_cpus() // jobs)
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()  # guards _procs, results and the printed lines
        self._stop = threading.Event()
        # one entry per worker: the device its runs get (worker k: GPU k mod #GPUs; None: the CPU)
        self._free: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.results: list[Outcome] = []

    def run(self) -> list[Outcome]:
        workers = min(self.jobs, max(1, len(self.points)))
        for k in range(workers):
            self._free.put(self.devices[k % len(self.devices)] if self.devices else None)
        previous = None
        if threading.current_thread() is threading.main_thread():
            # Slurm (time limit, preemption, scancel) and `kill` send SIGTERM: stop like Ctrl-C
            previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="sweep") as pool:
                try:
                    running = {pool.submit(self._attempt, point) for point in self.points}
                    while running:
                        done, running = wait(running, return_when=FIRST_COMPLETED)
                        # a point that runs again (a retry, a resume) joins the end of the queue
                        running |= {pool.submit(self._attempt, f.result()) for f in done if f.result() is not None}
                except KeyboardInterrupt:
                    self._stop.set()
                    pool.shutdown(wait=False, cancel_futures=True)  # points not started stay as they are
                    self._terminate_all()
                    raise  # once the pool's exit has waited for the workers to record their runs
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return self.results

    def _terminate_all(self) -> None:
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def _attempt(self, point: Point) -> Point | None:
        """Run one attempt of ``point`` on a free device; returns the point if it is to run again."""
        device = self._free.get()
        try:
            result = self._run_point(point, device)
        except Exception as exc:  # never leave a point neither finished nor queued again
            result = self._bookkeeping_failed(point, exc)
        finally:
            self._free.put(device)
        with self._lock:
            again = result.outcome == "stopped" or (
                result.outcome == "failed" and result.retry and not self._stop.is_set()
                and RunRecord(self.sweep.run_dir(point), point.id).failed_attempts() < self.max_attempts)
            if not again:
                self.results.append(result)
            try:
                self._report(result, again)
                if self.index_points is not None:
                    write_index(self.spec, self.sweep, self.index_points)
            except Exception as exc:  # a convenience: the run directories are the truth
                self.echo(f"megadepth sweep: warning: after {point.label}: {type(exc).__name__}: {exc}")
        return point if again else None

    def _bookkeeping_failed(self, point: Point, exc: Exception) -> Outcome:
        """A failed, not retried Outcome for an exception outside the trainer (the sweep's own files)."""
        error = f"the sweep could not run the point: {type(exc).__name__}: {exc}".splitlines()[0]
        run_dir = self.sweep.run_dir(point)
        with contextlib.suppress(Exception):
            record = RunRecord(run_dir, point.id, point.values)
            last = record.attempts[-1] if record.attempts else None
            if last is not None and "ended" not in last and last.get("pid") == os.getpid():
                attempt = last  # this executor's attempt, started before the error: end it
            else:
                attempt = record.start([*self.command, str(run_dir / CONFIG_FILE)], run_dir / LOG_FILE)
            record.end(attempt, None, "failed", error, 0.0)
        return Outcome(point, "failed", error=error, retry=False)

    def _report(self, r: Outcome, again: bool) -> None:
        """One line per attempt: ``[k/N]`` counts finished points; ``[-/N]`` when the point runs again."""
        metric = r.summary.get(self.spec.metric)
        value = f"{self.spec.metric} {metric:.4f}" if isinstance(metric, (int, float)) else ""
        shown = {"failed": (r.error or "failed") + (" (will retry)" if again else ""),
                 "diverged": "loss not finite", "skipped": "running in another executor",
                 "interrupted": "interrupted: stays pending",
                 "stopped": "stopped (train.stop_after_steps); resuming"}.get(r.outcome, value)
        counter = f"[-/{len(self.points)}]" if again else f"[{len(self.results)}/{len(self.points)}]"
        attempt = f"attempt {r.attempt}, " if r.attempt > 1 else ""
        self.echo(f"{counter} {r.outcome:<9} {r.point.label}  {shown}  "
                  f"({attempt}{r.wall_s:.1f} s)  runs/{r.point.id}")

    def _run_point(self, point: Point, device: str | None) -> Outcome:
        run_dir = self.sweep.run_dir(point)
        if self._stop.is_set():
            return Outcome(point, "interrupted")
        lock = PointLock(run_dir)
        if not lock.held:
            return Outcome(point, "skipped")
        try:
            current = read_state(run_dir, point.id, check_lock=False)
            if current.status in FINAL:  # finished by another executor since we chose it
                return Outcome(point, current.status, summary=current.summary)
            summary_file = run_dir / "summary.json"
            summary_file.unlink(missing_ok=True)  # a stale failed/stopped summary must not outlive this attempt
            config_file = run_dir / CONFIG_FILE
            atomic_write_text(config_file, to_yaml(validate(point_config(self.spec, point, self.sweep))))
            command = [*self.command, str(config_file)]
            log = run_dir / LOG_FILE
            record = RunRecord(run_dir, point.id, point.values)
            attempt = record.start(command, log)
            start = time.monotonic()
            with log.open("ab") as out:
                out.write(f"== megadepth sweep: attempt {attempt['n']} at {attempt['started']} on "
                          f"{attempt['host']}: {' '.join(command)}\n".encode())
                out.flush()
                try:
                    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=child_env(device, self.threads),
                                            pass_fds=(lock.fd,), start_new_session=True)
                except OSError as exc:
                    error = f"could not start {command[0]}: {exc}"
                    record.end(attempt, None, "failed", error, time.monotonic() - start)
                    return Outcome(point, "failed", attempt["n"], error)
                with self._lock:
                    self._procs[proc.pid] = proc
                if self._stop.is_set():  # stopped between the snapshot of running children and now
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
                code = proc.wait()
                with self._lock:
                    self._procs.pop(proc.pid, None)
            wall = time.monotonic() - start
            summary = read_json(summary_file) or {}
            status = summary.get("status")
            # stopped by us or by a signal from outside (scancel, preemption): not a failed attempt, the
            # point stays pending (SIGKILL, the OOM killer, is one); "stopped" while we stop is no resume
            interrupted = status not in (*FINAL, "stopped") and code in INTERRUPT_CODES
            if status not in FINAL and (self._stop.is_set() or interrupted):
                why = (f"terminated by signal {-code}" if code < 0 else
                       "the sweep was interrupted; the run saved a checkpoint" if status == "stopped" else None)
                record.end(attempt, code, "interrupted", why, wall)
                return Outcome(point, "interrupted", attempt["n"], wall_s=wall)
            if status in (*FINAL, "stopped"):
                record.end(attempt, code, status, None, wall)
                return Outcome(point, status, attempt["n"], wall_s=wall, summary=summary)
            error = summary.get("error") or last_log_line(log) or f"exit code {code}"
            if code and not summary.get("error"):
                error = f"exit code {code}: {error}"
            record.end(attempt, code, "failed", error, wall)
            return Outcome(point, "failed", attempt["n"], error, wall, summary)
        except Exception as exc:  # the sweep's own writes, not the run: recorded while the lock is still held
            return self._bookkeeping_failed(point, exc)
        finally:
            lock.release()


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_local(spec: SweepSpec, sweep: SweepDir, all_points: Sequence[Point] | None, todo: Sequence[Point], *,
              jobs: int, devices: Sequence[str], max_attempts: int, echo: Callable[[str], None] = print
              ) -> list[Outcome]:
    """Run ``todo``; rewrite sweep.json over ``all_points`` as runs finish (not when None)."""
    executor = LocalExecutor(spec, sweep, todo, jobs=jobs, devices=devices, max_attempts=max_attempts,
                             index_points=all_points, echo=echo)
    try:
        return executor.run()
    finally:
        if all_points is not None:
            write_index(spec, sweep, all_points)
