"""The Slurm executor: one job array per submission (``DIR/slurm/array-NNN.tasks`` and ``.sbatch``), each
task running its points from the frozen DIR/sweep.yaml, so later edits of the spec cannot change a queued
sweep. Points are dealt round-robin (grid order mixes depths, so tasks get similar work)."""

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
"""``--mem`` per run at once of a CPU array task unless given, in GiB: a CPU-sized run peaks well under
1 GiB, and a CPU node must not be asked for a GPU node's host memory."""


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
        """Refuse values that would make a broken #SBATCH line, before anything is written."""
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
        """The ``--mem`` value (None: no line): unless given, GPU_TASK_MEM or CPU_RUN_MEM_GB per run."""
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
        asked = {"--cpus-per-task": str(self.cpus()), "--mem": self.mem_request(),
                 "--gres": f"gpu:{self.gpus_per_task}" if self.gpus_per_task else None, "--time": self.time,
                 "--partition": self.partition or None}
        return {k: v for k, v in asked.items() if v is not None}


def check_sweep_dir(out: str | Path) -> None:
    """Refuse a sweep directory no quoting carries into ``#SBATCH --output`` (a line break, '\\', '%')."""
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
    """Write the task list and the sbatch script (every path shell-quoted); returns (script, task list,
    number of tasks)."""
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

    mem = opts.mem_request()
    extra = [f"#SBATCH --gres=gpu:{opts.gpus_per_task}"] if opts.gpus_per_task else []
    extra += [f"#SBATCH --{flag}={value}" for flag, value in
              (("partition", opts.partition), ("account", opts.account), ("qos", opts.qos)) if value]
    q = shlex.quote
    text = slurm.render(
        "sweep_array.sbatch", name=spec.name, points=len(todo), tasks=len(groups),
        per_task=opts.points_per_task, script=q(str(script)), task_list=q(str(task_list)),
        job_name=f"megadepth-sweep-{spec.name}", last=len(groups) - 1,
        throttle=f"%{opts.max_parallel}" if opts.max_parallel else "", cpus=opts.cpus(),
        mem_line=f"#SBATCH --mem={mem}\n" if mem is not None else "", time=opts.time,
        log_pattern=q(f"{logs}/%A_%a.log"), extra="\n".join(extra), workdir=q(str(Path.cwd())),
        setup=opts.setup or "", python=q(opts.python), spec=q(str(sweep.spec)), out=q(str(sweep.root)),
        jobs=opts.jobs, devices="auto" if opts.gpus_per_task else "cpu", retries=opts.retries,
    )
    atomic_write_text(script, text)
    script.chmod(0o755)
    return script, task_list, len(groups)


def submit(script: Path, sbatch: str = "sbatch", opts: SlurmOptions | None = None,
           query: slurm.Query | None = None) -> str:
    """``sbatch --parsable SCRIPT``; returns the job id. A refusal names the request no node meets."""
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
    """Refuse, before anything is written or submitted, array tasks no node of the partition can run."""
    groups = (query or slurm.query)(opts.partition)
    if not groups:
        return
    found = _too_big(opts, groups)
    if found:
        raise ConfigError(f"{slurm.fit_refusal(groups, found, 'these array tasks')}; nothing was submitted")


def explain_refusal(opts: SlurmOptions, groups: list[slurm.NodeGroup] | None) -> str:
    """Which of an array task's requests no node of its partition can meet; else every request."""
    listing = "each task asks for " + " ".join(f"{k}={v}" for k, v in opts.requests().items())
    if not groups:
        return listing
    found = _too_big(opts, groups)
    if not found:
        return f"{listing}; {slurm.describe(groups)}"
    return f"{'; '.join(found)}: {slurm.describe(groups)}"
