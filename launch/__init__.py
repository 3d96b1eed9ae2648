"""Launching megadepth under the DeepSpeed launcher (and, later, Slurm).

This package knows how to start processes; it does not know the model (DESIGN.md).
"""

from launch.deepspeed_launcher import LaunchSpec, build_command, launcher_env

__all__ = ["LaunchSpec", "build_command", "launcher_env"]
