"""Running the stages: a local process pool, one Slurm array task, or Slurm scripts for a cluster.

No scheduler of our own: locally a ``ProcessPoolExecutor`` hands units to ``--workers`` processes
(one pool for the whole run), on a cluster Slurm job arrays run ``megadepth prep task`` with the rank
from ``SLURM_ARRAY_TASK_ID`` and the stages chained by ``--dependency=afterok``. Both call
:func:`data_prep.stages.run_unit`, so they produce the same files.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import fcntl
import multiprocessing as mp
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from data_prep.plan import STAGES, Plan, load_plan
from data_prep.stages import run_unit
from megadepth.common import slurm
from megadepth.common.errors import DataError
from megadepth.common.io import atomic_write_bytes

__all__ = ["run_local", "run_task", "write_slurm_scripts"]

_PLANS: dict[str, Plan] = {}
LOCK = ".prep.lock"


def _watch_parent(parent: int) -> None:
    """Pool worker initializer: exit when the parent process is gone (a ``prep run`` killed with SIGKILL
    cannot stop its pool, whose workers would race the rerun that resumes the directory)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _worker_unit(out: str, stage: str, unit: str) -> tuple[str, dict]:
    plan = _PLANS.get(out)
    if plan is None:
        plan = _PLANS[out] = load_plan(out)
    return unit, run_unit(plan, stage, unit)


def _postfix(stage: str, done: list[dict], t0: float) -> str:
    el = max(time.perf_counter() - t0, 1e-9)
    if stage == "extract":
        n = sum(m["stats"].get("docs_in", 0) for m in done)
        k = sum(m["kept"] for m in done)
        return f"docs {n} kept {k} ({n / el:.0f} docs/s)"
    if stage == "tokenize":
        t = sum(m["tokens"] for m in done)
        return f"tokens {t} ({t / el / 1e6:.2f}M/s)"
    return ""


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold ``OUT/.prep.lock`` for a run or while ``prep slurm`` writes: two of them in one directory would
    replace each other's outputs. (Slurm tasks of one plan share a directory on purpose and take no lock.)"""
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = open(out / LOCK, "a+")  # noqa: SIM115 - closed by the with below
    except OSError as e:  # e.g. under /proc, or a read-only mount that os.access calls writable
        raise DataError(f"--out {out}: cannot be written ({e.strerror or e})") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = (f.read().split() or ["?"])[0]  # the pid its holder wrote
            raise DataError(f"--out {out}: another 'megadepth prep run' or 'prep slurm' (pid {holder}) is writing here") from None
        except OSError:
            pass  # a file system without locks: run unguarded, as before
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def _failed(stage: str, n_units: int, failures: list[str]) -> DataError:
    """One error for a stage whose units failed: the others' work is kept and a rerun retries them."""
    if n_units == 1:
        return DataError(failures[0])
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    return DataError(f"prep {stage}: {len(failures)} of {n_units} units failed: {failures[0]}{more}. The finished "
                     "units are kept: fix the cause and run the same command again to retry the rest")


def _run_here(plan: Plan, stage: str, unit: str, failures: list[str]) -> dict | None:
    """One unit in this process (finalize always reruns); its marker, or None with its error in ``failures``."""
    if stage == "finalize":
        plan.marker(stage, unit).unlink(missing_ok=True)
    try:
        return run_unit(plan, stage, unit)
    except DataError as e:
        failures.append(str(e))
        return None


def _run_stage(plan: Plan, stage: str, workers: int, progress: bool, pool: Callable[[], cf.Executor]) -> None:
    """The pending units of one stage, in this process or on the pool; failures collected, then raised."""
    from tqdm import tqdm

    units = plan.units(stage)
    pending = [u for u in units if stage == "finalize" or not plan.is_done(stage, u)]
    t0 = time.perf_counter()
    waiting = set(pending)  # a set: a crawl's stage has ~90,000 units
    done = [plan.read_marker(stage, u) for u in units if u not in waiting]
    failures: list[str] = []
    with tqdm(total=len(units), initial=len(units) - len(pending), desc=f"prep {stage}", unit="unit",
              disable=not progress or not units, file=sys.stderr, dynamic_ncols=True) as bar:

        def finished(marker: dict) -> None:
            done.append(marker)
            bar.update(1)
            bar.set_postfix_str(_postfix(stage, done, t0), refresh=False)

        if workers == 1 or len(pending) <= 1:
            for u in pending:
                marker = _run_here(plan, stage, u, failures)
                if marker is not None:
                    finished(marker)
        else:
            futures = {pool().submit(_worker_unit, str(plan.out), stage, u): u for u in pending}
            for fut in cf.as_completed(futures):
                try:
                    finished(fut.result()[1])
                except DataError as e:
                    failures.append(str(e))
                except BrokenProcessPool:
                    raise DataError(f"prep {stage}: a worker process died (killed, or out of memory?) while running "
                                    f"unit {futures[fut]}; the finished units are kept: run the same command again "
                                    "to resume (with fewer --workers if memory is short)") from None
    if failures:
        raise _failed(stage, len(units), failures)


def run_local(plan: Plan, workers: int = 1, progress: bool = True) -> dict[str, float]:
    """Every stage in order, each unit once; a rerun continues where a killed one stopped. Returns wall
    seconds per stage. A unit failing with a :class:`DataError` does not stop the others of its stage;
    the stage then ends with one error naming it, and the next run retries only what failed."""
    if workers < 1:
        raise DataError(f"--workers must be >= 1, got {workers}")
    walls: dict[str, float] = {}
    executor: cf.ProcessPoolExecutor | None = None

    def pool() -> cf.ProcessPoolExecutor:
        nonlocal executor
        if executor is None:  # one pool for the whole run: workers keep their loaded models across stages
            executor = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                              initializer=_watch_parent, initargs=(os.getpid(),))
        return executor

    with _exclusive(plan.out):
        plan.save()
        try:
            for stage in STAGES:
                t0 = time.perf_counter()
                _run_stage(plan, stage, workers, progress, pool)
                walls[stage] = time.perf_counter() - t0
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
    return walls


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if not v:
        return None
    try:
        return int(v)
    except ValueError:
        raise DataError(f"${name}={v!r} is not an integer") from None


def run_task(out: str | Path, stage: str, rank: int | None, world_size: int | None, progress: bool = False) -> dict:
    """One task of one stage: units ``[rank::world_size]`` (rank defaults to ``$SLURM_ARRAY_TASK_ID``) once
    the previous stages are finished, skipping units already done; the task's own marker comes last."""
    if stage not in STAGES:
        raise DataError(f"--stage {stage!r}: one of {', '.join(STAGES)}")
    rank = _env_int("SLURM_ARRAY_TASK_ID") if rank is None else rank
    world_size = _env_int("SLURM_ARRAY_TASK_COUNT") if world_size is None else world_size
    if rank is None:
        raise DataError("no rank: give --rank or run inside a Slurm array ($SLURM_ARRAY_TASK_ID)")
    if world_size is None:
        raise DataError("no world size: give --world-size (or $SLURM_ARRAY_TASK_COUNT)")
    if world_size < 1:
        raise DataError(f"--world-size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is not in [0, {world_size})")
    plan = load_plan(out)
    for before in STAGES[: STAGES.index(stage)]:
        plan.require_done(before)
    mine = plan.units(stage)[rank::world_size]
    failures: list[str] = []
    done = {u: _run_here(plan, stage, u, failures) for u in mine}  # a failed unit fails the task, after the rest
    if failures:
        raise _failed(stage, len(mine), failures)
    task_marker = plan.marker_dir(stage) / "tasks" / f"{rank}-of-{world_size}"
    atomic_write_bytes(task_marker, (" ".join(mine) + "\n").encode())
    return done


def check_fits(partition: str | None, cpus_per_task: int, mem: str, time_limit: str,
               query: slurm.Query | None = None) -> str | None:
    """Refuse array tasks that no node of the partition can run, naming the request, and a partition sinfo
    does not list (DataError); where sinfo does not answer, the line saying that nothing was checked."""
    groups = (query or slurm.query)(partition)
    if groups is None:
        return (f"prep slurm: sinfo did not list the nodes{f' of partition {partition}' if partition else ''} "
                f"(not on a Slurm login node?): --mem={mem}, --cpus-per-task={cpus_per_task} and "
                f"--time={time_limit} were not checked against them")
    hints = {"mem": slurm.MEM_HINT, "time": "--time T"}
    problems = slurm.fit_problems(groups, partition=partition, mem=None if mem == slurm.MEM_NONE else mem,
                                  cpus=cpus_per_task, time=time_limit, hints=hints)
    if problems:
        why = slurm.fit_refusal(groups, problems, "these array tasks")
        raise DataError(f"prep slurm: {why}; nothing was written")
    return None


def write_slurm_scripts(plan: Plan, tasks: int, *, partition: str | None = None, account: str | None = None,
                        time_limit: str = "12:00:00", mem: str = "8G", cpus_per_task: int = 1,
                        max_parallel: int | None = None, python: str | None = None,
                        query: slurm.Query | None = None) -> Path:
    """``OUT/slurm/<stage>.sbatch`` per stage and ``OUT/slurm/submit.sh`` chaining them; returns submit.sh.

    ``mem`` is a Slurm size or ``none`` (the partition's default). The requests are checked against the
    partition's nodes first (:func:`check_fits`; ``query``: a stand-in for ``slurm.query``). Every path and
    value reaches the scripts shell-quoted; a path no quoting carries into an ``#SBATCH`` line is refused."""
    mem = slurm.MEM_NONE if mem.strip().lower() == slurm.MEM_NONE else mem  # "None" / "NONE" as typed
    counts = {"--tasks": tasks, "--cpus-per-task": cpus_per_task}
    if max_parallel is not None:  # None: no throttle; 0 or less is a mistake, not "no throttle"
        counts["--max-parallel"] = max_parallel
    for option, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{option} must be >= 1, got {value!r}")
    problem = slurm.sbatch_value_problem({"--partition": partition, "--account": account, "--time": time_limit,
                                          **({} if mem == slurm.MEM_NONE else {"--mem": mem})})
    problem = problem or slurm.script_path_problem("--out", str(plan.out))
    if problem:
        raise DataError(problem)
    unchecked = check_fits(partition, cpus_per_task, mem, time_limit, query)
    python = shlex.quote(python or sys.executable)
    sdir = plan.out / "slurm"
    logs = sdir / "logs"
    extra = (f"#SBATCH --partition={partition}\n" if partition else "") + (
        f"#SBATCH --account={account}\n" if account else "")
    submissions = ""
    after = "${dep:+--dependency=afterok:$dep --kill-on-invalid-dep=yes}"  # none for the first stage
    with _exclusive(plan.out):
        plan.save()
        logs.mkdir(parents=True, exist_ok=True)
        for stage in STAGES:
            n = len(plan.units(stage))
            if n == 0:
                continue
            world = min(tasks, n)
            text = slurm.render(
                "prep_stage.sbatch", stage=stage, n_units=n, tasks=world, job=f"mdprep-{stage}-{plan.config_hash[:6]}",
                last=world - 1, throttle=f"%{max_parallel}" if max_parallel is not None else "", cpus=cpus_per_task,
                mem_line="" if mem == slurm.MEM_NONE else f"#SBATCH --mem={mem}\n", time=time_limit,
                log_pattern=shlex.quote(f"{logs}/{stage}_%A_%a.log"), extra=extra, cwd=shlex.quote(os.getcwd()),
                python=python, out=shlex.quote(str(plan.out)), plan_hash=plan.config_hash)
            atomic_write_bytes(sdir / f"{stage}.sbatch", text.encode())
            (sdir / f"{stage}.sbatch").chmod(0o755)
            submissions += f'jid=$(sbatch --parsable {after} {stage}.sbatch)\necho "{stage}: job $jid"\ndep="${{jid%%;*}}"\n'
        submit = sdir / "submit.sh"
        done_message = f"submitted; the data directory is complete when {plan.out}/manifest.json exists"
        text = slurm.render("prep_submit.sh", submissions=submissions, done_message=shlex.quote(done_message))
        atomic_write_bytes(submit, text.encode())
        submit.chmod(0o755)
    if unchecked:
        print(unchecked, file=sys.stderr)
    return submit
