"""The Slurm executor: one job array per submission, each array task running one or more grid points.

``megadepth sweep SPEC --out DIR --executor slurm`` checks the whole grid here, chooses the points that
still need running (pending, or failed with attempts left), and writes

- ``DIR/slurm/array-NNN.tasks``   one line per array task: the ids of its points (NNN counts submissions),
- ``DIR/slurm/array-NNN.sbatch``  the array job (template sweep_array.sbatch of megadepth.common.slurm),
- ``DIR/slurm/logs/``           one log per array task (each run also logs into its own directory),

then submits it with ``sbatch --parsable`` when ``sbatch`` is on PATH (else prints the command).
Each array task runs ``megadepth sweep DIR/sweep.yaml --out DIR --task-list ... --task-index I``: the
frozen spec, so later edits of the original spec or its base files cannot change a queued sweep.
Points are dealt to tasks round-robin (grid order mixes depths, so tasks get similar amounts of work).
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from megadepth.common import slurm
from megadepth.common.errors import ConfigError
from megadepth.common.io import atomic_write_text
from megadepth.sweep.runner import SweepDir
from megadepth.sweep.spec import Point, SweepSpec

MEM_SIZE = re.compile(r"\d+[KMGT]?", re.IGNORECASE)

GPU_TASK_MEM = "32G"
"""``--mem`` of a GPU array task unless given: host memory for its runs' data loading and checkpoints."""

CPU_RUN_MEM_GB = 4
"""``--mem`` per run at once of a CPU array task unless given, in GiB. A CPU-sized run (the shipped CPU
sweeps: width 64, depth 16) peaks well under 1 GiB with torch and DeepSpeed loaded, so this leaves room
while fitting any node that runs jobs, and lets a node take as many tasks as it has CPUs for. (32G, the GPU
default, once applied here too, and a CPU node with less refused every task.)"""


@dataclass(frozen=True)
class SlurmOptions:
    points_per_task: int = 1
    gpus_per_task: int = 1
    cpus_per_task: int | None = None
    mem: str | None = None
    """A Slurm size, ``none`` (no request), or None: :meth:`mem_request` decides."""
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
        problem = slurm.sbatch_value_problem({"--mem": self.mem, "--time": self.time, "--partition": self.partition,
                                        "--account": self.account, "--qos": self.qos})
        if problem:
            raise ConfigError(problem)
        if self.mem is not None and self.mem != slurm.MEM_NONE and not MEM_SIZE.fullmatch(self.mem):
            raise ConfigError(f"--mem {self.mem}: a Slurm size such as 4G, 500M or 16000 (megabytes), "
                              f"or '{slurm.MEM_NONE}' for the partition's default")

    @property
    def jobs(self) -> int:
        """Runs an array task holds at once: one per GPU, one on CPUs."""
        return max(1, self.gpus_per_task)

    def mem_request(self) -> str | None:
        """The ``--mem`` value (None: no line). Unless given: 32G for a GPU task, and for a CPU task
        CPU_RUN_MEM_GB per run it holds at once, so that it fits CPU nodes instead of a GPU node's host."""
        if self.mem == slurm.MEM_NONE:
            return None
        if self.mem is not None:
            return self.mem
        return GPU_TASK_MEM if self.gpus_per_task else f"{CPU_RUN_MEM_GB * self.jobs}G"

    def cpus(self) -> int:
        """``--cpus-per-task``: as given, else 8 per GPU, else 2."""
        return self.cpus_per_task or (8 * self.jobs if self.gpus_per_task else 2)

    def requests(self) -> dict[str, str]:
        """The resources each array task asks for, as sbatch options (what a refusal is explained by)."""
        asked = {"--cpus-per-task": str(self.cpus())}
        mem = self.mem_request()
        if mem is not None:
            asked["--mem"] = mem
        if self.gpus_per_task:
            asked["--gres"] = f"gpu:{self.gpus_per_task}"
        asked["--time"] = self.time
        if self.partition:
            asked["--partition"] = self.partition
        return asked


def check_sweep_dir(out: str | Path) -> None:
    """The sweep directory goes into the array script's ``#SBATCH --output`` line and comments: refuse, before
    anything is written, a path no quoting carries there (a line break, a backslash, a '%')."""
    problem = slurm.script_path_problem("--out", str(SweepDir(out).root))
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

    jobs = opts.jobs
    extra = []
    mem = opts.mem_request()
    if opts.gpus_per_task:
        extra.append(f"#SBATCH --gres=gpu:{opts.gpus_per_task}")
    for flag, value in (("partition", opts.partition), ("account", opts.account), ("qos", opts.qos)):
        if value:
            extra.append(f"#SBATCH --{flag}={value}")
    cpus = opts.cpus()
    text = slurm.render(
        "sweep_array.sbatch",
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
        mem_line=f"#SBATCH --mem={mem}\n" if mem is not None else "",
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


def submit(script: Path, sbatch: str = "sbatch", opts: SlurmOptions | None = None,
           query: slurm.Query | None = None) -> str:
    """``sbatch --parsable SCRIPT``; returns the job id. A refusal is bad input (one line, exit 2) that names
    the request the cluster cannot meet, where sinfo tells (sbatch's own "Requested node configuration is
    not available" does not say which)."""
    try:
        proc = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"sbatch failed: {exc}") from None
    if proc.returncode != 0:
        lines = [x.strip().removeprefix("sbatch: error: ") for x in (proc.stderr or proc.stdout).splitlines()]
        said = "; ".join(x for x in lines if x) or f"exit code {proc.returncode}"
        why = explain_refusal(opts, (query or slurm.query)(opts.partition)) if opts is not None else ""
        raise ConfigError(f"sbatch refused {script}: {said}" + (f"; {why}" if why else ""))
    return proc.stdout.strip().split(";")[0]


def _too_big(opts: SlurmOptions, groups: list[slurm.NodeGroup]) -> list[str]:
    """The requests of an array task that no node of ``groups`` can meet, one phrase each."""
    most = max(g.gpus for g in groups)
    hints = {"mem": slurm.MEM_HINT, "cpus": "--cpus-per-task N", "time": "--time T",
             "gpus": "--gpus-per-task 0 for CPU tasks" if most == 0 else f"at most --gpus-per-task {most}"}
    return slurm.fit_problems(groups, mem=opts.mem_request(), cpus=opts.cpus(), time=opts.time,
                              gpus=opts.gpus_per_task, hints=hints)


def check_fits(opts: SlurmOptions, query: slurm.Query | None = None) -> None:
    """Refuse, before anything is written or submitted, array tasks no node of the partition can run
    (:func:`megadepth.common.slurm.fit_problems`); nothing to check where sinfo cannot say, and a partition
    it does not list is left to sbatch, whose "Invalid partition name specified" says so."""
    groups = (query or slurm.query)(opts.partition)
    if not groups:
        return
    found = _too_big(opts, groups)
    if found:
        raise ConfigError(f"{slurm.fit_refusal(groups, found, 'these array tasks')}; nothing was submitted")


def explain_refusal(opts: SlurmOptions, groups: list[slurm.NodeGroup] | None) -> str:
    """Which of an array task's requests no node of its partition can meet, against sinfo's numbers; or,
    where none stands out (or sinfo cannot say), every request, so the message names them all the same."""
    listing = "each task asks for " + " ".join(f"{k}={v}" for k, v in opts.requests().items())
    if not groups:
        return listing
    found = _too_big(opts, groups)
    if not found:
        return f"{listing}; {slurm.describe(groups)}"
    return f"{'; '.join(found)}: {slurm.describe(groups)}"
