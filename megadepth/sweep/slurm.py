"""The Slurm executor: one job array per submission, each array task running one or more grid points.

``megadepth sweep SPEC --out DIR --executor slurm`` checks the whole grid here, chooses the points that
still need running (pending, or failed with attempts left), and writes

- ``DIR/slurm/array-NNN.tasks``   one line per array task: the ids of its points (NNN counts submissions),
- ``DIR/slurm/array-NNN.sbatch``  the array job (from ``launch/templates/sweep_array.sbatch``),
- ``DIR/slurm/logs/``           one log per array task (each run also logs into its own directory),

then submits it with ``sbatch --parsable`` when ``sbatch`` is on PATH (else prints the command).
Each array task runs ``megadepth sweep DIR/sweep.yaml --out DIR --task-list ... --task-index I``: the
frozen spec, so later edits of the original spec or its base files cannot change a queued sweep.
Points are dealt to tasks round-robin (grid order mixes depths, so tasks get similar amounts of work).
"""

from __future__ import annotations

import math
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from megadepth.config.load import ConfigError
from megadepth.config.sbatch import sbatch_value_problem, script_path_problem
from megadepth.sweep.runner import SweepDir
from megadepth.sweep.spec import Point, SweepSpec
from megadepth.train.rundir import atomic_write_text

TEMPLATE = Path(__file__).resolve().parents[2] / "launch" / "templates" / "sweep_array.sbatch"

@dataclass(frozen=True)
class SlurmOptions:
    points_per_task: int = 1
    gpus_per_task: int = 1
    cpus_per_task: int | None = None
    mem: str = "32G"
    time: str = "04:00:00"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    max_parallel: int | None = None
    setup: str | None = None
    python: str = sys.executable
    retries: int = 1

    def check(self) -> None:
        """Refuse values that would make a broken #SBATCH line; called before anything is written, so a
        typo is one line and exit 2 here rather than a rejected or misconfigured job in the queue."""
        if self.gpus_per_task < 0:
            raise ConfigError(f"--gpus-per-task must be 0 or more, got {self.gpus_per_task}")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ConfigError(f"--max-parallel must be at least 1, got {self.max_parallel}")
        problem = sbatch_value_problem({"--mem": self.mem, "--time": self.time, "--partition": self.partition,
                                        "--account": self.account, "--qos": self.qos})
        if problem:
            raise ConfigError(problem)


def _template() -> str:
    """The array-job template, read by path (in a checkout and in site-packages alike it sits beside the
    megadepth package), without importing the launch package."""
    try:
        return TEMPLATE.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"the Slurm template {TEMPLATE} is missing ({exc}); reinstall megadepth") from None


def check_sweep_dir(out: str | Path) -> None:
    """The sweep directory goes into the array script's ``#SBATCH --output`` line and comments: refuse, before
    anything is written, a path no quoting carries there (a line break, a backslash, a '%')."""
    problem = script_path_problem("--out", str(SweepDir(out).root))
    if problem:
        raise ConfigError(problem)


def deal(points: list[Point], per_task: int) -> list[list[Point]]:
    """Split ``points`` over ceil(n / per_task) tasks round-robin."""
    if per_task < 1:
        raise ConfigError(f"--points-per-task must be at least 1, got {per_task}")
    tasks = max(1, math.ceil(len(points) / per_task))
    return [points[i::tasks] for i in range(tasks)]


def write_array(spec: SweepSpec, sweep: SweepDir, todo: list[Point], opts: SlurmOptions) -> tuple[Path, Path, int]:
    """Write the task list and the sbatch script; returns (script, task list, number of tasks).

    Every path reaches the script shell-quoted: a sweep directory named ``o$(cmd)`` must not run ``cmd``."""
    opts.check()
    check_sweep_dir(sweep.root)
    groups = deal(todo, opts.points_per_task)
    slurm_dir = sweep.root / "slurm"
    logs = slurm_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    n = 1 + len(list(slurm_dir.glob("array-*.tasks")))
    while (slurm_dir / f"array-{n:03d}.tasks").exists():
        n += 1
    task_list = slurm_dir / f"array-{n:03d}.tasks"
    script = task_list.with_suffix(".sbatch")
    atomic_write_text(task_list, "".join(" ".join(p.id for p in group) + "\n" for group in groups))

    jobs = max(1, opts.gpus_per_task)
    extra = []
    if opts.gpus_per_task:
        extra.append(f"#SBATCH --gres=gpu:{opts.gpus_per_task}")
    for flag, value in (("partition", opts.partition), ("account", opts.account), ("qos", opts.qos)):
        if value:
            extra.append(f"#SBATCH --{flag}={value}")
    cpus = opts.cpus_per_task or (8 * jobs if opts.gpus_per_task else 2)
    text = _template().format(
        name=spec.name,
        points=len(todo),
        tasks=len(groups),
        per_task=opts.points_per_task,
        script=shlex.quote(str(script)),
        task_list=shlex.quote(str(task_list)),
        job_name=f"megadepth-sweep-{spec.name}",
        last=len(groups) - 1,
        throttle=f"%{opts.max_parallel}" if opts.max_parallel else "",
        cpus=cpus,
        mem=opts.mem,
        time=opts.time,
        log_pattern=shlex.quote(f"{logs}/%A_%a.log"),
        extra="\n".join(extra),
        workdir=shlex.quote(str(Path.cwd())),
        setup=opts.setup or "",
        python=shlex.quote(opts.python),
        spec=shlex.quote(str(sweep.spec)),
        out=shlex.quote(str(sweep.root)),
        jobs=jobs,
        devices="auto" if opts.gpus_per_task else "cpu",
        retries=opts.retries,
    )
    atomic_write_text(script, text)
    script.chmod(0o755)
    return script, task_list, len(groups)


def submit(script: Path, sbatch: str = "sbatch") -> str:
    """``sbatch --parsable SCRIPT``; returns the job id. A refusal is bad input (one line, exit 2)."""
    try:
        proc = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"sbatch failed: {exc}") from None
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise ConfigError(f"sbatch refused {script}: {message[-1] if message else f'exit code {proc.returncode}'}")
    return proc.stdout.strip().split(";")[0]
