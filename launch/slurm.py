"""The Slurm batch script: one `megadepth launch` per node, in per-node mode (launch/templates/slurm.sbatch).

`megadepth launch --slurm FILE --nnodes N --nproc-per-node K CONFIG...` writes it (``--dry-run`` prints
it); ``sbatch FILE`` runs it. Inside the job, node 0 (the first host of the allocation) is the master,
the port comes from the job id unless given, and each node's task reads its node rank from
SLURM_NODEID. The script names this machine's Python (``sys.executable``) and working directory, so
the environment and the files must be on a file system the compute nodes share.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from importlib import resources

from launch.hostfile import LaunchError
from megadepth.config.sbatch import sbatch_value_problem

TEMPLATE = "slurm.sbatch"
JOB_ID_PORT = "$((10000 + SLURM_JOB_ID % 20000))"
"""Default rendezvous port: from the job id, so two jobs sharing a node do not collide; 10000-29999, below
Linux's ephemeral range (32768+), where an outgoing connection may already hold the port."""
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@dataclass(frozen=True)
class SlurmSpec:
    nnodes: int
    nproc_per_node: int
    config_files: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    master_port: int | None = None
    gpus: bool = True
    """Ask for ``nproc_per_node`` GPUs per node (False for train.device: cpu)."""
    sbatch_options: tuple[str, ...] = ()
    """Extra ``#SBATCH`` options, e.g. ``--partition=gpu``, ``--time=04:00:00``, ``--account=x``."""
    workdir: str | None = None
    python: str | None = None


def template_text() -> str:
    return resources.files("launch").joinpath("templates", TEMPLATE).read_text()


def _launch_command(spec: SlurmSpec) -> str:
    """`megadepth launch` for one node, continued over lines; $MASTER_ADDR/$MASTER_PORT expand in the batch
    shell, the node rank is appended inside each task."""
    python = spec.python or sys.executable
    groups = [
        [python, "-m", "megadepth", "launch"],
        ["--nproc-per-node", str(spec.nproc_per_node), "--nnodes", str(spec.nnodes)],
    ]
    lines = [shlex.join(g) for g in groups]
    lines.append('--master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"')
    lines += [shlex.quote(f) for f in spec.config_files]
    lines += [f"--set {shlex.quote(o)}" for o in spec.overrides]
    return " \\\n    ".join(lines)


def render_sbatch(spec: SlurmSpec) -> str:
    """The batch script's text."""
    if spec.nnodes < 1 or spec.nproc_per_node < 1:
        raise LaunchError("--nnodes and --nproc-per-node must be at least 1")
    for option in spec.sbatch_options:
        if not option.startswith("-"):
            raise LaunchError(f"--sbatch takes one sbatch option such as --partition=gpu, got {option!r}")
        flag, _, value = option.partition("=")  # the same check as prep's and the sweep's #SBATCH lines
        problem = sbatch_value_problem({"--sbatch": option} if not value else {flag: value, "--sbatch": flag})
        if problem:
            raise LaunchError(problem)
    values = {
        "nnodes": str(spec.nnodes),
        "nproc": str(spec.nproc_per_node),
        "world": str(spec.nnodes * spec.nproc_per_node),
        "gpu_line": f"#SBATCH --gpus-per-node={spec.nproc_per_node}\n" if spec.gpus else "",
        "extra_lines": "".join(f"#SBATCH {o}\n" for o in spec.sbatch_options),
        "workdir": shlex.quote(spec.workdir or os.getcwd()),
        "master_port": str(spec.master_port) if spec.master_port is not None else JOB_ID_PORT,
        "launch_command": _launch_command(spec),
    }
    text = template_text()
    unknown = set(PLACEHOLDER.findall(text)) - values.keys()
    if unknown:
        raise RuntimeError(f"unfilled placeholder in {TEMPLATE}: {sorted(unknown)}")
    # one pass over the template: a value that holds "{{" (a config file's name, an override) stays as it is
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
