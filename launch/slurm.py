"""The Slurm batch script: one `megadepth launch` per node, in per-node mode (template launch.sbatch of
megadepth.common.slurm).

`megadepth launch --slurm FILE --nnodes N --nproc-per-node K CONFIG...` writes it; ``sbatch FILE`` runs
it. Node 0 of the allocation is the master, the port comes from the job id unless given, each task reads
its node rank from SLURM_NODEID. The script names this machine's Python and working directory, so both
must be on a file system the compute nodes share.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass

from launch.hostfile import LaunchError
from megadepth.common import slurm

JOB_ID_PORT = "$((10000 + SLURM_JOB_ID % 20000))"
"""Default rendezvous port: from the job id, so two jobs sharing a node do not collide; 10000-29999, below
Linux's ephemeral range (32768+), where an outgoing connection may already hold the port."""


@dataclass(frozen=True)
class SlurmSpec:
    nnodes: int
    nproc_per_node: int
    config_files: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    master_port: int | None = None
    gpus: bool = True  # Ask for ``nproc_per_node`` GPUs per node (False for train.device: cpu)
    sbatch_options: tuple[str, ...] = ()
    """Extra ``#SBATCH`` options, e.g. ``--partition=gpu``, ``--time=04:00:00``, ``--account=x``."""
    workdir: str | None = None
    python: str | None = None


@dataclass(frozen=True)
class GpuDecision:
    """Whether the script asks for GPUs, and why, in words `megadepth launch --slurm` prints."""

    gpus: bool
    reason: str


def decide_gpus(device: str, nproc_per_node: int, sbatch_options: tuple[str, ...] = (), *,
                query: slurm.Query | None = None) -> GpuDecision:
    """The GPU line of a ``--slurm`` script, from ``train.device`` and the cluster's nodes (sinfo's ``%G``),
    never from the machine that writes it (a GPU-less login node writes for GPU nodes; a CPU cluster must
    not be asked for GPUs). ``cpu``: no GPU line. Nodes with GPUs: ``--gpus-per-node=K`` (fewer than K on
    every node: a LaunchError). Nodes without: no line under ``auto``, a LaunchError under ``cuda``. sinfo
    cannot say: ``auto`` asks for GPUs, and the reason says how to ask for none. ``query`` (default
    :func:`megadepth.common.slurm.query`): the partition's node groups, None if unknown."""
    if device == "cpu":
        return GpuDecision(False, "no GPU request: train.device is cpu")
    check_sbatch_options(sbatch_options)  # before one of them reaches sinfo
    partition = slurm.partition_option(sbatch_options)
    groups = (query or slurm.query)(partition)
    if groups is not None and not groups:
        raise LaunchError(f"{slurm.no_such_partition(f'--sbatch=--partition={partition}')}; "
                          "nothing was written")
    line = f"--gpus-per-node={nproc_per_node}"
    if groups is None:
        where = f"partition {partition}" if partition else "the default partition"
        return GpuDecision(True, f"{line}: train.device is {device} and sinfo could not say whether {where} "
                                 "has GPUs (no Slurm here?); for CPU nodes set train.device: cpu")
    most = max(g.gpus for g in groups)
    cluster = slurm.describe(groups)
    if most == 0:
        if device == "cuda":
            raise LaunchError(f"train.device is cuda but the nodes of {cluster} have no GPU (sinfo %G); "
                              "choose a GPU partition with --sbatch=--partition=NAME, or train.device: cpu")
        return GpuDecision(False, f"no GPU request: train.device is auto and the nodes of {cluster} have no "
                                  "GPU (sinfo %G): the ranks run on CPUs")
    if most < nproc_per_node:
        raise LaunchError(f"--nproc-per-node {nproc_per_node} ranks per node, one per GPU, but the nodes of "
                          f"{cluster} have at most {most} GPU(s)")
    return GpuDecision(True, f"{line}: train.device is {device} and the nodes of {cluster} have GPUs")


def check_fits(spec: SlurmSpec, *, query: slurm.Query | None = None) -> None:
    """Refuse, before the script is written, a job the partition's nodes can never run
    (:func:`megadepth.common.slurm.fit_problems`: nodes, ``--sbatch`` memory, CPUs and time, the partition).
    No check where sinfo cannot say; nothing to ask it for one node without such options."""
    options = spec.sbatch_options
    mem, cpus = slurm.option_value(options, "--mem"), slurm.option_value(options, "--cpus-per-task", "-c")
    limit = slurm.option_value(options, "--time", "-t")
    partition = slurm.partition_option(options)
    if spec.nnodes == 1 and mem is None and cpus is None and limit is None and partition is None:
        return
    groups = (query or slurm.query)(partition)
    if groups is None:
        return
    gpus = spec.nproc_per_node if spec.gpus else 0
    problems = slurm.fit_problems(groups, partition=partition, nodes=spec.nnodes, mem=mem, cpus=cpus,
                                  time=limit, gpus=gpus, flag="--sbatch=")
    if problems:
        raise LaunchError(f"{slurm.fit_refusal(groups, problems, 'this job')}; nothing was written")


def _launch_command(spec: SlurmSpec) -> str:
    """`megadepth launch` for one node, continued over lines; $MASTER_ADDR/$MASTER_PORT expand in the batch
    shell, the node rank is appended inside each task."""
    python = spec.python or sys.executable
    groups = [[python, "-m", "megadepth", "launch"],
              ["--nproc-per-node", str(spec.nproc_per_node), "--nnodes", str(spec.nnodes)]]
    lines = [shlex.join(g) for g in groups]
    lines.append('--master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"')
    lines += [shlex.quote(f) for f in spec.config_files]
    lines += [f"--set {shlex.quote(o)}" for o in spec.overrides]
    return " \\\n    ".join(lines)


def check_sbatch_options(options: tuple[str, ...]) -> None:
    """Each ``--sbatch`` option is one sbatch option whose value an ``#SBATCH`` line carries (the same check
    as prep's and the sweep's lines); LaunchError otherwise."""
    for option in options:
        if not option.startswith("-"):
            raise LaunchError(f"--sbatch takes one sbatch option such as --partition=gpu, got {option!r}")
        flag, _, value = option.partition("=")
        problem = slurm.sbatch_value_problem({"--sbatch": option} if not value else {flag: value, "--sbatch": flag})
        if problem:
            raise LaunchError(problem)


def render_sbatch(spec: SlurmSpec, *, query: slurm.Query | None = None) -> str:
    """The batch script's text, once :func:`check_fits` found nodes that can run it (``query``: as there)."""
    if spec.nnodes < 1 or spec.nproc_per_node < 1:
        raise LaunchError("--nnodes and --nproc-per-node must be at least 1")
    check_sbatch_options(spec.sbatch_options)
    check_fits(spec, query=query)
    return slurm.render(
        "launch.sbatch",
        nnodes=spec.nnodes,
        nproc=spec.nproc_per_node,
        world=spec.nnodes * spec.nproc_per_node,
        gpu_line=f"#SBATCH --gpus-per-node={spec.nproc_per_node}\n" if spec.gpus else "",
        extra_lines="".join(f"#SBATCH {o}\n" for o in spec.sbatch_options),
        workdir=shlex.quote(spec.workdir or os.getcwd()),
        master_port=spec.master_port if spec.master_port is not None else JOB_ID_PORT,
        launch_command=_launch_command(spec),
    )
