"""``megadepth sweep SWEEP.yaml --out DIR [--executor local|slurm] [--jobs N]``."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from megadepth.common.errors import ConfigError


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (megadepth's other commands use it too)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive, _non_negative = at_least(1), at_least(0)


def _task_points(task_list: str, index: int, points: list[Any]) -> list[Any]:
    path = Path(task_list)
    if not path.is_file():
        raise ConfigError(f"--task-list {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not 0 <= index < len(lines):
        raise ConfigError(f"--task-index {index} is outside {path} ({len(lines)} task(s))")
    by_id = {p.id: p for p in points}
    for pid in lines[index].split():
        if pid not in by_id:
            print(f"megadepth sweep: warning: {pid} is no longer in the sweep's grid; skipped", file=sys.stderr)
    return [by_id[pid] for pid in lines[index].split() if pid in by_id]


def _cmd_sweep(args: argparse.Namespace) -> int:
    from megadepth.sweep import runner
    from megadepth.sweep.slurm import SlurmOptions, check_fits, check_sweep_dir, submit, write_array
    from megadepth.sweep.spec import load_spec
    from megadepth.sweep.state import count, format_counts, now

    if (args.task_list is None) != (args.task_index is None):
        raise ConfigError("--task-list and --task-index go together (they are what a Slurm array task runs)")
    task_mode = args.task_list is not None
    if task_mode and args.executor != "local":
        raise ConfigError("--task-list runs points in this process: it needs --executor local")
    # every flag is checked before anything is written (bad input: one line, exit 2, nothing changed)
    devices: list[str] = []
    if args.executor == "local" and not args.status:
        devices = runner.resolve_devices(args.devices)
    opts = None
    if args.executor == "slurm":
        opts = SlurmOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SlurmOptions)})
        opts.check()
        check_sweep_dir(args.out)
    # DIR/sweep.yaml itself (what array tasks run) reads like base files: see parse_spec(frozen=...)
    frozen = Path(args.spec).resolve() == runner.SweepDir(args.out).spec
    spec = load_spec(args.spec, args.overrides, frozen=frozen)
    max_attempts = 1 + args.retries
    sweep, points = runner.prepare(spec, args.out, write=not (task_mode or args.dry_run or args.status),
                            check_data=not args.status)
    jobs = args.jobs or max(1, len(devices))
    if task_mode:
        todo = _task_points(args.task_list, args.task_index, points)
        print(f"megadepth sweep: array task {args.task_index}: {len(todo)} point(s), {jobs} at a time", flush=True)
        results = runner.run_local(spec, sweep, None, todo, jobs=jobs, devices=devices,
                                   max_attempts=max_attempts)
        return 1 if any(r.outcome == "failed" for r in results) else 0

    dropped = runner.orphaned(sweep, points)
    if dropped:
        print(f"megadepth sweep: warning: {len(dropped)} run(s) under {sweep.runs} are not in this grid "
              f"(e.g. {dropped[0]}): kept, but left out of sweep.json, --status and the report until their "
              "values are listed again", file=sys.stderr)
    todo, skipped = runner.select(sweep, points, max_attempts, args.retry_failed)
    # the commands suggested below are printed shell-quoted: a user pastes them
    spec_arg, out_arg = shlex.quote(args.spec), shlex.quote(args.out)
    already = ", ".join(f"{n} {k}" for k, n in skipped.items() if n)
    header = (f"megadepth sweep '{spec.name}': {len(points)} grid point(s) over "
              f"{', '.join(spec.axis_keys)}; {len(todo)} to run" + (f" ({already} skipped)" if already else ""))
    if args.status or args.dry_run:
        print(header)
        current = {s.id: s for s in runner.states(sweep, points)}
        for point in points:
            state, mark = current[point.id], "run " if point in todo else "skip"
            detail = f"  {state.error}" if state.error else ""
            print(f"  {mark} {state.status:<9} {point.label}  runs/{point.id}{detail}")
        if args.status:
            if sweep.spec.is_file() or sweep.runs.is_dir():
                runner.write_index(spec, sweep, points)
                print(f"{format_counts(count(current.values()))}; index: {sweep.index}")
            else:  # a look at a sweep that has not started leaves no directory behind
                print(f"{format_counts(count(current.values()))}; {args.out} holds no started sweep "
                      "(nothing written)")
        return 0

    if opts is not None:
        print(header)
        if not todo:
            print(f"nothing to submit; report with: megadepth report {out_arg}")
            return 0
        sbatch = shutil.which("sbatch")
        if sbatch is not None and not args.no_submit:
            check_fits(opts)  # against the cluster's nodes (sinfo), before anything is written
        script, task_list, tasks = write_array(spec, sweep, todo, opts)
        if args.no_submit or sbatch is None:
            why = "--no-submit" if args.no_submit else "sbatch is not on PATH"
            print(f"wrote {script} ({tasks} array task(s)); not submitted ({why}); submit with: "
                  f"sbatch {shlex.quote(str(script))}")
            return 0
        job = submit(script, sbatch, opts)
        runner.write_index(spec, sweep, points, extra={"slurm": [{
            "job_id": job, "script": str(script.relative_to(sweep.root)), "tasks": tasks, "points": len(todo),
            "submitted": now()}]})
        print(f"submitted job array {job}: {tasks} task(s) for {len(todo)} point(s) ({script}); logs in "
              f"{script.parent / 'logs'}; check with: megadepth sweep {spec_arg} --out {out_arg} --status")
        return 0

    where = f"GPU(s) {','.join(devices)}" if devices else "CPU"
    print(f"{header}; {jobs} at a time on {where}", flush=True)
    results = runner.run_local(spec, sweep, points, todo, jobs=jobs, devices=devices,
                               max_attempts=max_attempts)
    final = count(runner.states(sweep, points))
    print(f"megadepth sweep '{spec.name}': {format_counts(final)}; report with: megadepth report {out_arg}")
    for r in [r for r in results if r.outcome == "failed"][:10]:
        print(f"  failed: {r.point.label}: {r.error}  (log: {sweep.run_dir(r.point) / 'train.log'})")
    # a point whose failure could not be recorded reads as pending there, but it failed all the same
    failed = max(final.get("failed", 0), sum(1 for r in results if r.outcome == "failed"))
    if failed:
        print(f"  {failed} point(s) failed; see `megadepth sweep {spec_arg} --out {out_arg} --status`, "
              "fix the cause and run again with --retry-failed")
    return 1 if failed else 0


def add_cli(subparsers: Any) -> None:
    """Register ``megadepth sweep``."""
    p = subparsers.add_parser(
        "sweep", help="run a grid of training runs (parametrization x depth x LR x seed ...); resumable",
        description="Expands SWEEP.yaml's grid and runs every point as its own `megadepth train` process "
        "with run directory DIR/runs/<id>/ (id: a slug + sha256 of the point). Completed and diverged "
        "points are skipped when run again; failed ones are retried once. See docs/transfer.md.",
    )
    p.add_argument("spec", metavar="SWEEP.yaml", help="the sweep spec")
    p.add_argument("--out", required=True, metavar="DIR", help="the sweep directory")
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="run here (default) or write and submit a Slurm job array")
    p.add_argument("--jobs", type=_positive, default=None, metavar="N",
                   help="runs at once (default: one per GPU, else 1); on CPUs they share the cores")
    p.add_argument("--devices", default="auto", metavar="auto|cpu|0,1,..",
                   help="GPUs to spread runs over, one per run (default auto: all visible ones)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config key for every run, e.g. --set data.path=/data/cc (repeatable)")
    p.add_argument("--retries", type=_non_negative, default=1,
                   help="retries of a failed run, counted over invocations (default %(default)s)")
    p.add_argument("--retry-failed", action="store_true", help="run failed points again even if out of retries")
    p.add_argument("--dry-run", action="store_true", help="check the grid, list what would run, run nothing")
    p.add_argument("--status", action="store_true", help="list every point's state and refresh DIR/sweep.json")
    s = p.add_argument_group("slurm executor")
    s.add_argument("--points-per-task", type=_positive, default=1, help="grid points per array task (default 1)")
    s.add_argument("--gpus-per-task", type=_non_negative, default=1,
                   help="GPUs per array task, one run per GPU at a time (0: CPU tasks; default 1)")
    s.add_argument("--cpus-per-task", type=_positive, default=None, help="default 8 per GPU, 2 without")
    s.add_argument("--mem", default=None, metavar="SIZE|none",
                   help="memory per task, e.g. 8G; 'none': no request, the partition's default (default: 32G "
                        "for GPU tasks, 4G per run at once for CPU tasks)")
    s.add_argument("--time", default="04:00:00", help="time limit per task (default %(default)s)")
    s.add_argument("--partition", help="#SBATCH --partition")
    s.add_argument("--account", help="#SBATCH --account")
    s.add_argument("--qos", help="#SBATCH --qos")
    s.add_argument("--max-parallel", type=_positive, default=None, help="at most this many array tasks at once")
    s.add_argument("--setup", default=None, metavar="SHELL",
                   help="shell lines run before each task, e.g. 'module load cuda; source .venv/bin/activate'")
    s.add_argument("--python", default=sys.executable, metavar="PATH",
                   help="the Python each task runs megadepth with (default: this one, %(default)s)")
    s.add_argument("--no-submit", action="store_true", help="write the scripts but do not call sbatch")
    t = p.add_argument_group("array task (what each Slurm task runs)")
    t.add_argument("--task-list", default=None, metavar="FILE",
                   help="DIR/slurm/array-NNN.tasks: one line of point ids per array task")
    t.add_argument("--task-index", type=int, default=None, metavar="I",
                   help="run the points on line I of --task-list (Slurm passes $SLURM_ARRAY_TASK_ID)")
    p.set_defaults(func=_cmd_sweep)
