"""Build (and run) the DeepSpeed launcher command for one node.

The command is a list of arguments, never a shell string: config values cannot inject shell syntax.
Each rank runs ``python -m megadepth train ...`` with the same config files and overrides; the
launcher sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT and appends --local_rank.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
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
    """The launcher command line for a single node with ``nproc_per_node`` ranks."""
    if spec.nproc_per_node < 1:
        raise ValueError("--nproc-per-node must be at least 1")
    cmd = deepspeed_executable()
    cmd += ["--num_gpus", str(spec.nproc_per_node), "--master_port", str(spec.master_port)]
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
