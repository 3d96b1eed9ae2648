"""Launching megadepth: the DeepSpeed launcher on one node, over ssh from a hostfile, one launcher per
node (Slurm, Kubernetes), and Slurm batch scripts (docs/launching.md).

This package knows how to start processes; it does not know the model.
"""

from launch.deepspeed_launcher import LaunchSpec, build_command, launcher_env
from launch.hostfile import Host, LaunchError, parse_hostfile_text, read_hostfile
from launch.plan import LaunchPlan, LaunchRequest, check_ssh_mode, plan_launch
from launch.slurm import SlurmSpec, render_sbatch

__all__ = ["Host", "LaunchError", "LaunchPlan", "LaunchRequest", "LaunchSpec", "SlurmSpec", "build_command",
           "check_ssh_mode", "launcher_env", "parse_hostfile_text", "plan_launch", "read_hostfile",
           "render_sbatch"]
