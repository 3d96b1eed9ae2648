"""Build the DeepSpeed launcher command: one node, a hostfile over ssh/pdsh, or one node of many.

The command is a list of arguments, never a shell string: config values cannot inject shell syntax.
Each rank runs ``python -m megadepth train ...`` with the same config files and overrides; the
launcher sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (``--no_local_rank``: no
``--local_rank=N`` argument is appended).

- single node: ``deepspeed --num_gpus K --master_port P ...``
- hostfile (ssh): ``deepspeed -H HOSTFILE [--num_nodes N] --num_gpus K [--master_addr A] ...``; DeepSpeed
  starts every node's ranks through pdsh
- per node (``--no_ssh``): ``deepspeed -H HOSTFILE --num_gpus K --no_ssh --node_rank R --master_addr A ...``
  run once on each node (Slurm tasks, Kubernetes pods); the hostfile only tells DeepSpeed how many
  nodes there are and how many ranks each runs
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LaunchSpec:
    """What to start on this node."""

    nproc_per_node: int
    config_files: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    master_port: int = 29500
    use_gpu: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    hostfile: str | None = None
    """-H: the hostfile (hostfile and per-node launches); None: this node only."""
    num_nodes: int | None = None
    """--num_nodes: use the first N hosts of the hostfile (None: all of them)."""
    node_rank: int | None = None
    """--no_ssh --node_rank R: start only this node's ranks (per-node launches)."""
    master_addr: str | None = None
    """--master_addr: node 0's address (None: DeepSpeed asks the first host with `hostname -I`)."""


def deepspeed_executable() -> list[str]:
    """The launcher, as a command: the `deepspeed` script beside this Python, else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    if os.path.exists(beside):
        return [beside]
    found = shutil.which("deepspeed")
    if found:
        return [found]
    return [sys.executable, "-m", "deepspeed.launcher.runner"]


def build_command(spec: LaunchSpec) -> list[str]:
    """The launcher command line: ``nproc_per_node`` ranks on this node, or on each host of the hostfile."""
    if spec.nproc_per_node < 1:
        raise ValueError("--nproc-per-node must be at least 1")
    cmd = deepspeed_executable()
    if spec.hostfile is not None:
        cmd += ["-H", spec.hostfile]
        if spec.num_nodes is not None:
            cmd += ["--num_nodes", str(spec.num_nodes)]
    cmd += ["--num_gpus", str(spec.nproc_per_node)]
    if spec.node_rank is not None:
        if spec.hostfile is None:
            raise ValueError("a per-node launch needs a hostfile (DeepSpeed refuses --num_nodes > 1 without one)")
        cmd += ["--no_ssh", "--node_rank", str(spec.node_rank)]
    if spec.master_addr is not None:
        cmd += ["--master_addr", spec.master_addr]
    cmd += ["--master_port", str(spec.master_port)]
    # ranks read LOCAL_RANK from the environment; no --local_rank=N pushed in front of our arguments
    cmd += ["--no_local_rank"]
    cmd += ["--module", "megadepth", "train", *spec.config_files]
    for item in spec.overrides:
        cmd += ["--set", item]
    return cmd


def launcher_env(spec: LaunchSpec, cpu_count: int | None = None) -> dict[str, str]:
    """Environment additions for the ranks: the CPU accelerator and a fair thread share without GPUs."""
    env: dict[str, str] = dict(spec.extra_env)
    if not spec.use_gpu:
        env.setdefault("DS_ACCELERATOR", "cpu")
        cores = cpu_count or os.cpu_count() or 1
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // spec.nproc_per_node)))
    return env


def describe(cmd: list[str], env: dict[str, str]) -> str:
    """The exact command as a person would type it (for --dry-run and logs)."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    return f"{prefix} {shlex.join(cmd)}".strip()


def run(cmd: list[str], env: dict[str, str]) -> int:
    """Run the launcher and wait; SIGINT/SIGTERM/SIGHUP sent to this process are passed on to it (a
    scheduler that stops this process must not orphan the ranks). Returns its exit code (128 + signal
    number when a signal ended it)."""
    proc = subprocess.Popen(cmd, env={**os.environ, **env})

    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, forward)
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if code >= 0 else 128 - code
